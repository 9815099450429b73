"""PolicyClient's cap on a reply's size (max_reply_bytes): a larger reply frame is never read into memory and fails the
call at once, naming the cap and how to raise it; replies decode within DecodeLimits; the client stays usable after."""

import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from reference_peer import ReferenceServer, ref_packb
from rep_thread import RepThread

from gr00t_client import PolicyClient, PolicyTimeoutError, codec
from gr00t_client.client import DEFAULT_MAX_REPLY_BYTES, ReplyLostError

CAP = 1 << 20
OBSERVATION = {"state": {"x": np.zeros((1, 1, 3), np.float32)}}
INFO = {"source": "test"}


def reference_reply_bytes(payload_bytes: int) -> int:
    """Bytes of a reference get_action reply whose action is one uint8 array of `payload_bytes`."""
    return len(ref_packb(({"blob": np.zeros(payload_bytes, np.uint8)}, INFO)))


def payload_for_reply_of(reply_bytes: int) -> int:
    """The action payload that makes a reference get_action reply exactly `reply_bytes` long."""
    payload = reply_bytes - 1024
    payload += reply_bytes - reference_reply_bytes(payload)
    assert reference_reply_bytes(payload) == reply_bytes
    return payload


def reference_server_answering(*payload_sizes: int) -> ReferenceServer:
    """A reference server whose n-th get_action answers an action of payload_sizes[n] bytes (the last one repeats)."""
    calls = []

    def get_action(observation, options=None):
        size = payload_sizes[min(len(calls), len(payload_sizes) - 1)]
        calls.append(size)
        return {"blob": np.zeros(size, np.uint8)}, INFO

    return ReferenceServer({"get_action": get_action})


def RawServer(frames):
    """A REP peer that answers every request with the same raw frames, whatever it asked."""
    return RepThread(lambda _request: frames)


def timed_get_action(client):
    started = time.monotonic()
    try:
        return client.get_action(OBSERVATION)
    finally:
        timed_get_action.elapsed_s = time.monotonic() - started


# --- the cap ----------------------------------------------------------------------------------


def test_a_reply_over_the_cap_fails_at_once_naming_the_cap_and_the_keyword_to_raise_it():
    with reference_server_answering(2 * CAP) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=10000, max_reply_bytes=CAP) as client:
            with pytest.raises(ReplyLostError) as caught:
                timed_get_action(client)
    assert timed_get_action.elapsed_s < 1.0  # not the 10 s timeout
    message = str(caught.value)
    assert f"max_reply_bytes of {CAP} bytes" in message
    assert "pass a larger max_reply_bytes to PolicyClient, or None for no cap" in message
    assert "'get_action'" in message and f"127.0.0.1:{server.port}" in message


def test_the_lost_reply_is_a_timeout_error_so_timeout_handlers_still_catch_it():
    with reference_server_answering(2 * CAP) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=10000, max_reply_bytes=CAP) as client:
            with pytest.raises(PolicyTimeoutError):
                client.get_action(OBSERVATION)


def test_the_client_is_usable_after_an_oversized_reply():
    with reference_server_answering(2 * CAP, 16) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=10000, max_reply_bytes=CAP) as client:
            with pytest.raises(ReplyLostError):
                client.get_action(OBSERVATION)
            action, info = client.get_action(OBSERVATION)
            assert action["blob"].shape == (16,) and info == INFO
            assert client.ping()


def test_a_reply_of_exactly_the_cap_is_received_and_one_byte_more_is_not():
    exact = payload_for_reply_of(CAP)
    with reference_server_answering(exact, exact + 1) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=10000, max_reply_bytes=CAP) as client:
            action, _info = client.get_action(OBSERVATION)
            assert action["blob"].nbytes == exact
            with pytest.raises(ReplyLostError, match=f"max_reply_bytes of {CAP} bytes"):
                client.get_action(OBSERVATION)


def test_none_lifts_the_cap():
    with reference_server_answering(2 * CAP) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=10000, max_reply_bytes=None) as client:
            action, _info = client.get_action(OBSERVATION)
            assert action["blob"].nbytes == 2 * CAP


def test_a_multi_frame_reply_over_the_cap_in_total_is_refused_undecoded():
    # ZMQ_MAXMSGSIZE bounds each frame: two frames under the cap pass ZeroMQ, their sum is the client's to refuse
    frames = [b"\x00" * (CAP // 2 + 1), b"\x00" * (CAP // 2 + 1)]
    with RawServer(frames) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000, max_reply_bytes=CAP) as client:
            expected = f"not decoded: its {2 * (CAP // 2 + 1)} bytes in 2 frames exceed this client.s max_reply_bytes"
            with pytest.raises(codec.DecodeLimitError, match=expected):
                client.call_endpoint("ping", requires_input=False)


def test_a_frame_over_the_cap_anywhere_in_a_multi_frame_reply_loses_the_reply_at_its_header():
    # the per-frame cap is what bounds memory: ZeroMQ delivers a multipart reply only once all its frames arrived
    frames = [b"\x00" * 16, b"\x00" * (2 * CAP)]
    with RawServer(frames) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=10000, max_reply_bytes=CAP) as client:
            with pytest.raises(ReplyLostError, match=f"max_reply_bytes of {CAP} bytes"):
                client.call_endpoint("ping", requires_input=False)


def test_a_server_that_stops_mid_call_fails_the_call_at_once_instead_of_after_the_timeout():
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)  # takes the request, then goes away without answering
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def take_request_and_stop():
        if router.poll(5000):
            router.recv_multipart()
        router.close(linger=0)

    thread = threading.Thread(target=take_request_and_stop, daemon=True)
    thread.start()
    try:
        with PolicyClient(host="127.0.0.1", port=port, timeout_ms=10000) as client:
            started = time.monotonic()
            with pytest.raises(ReplyLostError, match="the server stopped, restarted or dropped the request") as lost:
                client.call_endpoint("ping", requires_input=False)
            message = str(lost.value)  # the likely cause (a dead server) before the rarer one (the size cap)
            assert message.index("the server stopped") < message.index("max_reply_bytes")
            assert time.monotonic() - started < 1.0
    finally:
        thread.join(5)
        context.term()


# --- decode limits on replies -----------------------------------------------------------------


def test_a_small_reply_of_many_tiny_items_is_refused_by_the_decode_limits():
    bomb = msgpack.packb([None] * 200_000)  # 200 KB, well under the cap, but 200k Python objects
    with RawServer([bomb]) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000, max_reply_bytes=CAP) as client:
            with pytest.raises(codec.DecodeLimitError, match="reply to 'ping' from the policy server at .* not decoded"):
                client.call_endpoint("ping", requires_input=False)


@pytest.mark.parametrize("max_reply_bytes", [CAP, None])
def test_a_deeply_nested_reply_is_refused_by_the_decode_limits_with_or_without_a_cap(max_reply_bytes):
    nested = b"\x91" * 100 + b"\xc0"  # [[[...[None]...]]], 100 levels
    with RawServer([nested]) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000, max_reply_bytes=max_reply_bytes) as client:
            with pytest.raises(codec.DecodeLimitError, match="levels deep"):
                client.call_endpoint("ping", requires_input=False)


# --- the keyword ------------------------------------------------------------------------------


def test_the_default_cap_is_the_servers_default_message_limit():
    with PolicyClient(port=5555) as client:
        assert client.max_reply_bytes == DEFAULT_MAX_REPLY_BYTES == 256 * 1024 * 1024


@pytest.mark.parametrize("value, expected", [(None, None), (1, 1), (CAP, CAP), (1e6, 1_000_000), (np.int64(4096), 4096)])
def test_a_cap_of_whole_bytes_or_none_is_accepted(value, expected):
    with PolicyClient(port=5555, max_reply_bytes=value) as client:
        assert client.max_reply_bytes == expected and type(client.max_reply_bytes) in (int, type(None))


@pytest.mark.parametrize("value", [0, -1, 1.5, float("nan"), float("inf"), True, "1MiB", 2**63])
def test_a_bad_cap_is_refused_naming_the_keyword_the_value_and_what_it_must_be(value):
    with pytest.raises(ValueError) as caught:
        PolicyClient(port=5555, max_reply_bytes=value)
    message = str(caught.value)
    assert message.startswith("max_reply_bytes must be a whole number of bytes from 1 to")
    assert "or None for no cap" in message and message.endswith(f"got {value!r}")
