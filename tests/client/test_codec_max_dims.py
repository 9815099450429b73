"""Arrays of more dimensions than numpy allows are refused naming the count and the limit, in every array form."""

import io

import msgpack
import numpy as np
import pytest

from gr00t_client import codec
from gr00t_client.codec import WireDecodeError

_DIMS = 65  # numpy 2 allows 64
_LIMIT = "array shape has 65 dimensions; numpy allows at most 64"


def _npy_blob(shape):
    blob = io.BytesIO()
    np.save(blob, np.zeros(1, "<f4"), allow_pickle=False)
    raw = blob.getvalue()
    header_size = int.from_bytes(raw[8:10], "little")
    header = repr({"descr": "<f4", "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    header = header.ljust(max(header_size, len(header) + 1) - 1) + b"\n"
    return raw[:8] + len(header).to_bytes(2, "little") + header + raw[10 + header_size:]


@pytest.mark.parametrize("array_map", [
    {b"nd": True, b"type": "<f4", b"kind": b"", b"shape": [1] * _DIMS, b"data": b"\0" * 4},
    {"nd": True, "type": "<f4", "kind": "", "shape": [1] * _DIMS, "data": b"\0" * 4},
    {"__ndarray__": True, "dtype": "<f4", "shape": [1] * _DIMS, "data": b"\0" * 4},
    {"__ndarray_class__": True, "as_npy": _npy_blob([1] * _DIMS)},
], ids=["msgpack-numpy", "msgpack-numpy-str-keys", "openpi", "np.save"])
def test_a_65_dimensional_array_is_refused_naming_the_count_and_the_limit(array_map):
    message = msgpack.packb({"observation": {"state": array_map}}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match=_LIMIT):
        codec.decode(message)


def test_a_65_dimensional_array_viewed_in_a_large_message_is_refused_naming_the_limit():
    # a reply read with share_buffer: arrays from 16 KiB view the message instead of being copied
    data = b"\0" * (2 * 1024 * 1024)
    array_map = {b"nd": True, b"type": "|u1", b"kind": b"", b"shape": [1] * (_DIMS - 1) + [len(data)], b"data": data}
    message = msgpack.packb({"action": array_map}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match=_LIMIT):
        codec.decode(message, share_buffer=True)


def test_a_65_dimensional_multipart_array_is_refused_naming_the_limit():
    header = msgpack.packb({"a": msgpack.ExtType(42, msgpack.packb([2, "<f4", [1] * _DIMS]))}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match=_LIMIT):
        codec.decode_multipart([codec.MULTIPART_MAGIC, header, b"\0" * 4])


def test_a_65_dimensional_shape_of_large_dims_names_the_dimensions_not_the_address_space():
    array_map = {b"nd": True, b"type": "<f4", b"kind": b"", b"shape": [2] * _DIMS, b"data": b"\0" * 4}
    with pytest.raises(WireDecodeError, match=_LIMIT):
        codec.decode(msgpack.packb({"a": array_map}, use_bin_type=True))


def test_a_64_dimensional_array_still_decodes():
    array_map = {b"nd": True, b"type": "<f4", b"kind": b"", b"shape": [1] * 64, b"data": b"\0" * 4}
    assert codec.decode(msgpack.packb({"a": array_map}, use_bin_type=True))["a"].ndim == 64
