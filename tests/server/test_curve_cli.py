"""`gr00t-server serve --curve-secret-key/--authorized-keys` as users start it: a subprocess, a real port, a replay dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from eval.dataset_factory import make_dataset
from gr00t_client import HandshakeError, PolicyClient
from gr00t_client.curve import key_fingerprint, load_public_key
from gr00t_server.cli import main
from gr00t_server.curve import generate_certificates

from serving import READY, free_port as _free_port, wait_ready


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("curve-cli") / "ds", lengths=(6,))


@pytest.fixture
def keys(tmp_path):
    assert main(["keygen", str(tmp_path / "server")]) == 0
    assert main(["keygen", str(tmp_path / "authorized"), "--name", "robot"]) == 0
    os.rename(tmp_path / "authorized" / "robot.key_secret", tmp_path / "robot.key_secret")  # the robot keeps its secret
    return tmp_path


def _serve(dataset: Path, port: int, *extra: str, env=None) -> subprocess.Popen:
    command = [sys.executable, "-m", "gr00t_server.cli", "serve", "--dataset-path", str(dataset), "--port", str(port), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or os.environ.copy())


def _ready_line(proc: subprocess.Popen, timeout_s: float = 60.0) -> str:
    return wait_ready(proc, timeout_s)[-1]


def test_serve_with_curve_prints_the_fingerprint_and_admits_only_authorized_clients(dataset, keys):
    port = _free_port()
    env = dict(os.environ, GR00T_CURVE_SECRET_KEY=str(keys / "server" / "server.key_secret"))  # flag from the environment
    proc = _serve(dataset, port, "--authorized-keys", str(keys / "authorized"), env=env)
    try:
        ready = _ready_line(proc)
        fingerprint = key_fingerprint(load_public_key(str(keys / "server" / "server.key")))
        assert ready.startswith(f"{READY}127.0.0.1:{port} (CURVE encryption on")
        assert fingerprint in ready
        server_key = str(keys / "server" / "server.key")
        with PolicyClient(port=port, timeout_ms=5000, server_public_key=server_key) as stranger:
            with pytest.raises(HandshakeError, match="refused"):
                stranger.get_modality_config()
        with PolicyClient(port=port, timeout_ms=5000, server_public_key=server_key,
                          client_secret_key=str(keys / "robot.key_secret")) as robot:
            assert robot.ping()
            _, info = robot.get_action({})
            assert info["current_step"] == 0
            robot.kill_server()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("flags, message", [
    (["--authorized-keys", "."], "--authorized-keys (or $GR00T_AUTHORIZED_KEYS) needs --curve-secret-key"),
    (["--curve-secret-key", "{keys}/server/server.key"], "holds only a public key; pass the secret certificate"),
    (["--curve-secret-key", "{keys}/server/server.key_secret", "--authorized-keys", "{keys}/nowhere"], "is not a directory"),
])
def test_bad_curve_flags_are_one_line_errors_before_anything_loads(dataset, keys, flags, message, capsys):
    flags = [flag.format(keys=keys) for flag in flags]
    assert main(["serve", "--dataset-path", str(dataset), "--port", str(_free_port()), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("flag, variable, expected", [
    ("--curve-secret-key", "GR00T_CURVE_SECRET_KEY", "--curve-secret-key (or $GR00T_CURVE_SECRET_KEY) is empty"),
    ("--authorized-keys", "GR00T_AUTHORIZED_KEYS", "--authorized-keys (or $GR00T_AUTHORIZED_KEYS) is empty"),
])
@pytest.mark.parametrize("given_as", ["flag", "variable"])
def test_an_empty_curve_flag_is_refused_before_the_model_loads(keys, monkeypatch, capsys, flag, variable, expected,
                                                                given_as):
    """`--curve-secret-key "$KEY"` with KEY unset loaded the model (minutes) before failing on a Python argument's
    name; an empty --authorized-keys admitted every *.key in the working directory."""
    monkeypatch.chdir(keys / "authorized")  # what Path("") would have read: robot.key
    monkeypatch.setenv("GR00T_CURVE_SECRET_KEY", str(keys / "server" / "server.key_secret"))
    if given_as == "variable":
        monkeypatch.setenv(variable, "")
    command = ["serve", "--model-path", str(keys / "no-checkpoint-here"), "--port", str(_free_port())]
    assert main(command + ([flag, ""] if given_as == "flag" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert expected + ": an unset variable?" in err and len(err.splitlines()) == 1
    assert "no-checkpoint-here" not in err  # refused before the checkpoint is looked for


def test_a_secret_key_variable_with_an_env_files_line_end_is_used_and_never_printed(tmp_path, monkeypatch, capsys):
    """`$(cat server.key_secret_z85)` of a CRLF file, or a docker --env-file line, keeps a '\\r' after the key: the
    error repeated the whole secret key on stderr."""
    public, secret = (key.decode() for key in zmq.curve_keypair())
    monkeypatch.setenv("GR00T_CURVE_SECRET_KEY", secret + "\r\n")
    main(["serve", "--dataset-path", str(tmp_path / "no-dataset-here"), "--port", str(_free_port())])
    printed = capsys.readouterr()
    assert f"Encryption: CURVE, server public key {public}" in printed.out
    assert secret not in printed.out + printed.err


def test_a_z85_secret_key_typed_as_the_flag_is_warned_about_and_the_variable_is_not(tmp_path, monkeypatch, caplog):
    """Every user of the machine reads a command line in ps for as long as the server runs."""
    _, secret = (key.decode() for key in zmq.curve_keypair())
    command = ["serve", "--dataset-path", str(tmp_path / "no-dataset-here"), "--port", str(_free_port())]
    with caplog.at_level("WARNING"):
        main([*command, f"--curve-secret-key={secret}"])  # the `=` form: a z85 key may start with a dash
    assert caplog.text.count("--curve-secret-key holds a z85 secret key, which other users of this machine can read in "
                             "ps while this runs; pass a .key_secret file instead, or the key in $GR00T_CURVE_SECRET_KEY") == 1
    assert secret not in caplog.text
    caplog.clear()
    monkeypatch.setenv("GR00T_CURVE_SECRET_KEY", secret)
    with caplog.at_level("WARNING"):
        main(command)
    assert "ps while this runs" not in caplog.text


def test_a_key_file_whose_name_looks_like_a_z85_key_is_not_warned_about(tmp_path, monkeypatch, caplog):
    """A mounted secret's file name of 40 z85 characters was taken for a key typed on the command line."""
    from gr00t_client.cli_flags import secret_on_command_line_warning

    monkeypatch.chdir(tmp_path)
    _, secret = generate_certificates(tmp_path / "keys", "server")
    named = "secrets/gr00t/curve-server-secret.key01x"
    assert len(named) == 40
    (tmp_path / named).parent.mkdir(parents=True)
    (tmp_path / named).write_bytes(Path(secret).read_bytes())
    assert secret_on_command_line_warning("--curve-secret-key", "GR00T_CURVE_SECRET_KEY", named) is None
    assert secret_on_command_line_warning("--curve-secret-key", "GR00T_CURVE_SECRET_KEY", "x" * 40) is not None


def test_a_secret_key_file_readable_by_others_is_warned_about_once(dataset, keys):
    """The file was read twice at start-up (the flag's check, then the server), and each read warned."""
    secret = keys / "server" / "server.key_secret"
    secret.chmod(0o644)
    port = _free_port()
    proc = _serve(dataset, port, "--curve-secret-key", str(secret))
    try:
        lines = wait_ready(proc)
        warnings = [line for line in lines if "holds a secret key and is readable by other users (mode 644)" in line]
        assert len(warnings) == 1 and str(secret) in warnings[0]
        with PolicyClient(port=port, timeout_ms=5000, server_public_key=str(keys / "server" / "server.key")) as client:
            assert client.ping()
            client.kill_server()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
