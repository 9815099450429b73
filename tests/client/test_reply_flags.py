"""A reply's success and error flags are msgpack bools, and a reply carries no msgpack extension type but the multipart
array reference: anything else is refused naming the field, never read by its truth value or returned as a value.
Real ZeroMQ REP peers on loopback."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from rep_thread import RepThread

from gr00t_client import PolicyClient, codec

OBSERVATION = {"state": {"x": np.zeros((1, 1, 3), np.float32)}}
ACTION = {"arm": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}
NOT_BOOLS = ["false", np.array([1, 1]), np.True_, 1]
NOT_BOOL_IDS = ["str-false", "numpy-array", "numpy-bool", "int"]


def _answering_get_action(reply, server_info=None):
    """A REP peer that answers get_action with `reply` (frames) and get_server_info with `server_info` (or, without
    one, an unmarked error, as the reference does); ping with its usual map."""

    def answer(frames):
        request = codec.decode_multipart(frames) if codec.is_multipart(frames) else codec.decode(frames[0].buffer)
        endpoint = request.get("endpoint")
        if endpoint == "get_action":
            return reply
        if endpoint == "get_server_info" and server_info is not None:
            return [codec.encode(server_info)]
        if endpoint == "ping":
            return [codec.encode({"status": "ok", "message": "Server is running"})]
        return [codec.encode({"error": f"Unknown endpoint: {endpoint}"})]

    return RepThread(answer)


@pytest.mark.parametrize("flag", NOT_BOOLS, ids=NOT_BOOL_IDS)
def test_a_multipart_reply_whose_ok_is_not_a_bool_is_refused_naming_the_field(flag):
    """{"ok": "false", "error": ...} was returned as a success (its result the action), and an array as 'ok' escaped as
    numpy's bare 'truth value of an array is ambiguous' ValueError."""
    reply = codec.encode_multipart({"ok": flag, "error": "policy crashed", "result": [ACTION, {}]})
    with _answering_get_action(reply) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000, wire="multipart") as client:
            with pytest.raises(codec.WireDecodeError) as refused:
                client.get_action(OBSERVATION)
    message = str(refused.value)
    assert f"reply to 'get_action' from the policy server at {client.address} has 'ok' of type" in message
    assert "expected a msgpack bool, true or false" in message
    if isinstance(flag, np.bool_):  # numpy 2 calls it 'bool': "of type bool ... expected a msgpack bool"
        assert "of type numpy.bool" in message, message


@pytest.mark.parametrize("server_info", [None, {"server": "gr00t-server", "capabilities": []}],
                         ids=["reference-peer", "our-server"])
def test_a_single_frame_error_marker_that_is_not_a_bool_is_refused_naming_the_field(server_info):
    """An array as '__gr00t_error__' escaped as numpy's bare ValueError, naming neither the field nor the server."""
    reply = [codec.encode({"error": "boom", "__gr00t_error__": np.array([1, 1])})]
    expected = r"has '__gr00t_error__' of type numpy.ndarray \(array\(\[1, 1\]\)\); expected a msgpack bool, true or false"
    with _answering_get_action(reply, server_info) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000) as client:
            with pytest.raises(codec.WireDecodeError, match=expected):
                client.get_action(OBSERVATION)


@pytest.mark.parametrize("wire", ["reference", "multipart"])
def test_a_reply_holding_an_unknown_msgpack_extension_type_is_refused_not_returned_as_an_action(wire):
    """The single-frame decoder handed msgpack's ExtType back as the action's value; the multipart one refused it."""
    body = [{"arm": msgpack.ExtType(5, b"\x00" * 12)}, {}]
    if wire == "multipart":
        reply = codec.encode_multipart({"ok": True, "result": body})
    else:
        reply = [msgpack.packb(body, use_bin_type=True)]
    with _answering_get_action(reply) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000, wire=wire) as client:
            with pytest.raises(codec.WireDecodeError) as refused:
                client.get_action(OBSERVATION)
    # the key path walks the reply's [action, info] list (it stopped at the list: no key), and the reply is named
    where = "result[0].arm" if wire == "multipart" else "[0].arm"
    assert str(refused.value).startswith(f"reply to 'get_action' from the policy server at {client.address}: {where}: "
                                         "unknown msgpack extension type 5; expected "), str(refused.value)


@pytest.mark.parametrize("info", [{"complex": False, "data": 7}, {"complex": True, "data": "2"},
                                  {"complex": True, "data": "x"}], ids=["false", "true-number", "true-text"])
@pytest.mark.parametrize("wire", ["reference", "multipart"])
def test_a_plain_map_with_complex_and_data_keys_arrives_unchanged(wire, info):
    """A map {"complex": False, "data": 7} in a policy's info came back as the complex number 7+0j, and one with
    "complex": True as 2+0j or refused with the whole reply; msgpack-numpy's complex map has bin keys (its decoder
    reads no other)."""
    body = [ACTION, info]
    reply = codec.encode_multipart({"ok": True, "result": body}) if wire == "multipart" else [codec.encode(body)]
    with _answering_get_action(reply) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000, wire=wire) as client:
            _, got = client.get_action(OBSERVATION)
    assert got == info
    assert codec.decode(codec.encode({"z": 1 + 2j, "plain": info})) == {"z": 1 + 2j, "plain": info}
