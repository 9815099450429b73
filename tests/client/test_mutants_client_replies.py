"""PolicyClient reply handling that no other test held (found by mutation testing): the reference server's raw
b"ERROR" reply, and a multipart reply of exactly max_reply_bytes. Real ZeroMQ REP peers on loopback."""

from __future__ import annotations

import numpy as np
import pytest
from rep_thread import RepThread

from gr00t_client import PolicyClient, PolicyServerError, codec

OBSERVATION = {"state": {"x": np.zeros((1, 1, 3), np.float32)}}


def test_a_raw_error_frame_from_a_reference_server_is_a_server_error():
    """The reference server's b"ERROR" reply is its error, raised as PolicyServerError, not decoded as msgpack."""
    with RepThread(lambda _frames: [b"ERROR"]) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000, wire="reference") as client:
            with pytest.raises(PolicyServerError, match="Make sure we are running the correct policy server"):
                client.call_endpoint("ping", requires_input=False)


def test_a_multipart_reply_of_exactly_max_reply_bytes_is_accepted():
    """The cap is inclusive for a reply of many frames as for one: their sum equal to max_reply_bytes is decoded."""
    action = {"x": np.arange(64 * 1024, dtype=np.float32).reshape(1, 16, 4096)}
    frames = [bytes(memoryview(frame)) for frame in codec.encode_multipart({"ok": True, "result": [action, {}]})]
    assert len(frames) == 3  # the array travels in a frame of its own
    total = sum(len(frame) for frame in frames)
    with RepThread(lambda _frames: frames) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000, wire="multipart",
                          max_reply_bytes=total) as client:
            received, _info = client.get_action(OBSERVATION)
            np.testing.assert_array_equal(received["x"], action["x"])


def _reference_peer_failing_with(message):
    """A reference-like REP peer whose every handler fails: it answers {"error": message}, unmarked, as the reference does."""
    return RepThread(lambda _frames: [codec.encode({"error": message})])


def test_a_reference_servers_error_map_is_raised_not_returned_as_a_result():
    """Unmarked {"error": ...} replies from a server that is not ours are its errors: reset and get_action raise them."""
    with _reference_peer_failing_with("policy exploded") as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000) as client:
            with pytest.raises(PolicyServerError, match="Server error: policy exploded"):
                client.reset()
            with pytest.raises(PolicyServerError, match="Server error: policy exploded"):
                client.get_action(OBSERVATION)


def test_a_server_that_answers_get_server_info_but_is_not_a_gr00t_server_gets_reference_handling():
    """Only a get_server_info naming "gr00t-server" makes a server ours: another server's unmarked error map is raised."""

    def answer(frames):
        request = codec.decode(frames[0].buffer)
        if request.get("endpoint") == "get_server_info":
            return [codec.encode({"server": "someone-elses-server", "capabilities": ["multipart"]})]
        return [codec.encode({"error": "policy exploded"})]

    with RepThread(answer) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000) as client:
            with pytest.raises(PolicyServerError, match="Server error: policy exploded"):
                client.reset()


def test_a_refused_api_token_fails_the_first_call_without_asking_the_server_anything_else():
    """Unauthorized from get_server_info is raised at once: the client neither takes the server for a reference one
    nor sends the call itself (nor a wire probe) with a token the server refuses."""
    endpoints = []

    def answer(frames):
        endpoints.append(codec.decode(frames[0].buffer).get("endpoint"))
        return [codec.encode({"error": "Unauthorized: Invalid API token", "__gr00t_error__": True})]

    with RepThread(answer) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000, api_token="wrong") as client:
            with pytest.raises(PolicyServerError, match="Unauthorized: Invalid API token"):
                client.get_action(OBSERVATION)
    assert endpoints == ["get_server_info"]


@pytest.mark.parametrize("reply", [[{"x": np.zeros((1, 4, 1), np.float32)}], [{"x": np.zeros((1, 4, 1), np.float32)}, {}, {}]],
                         ids=["one-item", "three-items"])
def test_a_get_action_reply_that_is_not_an_action_info_pair_is_refused(reply):
    """[action] or [action, info, extra] is no answer to get_action: a WireDecodeError, not an IndexError or a guess."""

    def answer(frames):
        endpoint = codec.decode(frames[0].buffer).get("endpoint")
        return [codec.encode(reply if endpoint == "get_action" else {"error": f"Unknown endpoint: {endpoint}"})]

    with RepThread(answer) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000) as client:
            with pytest.raises(codec.WireDecodeError, match=r"get_action reply must be \[action, info\]; got list"):
                client.get_action(OBSERVATION)
