"""Values a request's msgpack can hold but no accepted format means (an unknown extension type, a complex map whose
'data' is no complex number) are refused naming the key that holds them, in the single-frame and multipart formats
alike, and the policy is never called with them. A real PolicyServer on loopback, sent raw frames."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from reference_peer import EchoPolicy, raw_round_trip
from serving import running_server

from gr00t_client import codec

STATE = {"x": np.ones((1, 1, 3), np.float32)}


def _refusal(port, request, wire):
    frames = codec.encode_multipart(request) if wire == "multipart" else [codec.encode(request)]
    reply = raw_round_trip(port, [bytes(memoryview(frame)) for frame in frames])
    assert reply is not None, "no reply"
    message = codec.decode_multipart(reply) if len(reply) > 1 else codec.decode(reply[0])
    assert isinstance(message, dict) and "error" in message, message
    return message["error"]


@pytest.mark.parametrize("wire", ["reference", "multipart"])
def test_a_request_holding_an_unknown_msgpack_extension_type_is_refused_naming_its_key(wire):
    """The single-frame decoder handed the policy msgpack's ExtType, a (code, data) tuple, as the state's value."""
    policy = EchoPolicy()
    request = {"endpoint": "get_action",
               "data": {"observation": {"state": {"joints": msgpack.ExtType(5, b"\x00" * 12)}}}}
    with running_server(policy) as server:
        error = _refusal(server.port, request, wire)
    assert "data.observation.state.joints: unknown msgpack extension type 5" in error
    assert policy.calls == 0


@pytest.mark.parametrize("data", ["not-a-number", [1, 2]], ids=["malformed-str", "list"])
@pytest.mark.parametrize("wire", ["reference", "multipart"])
def test_a_malformed_complex_map_is_refused_naming_its_key_and_what_was_expected(wire, data):
    """complex()'s own ValueError/TypeError was worded 'undecodable message (ValueError: complex() arg is a malformed
    string)': valid msgpack called undecodable, with no key and no word of what was expected."""
    policy = EchoPolicy()
    request = {"endpoint": "get_action",
               "data": {"observation": {"state": STATE, "extra": {"z": {b"complex": True, b"data": data}}}}}
    with running_server(policy) as server:
        error = _refusal(server.port, request, wire)
    assert ("data.observation.extra.z: complex map 'data' must be a complex number or its repr like '(1+2j)', got "
            f"{type(data).__name__} {data!r}") in error
    assert "undecodable" not in error
    assert policy.calls == 0


@pytest.mark.parametrize("wire", ["reference", "multipart"])
def test_a_65_dimensional_array_is_refused_naming_the_count_and_numpys_limit(wire):
    """numpy's own ValueError (more than 64 dimensions) was answered 'needs 4 bytes, got 4'."""
    policy = EchoPolicy()
    shape = [1] * 65
    if wire == "multipart":
        joints = msgpack.ExtType(42, msgpack.packb([2, "<f4", shape]))
        frames = [codec.MULTIPART_MAGIC, msgpack.packb({"endpoint": "get_action", "data": {"observation": {
            "state": {"joints": joints}}}}, use_bin_type=True), b"\0" * 4]
    else:
        joints = {b"nd": True, b"type": "<f4", b"kind": b"", b"shape": shape, b"data": b"\0" * 4}
        frames = [msgpack.packb({"endpoint": "get_action", "data": {"observation": {"state": {"joints": joints}}}},
                                use_bin_type=True)]
    with running_server(policy) as server:
        reply = raw_round_trip(server.port, frames)
    assert reply is not None, "no reply"
    message = codec.decode_multipart(reply) if len(reply) > 1 else codec.decode(reply[0])
    assert ("data.observation.state.joints: array shape has 65 dimensions; numpy allows at most 64"
            in message["error"])
    assert policy.calls == 0


def _raw_frames(request, wire):
    """The request as raw frames of `wire`, its msgpack packed as any msgpack library would (no codec of ours)."""
    header = msgpack.packb(request, use_bin_type=True)
    return [codec.MULTIPART_MAGIC, header] if wire == "multipart" else [header]


def _raw_refusal(port, frames):
    reply = raw_round_trip(port, frames)
    assert reply is not None, "no reply"
    message = codec.decode_multipart(reply) if codec.is_multipart(reply) else codec.decode(reply[0])
    assert isinstance(message, dict) and "error" in message, message
    return message["error"]


@pytest.mark.parametrize("wire", ["reference", "multipart"])
def test_an_unknown_msgpack_extension_type_over_4_kib_is_refused_naming_its_key_not_a_decode_limit(wire):
    """An array a foreign encoder packs as an ext type (MessagePack-CSharp's LZ4 ext 98, say) is over 4 KiB: it was
    refused as a DecodeLimitError in msgpack's words ('5001 exceeds max_ext_len(4096)'), with neither key nor type."""
    policy = EchoPolicy()
    request = {"endpoint": "get_action",
               "data": {"observation": {"state": {"joints": msgpack.ExtType(98, b"\x00" * 5000)}}}}
    with running_server(policy) as server:
        error = _raw_refusal(server.port, _raw_frames(request, wire))
    assert "data.observation.state.joints: unknown msgpack extension type 98" in error
    assert "decode limit" not in error
    assert policy.calls == 0


@pytest.mark.parametrize("wire", ["reference", "multipart"])
def test_a_malformed_msgpack_timestamp_is_refused_naming_its_key(wire):
    """A timestamp (ext -1) of 3 bytes was answered 'undecodable message (ValueError: invalid timestamp data ...)'."""
    policy = EchoPolicy()
    placeholder = msgpack.ExtType(5, b"abc")
    frames = _raw_frames({"endpoint": "get_action", "data": {"observation": {"state": {"joints": placeholder}}}}, wire)
    frames[-1] = frames[-1].replace(b"\xc7\x03\x05abc", b"\xc7\x03\xffabc")  # ext -1 with a 3-byte body
    with running_server(policy) as server:
        error = _raw_refusal(server.port, frames)
    assert "data.observation.state.joints: malformed msgpack timestamp (extension type -1" in error
    assert policy.calls == 0


def test_a_multipart_array_reference_over_4_kib_is_refused_naming_its_key_before_it_is_read():
    """An array reference is [frame index, dtype str, shape]: tens of bytes; a large one is refused unread."""
    policy = EchoPolicy()
    reference = msgpack.ExtType(42, msgpack.packb([2, "<f4", [1] * 5000]))
    request = {"endpoint": "get_action", "data": {"observation": {"state": {"joints": reference}}}}
    with running_server(policy) as server:
        error = _raw_refusal(server.port, _raw_frames(request, "multipart") + [b"\0" * 4])
    assert f"data.observation.state.joints: array reference of {len(reference.data)} bytes" in error
    assert "decode limit" not in error
    assert policy.calls == 0
