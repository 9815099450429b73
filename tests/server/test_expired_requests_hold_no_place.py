"""A request whose client's deadline has passed before it started is answered 'not run' as soon as the server looks
at it, and holds nothing meanwhile: no row of a batch (its live batch mates share one call) and no place in the
queue's caps (a live newcomer is taken, not refused "server busy"). Real servers on loopback, real ZeroMQ sockets."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import List

import numpy as np
import zmq

from gr00t_client import BasePolicy, codec
from gr00t_client.client_errors import NOT_RUN_FOR_DEADLINE
from gr00t_server.cli import build_parser
from gr00t_server.server import ServerLimits
from serving import running_server

ROOT = Path(__file__).resolve().parents[2]
GATE = 0.0  # the tag of the request that holds the worker until released


class Gated(BasePolicy):
    """Echoes each row's tag; a call whose first tag is GATE waits for `release`. `calls` lists each other call's tags."""

    supports_batching = True

    def __init__(self) -> None:
        super().__init__(strict=False)
        self.calls: List[List[float]] = []
        self.running, self.release = threading.Event(), threading.Event()

    def _get_action(self, observation, options=None):
        joints = observation["state"]["joints"]
        if float(joints[0, 0, 0]) == GATE:
            self.running.set()
            self.release.wait(10)
        else:
            self.calls.append(sorted(float(v) for v in joints[:, 0, 0]))
        return {"joints": np.repeat(joints, 4, axis=1)}, {}

    def reset(self, options=None):
        return {}


def request(tag: float, timeout_ms=None, floats: int = 7) -> bytes:
    envelope = {"endpoint": "get_action",
                "data": {"observation": {"state": {"joints": np.full((1, 1, floats), tag, np.float32)}}}}
    if timeout_ms is not None:
        envelope["timeout_ms"] = timeout_ms
    return codec.encode(envelope)


class Peers:
    """DEALER sockets, one connection each, to `port`; closed on exit."""

    def __init__(self, port: int) -> None:
        self.port, self.context, self.sockets = port, zmq.Context(), []

    def send(self, payload: bytes) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{self.port}")
        self.sockets.append(sock)
        sock.send_multipart([b"", payload])
        return sock

    def __enter__(self) -> "Peers":
        return self

    def __exit__(self, *exc) -> None:
        for sock in self.sockets:
            sock.close()
        self.context.term()


def reply_of(sock: zmq.Socket, timeout_ms: int = 5000):
    assert sock.poll(timeout_ms), f"no reply within {timeout_ms} ms"
    return codec.decode(sock.recv_multipart()[-1])


def error_of(reply) -> str:
    return str(reply["error"]) if isinstance(reply, dict) and "error" in reply else ""


def test_an_expired_gathered_request_takes_no_row_of_a_batch():
    policy = Gated()
    with running_server(policy, max_batch_size=2, inline_below_ms=0) as server, Peers(server.port) as peers:
        gate = peers.send(request(GATE))
        assert policy.running.wait(5)
        dead = peers.send(request(99.0, timeout_ms=1))
        time.sleep(0.05)  # its deadline has passed, the worker still busy
        first = peers.send(request(1.0))
        time.sleep(0.01)
        second = peers.send(request(2.0))
        time.sleep(0.2)
        policy.release.set()
        for sock in (gate, first, second):
            assert not error_of(reply_of(sock))
        refusal = error_of(reply_of(dead))
    assert NOT_RUN_FOR_DEADLINE in refusal, f"expected the expired request answered 'not run', got {refusal!r}"
    assert policy.calls == [[1.0, 2.0]], f"expected the two live requests in one call, got calls {policy.calls}"


def test_expired_queued_requests_make_room_for_a_live_one_at_the_request_cap():
    policy = Gated()
    limits = ServerLimits(max_queued_requests=4)
    with running_server(policy, inline_below_ms=0, limits=limits) as server, Peers(server.port) as peers:
        gate = peers.send(request(GATE))
        assert policy.running.wait(5)
        dead = [peers.send(request(tag, timeout_ms=1)) for tag in (1.0, 2.0, 3.0)]  # one request per connection
        time.sleep(0.1)
        live = peers.send(request(7.0, timeout_ms=10000))
        answered_early = live.poll(300)  # a refusal would come at once
        policy.release.set()
        reply = reply_of(live)
        assert not error_of(reply), f"expected the live request served, got {error_of(reply)!r} " \
                                    f"(answered before the gate call ended: {bool(answered_early)})"
        refusals = [error_of(reply_of(sock)) for sock in dead]
        reply_of(gate)
    assert all(NOT_RUN_FOR_DEADLINE in refusal for refusal in refusals), f"expected 'not run' for each, got {refusals}"
    assert policy.calls == [[7.0]], f"expected only the live request run, got {policy.calls}"


def test_expired_queued_requests_make_room_for_a_live_one_at_the_byte_cap():
    policy = Gated()
    # the gate and three requests fill it
    limits = ServerLimits(max_queued_bytes=len(request(GATE, timeout_ms=10000)) + 3 * len(request(1.0, timeout_ms=1)))
    with running_server(policy, inline_below_ms=0, limits=limits) as server, Peers(server.port) as peers:
        gate = peers.send(request(GATE, timeout_ms=10000))
        assert policy.running.wait(5)
        dead = [peers.send(request(tag, timeout_ms=1)) for tag in (1.0, 2.0, 3.0)]
        time.sleep(0.1)
        live = peers.send(request(7.0, timeout_ms=10000))
        time.sleep(0.3)
        policy.release.set()
        reply = reply_of(live)
        refusals = [error_of(reply_of(sock)) for sock in dead]
        reply_of(gate)
    assert not error_of(reply), f"expected the live request served, got {error_of(reply)!r}"
    assert all(NOT_RUN_FOR_DEADLINE in refusal for refusal in refusals), f"expected 'not run' for each, got {refusals}"


def test_a_live_newcomer_is_still_refused_when_the_requests_waiting_are_live():
    policy = Gated()
    limits = ServerLimits(max_queued_requests=2)
    with running_server(policy, inline_below_ms=0, limits=limits) as server, Peers(server.port) as peers:
        gate = peers.send(request(GATE))
        assert policy.running.wait(5)
        waiting = peers.send(request(1.0, timeout_ms=10000))
        time.sleep(0.1)
        newcomer = peers.send(request(2.0, timeout_ms=10000))
        refusal = error_of(reply_of(newcomer, 2000))
        policy.release.set()
        assert not error_of(reply_of(waiting))
        reply_of(gate)
    assert refusal.startswith("server busy: 2 requests are waiting"), f"expected a busy refusal, got {refusal!r}"


def _help_of(flag: str) -> str:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    return " ".join(next(a.help for a in serve._actions if flag in a.option_strings).split())


def test_the_client_byte_budget_counts_the_first_request_as_help_and_docs_say():
    policy = Gated()
    floats = 1_500_000 // 4  # two requests of 1.5 MB: the second alone would fit a 2 MiB budget beyond the first
    limits = ServerLimits(max_client_queued_bytes=2 * 1024 * 1024)
    with running_server(policy, inline_below_ms=0, limits=limits) as server, Peers(server.port) as peers:
        gate = peers.send(request(GATE))
        assert policy.running.wait(5)
        dealer = peers.send(request(1.0, floats=floats))
        dealer.send_multipart([b"", request(2.0, floats=floats)])
        refusal = error_of(reply_of(dealer))
        policy.release.set()
        reply_of(gate)
    assert refusal.startswith("this connection already has 1500"), f"expected the second refused, got {refusal!r}"
    help_text = _help_of("--max-client-queued-mb")
    assert "beyond its first" not in help_text and "its first request's included" in help_text, help_text
    for doc in ("serving.md", "protocol.md"):
        text = " ".join((ROOT / "docs" / doc).read_text(encoding="utf-8").split())
        assert "beyond its first" not in text.lower() and "its first request's included" in text, doc
