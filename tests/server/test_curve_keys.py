"""CURVE keys on the server: `gr00t-server keygen`, loading the server key, and the reloadable authorized-keys ZAP check."""

import contextlib
import errno
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import threading

import pytest
import zmq
import zmq.auth

from gr00t_client import HandshakeError, PolicyClient, codec
from gr00t_server.cli import main
from gr00t_server.curve import AuthorizedKeys, CurveServerConfig, ServerCurve, generate_certificates


@contextlib.contextmanager
def curve_ping_server(config):
    """A raw ROUTER made a CURVE server by ServerCurve, answering every request with a ping reply."""
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    security = ServerCurve(config, context, sock)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            if sock.poll(20):
                frames = sock.recv_multipart()
                sock.send_multipart([*frames[:-1], codec.encode({"status": "ok"})])  # with the request id

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port, security
    finally:
        stop.set()
        thread.join(5)
        sock.close(linger=0)
        security.stop()
        context.term()


def ping(port, **keys):
    with PolicyClient("127.0.0.1", port, timeout_ms=2000, **keys) as client:
        return client.call_endpoint("ping", requires_input=False)


def test_keygen_writes_a_zmq_auth_key_pair_with_a_0600_secret_file(tmp_path, capsys):
    assert main(["keygen", str(tmp_path / "keys"), "--name", "robot-07"]) == 0
    public_path, secret_path = tmp_path / "keys" / "robot-07.key", tmp_path / "keys" / "robot-07.key_secret"
    public, no_secret = zmq.auth.load_certificate(str(public_path))
    same_public, secret = zmq.auth.load_certificate(str(secret_path))
    assert no_secret is None and public == same_public and zmq.curve_public(secret) == public
    assert stat.S_IMODE(os.stat(secret_path).st_mode) == 0o600
    assert public in zmq.auth.load_certificates(str(tmp_path / "keys"))  # what a plain zmq.auth server reads
    out = capsys.readouterr().out
    assert "Fingerprint: SHA256:" in out and secret.decode() not in out


def public_key_hint(tmp_path, capsys, *flags):
    """The line keygen prints about the public key it wrote."""
    assert main(["keygen", str(tmp_path / "keys"), *flags]) == 0
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Public key:"))


def test_keygen_of_the_servers_pair_says_clients_pass_its_public_key_as_server_public_key(tmp_path, capsys):
    hint = public_key_hint(tmp_path, capsys)  # the default --name server
    assert "server.key" in hint and "clients pass it as --server-public-key" in hint
    assert "--authorized-keys" not in hint


def test_keygen_of_a_robots_pair_says_its_public_key_goes_into_the_servers_authorized_keys(tmp_path, capsys):
    # It said "clients pass it as --server-public-key" of a robot's own key too: the mix-up PolicyClient refuses.
    hint = public_key_hint(tmp_path, capsys, "--name", "robot-07")
    assert "copy it into the server's --authorized-keys folder" in hint
    assert "clients pass it as --server-public-key" not in hint


def test_keygen_expands_a_tilde_no_shell_expanded(tmp_path, monkeypatch, capsys):
    """A quoted '~/keys' wrote the keys into ./~/keys and then failed, naming $HOME/keys."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["keygen", "~/keys", "--name", "robot-07"]) == 0
    assert (tmp_path / "home" / "keys" / "robot-07.key_secret").is_file() and not (tmp_path / "~").exists()


def test_authorized_keys_given_with_a_tilde_are_the_home_folders(tmp_path, monkeypatch):
    """--authorized-keys=~/auth (the shell leaves '~' after '='), or $GR00T_AUTHORIZED_KEYS=~/auth, was refused as
    "not a directory" where every other path flag expands it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "auth").mkdir()
    server_secret = generate_certificates(tmp_path / "keys", "server")[1]
    config = CurveServerConfig.load(server_secret, "~/auth")
    assert config.authorized_keys == tmp_path / "auth"


def test_keygen_refuses_to_replace_a_key_pair_unless_forced(tmp_path, capsys):
    assert main(["keygen", str(tmp_path)]) == 0
    first = zmq.auth.load_certificate(str(tmp_path / "server.key"))[0]
    assert main(["keygen", str(tmp_path)]) == 2
    assert "already exist" in capsys.readouterr().err
    assert zmq.auth.load_certificate(str(tmp_path / "server.key"))[0] == first
    assert main(["keygen", str(tmp_path), "--force"]) == 0
    assert zmq.auth.load_certificate(str(tmp_path / "server.key"))[0] != first


def test_two_forced_keygens_at_once_leave_one_matching_pair_and_nothing_else(tmp_path):
    # Each renamed its own pair in: NAME.key of one beside the other's NAME.key_secret (both exit 0), and every
    # client handed NAME.key was refused by the server holding the secret. The second now waits for the first.
    generate_certificates(tmp_path, "server")
    for _ in range(200):
        barrier = threading.Barrier(2)
        errors = []

        def forced():
            barrier.wait()
            try:
                generate_certificates(tmp_path, "server", overwrite=True)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=forced) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        public, _ = zmq.auth.load_certificate(str(tmp_path / "server.key"))
        secret_public, _ = zmq.auth.load_certificate(str(tmp_path / "server.key_secret"))
        assert public == secret_public
    assert sorted(os.listdir(tmp_path)) == ["server.key", "server.key_secret"]


def test_server_key_must_be_the_secret_certificate(tmp_path):
    public_path, secret_path = generate_certificates(tmp_path, "server")
    with pytest.raises(ValueError, match=r"only a public key; pass the secret certificate"):
        CurveServerConfig.load(public_path)
    with pytest.raises(NotADirectoryError, match="authorized_keys"):
        CurveServerConfig.load(secret_path, tmp_path / "missing")
    config = CurveServerConfig.load(secret_path)
    assert config.public_key == zmq.auth.load_certificate(str(public_path))[0]
    assert config.secret_key.decode() not in repr(config)


def test_z85_secret_key_string_is_accepted(tmp_path):
    public, secret = zmq.curve_keypair()
    assert CurveServerConfig.load(secret.decode()).public_key == public


def test_authorized_keys_are_reloaded_without_a_restart(tmp_path):
    _, server_secret = generate_certificates(tmp_path, "server")
    client_public, client_secret = generate_certificates(tmp_path / "clients", "robot")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    config = CurveServerConfig.load(server_secret, allowed)
    keys = dict(server_public_key=str(tmp_path / "server.key"), client_secret_key=str(client_secret))
    with curve_ping_server(config) as (port, security):
        with pytest.raises(HandshakeError, match="refused this client's public key"):
            ping(port, **keys)
        shutil.copy(client_public, allowed / "robot.key")
        assert ping(port, **keys) == {"status": "ok"}
        assert len(security.authorized.keys) == 1
        os.remove(allowed / "robot.key")
        with pytest.raises(HandshakeError, match="refused"):
            ping(port, **keys)


def test_unreadable_files_in_the_authorized_keys_directory_are_skipped(tmp_path):
    client_public, _ = generate_certificates(tmp_path / "allowed", "robot")
    (tmp_path / "allowed" / "junk.key").write_text("not a certificate\n")
    authorized = AuthorizedKeys(tmp_path / "allowed")
    assert authorized.keys == {zmq.auth.load_certificate(str(client_public))[0]}


MALFORMED_KEY = 'metadata\ncurve\n    public-key: "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"\n'  # ':' where zmq.auth wants '='


def _one_authorized_robot(tmp_path):
    """(server secret file, authorized-keys folder holding robot.key, the robot's ping() key arguments)."""
    _, server_secret = generate_certificates(tmp_path, "server")
    client_public, client_secret = generate_certificates(tmp_path / "clients", "robot")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(client_public, allowed / "robot.key")
    return server_secret, allowed, dict(server_public_key=str(tmp_path / "server.key"),
                                        client_secret_key=str(client_secret))


def test_a_malformed_key_file_added_while_running_is_skipped_and_authorized_clients_still_connect(tmp_path):
    """zmq.auth raised IndexError for it, which killed the authenticator thread: every later handshake stalled,
    authorized clients' included, until a restart."""
    server_secret, allowed, keys = _one_authorized_robot(tmp_path)
    with curve_ping_server(CurveServerConfig.load(server_secret, allowed)) as (port, _security):
        assert ping(port, **keys) == {"status": "ok"}
        (allowed / "typo.key").write_text(MALFORMED_KEY)
        assert ping(port, **keys) == {"status": "ok"}
        assert ping(port, **keys) == {"status": "ok"}


def test_an_authorized_key_file_with_a_malformed_public_key_is_named_in_a_warning(tmp_path, caplog):
    """A key one character short, or with a comment after it on its line, was taken in silently: its robot was then
    refused as 'not in' the folder that holds its file."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    public_lines = {}
    for name in ("robot-07", "robot-08"):
        public, _ = generate_certificates(tmp_path / "robots", name)
        public_lines[name] = next(line for line in public.read_text().splitlines() if "public-key" in line)
    (allowed / "robot-07.key").write_text(f"metadata\ncurve\n{public_lines['robot-07'][:-2]}\"\n")
    (allowed / "robot-08.key").write_text(f"metadata\ncurve\n{public_lines['robot-08']}  # robot 8, lab B\n")
    with caplog.at_level("WARNING", logger="gr00t_server.curve"):
        authorized = AuthorizedKeys(allowed)
        assert authorized.callback("*", zmq.curve_keypair()[0]) is False
    for name in ("robot-07.key", "robot-08.key"):
        assert f"skipping {allowed / name}: it holds no valid 40-character z85 public-key" in caplog.text
    assert authorized.keys == frozenset()
    assert "not used: robot-07.key, robot-08.key" in caplog.text  # the refusal points at them


# Reads the authorized keys as the server does: one handshake's check, then another once a line comes on stdin.
_TWO_HANDSHAKES = """
import sys
from gr00t_server.curve import AuthorizedKeys
authorized = AuthorizedKeys(sys.argv[1])
print(authorized.callback("*", sys.argv[2].encode()), flush=True)
sys.stdin.readline()
print(authorized.callback("*", sys.argv[2].encode()), flush=True)
"""


def test_a_key_file_made_readable_with_chmod_is_read_at_the_next_handshake():
    """A robot.key copied in with mode 0600 by another user was skipped (rightly), but after `chmod 644` it was never
    read again: chmod changes neither the mtime nor the size the folder's change check looked at."""
    as_another_user = []
    if os.geteuid() == 0:  # root reads any file: run the server's side as nobody
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to run as another user")
        as_another_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        reads = subprocess.run([*as_another_user, sys.executable, "-c", "import gr00t_server"], capture_output=True)
        if reads.returncode != 0:  # a checkout (or venv) in a folder only root may enter, such as mktemp -d's
            pytest.skip("the other user cannot import this checkout's gr00t_server")
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        client_public, _ = generate_certificates(os.path.join(folder, "robots"), "robot")
        allowed = os.path.join(folder, "allowed")
        os.mkdir(allowed)
        shutil.copy(client_public, os.path.join(allowed, "robot.key"))
        os.chmod(os.path.join(allowed, "robot.key"), 0o000 if not as_another_user else 0o600)
        key = zmq.auth.load_certificate(str(client_public))[0].decode()
        server_side = subprocess.Popen([*as_another_user, sys.executable, "-c", _TWO_HANDSHAKES, allowed, key],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       cwd=folder)
        try:
            first = server_side.stdout.readline().strip()
            os.chmod(os.path.join(allowed, "robot.key"), 0o644)
            second, log = server_side.communicate("\n", timeout=30)
        finally:
            server_side.kill()
    assert first == "False", log
    assert second.strip() == "True", log
    assert "this server cannot read it" in log and "present there but unreadable or malformed" in log


def test_a_failing_key_check_refuses_that_client_and_the_next_handshake_is_checked_again(tmp_path, monkeypatch):
    client_public, _ = generate_certificates(tmp_path / "allowed", "robot")
    authorized = AuthorizedKeys(tmp_path / "allowed")
    key = zmq.auth.load_certificate(str(client_public))[0]

    def broken():
        raise RuntimeError("disk went away")

    monkeypatch.setattr(authorized, "reload_if_changed", broken)
    assert authorized.callback("*", key) is False
    monkeypatch.undo()
    assert authorized.callback("*", key) is True


def test_refused_curve_clients_are_logged_at_most_20_times_per_window(tmp_path, caplog):
    generate_certificates(tmp_path / "allowed", "robot")
    authorized = AuthorizedKeys(tmp_path / "allowed")
    stranger = zmq.curve_keypair()[0]
    with caplog.at_level("WARNING", logger="gr00t_server.curve"):
        for _ in range(50):
            assert authorized.callback("*", stranger) is False
    assert caplog.text.count("refused a CURVE client") == 20


def test_a_malformed_server_key_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "server.key_secret").write_text(MALFORMED_KEY)
    with pytest.raises(ValueError, match=r"server.key_secret is not a readable zmq.auth certificate file"):
        CurveServerConfig.load(tmp_path / "server.key_secret")


def test_open_curve_server_admits_any_client_key_but_still_encrypts(tmp_path):
    public_path, secret_path = generate_certificates(tmp_path, "server")
    with curve_ping_server(CurveServerConfig.load(secret_path)) as (port, security):
        assert security.authorized is None
        assert ping(port, server_public_key=str(public_path)) == {"status": "ok"}  # an ephemeral client key
        assert "any client" in security.banner() and CurveServerConfig.load(secret_path).fingerprint in security.banner()


def test_mistakes_in_the_authorized_keys_folder_are_named(tmp_path, caplog):
    """A secret certificate saved as NAME.key was used without a word (the server then held a robot's secret), a
    NAME.key_secret file and .key files in a subfolder were ignored silently."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    _, bob_secret = generate_certificates(tmp_path / "robots", "bob")
    shutil.copy(bob_secret, allowed / "bob.key")  # the wrong file of the pair
    carol_public, carol_secret = generate_certificates(tmp_path / "robots", "carol")
    shutil.copy(carol_secret, allowed / "carol.key_secret")
    (allowed / "sub").mkdir()
    shutil.copy(carol_public, allowed / "sub" / "carol.key")
    (allowed / "notes").mkdir()  # a folder without keys is nobody's mistake
    with caplog.at_level("WARNING", logger="gr00t_server.curve"):
        authorized = AuthorizedKeys(allowed)
    assert authorized.keys == {zmq.auth.load_certificate(str(bob_secret))[0]}  # its public half, as before
    assert f"{allowed / 'bob.key'} holds a secret key; only its public key is used" in caplog.text
    assert f"{allowed / 'carol.key_secret'} is ignored: servers read client public keys (NAME.key)" in caplog.text
    assert f"{allowed / 'sub'} is ignored: only the .key files directly in {allowed} are read" in caplog.text
    assert "notes" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="gr00t_server.curve"):
        assert authorized.reload_if_changed() is False  # nothing changed: nothing said again
        (allowed / "dave.key_secret").write_text("")
        assert authorized.reload_if_changed() is True  # a mistake added while running is told at the next handshake
    assert "dave.key_secret is ignored" in caplog.text


def test_serve_names_its_flags_in_key_errors(tmp_path, capsys):
    """They began 'curve_secret_key:' and 'authorized_keys:', the Python parameters' names."""
    _, secret = generate_certificates(tmp_path, "server")
    assert main(["serve", "--dataset-path", str(tmp_path), "--curve-secret-key", "not-a-key"]) != 0
    assert "--curve-secret-key: 'not-a-key' is neither an existing certificate file" in capsys.readouterr().err
    assert main(["serve", "--dataset-path", str(tmp_path), "--curve-secret-key", str(secret), "--authorized-keys",
                 str(tmp_path / "missing")]) != 0
    assert f"--authorized-keys: '{tmp_path / 'missing'}' is not a directory" in capsys.readouterr().err


def test_an_empty_authorized_keys_is_refused_not_read_as_the_working_directory(tmp_path, monkeypatch):
    _, secret = generate_certificates(tmp_path / "server", "server")
    generate_certificates(tmp_path / "robot", "robot")
    monkeypatch.chdir(tmp_path / "robot")  # Path("") is "." : this robot.key would have been admitted
    with pytest.raises(ValueError, match=r"^authorized_keys is empty; pass the directory of client \.key files"):
        CurveServerConfig.load(secret, "")


def kubelet_writes(mount, key_file, stamp):
    """What the kubelet does to a Secret volume holding robot.key: the file into a new hidden `..<stamp>` folder,
    `..data` swapped to that folder at once, and robot.key a symlink through `..data`."""
    folder = mount / f"..{stamp}"
    folder.mkdir(parents=True)
    shutil.copy(key_file, folder / "robot.key")
    (mount / "..data_tmp").symlink_to(folder.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    if not (mount / "robot.key").is_symlink():
        (mount / "robot.key").symlink_to(os.path.join("..data", "robot.key"))
    return folder / "robot.key"


def test_keys_in_a_kubernetes_secret_volume_are_read_without_warnings_and_rotated(tmp_path, caplog):
    """The hidden `..data` and `..2026_...` entries were warned of as ignored subfolders, at start and each rotation,
    while their keys were read."""
    robot, _ = generate_certificates(tmp_path / "robot", "robot")
    new_robot, _ = generate_certificates(tmp_path / "new", "robot")
    mount = tmp_path / "clients"
    first = kubelet_writes(mount, robot, "2026_12_04_13_00_00.1")
    with caplog.at_level("WARNING", logger="gr00t_server.curve"):
        authorized = AuthorizedKeys(mount)
        assert authorized.keys == {zmq.auth.load_certificate(str(robot))[0]}
        rotated = kubelet_writes(mount, new_robot, "2026_12_04_14_00_00.2")
        later = first.stat().st_mtime_ns + 60 * 10**9  # a rotation comes minutes later (file clocks tick coarsely)
        os.utime(rotated, ns=(later, later))
        assert authorized.reload_if_changed() is True
        assert authorized.keys == {zmq.auth.load_certificate(str(new_robot))[0]}
    assert caplog.text == ""


def test_an_empty_path_authorized_keys_is_refused_unless_the_str_dot_is_written(tmp_path, monkeypatch):
    """Path(os.environ.get("GR00T_AUTHORIZED_KEYS", "")) is Path('.'): it admitted the working directory's keys."""
    _, secret = generate_certificates(tmp_path / "server", "server")
    generate_certificates(tmp_path / "robot", "robot")
    monkeypatch.chdir(tmp_path / "robot")
    with pytest.raises(ValueError, match=r"^authorized_keys is Path\('\.'\), which is what Path\(''\) becomes; "
                                         r".*str '\.'"):
        CurveServerConfig.load(secret, pathlib.Path(""))
    assert CurveServerConfig.load(secret, ".").authorized_keys == pathlib.Path(".")  # meant, as written


def test_a_fifo_key_file_is_skipped_unopened_and_authorized_clients_still_connect(tmp_path, caplog):
    """A FIFO (or a device) named NAME.key blocked the one ZAP thread in open(): every later handshake stalled."""
    server_secret, allowed, keys = _one_authorized_robot(tmp_path)
    fifo = allowed / "stray.key"
    with caplog.at_level("WARNING", logger="gr00t_server.curve"):
        with curve_ping_server(CurveServerConfig.load(server_secret, allowed)) as (port, security):
            os.mkfifo(fifo)
            try:
                assert ping(port, **keys) == {"status": "ok"}
                assert ping(port, **keys) == {"status": "ok"}
            finally:
                with contextlib.suppress(OSError):  # a ZAP thread stuck in open() is let go, so the test can end
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert caplog.text.count(f"skipping {fifo}: it is not a regular file") == 1  # once, not per handshake


def test_an_oversized_key_file_is_skipped_unread(tmp_path, caplog):
    client_public, _ = generate_certificates(tmp_path / "allowed", "robot")
    (tmp_path / "allowed" / "huge.key").write_bytes(b"#" * (1 << 20))
    with caplog.at_level("WARNING", logger="gr00t_server.curve"):
        authorized = AuthorizedKeys(tmp_path / "allowed")
    assert authorized.keys == {zmq.auth.load_certificate(str(client_public))[0]}
    assert f"skipping {tmp_path / 'allowed' / 'huge.key'}: it holds 1048576 bytes" in caplog.text


def test_a_dangling_key_link_is_named_in_a_warning_and_in_a_refusal(tmp_path, caplog):
    """It was skipped without a word, and the log said the folder 'holds no client .key files'."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "robot-07.key").symlink_to(tmp_path / "elsewhere" / "robot-07.key")
    with caplog.at_level("WARNING", logger="gr00t_server.curve"):
        authorized = AuthorizedKeys(allowed)
        assert authorized.callback("*", zmq.curve_keypair()[0]) is False
    assert (f"skipping {allowed / 'robot-07.key'}: a symbolic link to {tmp_path / 'elsewhere' / 'robot-07.key'}, "
            "which does not exist") in caplog.text
    assert "present there but unreadable or malformed, so not used: robot-07.key" in caplog.text
    assert "holds no usable client .key files" in caplog.text


def test_a_key_link_loop_is_named_with_why_it_cannot_be_followed_not_as_a_missing_target(tmp_path, caplog):
    """a.key -> b.key -> a.key was warned of as 'a symbolic link to b.key, which does not exist'; b.key exists."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "a.key").symlink_to("b.key")
    (allowed / "b.key").symlink_to("a.key")
    with caplog.at_level("WARNING", logger="gr00t_server.curve"):
        authorized = AuthorizedKeys(allowed)
        assert authorized.callback("*", zmq.curve_keypair()[0]) is False
    assert (f"skipping {allowed / 'a.key'}: a symbolic link to b.key that cannot be followed "
            f"({os.strerror(errno.ELOOP)})") in caplog.text
    assert "which does not exist" not in caplog.text


def test_keygen_force_replaces_a_dangling_key_link_and_without_it_names_the_link(tmp_path, capsys):
    """--force failed with a raw '[Errno 17] File exists', as keygen without it did."""
    (tmp_path / "server.key").symlink_to(tmp_path / "gone" / "server.key")
    assert main(["keygen", str(tmp_path)]) == 2
    assert (f"{tmp_path / 'server.key'} already exists ({tmp_path / 'server.key'}: a symbolic link to nothing); "
            "choose another --name or pass --force") in capsys.readouterr().err
    assert main(["keygen", str(tmp_path), "--force"]) == 0
    assert not (tmp_path / "server.key").is_symlink() and zmq.auth.load_certificate(str(tmp_path / "server.key"))[0]


def test_keygen_into_a_dangling_folder_link_names_the_link(tmp_path, capsys):
    (tmp_path / "keys").symlink_to(tmp_path / "gone")
    assert main(["keygen", str(tmp_path / "keys")]) == 2
    assert (f"DIRECTORY {tmp_path / 'keys'} is a symbolic link to {tmp_path / 'gone'}, which does not exist"
            in capsys.readouterr().err)


def test_an_unreadable_authorized_keys_folder_is_warned_of_once_not_at_each_handshake(tmp_path, caplog):
    """Each handshake logged its own 'cannot read' warning: any peer reaching the port could flood the log."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    authorized = AuthorizedKeys(allowed)
    allowed.rmdir()
    with caplog.at_level("WARNING", logger="gr00t_server.curve"):
        for _ in range(50):
            assert authorized.callback("*", zmq.curve_keypair()[0]) is False
    assert caplog.text.count(f"cannot read {allowed}") == 1


@pytest.mark.skipif(shutil.which("setpriv") is None and hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="as root, without setpriv, folder permissions are not checked")
def test_keygen_writes_into_a_folder_it_may_write_but_not_list(tmp_path):
    # A drop folder (mode 0333): the lock keygen takes opens the folder for reading, which failed, and keygen said
    # the user could not write there. It writes as before, unlocked.
    folder = tmp_path / "dropbox"
    folder.mkdir()
    folder.chmod(0o333)
    prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 else []
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", "import sys; from gr00t_server.cli import main; "
                               "sys.exit(main())", "keygen", str(folder)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    finally:
        folder.chmod(0o700)
    assert sorted(os.listdir(folder)) == ["server.key", "server.key_secret"]


def test_a_refused_curve_handshake_is_logged_naming_the_peers_address(tmp_path, caplog):
    """The refusal named only the key's fingerprint: a throwaway key's tells the operator nothing, and the address is
    the one way to find the machine knocking (a robot with a stale key, a scanner)."""
    _, server_secret = generate_certificates(tmp_path, "server")
    _, stranger_secret = generate_certificates(tmp_path / "clients", "stranger")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    keys = dict(server_public_key=str(tmp_path / "server.key"), client_secret_key=str(stranger_secret))
    with caplog.at_level("WARNING", logger="gr00t_server.curve"):
        with curve_ping_server(CurveServerConfig.load(server_secret, allowed)) as (port, _security):
            with pytest.raises(HandshakeError, match="refused"):
                ping(port, **keys)
    refusals = [r.getMessage() for r in caplog.records if "refused a CURVE client" in r.getMessage()]
    assert refusals and refusals[0].startswith("refused a CURVE client at 127.0.0.1 with key SHA256:"), refusals


# A CURVE ping server whose process has one descriptor left: the next connection's accept takes it, and the keys
# folder's listing at that handshake fails with EMFILE. argv: server secret, keys folder, this folder, the grace in
# seconds, and "changed" to add an entry to the keys folder once out of descriptors (a listing is then needed). Prints
# the port, then "full"; then, for each line on stdin, reads the keys as its watcher does, twice, the grace apart, and
# prints "read".
_OUT_OF_DESCRIPTORS_SERVER = """
import os, resource, sys, time
sys.path.insert(0, sys.argv[3])
from test_curve_keys import curve_ping_server
from gr00t_server import curve
from gr00t_server.curve import CurveServerConfig
curve.UNREADABLE_GRACE_S = float(sys.argv[4])
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
with curve_ping_server(CurveServerConfig.load(sys.argv[1], sys.argv[2])) as (port, security):
    print(port, flush=True)
    authorized = security.authorized
    authorized.stop_watching()  # its reads are made below, at known times
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    if sys.argv[5] == "changed":
        os.mkdir(os.path.join(sys.argv[2], "notes"))  # needs no descriptor
    if curve.UNREADABLE_GRACE_S < 1:  # unreadable from now, and past the grace when the robot comes
        authorized.reload_if_changed()
        time.sleep(curve.UNREADABLE_GRACE_S + 0.1)
    os.close(held.pop())  # one left, for the robot's connection
    print("full", flush=True)
    for _ in sys.stdin:
        authorized.reload_if_changed()
        time.sleep(curve.UNREADABLE_GRACE_S + 0.1)
        authorized.reload_if_changed()
        print("read", flush=True)
"""


@contextlib.contextmanager
def server_out_of_descriptors(tmp_path, grace_s, folder_changed=False):
    """(server process, port, robot's client key arguments) of a CURVE server with one descriptor left (see above)."""
    _, server_secret = generate_certificates(tmp_path, "server")
    _, robot_secret = generate_certificates(tmp_path / "robots", "robot")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(tmp_path / "robots" / "robot.key", allowed / "robot.key")
    server = subprocess.Popen([sys.executable, "-c", _OUT_OF_DESCRIPTORS_SERVER, str(server_secret), str(allowed),
                               os.path.dirname(__file__), str(grace_s), "changed" if folder_changed else "same"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        assert server.stdout.readline().strip() == "full", server.stderr.read()
        yield server, port, dict(server_public_key=str(tmp_path / "server.key"), client_secret_key=str(robot_secret))
    finally:
        server.kill()
        server.communicate(timeout=30)


def test_an_authorized_robot_is_served_while_the_server_is_out_of_descriptors_past_the_grace(tmp_path):
    """A keys folder listing that failed with EMFILE reloaded 0 keys: the robot was told its key was refused and to add
    the .key file its server already held; kept, the keys ran out with the grace, and every connected robot was
    refused. An unchanged folder (its own stat needs no descriptor) keeps its last listing."""
    with server_out_of_descriptors(tmp_path, grace_s=0.5) as (server, port, keys), \
            PolicyClient("127.0.0.1", port, timeout_ms=5000, **keys) as robot:
        assert robot.call_endpoint("ping", requires_input=False) == {"status": "ok"}  # on the last descriptor
        server.stdin.write("\n")
        server.stdin.flush()
        assert server.stdout.readline().strip() == "read"  # the keys read again, out of descriptors, past the grace
        assert robot.call_endpoint("ping", requires_input=False) == {"status": "ok"}


def test_an_authorized_robot_is_admitted_while_a_changed_keys_folder_cannot_be_listed_for_want_of_descriptors(tmp_path):
    """A folder changed while the server is out of descriptors needs a listing that fails: the keys read last stay
    allowed, for the folder's grace time."""
    with server_out_of_descriptors(tmp_path, grace_s=60, folder_changed=True) as (_server, port, keys):
        assert ping(port, **keys) == {"status": "ok"}


def test_a_robot_refused_for_a_keys_folder_unreadable_past_its_grace_is_not_told_to_add_its_key(tmp_path):
    """Out of descriptors for longer than the grace, the server refuses even the keys it read last; the robot was
    told its key was refused and to add the .key file the server holds. It is told the server could not check it."""
    with server_out_of_descriptors(tmp_path, grace_s=0.2, folder_changed=True) as (_server, port, keys):
        with pytest.raises(HandshakeError) as refused:
            ping(port, **keys)
    assert "could not check this client's public key" in str(refused.value), refused.value
    assert "add its .key file" not in str(refused.value), refused.value
