"""Wire codec: dtypes of itemsize 0 are refused in every decode path and on encode; the np.save-era encoder
raises WireEncodeError, never msgpack's own errors."""

import io
import re

import msgpack
import numpy as np
import pytest

from gr00t_client import WireDecodeError, WireEncodeError, codec

HUGE = 2**40  # with itemsize 0 this many items "fit" an empty buffer
ZERO_SIZE_TYPES = ["|S0", "<U0", "S", "U"]


def zero_size_array(type_str, shape=(3,)):
    """An array of a zero-size dtype, built the only way numpy allows: over an empty buffer."""
    return np.ndarray(shape, np.dtype(type_str), bytearray())


def npy_blob(descr, shape):
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": descr, "fortran_order": False, "shape": shape})
    return stream.getvalue()


# --- decode ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_str", ZERO_SIZE_TYPES)
def test_a_reference_format_array_of_itemsize_zero_is_refused_naming_the_dtype(type_str):
    array_map = {b"nd": True, b"type": type_str, b"kind": b"", b"shape": [1, HUGE, 1], b"data": b""}
    message = msgpack.packb([{"action.x": array_map}, {}], use_bin_type=True)
    for _ in range(2):  # a refused dtype is not cached as accepted
        with pytest.raises(WireDecodeError, match=r"'[|<]?[SU]0' \(itemsize 0\) cannot be decoded"):
            codec.decode(message)


@pytest.mark.parametrize("key_type", [str, bytes])
def test_a_msgpack_numpy_map_with_str_or_bytes_keys_of_itemsize_zero_is_refused(key_type):
    array_map = {key_type(k, "ascii") if key_type is bytes else k: v
                 for k, v in {"nd": True, "type": "|S0", "kind": "", "shape": [HUGE], "data": b""}.items()}
    with pytest.raises(WireDecodeError, match=r"'\|S0' \(itemsize 0\)"):
        codec.decode(msgpack.packb(array_map, use_bin_type=True))


def test_a_msgpack_numpy_scalar_of_itemsize_zero_is_refused():
    scalar_map = {b"nd": False, b"type": "<U0", b"data": b""}
    with pytest.raises(WireDecodeError, match=r"'<U0' \(itemsize 0\)"):
        codec.decode(msgpack.packb(scalar_map, use_bin_type=True))


def test_openpi_maps_of_itemsize_zero_are_refused():
    array_map = {b"__ndarray__": True, b"data": b"", b"dtype": "|S0", b"shape": [HUGE]}
    scalar_map = {b"__npgeneric__": True, b"data": b"", b"dtype": "|S0"}
    for message in (array_map, scalar_map):
        with pytest.raises(WireDecodeError, match=r"'\|S0' \(itemsize 0\)"):
            codec.decode(msgpack.packb(message, use_bin_type=True))


def test_an_np_save_header_of_itemsize_zero_is_refused():
    message = {"__ndarray_class__": True, "as_npy": npy_blob("|S0", (HUGE,))}
    with pytest.raises(WireDecodeError, match=r"'\|S0' \(itemsize 0\)"):
        codec.decode(msgpack.packb(message, use_bin_type=True))


def test_a_multipart_array_reference_of_itemsize_zero_is_refused():
    reference = msgpack.ExtType(42, msgpack.packb([2, "|S0", [1, HUGE, 1]], use_bin_type=True))
    frames = [codec.MULTIPART_MAGIC, msgpack.packb({"action.x": reference}, use_bin_type=True), b""]
    with pytest.raises(WireDecodeError, match=r"'\|S0' \(itemsize 0\)"):
        codec.decode_multipart(frames)


def test_a_shared_decode_refuses_a_viewed_array_of_itemsize_zero():
    # Large enough for the viewing reader, with data large enough to be viewed rather than copied.
    array_map = {b"nd": True, b"type": "<U0", b"kind": b"", b"shape": [HUGE], b"data": b"\x00" * (32 * 1024)}
    message = msgpack.packb({"x": array_map, "pad": b"p" * (80 * 1024)}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match=r"'<U0' \(itemsize 0\)"):
        codec.decode(memoryview(bytearray(message)), share_buffer=True)


def test_a_shared_decode_refuses_a_small_array_of_itemsize_zero():
    array_map = {b"nd": True, b"type": "|S0", b"kind": b"", b"shape": [HUGE], b"data": b""}
    message = msgpack.packb({"x": array_map, "pad": b"p" * (80 * 1024)}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match=r"'\|S0' \(itemsize 0\)"):
        codec.decode(memoryview(bytearray(message)), share_buffer=True)


def test_arrays_of_one_byte_strings_still_round_trip():
    array = np.array([[b"a", b""], [b"c", b"d"]], dtype="S1")
    text = np.array(["x", ""], dtype="<U1")
    decoded = codec.decode(codec.encode({"a": array, "t": text}))
    assert decoded["a"].tolist() == array.tolist() and decoded["t"].tolist() == ["x", ""]
    decoded = codec.decode_multipart(codec.encode_multipart({"a": array}))
    assert decoded["a"].tolist() == array.tolist()


# --- encode ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_str", ["|S0", "<U0"])
@pytest.mark.parametrize("encoder", [codec.encode, codec.encode_multipart, codec.encode_early_n16])
def test_an_array_of_itemsize_zero_is_refused_on_encode_naming_the_dtype(encoder, type_str):
    with pytest.raises(WireEncodeError, match=rf"'{type_str}' \(itemsize 0\) cannot be encoded"):
        encoder({"observation": {"x": zero_size_array(type_str)}})


# --- the early-N1.6 (np.save-era) encoder's errors -----------------------------------------------------------


@pytest.mark.parametrize("value", [
    np.datetime64("2024-01-01"),
    np.timedelta64(5, "s"),
    np.datetime64("2024-01-01T00:00:00.123456789"),  # .item() is a bare int at ns resolution
])
def test_early_n16_refuses_datetime_scalars_with_a_wire_encode_error_naming_the_dtype(value):
    with pytest.raises(WireEncodeError, match=re.escape(f"numpy {value.dtype} scalar ({value!r}) has no early-N1.6")):
        codec.encode_early_n16({"options": {"stamp": value}})


def test_early_n16_wraps_msgpack_errors_in_a_wire_encode_error():
    with pytest.raises(WireEncodeError, match="early-N1.6 format: can not serialize 'complex'"):
        codec.encode_early_n16({"options": {"gain": np.complex64(1 + 2j)}})


def test_early_n16_still_encodes_datetime_arrays_as_np_save_arrays():
    stamps = np.array(["2024-01-01", "2024-01-02"], dtype="datetime64[D]")
    decoded = codec.decode(codec.encode_early_n16({"stamps": stamps}))
    np.testing.assert_array_equal(decoded["stamps"], stamps)
