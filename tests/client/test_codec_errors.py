"""Codec errors that say what was wrong and what was expected (not msgpack's or numpy's internals)."""

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
