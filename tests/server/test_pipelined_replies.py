"""A connection that pipelines within its limits (--max-client-queued-requests get_action waiting, plus a few pings
answered at once) gets every reply, once, whether it reads each as it comes or lets them wait: none is dropped as if
its peer had stopped reading."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import zmq
from reference_peer import EchoPolicy
from serving import running_server
from test_serving_decode_limits import pipelining_dealer, replies_of

from gr00t_client import codec
from gr00t_server.serving import ServerLimits
from gr00t_server.serving.transport import INLINE_UNREAD_REPLIES, MAX_SEND_HWM, send_hwm

GET_ACTION = codec.encode({"endpoint": "get_action", "data": {"observation": {"state": {"x": np.zeros((1, 1, 1), np.float32)}}}})
PING = codec.encode({"endpoint": "ping"})


class LargeActionPolicy(EchoPolicy):
    """Answers every get_action with a 1 MiB action: loopback's socket buffers hold about two for a late reader."""

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        self.calls += 1
        return {"x": np.zeros((1, 16, 16384), np.float32)}, {}


@contextlib.contextmanager
def late_reader(port: int) -> Iterator[zmq.Socket]:
    """A DEALER whose unread replies stay in the server's queue: it buffers one message and a few KiB itself."""
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVHWM, 1)
    dealer.setsockopt(zmq.RCVBUF, 4096)
    try:
        dealer.connect(f"tcp://127.0.0.1:{port}")
        yield dealer
    finally:
        dealer.close(linger=0)


def pipeline(dealer: zmq.Socket, actions: int, actions_in_flight: int, pings_in_flight: int) -> Tuple[int, int, int]:
    """Keep that many get_action and pings in flight until `actions` are sent, reading each reply as it comes;
    (actions answered, pings sent, pings answered) once no reply comes for 5 s."""
    sent_actions = got_actions = sent_pings = got_pings = 0
    while got_actions < actions:
        while sent_actions < actions and sent_actions - got_actions < actions_in_flight:
            dealer.send_multipart([b"", GET_ACTION])
            sent_actions += 1
        while sent_actions < actions and sent_pings - got_pings < pings_in_flight:
            dealer.send_multipart([b"", PING])
            sent_pings += 1
        if not dealer.poll(5000):
            break
        reply = codec.decode(dealer.recv_multipart()[-1])
        if isinstance(reply, list):
            got_actions += 1
        else:
            assert reply.get("status") == "ok", reply
            got_pings += 1
    got_pings += len(replies_of(dealer, sent_pings - got_pings))
    return got_actions, sent_pings, got_pings


def test_a_connection_pipelining_within_its_limits_gets_every_reply():
    """8 get_action waiting (the --max-client-queued-requests default) and 8 pings in flight on one DEALER, each reply
    read as it came, lost a few replies in a thousand to 'the peer has not read its last 16 replies': libzmq learns
    what a connection has taken only every 8 replies, and a send reads that news at most once a millisecond."""
    limits = ServerLimits()
    with running_server(EchoPolicy(), inline_below_ms=0) as server, pipelining_dealer(server.port) as dealer:
        answered, pings_sent, pings_answered = pipeline(dealer, 1000, limits.max_client_queued_requests,
                                                        INLINE_UNREAD_REPLIES)
        undelivered = server.stats.snapshot()["undelivered"]
    assert (answered, pings_answered, undelivered) == (1000, pings_sent, 0)


def test_a_connection_that_reads_its_replies_late_within_its_limits_loses_none():
    """16 get_action waiting (--max-client-queued-requests 16), then 8 pings, read only once all were answered: the
    pings' replies were dropped at the send high-water mark of 16, below what the limits let a connection leave
    unread."""
    queued = 16
    policy = LargeActionPolicy()
    with running_server(policy, limits=ServerLimits(max_client_queued_requests=queued), inline_below_ms=0) as server, \
            late_reader(server.port) as dealer:
        for round_number in range(1, 3):
            for _ in range(queued):
                dealer.send_multipart([b"", GET_ACTION])
            deadline = time.monotonic() + 10
            while policy.calls < round_number * queued and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)  # the last reply is sent after its call
            for _ in range(INLINE_UNREAD_REPLIES):
                dealer.send_multipart([b"", PING])
            time.sleep(0.2)
            replies = replies_of(dealer, queued + INLINE_UNREAD_REPLIES)
            actions = sum(isinstance(reply, list) for reply in replies)
            assert (actions, len(replies) - actions) == (queued, INLINE_UNREAD_REPLIES), f"round {round_number}"
        assert server.stats.snapshot()["undelivered"] == 0


def test_a_queue_limit_past_what_zeromq_can_hold_serves_with_the_largest_send_high_water_mark():
    """2 x (limit + 8) past a C int ended the start in an OverflowError traceback (the fixed 16 before had served)."""
    assert send_hwm(1_100_000_000) == MAX_SEND_HWM
    with running_server(EchoPolicy(), limits=ServerLimits(max_client_queued_requests=1_100_000_000)) as server:
        assert server._transport.send_hwm == MAX_SEND_HWM
