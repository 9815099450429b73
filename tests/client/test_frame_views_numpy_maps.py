"""The viewing reader's one-step path for msgpack-numpy array maps (frame_views.numpy_map) gives exactly what the
generic reader and msgpack's own unpacker give: for every dtype and shape, above and below the view threshold,
in maps and lists; anything laid out differently, truncated or over a limit falls back and ends the same."""

from __future__ import annotations

import msgpack
import msgpack_numpy
import numpy as np
import pytest

from gr00t_client import codec, wire_decode

PAD = b"p" * 70000  # makes a message big enough for the viewing reader (SHARED_DECODE_MIN_BYTES as set below)
LIMITS = codec.DecodeLimits.for_message_bytes(1 << 26)


@pytest.fixture(autouse=True)
def _viewing_from_64_kib(monkeypatch):
    """These tests are about the viewing reader: let it read messages from 64 KiB (PAD), not only from 1 MiB."""
    monkeypatch.setattr(wire_decode, "SHARED_DECODE_MIN_BYTES", 64 * 1024)


def _both(packed: bytes):
    """(decoded with msgpack's unpacker and copies, decoded by the viewing reader) or the error text of each."""
    outcomes = []
    for data, share in ((packed, False), (bytearray(packed), True)):
        try:
            outcomes.append(codec.decode(memoryview(data), LIMITS, share_buffer=share))
        except codec.WireDecodeError as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")
    return outcomes


def _assert_same(left, right):
    if isinstance(left, dict):
        assert isinstance(right, dict) and list(left) == list(right)
        for key in left:
            _assert_same(left[key], right[key])
    elif isinstance(left, list):
        assert isinstance(right, list) and len(left) == len(right)
        for a, b in zip(left, right):
            _assert_same(a, b)
    elif isinstance(left, np.ndarray):
        assert isinstance(right, np.ndarray) and left.dtype == right.dtype and left.shape == right.shape
        assert right.flags.writeable and np.array_equal(left, right, equal_nan=left.dtype.kind in "fc")
    else:
        assert type(left) is type(right) and left == right


ARRAYS = [
    np.arange(7, dtype=np.float32).reshape(1, 1, 7),
    np.float64(2.5) * np.ones(()),  # 0-d
    np.zeros((0,), np.int16),
    np.zeros((2, 0, 3), np.uint8),
    np.arange(127, dtype=">i4"),  # the largest fixint dimension
    np.arange(128, dtype="<i8"),  # a uint8 dimension: the generic path
    np.array([True, False, True]),
    np.array([1 + 2j, np.nan], np.complex64),
    np.array(["2026-12-01T00:00"], "datetime64[ns]"),
    np.random.default_rng(0).integers(0, 255, (1, 1, 100, 100, 3), dtype=np.uint8),  # 30 KB: viewed
    np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)[:, ::2],  # non-contiguous, 8 KB
    np.arange(70000, dtype=np.uint8),  # a bin32 payload
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype.str}{list(a.shape)}")
@pytest.mark.parametrize("encoder", ["ours", "msgpack_numpy"])
def test_array_maps_decode_the_same_in_maps_and_lists(array, encoder):
    if encoder == "msgpack_numpy" and array.dtype.kind == "M":
        pytest.skip("msgpack-numpy cannot encode datetime64")
    message = {"pad": PAD, "obs": {"a": array, "nested": [array, {"b": array}]}}
    packed = codec.encode(message) if encoder == "ours" else msgpack.packb(message, default=msgpack_numpy.encode)
    copied, viewed = _both(packed)
    _assert_same(copied, viewed)


def _map(*entries) -> bytes:
    """A msgpack map packed entry by entry (keys and values as given), so layouts can be varied."""
    packer = msgpack.Packer(use_bin_type=True)
    return packer.pack_map_header(len(entries)) + b"".join(packer.pack(k) + packer.pack(v) for k, v in entries)


DATA = np.arange(3, dtype=np.float32).tobytes()
CANONICAL = [(b"nd", True), (b"type", "<f4"), (b"kind", b""), (b"shape", [3]), (b"data", DATA)]
VARIANTS = {
    "canonical": CANONICAL,
    "str keys": [(k.decode(), v) for k, v in CANONICAL],
    "other key order": [CANONICAL[1], CANONICAL[0], *CANONICAL[2:]],
    "type as bin": [CANONICAL[0], (b"type", b"<f4"), *CANONICAL[2:]],
    "kind not empty": [*CANONICAL[:2], (b"kind", b"V"), *CANONICAL[3:]],
    "nd false": [(b"nd", False), *CANONICAL[1:]],
    "shape too long for data": [*CANONICAL[:3], (b"shape", [4]), CANONICAL[4]],
    "negative dimension": [*CANONICAL[:3], (b"shape", [-3]), CANONICAL[4]],
    "shape not a list": [*CANONICAL[:3], (b"shape", 3), CANONICAL[4]],
    "data as str": [*CANONICAL[:4], (b"data", "abc")],
    "object dtype": [CANONICAL[0], (b"type", "|O"), *CANONICAL[2:]],
    "unknown dtype": [CANONICAL[0], (b"type", "<q9"), *CANONICAL[2:]],
}


@pytest.mark.parametrize("entries", list(VARIANTS.values()), ids=list(VARIANTS))
def test_maps_laid_out_otherwise_decode_or_fail_as_with_msgpack(entries):
    head = msgpack.packb("pad") + msgpack.packb(PAD, use_bin_type=True) + msgpack.packb("x")
    packed = b"\x82" + head + _map(*entries)  # {"pad": PAD, "x": <the map>}
    copied, viewed = _both(packed)
    if isinstance(copied, str):
        assert viewed == copied
    else:
        _assert_same(copied, viewed)


def test_every_truncation_of_an_array_map_fails_as_with_msgpack():
    packed = codec.encode({"pad": PAD, "x": np.arange(3, dtype=np.float32).reshape(1, 3)})
    map_start = packed.rindex(b"\x85\xc4\x02nd")
    for cut in range(map_start, len(packed)):
        copied, viewed = _both(packed[:cut])
        assert isinstance(copied, str) and viewed == copied, cut


def test_more_array_maps_than_the_reader_takes_decode_as_with_msgpack():
    message = {"pad": PAD, "rows": [np.full((1, 2), i, np.float32) for i in range(1000)]}  # 8000 items > 4096
    copied, viewed = _both(codec.encode(message))
    _assert_same(copied, viewed)


def test_random_byte_changes_inside_array_maps_decode_or_fail_as_with_msgpack():
    """Any byte of an array map's layout changed (a hostile or corrupt message): the one-step path either reads
    exactly what msgpack reads or steps aside."""
    rng = np.random.default_rng(7)
    message = {"pad": PAD, "state": {"x": np.arange(7, dtype=np.float32).reshape(1, 1, 7), "g": np.ones((2, 3), ">i2")}}
    packed = codec.encode(message)
    first_map = packed.index(b"\x85\xc4\x02nd")
    for _ in range(400):
        mutated = bytearray(packed)
        position = int(rng.integers(first_map, len(packed)))
        mutated[position] = int(rng.integers(0, 256))
        copied, viewed = _both(bytes(mutated))
        if isinstance(copied, str) or isinstance(viewed, str):
            assert viewed == copied, (position, copied, viewed)
        else:
            _assert_same(copied, viewed)
