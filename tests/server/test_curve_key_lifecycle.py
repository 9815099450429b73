"""CURVE keys over a server's life: the folders keygen makes, a .key file of several keys, $GR00T_AUTHORIZED_KEYS
from a CRLF env file, and a robot whose key is removed while it is connected (real servers and clients on loopback)."""

import logging
import os
import re
import threading
import time
import shutil
import stat

import numpy as np
import pytest
from serving import running_server

from gr00t_client import BasePolicy, HandshakeError, PolicyClient, PolicyServerError
from gr00t_client.curve import key_fingerprint, load_public_key
from gr00t_server.cli import main
from gr00t_server.curve import CurveServerConfig, generate_certificates

OBSERVATION = {"video": {"image": np.zeros((1, 1, 8, 8, 3), np.uint8)},
               "state": {"x": np.zeros((1, 1, 1), np.float32)},
               "language": {"annotation.human.action.task_description": [["t"]]}}


class OnesPolicy(BasePolicy):
    """Answers every observation with the same small action."""

    def __init__(self) -> None:
        super().__init__(strict=False)

    def _get_action(self, observation, options=None):
        return {"a": np.ones((1, 4, 2), np.float32)}, {}

    def reset(self, options=None):
        return {}


def robots_and_server(tmp_path, *names):
    """(server secret file, authorized-keys folder holding each robot's NAME.key, {name: PolicyClient key arguments})."""
    _, server_secret = generate_certificates(tmp_path / "server", "server")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    keys = {}
    for name in names:
        public, secret = generate_certificates(tmp_path / "robots", name)
        shutil.copy(public, allowed / f"{name}.key")
        keys[name] = dict(server_public_key=str(tmp_path / "server" / "server.key"), client_secret_key=str(secret))
    return server_secret, allowed, keys


# --- keygen's folders ------------------------------------------------------------------------------


def test_keygen_makes_missing_key_folders_0700_whatever_the_umask(tmp_path, capsys):
    """Under umask 000 they were 0777: any local user could swap a key pair of their own in."""
    previous = os.umask(0)
    try:
        assert main(["keygen", str(tmp_path / "new" / "keys"), "--name", "robot-07"]) == 0
    finally:
        os.umask(previous)
    for folder in (tmp_path / "new", tmp_path / "new" / "keys"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
    assert stat.S_IMODE(os.stat(tmp_path / "new" / "keys" / "robot-07.key_secret").st_mode) == 0o600


def test_keygen_leaves_an_existing_folder_as_it_is_and_warns_when_others_may_write_to_it(tmp_path, caplog, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with caplog.at_level(logging.WARNING, logger="gr00t_server.curve"):
        assert main(["keygen", str(shared), "--name", "robot-07"]) == 0
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o777
    assert any(str(shared) in m and "writable by all users (mode 777)" in m for m in caplog.messages), caplog.messages


def test_keygen_into_an_existing_private_folder_warns_of_nothing(tmp_path, caplog, capsys):
    private = tmp_path / "private"
    private.mkdir(mode=0o750)
    with caplog.at_level(logging.WARNING, logger="gr00t_server.curve"):
        assert main(["keygen", str(private), "--name", "robot-07"]) == 0
    assert not caplog.messages


# --- authorized keys -------------------------------------------------------------------------------


def test_a_key_file_holding_several_keys_is_named_with_how_many_and_one_key_per_file_is_said(tmp_path, caplog):
    """`cat a.key b.key > fleet.key` admitted only robot B, and robot A was refused as 'not in' the folder silently."""
    server_secret, allowed, keys = robots_and_server(tmp_path, "robot-a", "robot-b")
    fleet = allowed / "fleet.key"
    fleet.write_text((allowed / "robot-a.key").read_text() + (allowed / "robot-b.key").read_text())
    os.remove(allowed / "robot-a.key")
    os.remove(allowed / "robot-b.key")
    with caplog.at_level(logging.WARNING, logger="gr00t_server.curve"):
        with running_server(OnesPolicy(), curve_secret_key=str(server_secret), authorized_keys=str(allowed)):
            pass
    admitted = key_fingerprint(load_public_key(str(tmp_path / "robots" / "robot-b.key")))
    assert any(f"{fleet} holds 2 public keys, and only one of them ({admitted}) is admitted" in m
               and "a file of its own" in m for m in caplog.messages), caplog.messages


def test_authorized_keys_with_a_crlf_line_end_or_quotes_are_read_as_the_folder(tmp_path):
    """A CRLF env file's '\\r' was kept in $GR00T_AUTHORIZED_KEYS (but stripped from the secret key's)."""
    server_secret, allowed, _ = robots_and_server(tmp_path)
    for value in (f"{allowed}\r", f' "{allowed}"\r\n', f"'{allowed}'"):
        assert CurveServerConfig.load(f"{server_secret}\r", value).authorized_keys == allowed


def test_a_missing_authorized_keys_folder_is_named_with_its_control_characters_shown(tmp_path, monkeypatch, capsys):
    """The raw carriage return made a terminal draw the line's end over the folder's name."""
    server_secret, _, _ = robots_and_server(tmp_path)
    monkeypatch.setenv("GR00T_CURVE_SECRET_KEY", f"{server_secret}\r")
    monkeypatch.setenv("GR00T_AUTHORIZED_KEYS", f"{tmp_path}/cli\rents\r")
    assert main(["serve", "--dataset-path", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert f"--authorized-keys: '{tmp_path}/cli\\rents' is not a directory of client .key files" in err
    assert "\r" not in err


def first_refusal(client, within_s=5.0):
    """The PolicyServerError of the first of `client`'s requests refused, sent one after another for up to
    `within_s` (the server reads the folder again every second)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            client.get_action(OBSERVATION)
        except PolicyServerError as exc:
            return exc
        time.sleep(0.05)
    raise AssertionError(f"no request was refused within {within_s} s")


def test_a_robot_whose_key_file_is_removed_is_refused_at_its_next_request_on_its_open_connection(tmp_path, caplog):
    """Only the handshake checked keys: a revoked robot was served for as long as its connection lasted."""
    server_secret, allowed, keys = robots_and_server(tmp_path, "robot-07", "robot-08")
    fingerprint = key_fingerprint(load_public_key(str(allowed / "robot-07.key")))
    with running_server(OnesPolicy(), curve_secret_key=str(server_secret), authorized_keys=str(allowed)) as server, \
            PolicyClient("127.0.0.1", server.port, timeout_ms=5000, **keys["robot-07"]) as revoked, \
            PolicyClient("127.0.0.1", server.port, timeout_ms=5000, **keys["robot-08"]) as kept:
        revoked.get_action(OBSERVATION)
        kept.get_action(OBSERVATION)
        os.remove(allowed / "robot-07.key")
        with caplog.at_level(logging.WARNING, logger="gr00t_server.curve"):
            refusal = first_refusal(revoked)  # within about a second: the folder is read again every second
        assert re.search(re.escape(f"this client's CURVE key {fingerprint} was removed from the server's authorized "
                                   "keys"), str(refusal)), refusal
        kept.get_action(OBSERVATION)  # the robots still listed are served as before
        assert any(fingerprint in m and f"removed from {allowed}" in m for m in caplog.messages), caplog.messages
        with pytest.raises(HandshakeError, match="refused this client's public key"):  # and at its next handshake
            with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, **keys["robot-07"]) as again:
                again.get_action(OBSERVATION)


def test_a_robot_whose_key_file_is_put_back_is_served_again_on_its_open_connection(tmp_path):
    server_secret, allowed, keys = robots_and_server(tmp_path, "robot-07")
    key_file = allowed / "robot-07.key"
    saved = key_file.read_text()
    with running_server(OnesPolicy(), curve_secret_key=str(server_secret), authorized_keys=str(allowed)) as server, \
            PolicyClient("127.0.0.1", server.port, timeout_ms=5000, **keys["robot-07"]) as client:
        client.get_action(OBSERVATION)  # connected
        os.remove(key_file)
        assert "was removed from the server's authorized keys" in str(first_refusal(client))
        key_file.write_text(saved)  # a refusal reads the robot's own key file again first
        action, _ = client.get_action(OBSERVATION)  # served again at once, not after the watcher's next read
        assert action["a"].shape == (1, 4, 2)


def test_a_folder_unreadable_for_a_moment_refuses_new_connections_but_not_the_robots_connected(tmp_path):
    """A folder swapped non-atomically (mv allowed allowed.old; mv new allowed) or a blipping mount read as holding
    no keys: every connected robot's next request was refused as 'removed'. The open connections keep the keys of the
    last readable read; new handshakes are refused while it cannot be read, as before."""
    server_secret, allowed, keys = robots_and_server(tmp_path, "robot-07")
    with running_server(OnesPolicy(), curve_secret_key=str(server_secret), authorized_keys=str(allowed)) as server, \
            PolicyClient("127.0.0.1", server.port, timeout_ms=5000, **keys["robot-07"]) as client:
        client.get_action(OBSERVATION)
        moved = tmp_path / "allowed.old"
        allowed.rename(moved)
        try:
            deadline = time.monotonic() + 2.5  # past the watcher's next reads of the missing folder
            while time.monotonic() < deadline:
                action, _ = client.get_action(OBSERVATION)
                assert action["a"].shape == (1, 4, 2)
                time.sleep(0.05)
        finally:
            moved.rename(allowed)


def test_a_rollout_stopped_by_a_revoked_key_says_the_key_was_removed_not_only_that_the_server_restarted(tmp_path):
    """gr00t-eval's stop reason explained every mid-run refusal as 'a server restarted with another CURVE key or API
    token': a key revoked on a running server sent the operator after a restart that never happened."""
    from gr00t_eval.rollout.liveness import ServerWatch

    server_secret, allowed, keys = robots_and_server(tmp_path, "robot-07")
    with running_server(OnesPolicy(), curve_secret_key=str(server_secret), authorized_keys=str(allowed)) as server, \
            PolicyClient("127.0.0.1", server.port, timeout_ms=5000, **keys["robot-07"]) as client:
        client.get_action(OBSERVATION)
        os.remove(allowed / "robot-07.key")
        reason = ServerWatch(client).unreachable_reason(first_refusal(client))
    assert "now refuses this client" in reason and "CURVE key was removed from the server's authorized keys" in reason


def test_a_folder_gone_for_longer_than_the_grace_refuses_the_robots_connected_too(tmp_path, monkeypatch):
    """The open connections kept the last keys for as long as the folder could not be read: a folder deleted, or gone
    with its mount, never cut off a robot already connected (79 of 79 requests served over 8 s)."""
    from gr00t_server import curve

    monkeypatch.setattr(curve, "UNREADABLE_GRACE_S", 0.5)
    server_secret, allowed, keys = robots_and_server(tmp_path, "robot-07")
    with running_server(OnesPolicy(), curve_secret_key=str(server_secret), authorized_keys=str(allowed)) as server, \
            PolicyClient("127.0.0.1", server.port, timeout_ms=5000, **keys["robot-07"]) as client:
        client.get_action(OBSERVATION)
        shutil.rmtree(allowed)
        refusal = first_refusal(client)
    assert "the server cannot read its authorized keys folder" in str(refusal), refusal


def test_a_revoked_robots_requests_do_not_read_the_folder_on_the_socket_thread(tmp_path, monkeypatch):
    """Each refusal read the whole folder again (10,000 key files: 80 ms a read, every 0.1 s of a revoked robot's
    flood, while every other robot waited): a refusal reads the robot's own former key file alone."""
    from gr00t_server import curve

    server_secret, allowed, keys = robots_and_server(tmp_path, "robot-07", "robot-08")
    with running_server(OnesPolicy(), curve_secret_key=str(server_secret), authorized_keys=str(allowed)) as server, \
            PolicyClient("127.0.0.1", server.port, timeout_ms=5000, **keys["robot-07"]) as revoked:
        revoked.get_action(OBSERVATION)
        os.remove(allowed / "robot-07.key")
        first_refusal(revoked)
        listings = []
        real_iterdir = curve.Path.iterdir

        def counted(self):
            if threading.current_thread().name != "gr00t-authorized-keys":  # not the watcher's own reads
                listings.append(self)
            return real_iterdir(self)

        monkeypatch.setattr(curve.Path, "iterdir", counted)
        for _ in range(5):
            with pytest.raises(PolicyServerError, match="was removed"):
                revoked.get_action(OBSERVATION)
            time.sleep(0.12)  # past the 0.1 s the socket thread's re-reads were spaced by
    assert listings == []


def test_a_folder_gone_and_re_created_empty_refuses_the_robots_connected(tmp_path):
    """An unreadable folder's contents read as (), as an empty folder's: one deleted and re-created empty (or a bare
    mount point after a failed mount) was never read again, and the connected robots were served for ever."""
    server_secret, allowed, keys = robots_and_server(tmp_path, "robot-07")
    with running_server(OnesPolicy(), curve_secret_key=str(server_secret), authorized_keys=str(allowed)) as server, \
            PolicyClient("127.0.0.1", server.port, timeout_ms=5000, **keys["robot-07"]) as client:
        client.get_action(OBSERVATION)
        shutil.rmtree(allowed)
        time.sleep(1.5)  # the watcher reads the missing folder
        allowed.mkdir()
        refusal = first_refusal(client)
    assert "was removed from the server's authorized keys" in str(refusal), refusal


@pytest.mark.parametrize("server_says, why", [
    ("Unauthorized: the server cannot read its authorized keys folder (for over 5 s), so ...",
     "the server cannot read its authorized keys folder"),
    ("Unauthorized: Invalid API token", "the server requires another API token"),
    ("Unauthorized: this client's CURVE key SHA256:x was removed from the server's authorized keys; ...",
     "this client's CURVE key was removed"),
])
def test_rollouts_stop_reason_names_the_cause_the_servers_words_give(server_says, why):
    from gr00t_eval.rollout.liveness import _refusal

    reason = _refusal("tcp://127.0.0.1:5555", PolicyServerError(server_says, "get_action"))
    assert reason.endswith(why) or why in reason.split("): ", 1)[1], reason
    assert "removed" not in reason.split("): ", 1)[1] or "removed" in why


def test_an_entry_that_cannot_be_examined_does_not_stop_the_folder_being_read(tmp_path):
    """Path.is_dir raised for a link whose target name is too long (or, for a non-root server, a link into a folder it
    may not enter): every read of the folder failed, a robot whose key was removed was served for ever, and every
    handshake was refused. Such an entry is no folder: the keys beside it are read as ever."""
    server_secret, allowed, keys = robots_and_server(tmp_path, "robot-07", "robot-08")
    os.symlink("x" * 300, allowed / "notes")  # not a .key file; its stat fails with ENAMETOOLONG
    with running_server(OnesPolicy(), curve_secret_key=str(server_secret), authorized_keys=str(allowed)) as server, \
            PolicyClient("127.0.0.1", server.port, timeout_ms=5000, **keys["robot-07"]) as revoked:
        revoked.get_action(OBSERVATION)
        os.remove(allowed / "robot-07.key")
        assert "was removed from the server's authorized keys" in str(first_refusal(revoked))
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, **keys["robot-08"]) as listed:
            listed.get_action(OBSERVATION)  # admitted at its handshake


def test_an_unreadable_folder_is_not_logged_as_holding_no_keys_and_its_refusals_name_it(tmp_path, caplog):
    from gr00t_server.curve import AuthorizedKeys

    _, allowed, keys = robots_and_server(tmp_path, "robot-07")
    authorized = AuthorizedKeys(allowed)
    client_key = load_public_key(str(allowed / "robot-07.key"))
    shutil.rmtree(allowed)
    with caplog.at_level(logging.WARNING, logger="gr00t_server.curve"):
        assert authorized.callback("*", client_key) is False
    assert not any("holds no" in message for message in caplog.messages), caplog.messages
    assert any("cannot be read" in message and str(allowed) in message for message in caplog.messages), caplog.messages


def test_rollouts_stop_reason_for_a_refused_handshake_names_curve_causes_only():
    from gr00t_client import HandshakeError
    from gr00t_eval.rollout.liveness import _refusal

    zap = HandshakeError("handshake with the policy server at tcp://x:1 failed: the server refused this client's public "
                         "key (SHA256:x) (ZAP status 400) - add its .key file to the server's authorized-keys directory")
    reason = _refusal("tcp://x:1", zap)
    assert "does not admit this client's CURVE key" in reason and "API token" not in reason, reason


def test_rollouts_stop_reason_for_a_handshake_the_server_could_not_check_names_its_keys_folder():
    from gr00t_client import HandshakeError
    from gr00t_eval.rollout.liveness import _refusal

    zap = HandshakeError("handshake with the policy server at tcp://x:1 failed: the server could not check this "
                         "client's public key against its authorized keys (ZAP status 500): ...")
    reason = _refusal("tcp://x:1", zap)
    assert reason.endswith("the server cannot read its authorized keys folder (out of open files, a mount gone?); "
                           "resume once it can"), reason


_NOT_ENTERED = """
import os, sys
import zmq.auth
from gr00t_server.curve import AuthorizedKeys
folder = sys.argv[1]
public, _ = zmq.auth.load_certificate(os.path.join(folder, "robot-07.key"))
keys = AuthorizedKeys(folder)
assert public in keys.keys
os.chmod(folder, 0o644)  # listed, not entered
try:
    keys.reload_if_changed()
    print("unreadable" if keys._unreadable else "read as empty", keys.removed_key_problem(public.decode()))
finally:
    os.chmod(folder, 0o755)
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="drops root's DAC capabilities with setpriv to check as an ordinary server would")
def test_a_folder_that_can_be_listed_but_not_entered_is_unreadable_not_empty(tmp_path):
    """Without its x bit (chmod -R 644 keys/) every key file's stat failed and read as removed: the folder counted as
    empty, and every connected robot was refused at once as 'removed', with no grace and no word of the folder."""
    import subprocess
    import sys

    import zmq.auth

    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
    if subprocess.run([*drop, "true"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("setpriv cannot change the capability bounding set here (a container without CAP_SETPCAP)")
    os.chmod(tmp_path, 0o755)
    folder = tmp_path / "keys"
    folder.mkdir()
    zmq.auth.create_certificates(str(tmp_path), "robot-07")
    os.replace(tmp_path / "robot-07.key", folder / "robot-07.key")
    os.chmod(folder / "robot-07.key", 0o644)
    os.chown(folder, 65534, 65534)  # not root's: only the x bit lets a server without DAC override in
    done = subprocess.run([*drop, sys.executable, "-c", _NOT_ENTERED, str(folder)], capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "unreadable None", done.stdout  # in the grace: the connected robot is served
