"""A Ctrl-C (a real SIGINT) landing while PolicyClient opens or closes a socket and its handshake monitor: whatever it
interrupts, what was opened is closed and the next call connects afresh."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any, Iterator, List

import numpy as np
import pytest
import zmq
from rep_thread import RepThread

from gr00t_client import PolicyClient, codec

ACTION = [{"action.x": np.zeros((1, 4, 1), np.float32)}, {}]
OBSERVATION = {"state": {"t": np.zeros((1, 1), np.float32)}, "language": {"task": [["go"]]}}


def answer(frames: List[Any]) -> List[Any]:
    """A reference-style peer: get_server_info unknown; get_action answered after 0.3 s (long enough to interrupt)."""
    endpoint = codec.decode(frames[-1].bytes).get("endpoint")
    if endpoint == "get_action":
        time.sleep(0.3)
        return [codec.encode(ACTION)]
    if endpoint == "get_server_info":
        return [codec.encode({"error": "Unknown endpoint: get_server_info"})]
    return [codec.encode({})]


@pytest.fixture
def server() -> Iterator[RepThread]:
    with RepThread(answer) as peer:
        yield peer


class Touched(list):
    """The sockets a patched pyzmq method was called on, and whether the Ctrl-C was sent."""

    interrupted = False


@contextlib.contextmanager
def ctrl_c_after(method: str, socket_type: int) -> Iterator["Touched"]:
    """A real SIGINT, once, right after pyzmq's `method` returns on a socket of `socket_type` (what a Ctrl-C landing
    in pyzmq's signal check after that call does); yields the sockets `method` was called on meanwhile."""
    original = getattr(zmq.Socket, method)
    seen = Touched()

    def interrupted(self: zmq.Socket, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        seen.append(self)
        if not seen.interrupted and self.type == socket_type:
            seen.interrupted = True
            os.kill(os.getpid(), signal.SIGINT)  # raised here, on the way out
        return result

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    setattr(zmq.Socket, method, interrupted)
    try:
        yield seen
    finally:
        setattr(zmq.Socket, method, original)
        signal.signal(signal.SIGINT, previous)


def interrupted_mid_wait(client: PolicyClient) -> None:
    """get_action, interrupted (KeyboardInterrupt from SIGALRM) 0.1 s into its 0.3 s wait for the reply."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        client.get_action(OBSERVATION)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("method, socket_type", [
    ("disable_monitor", zmq.REQ),  # stopping the monitor
    ("close", zmq.PAIR),  # closing the monitor's socket, before the REQ socket itself
])
def test_a_second_ctrl_c_while_an_interrupted_call_closes_its_socket_leaves_the_next_call_working(
        server, method, socket_type):
    # Once left with the REQ socket and without its monitor, every later call failed on a bare AssertionError('').
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        client.get_action(OBSERVATION)
        interrupted_socket = client._socket
        with ctrl_c_after(method, socket_type) as touched, pytest.raises(KeyboardInterrupt):
            interrupted_mid_wait(client)  # the first Ctrl-C; the second lands in its cleanup
        assert touched.interrupted, "the second Ctrl-C was not sent"
        assert interrupted_socket.closed, "the interrupted call's REQ socket was left open"
        assert client.get_action(OBSERVATION)[0]["action.x"].shape == (1, 4, 1)


@pytest.mark.parametrize("method, socket_type", [
    ("monitor", zmq.REQ),  # monitoring started, its reader not yet made
    ("connect", zmq.PAIR),  # the monitor's reader connected
    ("connect", zmq.REQ),  # the REQ socket connected to the server
])
def test_a_ctrl_c_while_a_socket_is_opened_closes_the_socket_and_its_monitor(server, method, socket_type):
    # A socket left open without a reader for its monitor froze the process's shared context: every client of the
    # process, a new one too, stopped connecting, and descriptors leaked.
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        with ctrl_c_after(method, socket_type) as touched, pytest.raises(KeyboardInterrupt):
            client.get_action(OBSERVATION)
        assert touched.interrupted, "the Ctrl-C was not sent"
        left_open = [f"{sock.type!r}" for sock in touched if not sock.closed]
        assert not left_open, f"sockets the interrupted open made were left open: {left_open}"
        assert client.get_action(OBSERVATION)[0]["action.x"].shape == (1, 4, 1)
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as fresh:  # on the same shared context
        assert fresh.get_action(OBSERVATION)[0]["action.x"].shape == (1, 4, 1)
