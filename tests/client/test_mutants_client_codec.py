"""Wire codec refusals that no other test held (found by mutation testing): extra bytes after an array's data, a
multipart array over the header frame or with a negative dimension, an np.save blob longer than its header says,
Fortran-ordered np.save arrays, and the decode budget of many small maps or lists. Real msgpack bytes throughout."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest

from test_codec import npy_bytes

from gr00t_client import codec
from gr00t_client.codec import DecodeLimitError, DecodeLimits, WireDecodeError

ARRAY_REFERENCE_EXT = 42  # the multipart header's ExtType code for "array in frame N"


def array_map(type_str, shape, data):
    return {b"nd": True, b"type": type_str, b"kind": b"", b"shape": shape, b"data": data}


def array_reference(frame_index, dtype, shape):
    return msgpack.ExtType(ARRAY_REFERENCE_EXT, msgpack.packb([frame_index, dtype, shape]))


# --- arrays whose bytes do not fit their header -------------------------------------------------------------------


def test_an_array_with_more_data_than_its_shape_needs_is_refused_not_truncated():
    """Two float32 values sent as shape [1]: a peer's framing bug, refused instead of silently dropping a value."""
    message = msgpack.packb({"a": array_map("<f4", [1], np.array([1.0, 2.0], np.float32).tobytes())}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match="needs 4 bytes, got 8"):
        codec.decode(message)


def test_an_np_save_blob_longer_than_its_header_says_is_refused():
    """An early-N1.6 array whose blob carries bytes past what its header claims is refused, not truncated."""
    blob = npy_bytes(np.arange(3, dtype=np.float32)) + b"\x00" * 4
    with pytest.raises(WireDecodeError, match=r"\(12 bytes\), the blob carries 16 bytes"):
        codec.decode(msgpack.packb({"__ndarray_class__": True, "as_npy": blob}))


def test_a_fortran_ordered_np_save_array_decodes_to_the_same_values():
    """np.save writes an F-contiguous array in Fortran order; an early-N1.6 peer's (2, 3) array keeps its layout."""
    array = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    decoded = codec.decode(codec.encode_early_n16({"a": array}))["a"]
    np.testing.assert_array_equal(decoded, array)
    assert decoded.flags.writeable


# --- multipart array references ---------------------------------------------------------------------------------


def test_a_multipart_array_reference_to_the_header_frame_is_refused():
    """Frame 1 is the header itself: an array over it would decode the message's own msgpack bytes as numbers."""
    header = msgpack.packb({"a": array_reference(1, "|u1", [8])})
    with pytest.raises(WireDecodeError, match="array reference points at frame 1"):
        codec.decode_multipart([codec.MULTIPART_MAGIC, header.ljust(8, b"\xc0")])


def test_a_multipart_array_with_a_negative_dimension_is_refused():
    """A shape of [-1, 4] is refused as in the single-frame format (reshape would read -1 as 'infer')."""
    header = msgpack.packb({"a": array_reference(2, "<f4", [-1, 4])})
    with pytest.raises(WireDecodeError, match="array shape must be a list of non-negative ints"):
        codec.decode_multipart([codec.MULTIPART_MAGIC, header, bytearray(64)])


# --- decode budget ----------------------------------------------------------------------------------------------


def _limits():
    return DecodeLimits.for_message_bytes(1 << 20)


def test_many_small_maps_count_their_entries_against_the_decode_budget():
    """3,000 maps of 20 entries (60,000 items in about 130 KB) are over the budget of their size, though each map is small."""
    message = msgpack.packb([{i: 0 for i in range(20)} for _ in range(3000)])
    with pytest.raises(DecodeLimitError, match="holds more than"):
        codec.decode(message, _limits())
    assert len(codec.decode(message)) == 3000  # without limits it decodes


def test_lists_alone_are_held_to_the_decode_budget():
    """A message of lists only (no map whose hook would notice the count) is refused once its items pass the budget."""
    message = msgpack.packb([[0] * 20 for _ in range(3000)])
    with pytest.raises(DecodeLimitError, match="holds more than"):
        codec.decode(message, _limits())


# --- ModalityConfig JSON cap and the np.save-era marker -------------------------------------------------------------


def test_a_modality_config_json_string_of_exactly_the_cap_decodes():
    """The as_json cap is inclusive: a string of MAX_MODALITY_CONFIG_JSON_CHARS characters is read."""
    text = json.dumps({"delta_indices": [0], "modality_keys": ["arm"]})
    text = text.ljust(codec.MAX_MODALITY_CONFIG_JSON_CHARS)  # JSON allows trailing whitespace
    config = codec.decode(msgpack.packb({"__ModalityConfig__": True, "as_json": text}))
    assert config.modality_keys == ["arm"]
    with pytest.raises(DecodeLimitError, match="as_json is 65537 characters long"):
        codec.decode(msgpack.packb({"__ModalityConfig__": True, "as_json": text + " "}))


def test_a_modality_config_with_both_markers_is_not_taken_for_an_np_save_era_peer():
    """Both markers is the form every decoder reads; only the legacy marker alone (or an np.save array) marks np.save."""
    fields = {"delta_indices": [0], "modality_keys": ["arm"]}
    both = msgpack.packb({"__ModalityConfig__": True, "__ModalityConfig_class__": True, "as_json": fields})
    legacy = msgpack.packb({"__ModalityConfig_class__": True, "as_json": fields})
    assert codec.decode_noting_npsave(both)[1] is False
    assert codec.decode_noting_npsave(legacy)[1] is True
