"""PolicyServer.run() in a program whose standard output cannot be written (a pipe whose reader has gone: `app.py |
head -1`, a closed sys.stdout of a daemon that detached, none at all): its start-up lines are lost, and it serves."""

from __future__ import annotations

import io
import os
import sys
import threading

import pytest
from reference_peer import EchoPolicy

from gr00t_client import PolicyClient
from gr00t_server.server import PolicyServer


def broken_pipe_stdout() -> io.TextIOWrapper:
    """A text stream on a real pipe whose reading end is closed: writing it raises BrokenPipeError."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return open(write_end, "w")


def closed_stdout(tmp_path) -> io.TextIOWrapper:
    """A text stream on a real file, closed: writing it raises ValueError."""
    stream = open(tmp_path / "stdout.txt", "w")
    stream.close()
    return stream


def serve_and_ping(**server_options) -> tuple:
    """Run a server in a thread, ping it, stop it; (the ping's answer, what run() raised or None)."""
    server = PolicyServer(EchoPolicy(), host="127.0.0.1", port=0, **server_options).start()
    raised = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # noqa: BLE001 - what run() raised is the finding
            raised.append(exc)

    serving = threading.Thread(target=run, daemon=True)
    serving.start()
    try:
        with PolicyClient(port=server.port, timeout_ms=10000) as client:
            answered = client.ping()
    finally:
        server.close()
        serving.join(10)
    return answered, (raised[0] if raised else None)


@pytest.mark.parametrize("metrics_port", [None, 0], ids=["ready-line", "metrics-and-ready-lines"])
def test_run_serves_when_stdout_is_a_pipe_whose_reader_has_gone(monkeypatch, metrics_port):
    if metrics_port is not None:
        pytest.importorskip("prometheus_client")
    stdout = broken_pipe_stdout()
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        answered, raised = serve_and_ping(metrics_port=metrics_port)
    finally:
        monkeypatch.undo()
        _close_quietly(stdout)
    assert raised is None
    assert answered is True


def test_run_serves_when_stdout_is_closed(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stdout", closed_stdout(tmp_path))
    answered, raised = serve_and_ping()
    assert raised is None
    assert answered is True


def test_run_serves_when_there_is_no_stdout(monkeypatch):
    monkeypatch.setattr(sys, "stdout", None)
    answered, raised = serve_and_ping()
    assert raised is None
    assert answered is True


def test_run_leaves_a_broken_stdout_of_the_host_as_it_was(monkeypatch):
    """The host's stream stays the host's: run() neither replaces sys.stdout nor points its file descriptor elsewhere."""
    stdout = broken_pipe_stdout()
    descriptor_before = os.fstat(stdout.fileno())
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        serve_and_ping()
        stream_after = sys.stdout
    finally:
        monkeypatch.undo()
    descriptor_after = os.fstat(stdout.fileno())
    _close_quietly(stdout)
    assert stream_after is stdout
    assert (descriptor_after.st_dev, descriptor_after.st_ino) == (descriptor_before.st_dev, descriptor_before.st_ino)


def _close_quietly(stream: io.TextIOWrapper) -> None:
    """Close a broken stream (its flush of the lost line fails once more)."""
    try:
        stream.close()
    except OSError:
        pass


def test_a_start_up_line_stdout_cannot_encode_is_written_escaped(tmp_path, monkeypatch):
    """A line holding a character the host's stdout cannot encode (an ASCII terminal, a key folder named with an 'é')
    was lost whole with the other unwritable lines, and a launcher waiting for the ready line waited for ever."""
    from gr00t_client.stdout_guard import print_if_writable

    with open(tmp_path / "stdout.txt", "w", encoding="ascii") as stream:
        monkeypatch.setattr(sys, "stdout", stream)
        print_if_writable("Server is ready and listening on tcp://127.0.0.1:5555 (CURVE, keys in /srv/clés)")
    assert (tmp_path / "stdout.txt").read_text(encoding="ascii") == \
        "Server is ready and listening on tcp://127.0.0.1:5555 (CURVE, keys in /srv/cl\\xe9s)\n"
