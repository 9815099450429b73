"""CURVE keys, the authorized-keys check and the CLIs' stop signals at edges no test held (mutants of
gr00t_client/curve.py, gr00t_server/curve.py and gr00t_client/cli_signals.py that no test noticed): a malformed or
mixed certificate is refused, a renamed or replaced authorized key stops being allowed, a key name cannot leave its
folder, and a stop signal held during a block acts (the first one, as it would have) once the block ends."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import zmq
import zmq.auth
from reference_peer import EchoPolicy
from serving import running_server
from test_curve_client import raw_server

from gr00t_client import HandshakeError, PolicyClient
from gr00t_client.cli_signals import ProgramStopSignals, raise_interrupt, sigterm_as_interrupt, stop_signals_held
from gr00t_client.curve import load_key_pair, load_public_key
from gr00t_server.curve import AuthorizedKeys, CurveServerConfig, generate_certificates


# --- client keys ----------------------------------------------------------------------------------


def _certificate(path, public: bytes, secret=None) -> str:
    text = f'metadata\ncurve\n    public-key = "{public.decode()}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode()}"\n'
    path.write_text(text)
    os.chmod(path, 0o600)
    return str(path)


def test_a_z85_key_with_characters_appended_is_refused():
    # mutant: len(text) != 40 -> len(text) < 40 (a 45-character paste was taken as a key)
    public, secret = zmq.curve_keypair()
    with pytest.raises(ValueError, match="neither an existing certificate file nor a 40-character z85 key"):
        load_public_key(public.decode() + "00000")
    with pytest.raises(ValueError, match="neither an existing certificate file nor a 40-character z85 secret key"):
        load_key_pair(secret.decode() + "00000")


def test_a_certificate_whose_public_key_is_malformed_is_refused(tmp_path):
    # mutant: `not public or not _is_z85_key(public)` -> `not public` (a short public-key was used as the key)
    path = _certificate(tmp_path / "server.key", b"rq:rM>}U?@Lns47E1%kR")
    with pytest.raises(ValueError, match="holds no valid 40-character z85 public-key"):
        load_public_key(path)


def test_a_secret_certificate_whose_secret_key_is_malformed_is_refused_by_name(tmp_path):
    # mutant: the malformed secret-key check dropped (curve_public then failed with pyzmq's own words)
    public, _ = zmq.curve_keypair()
    path = _certificate(tmp_path / "robot.key_secret", public, b"tooshort")
    with pytest.raises(ValueError, match="holds a malformed secret-key"):
        load_key_pair(path)


def test_a_group_readable_secret_certificate_is_warned_of(tmp_path, caplog):
    # mutant: mode & 0o077 -> mode & 0o007 (group-readable secrets went unmentioned)
    _, secret_path = generate_certificates(tmp_path, "robot")
    os.chmod(secret_path, 0o640)
    with caplog.at_level(logging.WARNING, logger="gr00t_client.curve"):
        load_key_pair(str(secret_path))
    assert "readable by other users (mode 640)" in caplog.text


# --- handshakes -----------------------------------------------------------------------------------


def test_an_explicit_refusal_fails_long_before_the_timeout(tmp_path):
    # mutant: _is_definitive's `dropped == 0 or` -> `dropped != 0 or` (a refusal was raised only at the timeout,
    # which the tests with timeout 3 s and a bound of 3 s did not tell apart). A ZAP refusal, not a plaintext client
    # against a CURVE server: that one is seen at once only most of the time (libzmq's event race)
    public, secret = zmq.curve_keypair()
    _, client_secret = zmq.curve_keypair()
    with raw_server(secret, public, authorized_dir=tmp_path) as port:  # nobody is authorized
        with PolicyClient("127.0.0.1", port, timeout_ms=8000, server_public_key=public.decode(),
                          client_secret_key=client_secret.decode()) as client:
            started = time.monotonic()
            with pytest.raises(HandshakeError, match="the server refused this client's public key"):
                client.call_endpoint("ping", requires_input=False)
    assert time.monotonic() - started < 4.0


def test_a_first_connection_is_not_counted_as_a_server_change():
    # mutant: reconnected()'s `connections > 1` -> `>= 1` (every new client forgot the facts it had just learned
    # and ran its on_new_server check as after a restart)
    with running_server(EchoPolicy()) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            assert client.ping() and client.ping()
            assert client.call_endpoint("ping", requires_input=False)
            assert client.server_changes == 0


# --- server keys and the authorized-keys folder ---------------------------------------------------


@pytest.mark.parametrize("name", ["sub/robot", ".hidden"])
def test_a_key_name_that_is_not_a_plain_file_name_is_refused_and_nothing_is_written(tmp_path, name):
    # mutants: `os.sep in name` or `name.startswith('.')` dropped from generate_certificates's check
    keys = tmp_path / "keys"
    with pytest.raises(ValueError, match="key name must be a plain file name"):
        generate_certificates(keys, name)
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_keygen_under_a_strict_umask_still_writes_a_0644_public_key(tmp_path):
    # mutant: os.fchmod(fd, mode) dropped (a umask of 077 made the public key unreadable to the peers' accounts)
    before = os.umask(0o077)
    try:
        public_path, secret_path = generate_certificates(tmp_path, "server")
    finally:
        os.umask(before)
    assert stat.S_IMODE(os.stat(public_path).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(secret_path).st_mode) == 0o600


def test_a_regular_file_given_as_the_authorized_keys_directory_is_refused(tmp_path):
    # mutant: directory.is_dir() -> directory.exists()
    _, secret_path = generate_certificates(tmp_path, "server")
    (tmp_path / "clients.txt").write_text("robot\n")
    with pytest.raises(NotADirectoryError, match="is not a directory of client .key files"):
        CurveServerConfig.load(secret_path, tmp_path / "clients.txt")


def _authorized_with_robot(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    robot_public, _ = generate_certificates(tmp_path / "robots", "robot")
    shutil.copy(robot_public, allowed / "robot.key")
    robot = zmq.auth.load_certificate(str(robot_public))[0]
    authorized = AuthorizedKeys(allowed)
    assert authorized.callback("*", robot) is True
    return allowed, authorized, robot


def test_a_key_file_renamed_out_of_the_key_suffix_is_no_longer_allowed(tmp_path):
    # mutant: files not named NAME.key read as certificates too (renaming robot.key to disable it kept it allowed)
    allowed, authorized, robot = _authorized_with_robot(tmp_path)
    os.rename(allowed / "robot.key", allowed / "robot.key.disabled")
    assert authorized.callback("*", robot) is False


def test_a_key_file_replaced_in_place_with_another_key_of_the_same_size_is_reread(tmp_path):
    # mutant: the signature left out st_mtime_ns (a replaced key of the same size kept the old key allowed)
    allowed, authorized, robot = _authorized_with_robot(tmp_path)
    before = os.stat(allowed / "robot.key")
    other_public, _ = generate_certificates(tmp_path / "robots", "other")
    shutil.copy(other_public, allowed / "robot.key")
    later = before.st_mtime_ns + 10**9
    os.utime(allowed / "robot.key", ns=(later, later))  # not left to the file system's timestamp granularity
    assert os.stat(allowed / "robot.key").st_size == before.st_size
    assert authorized.callback("*", robot) is False
    assert authorized.callback("*", zmq.auth.load_certificate(str(other_public))[0]) is True


def test_a_key_file_replaced_with_one_of_another_size_but_the_same_mtime_is_reread(tmp_path):
    # mutant: the signature left out st_size (cp -p / rsync -t of another key keeps a timestamp)
    allowed, authorized, robot = _authorized_with_robot(tmp_path)
    before = os.stat(allowed / "robot.key")
    other, _ = zmq.curve_keypair()
    _certificate(allowed / "robot.key", other)  # no banner: another size
    os.utime(allowed / "robot.key", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(allowed / "robot.key").st_size != before.st_size
    assert authorized.callback("*", robot) is False
    assert authorized.callback("*", other) is True


def test_a_deleted_authorized_keys_directory_refuses_every_client(tmp_path):
    # mutant: an unreadable directory kept the last signature, so the keys read before stayed allowed
    allowed, authorized, robot = _authorized_with_robot(tmp_path)
    shutil.rmtree(allowed)
    assert authorized.callback("*", robot) is False


# --- stop signals ---------------------------------------------------------------------------------


@pytest.fixture
def handlers_kept():
    """Put SIGINT, SIGTERM and SIGHUP back as they were after the test."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    for _ in range(1000):  # Python runs a handler between bytecodes: give it some
        pass


def test_sighup_left_ignored_by_nohup_stays_ignored(handlers_kept):
    # mutant: SIGHUP taken whatever its handler (a nohup'd run ended when its terminal closed)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with sigterm_as_interrupt():
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is raise_interrupt


def test_sigterm_as_interrupt_puts_the_previous_handler_back(handlers_kept):
    # mutant: signals_handled_by's restore dropped
    def mine(signum, frame):
        pass

    signal.signal(signal.SIGTERM, mine)
    with sigterm_as_interrupt():
        pass
    assert signal.getsignal(signal.SIGTERM) is mine


def test_sigterm_as_interrupt_off_the_main_thread_runs_the_block_with_handlers_unchanged():
    # mutant: the ValueError of signal.signal off the main thread not caught
    ran, errors = [], []

    def block():
        try:
            with sigterm_as_interrupt():
                ran.append(True)
            ProgramStopSignals().finish(ignore_from_now_on=True)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=block)
    thread.start()
    thread.join(5)
    assert ran == [True] and errors == []


def test_a_hangup_inside_a_held_block_nested_in_sigterm_as_interrupt_waits_for_its_end(handlers_kept):
    # mutant: interrupting_signals() leaves out SIGHUP when it is already raise_interrupt (so it was not held)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    finished = False
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            with stop_signals_held():
                _deliver(signal.SIGHUP)
                finished = True
    assert finished


def test_ctrl_c_inside_a_held_block_is_raised_at_its_end(handlers_kept):
    # mutants: SIGINT not held, or the held signal's Python handler not called at the end
    signal.signal(signal.SIGINT, signal.default_int_handler)
    finished = False
    with pytest.raises(KeyboardInterrupt):
        with stop_signals_held():
            _deliver(signal.SIGINT)
            finished = True
    assert finished


def test_of_two_signals_held_the_first_acts(handlers_kept):
    # mutant: held[0] -> held[-1]
    called = []
    signal.signal(signal.SIGINT, lambda signum, frame: called.append("SIGINT's handler"))
    signal.signal(signal.SIGTERM, lambda signum, frame: called.append("SIGTERM's handler"))
    with stop_signals_held():
        _deliver(signal.SIGTERM)
        _deliver(signal.SIGINT)
    assert called == ["SIGTERM's handler"]


HELD_CHILD = textwrap.dedent("""
    import os, signal, sys
    from gr00t_client.cli_signals import stop_signals_held
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with stop_signals_held():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
        print("block finished", flush=True)
    print("after the block", flush=True)
""")


def test_a_default_sigterm_held_during_a_block_ends_the_process_at_its_end():
    # mutant: the os.kill of a signal whose action was the default dropped (the SIGTERM was swallowed)
    child = subprocess.run([sys.executable, "-c", HELD_CHILD], capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGTERM, child.stderr
    assert child.stdout == "block finished\n"



# A program's handlers (as gr00t-eval's main), a held block, then the handlers left: their qualified names.
HELD_BLOCK_CHILD = textwrap.dedent("""
    import signal
    from gr00t_client.cli_signals import ProgramStopSignals, stop_signals_held
    program = ProgramStopSignals()
    try:
        with stop_signals_held():
            pass
    except KeyboardInterrupt:
        print("stopped", flush=True)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        print(signum.name, getattr(signal.getsignal(signum), "__qualname__", signal.getsignal(signum)), flush=True)
""")


@pytest.mark.parametrize("when, text, signum", [
    ("as hold took SIGINT", "hold", signal.SIGTERM),
    ("as SIGINT's handler was put back", "default_int_handler", signal.SIGINT),
], ids=["install", "restore"])
def test_a_stop_while_a_held_block_swaps_its_handlers_acts_and_leaves_none_of_them_behind(when, text, signum):
    """A stop between two of signals_handled_by's signal.signal calls raised out of the loop half-way: a dead `hold`
    stayed installed, and that signal was swallowed for the rest of the process."""
    from stop_signals import stop_at_call

    child = subprocess.run([sys.executable, "-c", stop_at_call("signal:signal", text, signum) + HELD_BLOCK_CHILD],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    handlers = "SIGINT default_int_handler\nSIGTERM raise_interrupt\nSIGHUP raise_interrupt\n"
    assert child.stdout == "stopped\n" + handlers, when


def test_an_inner_held_block_whose_exit_a_stop_cut_short_puts_back_nothing_when_it_is_collected():
    """A burst of stops can raise in contextlib's exit of an inner block before its generator resumes: its finally then
    ran at garbage collection, after the outer block had restored the handlers, and put back the outer block's dead
    `hold` (later SIGTERM and SIGHUP swallowed)."""
    import gc

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    inner = sigterm_as_interrupt()
    with stop_signals_held():
        inner.__enter__()  # its exit never runs: as if a stop was raised between the block's end and its finally
    del inner
    gc.collect()
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_nested_blocks_of_one_handler_each_put_back_their_own():
    """Blocks were found by ==: the inner of two sigterm_as_interrupt blocks took the outer's place, and the outer's
    exit raised ValueError (every Ray run's shard loop nests them)."""
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_as_interrupt():
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is raise_interrupt
        assert signal.getsignal(signal.SIGTERM) is raise_interrupt
    assert signal.getsignal(signal.SIGTERM) is before
