"""Codec errors that say what was wrong and what was expected (not msgpack's or numpy's internals)."""

import re

import msgpack
import numpy as np
import pytest

from gr00t_client import codec
from gr00t_client.codec import DecodeLimitError, DecodeLimits, WireDecodeError


def _array_map(type_value, shape, data=b""):
    return {b"nd": True, b"type": type_value, b"kind": b"", b"shape": shape, b"data": data}


def test_an_array_dtype_given_as_a_list_is_named_with_what_was_expected():
    message = msgpack.packb({"a": _array_map([1], [1], b"\x00" * 4)}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match=r"array dtype must be a str like '<f4', got list \[1\]"):
        codec.decode(message)


def test_nesting_past_msgpacks_own_cap_is_the_documented_depth_error():
    # 2000 one-item arrays around an empty one; msgpack's C unpacker stops at 1024 levels with a StackError of no text
    message = b"\x91" * 2000 + b"\x90"
    with pytest.raises(DecodeLimitError, match="more than 32 levels deep; the limit is 32"):
        codec.decode(message, limits=DecodeLimits.for_message_bytes(2**20))


def test_a_malformed_multipart_array_reference_names_the_expected_form():
    header = msgpack.packb({"a": msgpack.ExtType(42, b"\xc1")}, use_bin_type=True)  # 0xc1: never valid msgpack
    with pytest.raises(WireDecodeError, match=r"malformed array reference .*expected a msgpack array \[frame_index, dtype str, shape\]"):
        codec.decode_multipart([codec.MULTIPART_MAGIC, header, b"\x00" * 4])


def test_a_shape_larger_than_numpy_can_address_says_so_instead_of_needs_0_bytes_got_0():
    message = msgpack.packb({"a": _array_map("<f4", [2**40, 2**40, 0])}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match=r"array shape \[1099511627776, 1099511627776, 0\] of dtype <f4 is larger than numpy can address"):
        codec.decode(message)
    # a shape that fits is still a plain size mismatch
    message = msgpack.packb({"a": _array_map("<f4", [2, 3], b"\x00" * 4)}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match="needs 24 bytes, got 4"):
        codec.decode(message)
    assert codec.decode(msgpack.packb({"a": _array_map("<f4", [0, 3])}, use_bin_type=True))["a"].shape == (0, 3)
    np.testing.assert_array_equal(codec.decode(codec.encode({"a": np.arange(6, dtype=np.float32)}))["a"], np.arange(6))


@pytest.mark.parametrize("wire", ["reference", "multipart"])
def test_a_tuple_map_key_is_named_as_the_cause_when_its_message_is_decoded(wire):
    """msgpack packs a tuple key as an array without complaint; the decode said only "unhashable type: 'list'"."""
    observation = {"state": {("left", "wrist"): np.zeros(2, np.float32)}}
    with pytest.raises(WireDecodeError, match=r"\(TypeError: unhashable type: 'list'\); a map key is a list or a map, as "
                                              r"a tuple or frozenset key is sent: keys must be str, bytes or numbers"):
        if wire == "reference":
            codec.decode(codec.encode(observation))
        else:
            codec.decode_multipart([bytes(frame) for frame in codec.encode_multipart(observation)])


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**40])
def test_an_int_outside_msgpacks_range_is_refused_naming_the_range_not_its_type(value):
    with pytest.raises(codec.WireEncodeError, match=r"is outside the wire's integer range, -2\*\*63 to 2\*\*64 - 1"):
        codec.encode({"options": {"seed": value}})
    assert codec.decode(codec.encode({"seed": 2**64 - 1})) == {"seed": 2**64 - 1}  # the edge itself goes


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 2**70])
def test_an_int_outside_msgpacks_range_is_refused_naming_the_range_in_the_np_save_format_too(value):
    """The np.save-era (early-N1.6) format said "cannot encode value of type int", as if no int could be sent."""
    with pytest.raises(codec.WireEncodeError, match=r"is outside the wire's integer range, -2\*\*63 to 2\*\*64 - 1"):
        codec.encode_early_n16({"options": {"seed": value}})
    assert codec.decode(codec.encode_early_n16({"seed": 2**64 - 1})) == {"seed": 2**64 - 1}


def test_a_policy_client_refuses_pickling_naming_itself_and_what_to_do():
    """A spawn-started worker (macOS and Windows' default) or a Ray task handed a client got pickle's words about a
    ZeroMQ handle."""
    import pickle

    from gr00t_client import ActionChunker, PolicyClient

    with PolicyClient("127.0.0.1", 5555) as client:
        for target in (client, ActionChunker(client)):
            with pytest.raises(TypeError, match=r"a PolicyClient cannot be pickled \(it holds a ZeroMQ socket to "
                                                r"tcp://127\.0\.0\.1:5555\): make one in each process"):
                pickle.dumps(target)


@pytest.mark.parametrize("array_map, missing", [
    ({b"nd": True, b"kind": b"", b"shape": [1, 7], b"data": b"\x00" * 28}, "'type'"),
    ({b"nd": True, b"type": "<f4", b"kind": b"", b"shape": [1, 7]}, "'data'"),
    ({b"nd": True, b"type": "<f4", b"kind": b"", b"data": b"\x00" * 28}, "'shape'"),
    ({"nd": True, "kind": "", "shape": [1, 7], "data": b"\x00" * 28}, "'type'"),  # str keys, as other clients send
    ({b"nd": False, b"kind": b""}, "'type', 'data'"),  # a scalar
], ids=["no_type", "no_data", "no_shape", "str_keys_no_type", "scalar_no_type_nor_data"])
def test_a_msgpack_numpy_array_map_missing_a_field_is_named_not_passed_on_as_a_map(array_map, missing):
    message = msgpack.packb({"state": {"joints": array_map}}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match=f"malformed msgpack-numpy array map: missing {missing} \\(its keys: 'nd'"):
        codec.decode(message)


def test_an_openpi_array_map_without_data_is_named_not_passed_on_as_a_map():
    message = msgpack.packb({"a": {b"__ndarray__": True, b"dtype": "<f4", b"shape": [2]}}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match="malformed openpi array map: missing 'data' \\(its keys: '__ndarray__', 'dtype', 'shape'\\)"):
        codec.decode(message)


def test_a_state_key_named_like_an_array_marker_is_a_plain_key_not_a_malformed_array():
    observation = {"state": {"nd": np.ones((1, 2), np.float32), "type": np.zeros((1, 1), np.float32)}}
    decoded = codec.decode(codec.encode(observation))
    assert sorted(decoded["state"]) == ["nd", "type"]
    np.testing.assert_array_equal(decoded["state"]["nd"], observation["state"]["nd"])


@pytest.mark.parametrize("dim", [[0], "x" * 8, b"\x00" * 8, True, 2.0], ids=["list", "str", "bytes", "bool", "float"])
@pytest.mark.parametrize("form", ["msgpack-numpy", "openpi"])
def test_a_shape_dimension_that_is_not_an_int_is_refused_without_allocating_for_it(dim, form):
    """int * list (or str, bytes) is repetition: a ~100-byte message whose shape was [[0], 2**23] made the server (and a
    client decoding such a reply) allocate 0.5-3 GiB before the shape was found wrong."""
    import tracemalloc

    shape = [dim, 2**23]
    array = (_array_map(b"<f8", shape, b"\x00" * 8) if form == "msgpack-numpy"
             else {"__ndarray__": True, "data": b"\x00" * 8, "dtype": "S99999999", "shape": shape})
    message = msgpack.packb({"a": array}, use_bin_type=True)
    tracemalloc.start()
    try:
        with pytest.raises(WireDecodeError, match="array shape must be a list of non-negative ints"):
            codec.decode(message)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"decoding a {len(message)}-byte message allocated {peak} bytes"


@pytest.mark.parametrize("data", ["abcd", [1.0, 2.0], None])
def test_an_openpi_array_whose_data_is_not_bytes_is_named(data):
    message = msgpack.packb({"a": {"__ndarray__": True, "data": data, "dtype": "<f4", "shape": [1]}}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match=f"openpi array 'data' must be bytes, got {type(data).__name__}"):
        codec.decode(message)


@pytest.mark.parametrize("data", [None, [1, 2], "nan"])
def test_an_openpi_scalar_whose_data_is_not_one_number_is_named(data):
    """nil decoded to NaN, a list to an array where a numpy scalar is promised, "nan" to NaN."""
    message = msgpack.packb({"a": {"__npgeneric__": True, "dtype": "<f4", "data": data}}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match=f"openpi scalar 'data' must be one <f4 value, got {type(data).__name__}"):
        codec.decode(message)


def test_an_openpi_scalar_of_a_number_decodes_to_that_numpy_scalar():
    message = msgpack.packb({"a": {"__npgeneric__": True, "dtype": "<f4", "data": 1.5}}, use_bin_type=True)
    value = codec.decode(message)["a"]
    assert type(value) is np.float32 and value == 1.5


def test_an_openpi_scalar_of_a_str_dtype_takes_its_text():
    message = msgpack.packb({"a": {"__npgeneric__": True, "dtype": "<U5", "data": "hello"}}, use_bin_type=True)
    assert codec.decode(message)["a"] == np.str_("hello")


@pytest.mark.parametrize("dtype, data", [("<i8", 3.7), ("<f4", 1e300), ("<f2", 1e10), ("|b1", 1), ("<i8", True)])
def test_an_openpi_scalar_that_its_dtype_would_change_is_refused(dtype, data):
    """3.7 as int64 decoded to 3 and 1e300 as float32 to inf (with only numpy's overflow warning)."""
    message = msgpack.packb({"a": {"__npgeneric__": True, "dtype": dtype, "data": data}}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match="openpi scalar 'data'"):
        codec.decode(message)


@pytest.mark.parametrize("dtype, data, expected", [("<i2", 70000, "from -32768 to 32767"), ("|u1", -1, "from 0 to 255"),
                                                   ("|u1", 256, "from 0 to 255"), ("<i1", 200, "from -128 to 127")])
def test_an_openpi_integer_scalar_outside_its_dtype_is_refused_with_its_range(dtype, data, expected):
    """numpy 1.x wrapped them without a word (int16 70000 decoded to 4464, uint8 -1 to 255); numpy 2 raises."""
    message = msgpack.packb({"a": {"b": {"__npgeneric__": True, "dtype": dtype, "data": data}}}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match=rf"a\.b: openpi scalar 'data' {data} is not a .{dtype[1:]} value: "
                                              f"expected an integer {expected}"):
        codec.decode(message)


@pytest.mark.parametrize("dtype, data", [("<i2", -32768), ("|u1", 255), ("<u8", 2**64 - 1), ("<i8", -(2**63))])
def test_an_openpi_integer_scalar_at_the_end_of_its_range_decodes(dtype, data):
    message = msgpack.packb({"a": {"__npgeneric__": True, "dtype": dtype, "data": data}}, use_bin_type=True)
    value = codec.decode(message)["a"]
    assert value.dtype == np.dtype(dtype) and value == data


@pytest.mark.parametrize("dtype, data", [("<f4", 1e300), ("<f2", 70000), ("<c8", 1e300)])
def test_an_openpi_float_scalar_that_would_become_inf_is_refused(dtype, data):
    """numpy 1.21 cast 1e300 to float32 inf without a word; later numpy raises under errstate."""
    message = msgpack.packb({"a": {"__npgeneric__": True, "dtype": dtype, "data": data}}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match=re.escape(f"a: openpi scalar 'data' {data!r} is not a {dtype} value")):
        codec.decode(message)
