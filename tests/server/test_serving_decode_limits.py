"""Decoding costs at most a small constant times the message size: the server refuses amplifying messages fast."""

from __future__ import annotations

import contextlib
import io
import time
from typing import Any, Dict, Iterator, List, Optional

import msgpack
import numpy as np
import pytest
import zmq
from reference_peer import EchoPolicy, raw_round_trip
from serving import running_server

from gr00t_client import PolicyClient, PolicyServerError, codec
from gr00t_server.serving import ServerLimits
from gr00t_server.serving.transport import MAX_MESSAGE_FRAMES


def error_of(reply: list) -> str:
    message = codec.decode(reply[0])
    assert isinstance(message, dict) and "error" in message, message
    return message["error"]


def test_a_huge_array_of_empty_arrays_is_refused_at_its_header_in_milliseconds():
    count = 2_000_000
    probe = b"\xdd" + count.to_bytes(4, "big") + b"\x90" * count
    with running_server(EchoPolicy()) as server:
        started = time.monotonic()
        reply = raw_round_trip(server.port, probe)
        elapsed = time.monotonic() - started
        assert "exceeds a decode limit" in error_of(reply)
        assert elapsed < 0.5
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            assert client.ping()


def test_a_long_list_in_an_observation_is_refused_naming_its_key_and_the_numpy_remedy():
    """100,000 floats sent as a Python list (0.9 MB, far under the size cap) were refused with only '100000 exceeds
    max_array_len(30457)', a size-looking error that named neither the key nor the remedy."""
    observation = {"state": {"x": np.zeros((1, 1, 1), np.float32)}, "extra": [0.0] * 100_000}
    with running_server(EchoPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError) as refused:
            client.get_action(observation)
        assert client.ping()
    message = refused.value.server_message
    assert "holds a list of 100000 items at data.observation.extra" in message
    assert "send numbers as a numpy array (np.asarray(...)), not a Python list" in message


def test_a_long_list_is_explained_on_msgpacks_pure_python_fallback_that_raises_its_message_unformatted(monkeypatch):
    """msgpack 1.0.0-1.0.2 without its C extension raises ValueError('%s exceeds max_array_len(%s)', n, limit): the
    reply showed that raw tuple instead of the key and the numpy remedy."""
    import re

    real_unpackb = msgpack.unpackb

    def fallback_unpackb(*args, **kwargs):
        try:
            return real_unpackb(*args, **kwargs)
        except ValueError as exc:
            found = re.fullmatch(r"(\d+) exceeds (max_\w+_len)\((\d+)\)", str(exc))
            if found is None:
                raise
            raise ValueError(f"%s exceeds {found.group(2)}(%s)", int(found.group(1)), int(found.group(3))) from None

    monkeypatch.setattr(msgpack, "unpackb", fallback_unpackb)
    observation = {"state": {"x": np.zeros((1, 1, 1), np.float32)}, "extra": [0.0] * 100_000}
    with running_server(EchoPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError) as refused:
            client.get_action(observation)
    message = refused.value.server_message
    assert "holds a list of 100000 items at data.observation.extra" in message
    assert "send numbers as a numpy array (np.asarray(...)), not a Python list" in message


def test_a_long_list_under_a_peers_long_or_control_character_key_keeps_the_remedy_in_the_reply():
    """A decode limit's key path was the peer's keys as sent: a 1,200-character key with ESC and a newline pushed the
    remedy out of the server's bounded reply and reached the client raw."""
    key = "\x1b[2J\nforged " + "k" * 1200
    message = msgpack.packb({"endpoint": "get_action", "data": {"observation": {key: [0.0] * 100_000}}},
                            use_bin_type=True)
    with running_server(EchoPolicy()) as server:
        error = error_of(raw_round_trip(server.port, message))
    assert "send numbers as a numpy array" in error
    assert "\x1b" not in error and "\n" not in error


def test_a_long_list_under_keys_sent_as_bytes_is_named_by_them():
    message = msgpack.packb({b"endpoint": b"get_action", b"data": {b"observation": {b"extra": [0.0] * 100_000}}},
                            use_bin_type=True)
    with pytest.raises(codec.DecodeLimitError, match=r"at data\.observation\.extra, more than"):
        codec.decode(message, limits=codec.DecodeLimits.for_message_bytes(len(message)))


def test_a_long_map_is_named_a_map_and_a_top_level_one_has_no_key():
    probe = b"\xdf" + (2_000_000).to_bytes(4, "big")
    with pytest.raises(codec.DecodeLimitError, match=r"exceeds a decode limit: it holds a map of 2000000 items, more "):
        codec.decode(probe, limits=codec.DecodeLimits.for_message_bytes(1 << 20))


def test_many_small_arrays_within_each_length_limit_are_refused_by_the_item_budget():
    probe = msgpack.packb([[[]] * 1000] * 300)  # 300k items in ~300 KB
    with running_server(EchoPolicy()) as server:
        assert "maps, arrays and entries" in error_of(raw_round_trip(server.port, probe))


def test_a_deeply_nested_language_row_gets_a_depth_error_not_a_recursion_error():
    row: list = ["pick"]
    for _ in range(1000):
        row = [row]
    request = {"endpoint": "get_action", "data": {"observation": {"language": {"task": [row]}}}}
    with running_server(EchoPolicy()) as server:
        message = error_of(raw_round_trip(server.port, msgpack.packb(request)))
        assert "levels deep" in message and "Recursion" not in message


def test_an_npsave_header_that_claims_more_than_the_blob_holds_is_refused_before_allocating():
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 3), np.float32), allow_pickle=False)
    lying = buffer.getvalue().replace(b"(2, 3)", b"(4000000000, 3)")
    request = {"endpoint": "get_action", "data": {"observation": {"state": {"x": {"__ndarray_class__": True, "as_npy": lying}}}}}
    with running_server(EchoPolicy()) as server:
        message = error_of(raw_round_trip(server.port, msgpack.packb(request)))
    assert "header says dtype <f4 and shape [4000000000, 3]" in message


def test_the_router_socket_holds_few_messages_per_connection_and_pings_its_peers():
    with running_server(EchoPolicy()) as server:
        assert server._socket.getsockopt(zmq.RCVHWM) == 4
        # unread replies: twice the 8 queued requests and 8 inline replies a connection may leave unread
        assert server._socket.getsockopt(zmq.SNDHWM) == 32
        assert server._socket.getsockopt(zmq.HEARTBEAT_IVL) == 10_000


def test_the_heartbeat_gives_a_live_peer_two_minutes_to_finish_sending_a_large_frame():
    """libzmq answers a ping only between frames: with 30 s, a robot uploading one 6 MB frame over a 1 Mbit/s uplink
    (48 s) was cut 40 s in, every time, while alive and sending."""
    with running_server(EchoPolicy()) as server:
        assert server._socket.getsockopt(zmq.HEARTBEAT_TIMEOUT) == 120_000


@pytest.mark.skipif(not hasattr(zmq, "TCP_MAXRT"), reason="this pyzmq has no ZMQ_TCP_MAXRT")
def test_a_peer_that_stops_reading_mid_reply_is_bounded_by_tcp_not_only_by_the_heartbeat():
    """The heartbeat's ping waits for the frame being written: a peer that stopped reading mid-reply (a hung robot, a
    forwarder whose far side died) kept its connection, fd and unsent reply for good."""
    with running_server(EchoPolicy()) as server:
        assert server._socket.getsockopt(zmq.TCP_MAXRT) == 120_000
        assert server._socket.getsockopt(zmq.TCP_KEEPALIVE) == 1


@contextlib.contextmanager
def pipelining_dealer(port: int) -> Iterator[zmq.Socket]:
    """A DEALER connected to the server: it can send requests without waiting for replies, as no REQ client can."""
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(f"tcp://127.0.0.1:{port}")
        yield dealer
    finally:
        dealer.close(linger=0)


def replies_of(dealer: zmq.Socket, count: int, replies: Optional[List[Any]] = None) -> List[Any]:
    """Decoded replies until there are `count` (in `replies`, when given) or none comes for 5 s."""
    replies = [] if replies is None else replies
    while len(replies) < count and dealer.poll(5000):
        replies.append(codec.decode(dealer.recv_multipart()[1]))
    return replies


def test_a_message_of_more_frames_than_any_request_has_is_refused_without_keeping_them():
    """1,000,000 empty frames (2 MB on the wire) were each kept as a Frame object and walked three times (230 MB and
    4-5 s of the socket thread) before the decode refused them: past MAX_MESSAGE_FRAMES the rest are dropped unread."""
    with running_server(EchoPolicy()) as server, pipelining_dealer(server.port) as dealer:
        dealer.send_multipart([b""] * (MAX_MESSAGE_FRAMES + 10))  # the server sees these and the routing identity
        dealer.send_multipart([b""] * (MAX_MESSAGE_FRAMES - 1))  # at the limit: read, and refused by the decode
        over, at_limit = (reply["error"] for reply in replies_of(dealer, 2))
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            assert client.ping()
    assert over == (f"message has {MAX_MESSAGE_FRAMES + 11} frames; this server reads at most {MAX_MESSAGE_FRAMES} "
                    "(one per array, and an observation has tens); it was not decoded")
    assert at_limit == f"message has {MAX_MESSAGE_FRAMES - 2} frames but no multipart header; expected 1 frame"


def test_a_multipart_message_of_too_many_frames_is_refused_in_the_multipart_form_it_came_in():
    """Refused for its frame count, a multipart message got a single-frame reply: a raw client that reads frame 0 as
    the magic and frame 1 as the header failed on it (every other refusal of a multipart message is answered in kind)."""
    header = msgpack.packb({"endpoint": "ping"}, use_bin_type=True)
    with running_server(EchoPolicy()) as server:
        reply = raw_round_trip(server.port, [codec.MULTIPART_MAGIC, header] + [b""] * MAX_MESSAGE_FRAMES)
    assert reply is not None, "no reply"
    assert reply[0] == codec.MULTIPART_MAGIC and len(reply) == 2, reply[:2]
    answer = codec.decode_multipart(reply)
    assert answer["ok"] is False and answer["endpoint"] == "ping"
    assert f"this server reads at most {MAX_MESSAGE_FRAMES}" in answer["error"]


def test_one_pipelining_connection_cannot_take_the_queue_from_the_others():
    """Small requests fit the byte budget by the thousand: the count per connection is what keeps one pipelining
    peer from filling the shared queue, so that every other client got "server busy" (seen: 1 call in 11 served)."""
    payload = codec.encode({"endpoint": "get_action", "data": {"observation": {"state": {"x": np.zeros((1, 1, 4), np.float32)}}}})
    limits = ServerLimits(max_client_queued_requests=3, max_queued_requests=6)
    with running_server(EchoPolicy(delay_s=0.2), limits=limits) as server, pipelining_dealer(server.port) as dealer:
        for _ in range(10):
            dealer.send_multipart([b"", payload])
        replies = replies_of(dealer, 7)  # the 7 refusals come at once
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            _action, info = client.get_action({"state": {"x": np.full((1, 1, 4), 7.0, np.float32)}})
        replies_of(dealer, 10, replies)
    refusals = [r for r in replies if isinstance(r, dict) and "--max-client-queued-requests" in str(r.get("error"))]
    assert len(replies) == 10 and len(refusals) == 7
    assert "already has 3 requests waiting for their replies" in refusals[0]["error"]
    assert info["first_state"] == 7.0  # served, not "server busy"


def test_a_large_message_over_its_connections_byte_budget_is_refused_before_it_is_decoded():
    """12 x 32 MB pipelined on one connection: each refused message was decoded first (its arrays copied), so the
    server's memory peaked at over 3x the bytes sent. From 1 MiB a message meets the byte budgets undecoded: one
    that could not even be decoded is refused for the budget, not named undecodable."""
    size = 1024 * 1024  # gr00t_server.serving.loop.PRECHECK_MIN_BYTES
    first = codec.encode({"endpoint": "get_action", "data": {"observation": {"state": {"x": np.zeros((1, 1, 4), np.float32)}}}})
    garbage = b"\xc1" * size  # 0xc1 is never used in msgpack: undecodable
    limits = ServerLimits(max_client_queued_bytes=size)
    with running_server(EchoPolicy(delay_s=0.5), limits=limits) as server, pipelining_dealer(server.port) as dealer:
        dealer.send_multipart([b"", first])
        dealer.send_multipart([b"", garbage])
        replies = replies_of(dealer, 2)
    errors = [str(r.get("error")) for r in replies if isinstance(r, dict) and "error" in r]
    assert len(errors) == 1 and "a further 1048576 bytes would exceed its budget of 1048576 bytes" in errors[0], replies
    assert server.stats.refused == 1


def test_a_connection_over_its_queued_byte_budget_is_refused_while_the_policy_is_busy():
    payload = codec.encode({"endpoint": "get_action", "data": {"observation": {"state": {"x": np.zeros((1, 1, 4000), np.float32)}}}})
    limits = ServerLimits(max_client_queued_bytes=len(payload) * 2)
    with running_server(EchoPolicy(delay_s=0.5), limits=limits) as server, pipelining_dealer(server.port) as dealer:
        for _ in range(4):
            dealer.send_multipart([b"", payload])
        replies = replies_of(dealer, 4)
        refusals = [r for r in replies if isinstance(r, dict) and "budget" in str(r.get("error"))]
        assert len(replies) == 4 and len(refusals) == 2
        assert server.stats.refused == 2
    assert refusals[0]["error"].endswith(f"would exceed its budget of {len(payload) * 2} bytes "
                                         "(--max-client-queued-mb; wait for the replies)")


def get_action_payload(floats: int, value: float = 0.0) -> bytes:
    observation = {"state": {"x": np.full((1, 1, floats), value, np.float32)}}
    return codec.encode({"endpoint": "get_action", "data": {"observation": observation}})


def wait_for_queued(server: Any, requests: int) -> None:
    """Wait up to 10 s for the server's queue to hold `requests` requests (those running included)."""
    deadline = time.monotonic() + 10
    while server._loop.queued_requests != requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server._loop.queued_requests == requests


def test_a_connection_with_nothing_waiting_is_served_when_others_fill_the_queues_request_count():
    """Pipelined requests filling max_queued_requests made every request of a robot with nothing waiting "server busy"
    (3 calls in 17 answered): connections take turns, so the newest waiting request of the connection holding the
    most is refused instead, to make room."""
    limits = ServerLimits(max_queued_requests=3)
    with running_server(EchoPolicy(delay_s=0.5), limits=limits, inline_below_ms=0) as server, \
            pipelining_dealer(server.port) as dealer:
        for i in range(3):  # one running, two waiting: the queue is full
            dealer.send_multipart([b"", get_action_payload(4, float(i))])
        wait_for_queued(server, 3)
        with PolicyClient(port=server.port, timeout_ms=10000) as client:
            _action, info = client.get_action({"state": {"x": np.full((1, 1, 4), 7.0, np.float32)}})
        replies = replies_of(dealer, 3)
        wait_for_queued(server, 0)
        assert server._loop.queued_bytes_total == 0 and not server._loop.queued_counts
    assert info["first_state"] == 7.0
    assert [r[1]["first_state"] for r in replies if isinstance(r, list)] == [0.0, 1.0]
    evicted = [r["error"] for r in replies if isinstance(r, dict)]
    assert len(evicted) == 1 and evicted[0].startswith("server busy: 3 requests are waiting for the policy, at most 3 "
                                                       "in all (ServerLimits.max_queued_requests);")
    assert evicted[0].endswith("try again")
    assert server.stats.refused == 1


def test_a_full_queue_of_one_request_per_connection_refuses_a_newcomer_naming_the_limit_and_its_setting():
    """No connection holds more than the newcomer would (one request), so none is refused for it; the refusal said
    only "server busy: 2 requests are waiting for the policy; try again", naming neither the limit nor its setting."""
    limits = ServerLimits(max_queued_requests=2)
    with running_server(EchoPolicy(delay_s=0.5), limits=limits, inline_below_ms=0) as server, \
            pipelining_dealer(server.port) as first, pipelining_dealer(server.port) as second:
        for dealer in (first, second):
            dealer.send_multipart([b"", get_action_payload(4)])
        wait_for_queued(server, 2)
        with PolicyClient(port=server.port, timeout_ms=10000) as client, pytest.raises(PolicyServerError) as refused:
            client.get_action({"state": {"x": np.zeros((1, 1, 4), np.float32)}})
        replies = replies_of(first, 1) + replies_of(second, 1)
    assert refused.value.server_message == ("server busy: 2 requests are waiting for the policy; this server queues at "
                                            "most 2 in all (ServerLimits.max_queued_requests); try again")
    assert all(isinstance(reply, list) for reply in replies) and server.stats.refused == 1


@pytest.mark.parametrize("newcomer_floats", [4, 300_000], ids=["small", "from 1 MiB, checked before its decode"])
def test_a_connection_with_nothing_waiting_is_served_when_others_fill_the_queues_bytes(newcomer_floats):
    """Connections keeping --max-queued-mb full made every request of a robot with nothing waiting "server busy":
    the newest waiting request of the connection holding the most bytes, more than the newcomer's, makes room."""
    flood = get_action_payload(400_000)  # 1.6 MB
    limits = ServerLimits(max_queued_bytes=2 * len(flood))
    with running_server(EchoPolicy(delay_s=0.5), limits=limits, inline_below_ms=0) as server, \
            pipelining_dealer(server.port) as dealer:
        for _ in range(2):  # one running, one waiting: the queue's bytes are full
            dealer.send_multipart([b"", flood])
        wait_for_queued(server, 2)
        with PolicyClient(port=server.port, timeout_ms=10000) as client:
            _action, info = client.get_action({"state": {"x": np.full((1, 1, newcomer_floats), 7.0, np.float32)}})
        replies = replies_of(dealer, 2)
        wait_for_queued(server, 0)
        assert server._loop.queued_bytes_total == 0 and not server._loop.queued_bytes
    assert info["first_state"] == 7.0
    evicted = [r["error"] for r in replies if isinstance(r, dict)]
    assert len(replies) == 2 and len(evicted) == 1
    assert evicted[0].startswith(f"server busy: {2 * len(flood)} bytes of requests are waiting for the policy and a "
                                 "further "), evicted[0]
    assert f"came from a connection with none, over the {2 * len(flood)} in all (--max-queued-mb);" in evicted[0]
    assert evicted[0].endswith("try again")
    assert server.stats.refused == 1


def assert_queues_empty(server: Any) -> None:
    """Every count of waiting requests is back to zero (the worker's jobs too) once all are answered."""
    wait_for_queued(server, 0)
    deadline = time.monotonic() + 5
    while server._worker.busy and time.monotonic() < deadline:
        time.sleep(0.02)
    loop = server._loop
    assert loop.queued_bytes_total == 0 and not loop.queued_bytes and not loop.queued_counts and not loop.pending
    assert server._worker.queued == 0 and not server._worker.busy


@pytest.mark.parametrize("newcomer_floats", [50_000, 300_000], ids=["small", "from 1 MiB, checked before its decode"])
def test_no_waiting_request_is_refused_for_a_newcomer_that_would_not_fit_all_the_same(newcomer_floats):
    """A connection's small waiting request was refused "made room for one from a connection with none", and then the
    newcomer was refused too (its request and the running one are over --max-queued-mb): room is made only when it
    is enough for the newcomer; otherwise the newcomer alone is refused, as before connections made room."""
    running, waiting = get_action_payload(400_000, 1.0), get_action_payload(1_000, 2.0)  # 1.6 MB, 4 KB
    limits = ServerLimits(max_queued_bytes=len(running) + len(waiting) + 100)
    with running_server(EchoPolicy(delay_s=0.5), limits=limits, inline_below_ms=0) as server, \
            pipelining_dealer(server.port) as dealer:
        dealer.send_multipart([b"", running])
        wait_for_queued(server, 1)
        dealer.send_multipart([b"", waiting])
        wait_for_queued(server, 2)
        with PolicyClient(port=server.port, timeout_ms=10000) as client, pytest.raises(PolicyServerError) as refused:
            client.get_action({"state": {"x": np.full((1, 1, newcomer_floats), 7.0, np.float32)}})
        replies = replies_of(dealer, 3)
        assert_queues_empty(server)
    assert refused.value.server_message.startswith(f"server busy: {len(running) + len(waiting)} bytes of requests are "
                                                   "waiting for the policy; a further ")
    assert refused.value.server_message.endswith("(--max-queued-mb); try again")
    assert [reply[1]["first_state"] for reply in replies] == [1.0, 2.0]  # both served, once each
    assert server.stats.refused == 1


class BatchingEchoPolicy(EchoPolicy):
    """EchoPolicy that serves batches: each row's action is its state's first value."""

    supports_batching = True

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        time.sleep(self.delay_s)
        state = next(iter(observation["state"].values()))
        horizon = self.configs["action"].horizon
        return {key: np.repeat(state[:, :1, :1], horizon, axis=1).astype(np.float32)
                for key in self.configs["action"].modality_keys}, {}


def test_a_connection_whose_waiting_requests_are_one_batch_of_its_own_makes_room_with_the_newest_of_them():
    """A pipelining connection's waiting requests handed to the worker as one batch of its own could not be made to
    give room (only a lone request was taken from the worker's queue): a robot with nothing waiting was refused
    "server busy". The batch's last request is refused instead and the rest of the batch runs."""
    policy, limits = BatchingEchoPolicy(delay_s=0.5), ServerLimits(max_queued_requests=5)
    with running_server(policy, limits=limits, max_batch_size=4, inline_below_ms=0) as server, \
            pipelining_dealer(server.port) as dealer:
        for i in range(5):  # one runs; the other four are gathered and handed to the worker as one batch
            dealer.send_multipart([b"", get_action_payload(4, float(i))])
            time.sleep(0.05)
        wait_for_queued(server, 5)
        deadline = time.monotonic() + 5
        while (server._loop.pending or server._worker.queued != 1) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not server._loop.pending and server._worker.queued == 1  # one job of four requests waits
        with PolicyClient(port=server.port, timeout_ms=10000) as client:
            action, _info = client.get_action({"state": {"x": np.full((1, 1, 4), 7.0, np.float32)}})
        replies = replies_of(dealer, 6)
        assert_queues_empty(server)
    assert float(next(iter(action.values())).reshape(-1)[0]) == 7.0
    served = sorted(float(next(iter(reply[0].values())).reshape(-1)[0]) for reply in replies if isinstance(reply, list))
    evicted = [reply["error"] for reply in replies if isinstance(reply, dict)]
    assert served == [0.0, 1.0, 2.0, 3.0] and len(replies) == 5  # one reply each
    assert len(evicted) == 1 and evicted[0].startswith("server busy: 5 requests are waiting for the policy, at most 5 "
                                                       "in all (ServerLimits.max_queued_requests);")
    assert server.stats.refused == 1


def test_an_array_map_missing_its_dtype_is_refused_naming_that_field_not_a_bytes_observation_key():
    """A hand-written client's array map without b"type" was passed on as a map: the reply spoke of a bytes key b'nd'."""
    joints = {b"nd": True, b"kind": b"", b"shape": [1, 1, 7], b"data": np.zeros((1, 1, 7), np.float32).tobytes()}
    request = msgpack.packb({"endpoint": "get_action", "data": {"observation": {"state": {"joints": joints}}}})
    with running_server(EchoPolicy()) as server:
        error = error_of(raw_round_trip(server.port, request))
    assert "malformed msgpack-numpy array map: missing 'type'" in error
    assert "observation keys must be str" not in error


def test_an_opaque_byte_pad_buys_no_items_and_the_request_is_refused_at_its_map_header():
    """100 MB of bytes no policy reads raised the item budget (16384 + one per 64 bytes) past 1.5 million, so 500,000
    one-element state keys were decoded and checked on the socket thread: every other client's ping waited seconds.
    The cap refuses the map at its header (nothing in it decoded); a real large observation is still served."""
    from reference_peer import libero_like_observation

    hostile = msgpack.packb({"endpoint": "get_action", "pad": b"x" * (100 * 2**20), "data": {"observation": {
        "state": {f"s{i}": [0.0] for i in range(500_000)}}}}, use_bin_type=True)
    with running_server(EchoPolicy()) as server:
        reply = raw_round_trip(server.port, hostile, timeout_ms=30000)
        # A real observation (two 480x640 cameras, 8 rows, one msgpack frame as the reference client sends) is served.
        served = raw_round_trip(server.port, codec.encode({"endpoint": "get_action", "data": {
            "observation": libero_like_observation(batch=8, height=480, width=640)}}), timeout_ms=30000)
    assert "a map of 500000 items at data.observation.state, more than the 131072" in error_of(reply)
    assert "error" not in codec.decode(served[0]), codec.decode(served[0])
