"""Long double arrays (np.longdouble '<f16', np.clongdouble '<c32'): numpy gives x86-64's 80-bit extended precision and
aarch64's (Jetson) IEEE binary128 or ppc64le's double-double the same type string, so a receiver read the 16 bytes with
its own layout: other numbers, no error. Every encoder and every decode path refuses float dtypes over 8 bytes and
complex over 16, saying to send value.astype(np.float64); float16/32/64 and complex64/128 still travel."""

from __future__ import annotations

import io
from typing import Any, Dict, Optional

import msgpack
import numpy as np
import pytest
import zmq
from serving import running_server

from gr00t_client import BasePolicy, PolicyClient, PolicyServerError, WireDecodeError, WireEncodeError, codec

# What a peer may write for a long double: its type strings and numpy's names for it.
LONG_TYPE_STRS = ["<f16", ">f16", "<c32", "g", "G", "longdouble", "clongdouble", "float128", "complex256"]
WIRE_TYPES = [np.float16, np.float32, np.float64, np.complex64, np.complex128]
REFUSED = r"long double dtype .* cannot be {}: .*no type string says which.*send value\.astype\(np\.(float64|complex128)\)"


def long_double_arrays():
    return [np.array([[[1.0, 2.5, -0.25]]], np.longdouble), np.array([[[1.0 + 2j]]], np.clongdouble)]


def parses(type_str: str) -> bool:
    try:
        np.dtype(type_str)
    except TypeError:
        return False
    return True


def npy_blob(descr: str, data: bytes) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": descr, "fortran_order": False, "shape": (1,)})
    return stream.getvalue() + data


def request_forms(type_str: str) -> Dict[str, Any]:
    """A get_action request holding state.x of `type_str` in each wire: msgpack-numpy, multipart and np.save."""
    size = np.dtype(type_str).itemsize
    data = bytes(range(size))
    def envelope(array: Any) -> Dict[str, Any]:
        return {"endpoint": "get_action", "data": {"observation": {"state": {"x": array}}, "options": None}}
    reference = {b"nd": True, b"type": type_str, b"kind": b"", b"shape": [1], b"data": data}
    reference_scalar = {b"nd": False, b"type": type_str, b"data": data}
    openpi = {b"__ndarray__": True, b"data": data, b"dtype": type_str, b"shape": [1]}
    npsave = {"__ndarray_class__": True, "as_npy": npy_blob(np.dtype(type_str).str, data)}
    reference_frame = msgpack.ExtType(42, msgpack.packb([2, type_str, [1]]))
    return {
        "reference": [msgpack.packb(envelope(reference), use_bin_type=True)],
        "reference-scalar": [msgpack.packb(envelope(reference_scalar), use_bin_type=True)],
        "openpi": [msgpack.packb(envelope(openpi), use_bin_type=True)],
        "npsave": [msgpack.packb(envelope(npsave), use_bin_type=True)],
        "multipart": [codec.MULTIPART_MAGIC, msgpack.packb(envelope(reference_frame), use_bin_type=True), data],
    }


def decode_any(frames):
    return codec.decode_multipart(frames) if len(frames) > 1 else codec.decode(frames[0])


class Echo(BasePolicy):
    """A lenient policy that answers with its state as the action, or with `answer` when one is set."""

    def __init__(self, answer: Optional[np.ndarray] = None) -> None:
        super().__init__(strict=False)
        self.answer = answer

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        return {"x": observation["state"]["x"] if self.answer is None else self.answer}, {}

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {}

    def get_modality_config(self) -> Dict[str, Any]:
        return {}


# --- encode ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("items", [3, 20_000], ids=["small", "own-frame"])
@pytest.mark.parametrize("encoder", [codec.encode, codec.encode_multipart, codec.encode_early_n16])
@pytest.mark.parametrize("long_type", [np.longdouble, np.clongdouble])
def test_every_encoder_refuses_a_long_double_array_saying_to_send_float64(encoder, long_type, items):
    if np.dtype(long_type).itemsize <= (8 if np.dtype(long_type).kind == "f" else 16):
        pytest.skip("this platform's long double is a double")
    with pytest.raises(WireEncodeError, match=REFUSED.format("encoded")):
        encoder({"state": {"x": np.ones(items, long_type)}})


@pytest.mark.parametrize("encoder", [codec.encode, codec.encode_early_n16])
def test_a_long_double_numpy_scalar_is_refused_too(encoder):
    if np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("this platform's long double is a double")
    with pytest.raises(WireEncodeError, match=REFUSED.format("encoded")):
        encoder({"gain": np.longdouble(1.5)})


@pytest.mark.parametrize("encoder", [codec.encode, codec.encode_multipart, codec.encode_early_n16])
@pytest.mark.parametrize("wire_type", WIRE_TYPES)
def test_float16_to_64_and_complex64_and_128_still_round_trip(encoder, wire_type):
    sent = (np.arange(6).reshape(2, 3) * 0.25 + (1j if np.dtype(wire_type).kind == "c" else 0)).astype(wire_type)
    frames = encoder({"x": sent})
    decoded = decode_any(frames if isinstance(frames, list) else [frames])["x"]
    assert decoded.dtype == sent.dtype and np.array_equal(decoded, sent)


# --- decode ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["reference", "reference-scalar", "openpi", "npsave", "multipart"])
@pytest.mark.parametrize("type_str", LONG_TYPE_STRS)
def test_every_decode_path_refuses_a_long_double_naming_key_and_dtype(type_str, form):
    if not parses(type_str):
        pytest.skip(f"numpy here has no {type_str!r}: its long double is a double")
    frames = request_forms(type_str)[form]
    for _ in range(2):  # a refused dtype is not cached as accepted
        with pytest.raises(WireDecodeError, match=REFUSED.format("decoded")) as caught:
            decode_any(frames)
        assert "data.observation.state.x" in str(caught.value)
        assert repr(np.dtype(type_str).str) in str(caught.value)


@pytest.mark.parametrize("type_str", ["<f12", "<c24"])
def test_32_bit_x86_long_double_strings_are_refused_as_well(type_str):
    array_map = {b"nd": True, b"type": type_str, b"kind": b"", b"shape": [1], b"data": bytes(int(type_str[2:]))}
    with pytest.raises(WireDecodeError, match=rf"data\.x: .*{type_str}"):  # a long double there, unknown elsewhere
        codec.decode(msgpack.packb({"data": {"x": array_map}}, use_bin_type=True))


# --- a real server --------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["reference", "npsave", "multipart"])
def test_a_server_answers_a_long_double_request_with_an_error_and_serves_the_next(form):
    if not parses("<f16"):
        pytest.skip("numpy here has no '<f16': its long double is a double")
    float64_state = np.array([1.0, 2.5, -0.25], np.float64)
    with running_server(Echo()) as server:
        context = zmq.Context()
        robot = context.socket(zmq.REQ)
        try:
            robot.connect(f"tcp://127.0.0.1:{server.port}")
            robot.send_multipart(request_forms("<f16")[form])
            assert robot.poll(20000), "no reply"
            error = decode_any(robot.recv_multipart())["error"]  # a multipart request is answered in multipart
        finally:
            robot.close(linger=0)
            context.term()
        assert "observation.state.x" in error and "'<f16'" in error, error
        assert "long double" in error and "value.astype(np.float64)" in error, error
        with PolicyClient(port=server.port, timeout_ms=10000, strict=False) as client:
            action, _ = client.get_action({"state": {"x": float64_state}})
        assert action["x"].dtype == np.float64 and np.array_equal(action["x"], float64_state)


@pytest.mark.parametrize("wire", ["multipart", "reference", "npsave"])
def test_a_client_refuses_a_long_double_observation_naming_its_key(wire):
    if np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("this platform's long double is a double")
    with running_server(Echo()) as server, \
            PolicyClient(port=server.port, timeout_ms=10000, strict=False, wire=wire) as client:
        with pytest.raises(WireEncodeError, match=r"get_action: observation\.state\.x: .*" + REFUSED.format("encoded")):
            client.get_action({"state": {"x": long_double_arrays()[0]}})


def test_a_policy_replying_with_a_long_double_action_gets_an_error_reply():
    if np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("this platform's long double is a double")
    with running_server(Echo(answer=long_double_arrays()[0])) as server, \
            PolicyClient(port=server.port, timeout_ms=10000, strict=False) as client:
        with pytest.raises(PolicyServerError, match=r"could not encode the result of 'get_action': .*"
                                                    + REFUSED.format("encoded")):
            client.get_action({"state": {"x": np.zeros(3, np.float32)}})
