"""Wire codec: the reference msgpack format, every legacy format a peer may send, and our multipart format.

Reference format (one ZeroMQ frame): msgpack with msgpack-numpy array maps (bin keys `nd`, `type`, `kind`,
`shape`, `data`) and `{"__ModalityConfig__": True, "as_json": {...}}`. Decoding also accepts the early-N1.6
`__ndarray_class__`/`as_npy` wrapper, openpi's `__ndarray__` maps, str or bytes keys, and both ModalityConfig
markers with `as_json` as a map, JSON string or bytes. No pickle anywhere: object and void dtypes are refused.

This module encodes and decodes single-frame messages (the reference format and the np.save-era one) and is the
codec's public face: it also exports the multipart format (multipart.py), the exceptions (wire_errors.py) and
DecodeLimits (wire_limits.py).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .multipart import (MULTIPART_MAGIC, decode_multipart, encode_multipart, is_multipart, join_packed_array,
                        join_packed_map, pack_multipart_header)
from .wire_decode import (MAX_MODALITY_CONFIG_JSON_CHARS, _MARKER_KEYS, _decode_hook, _has, _locate, _undecodable,
                          _unpack, normalize_keys)
from .wire_encode import _PACKERS, _encode_array, _encode_hook, _pack
from .wire_errors import MALFORMED_BYTES_ERRORS, DecodeLimitError, WireDecodeError, WireEncodeError, packing_error
from .wire_limits import BufferLike, DecodeLimits

# pyzmq sends frames below this size by copying: zero-copy tracking costs more than copying ~256 KiB.
ZERO_COPY_MIN_BYTES = 256 * 1024
# The largest episode seed `gr00t-eval record` stores and a replay server sends back: LeRobot's tooling reads episode
# fields as int64, and past 2**64 - 1 the wire's integers stop (every rollout of such an episode errored).
MAX_RECORDED_SEED = 2**63 - 1


def unencodable_path(value: Any, encode_one: Callable[[Any], Any]) -> str:
    """The dotted key path ('observation.state.x', list items as [i]) of the first leaf of `value` that
    `encode_one` refuses alone, or of a map followed by "(map key ...)" for a key it refuses; '' when each leaf and key
    encodes alone. For error messages only: it encodes every leaf and key."""
    stack: List[Tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key in item:  # a key holding a lone surrogate was refused naming no place
                try:
                    encode_one(key)
                except (WireEncodeError, TypeError, ValueError, OverflowError):
                    return f"{where} (map key {key!r})" if where else f"(map key {key!r})"
            stack.extend((child, f"{where}.{key}" if where else str(key)) for key, child in reversed(list(item.items())))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, f"{where}[{index}]") for index, child in reversed(list(enumerate(item))))
        else:
            try:
                encode_one(item)
            except (WireEncodeError, TypeError, ValueError, OverflowError):
                return where
    return ""


def located_encode_error(exc: WireEncodeError, data: Any, endpoint: str,
                         encode_one: Callable[[Any], Any]) -> WireEncodeError:
    """`exc`, the encoder's refusal of a request's `data`, as '<endpoint>: <key path>: <exc>' (the key path where
    unencodable_path finds the refused value; '<endpoint>: <exc>' where none is found alone)."""
    where = unencodable_path(data, encode_one)
    return WireEncodeError(f"{endpoint}: {where}: {exc}" if where else f"{endpoint}: {exc}")


STRICT_MAP_KEY_TYPES = (str, bytes)  # all msgpack >= 1.0 decodes by default (strict_map_key): every reference peer


def sent_map_key(key: Any) -> Any:
    """A map key as the wire sends it: an Enum by its value (the encoder's hook; msgpack packs that value as is)."""
    return key.value if isinstance(key, Enum) else key


def refused_map_key(value: Any, where: str, refused: Callable[[Any], bool]) -> Optional[Tuple[str, Any]]:
    """(the path of the map, the key) of the first map key in `value` that `refused` is true of as the wire sends it
    (sent_map_key), maps, lists and tuples walked (each container once, so shared or cyclic ones end); None when
    there is none."""
    stack: List[Tuple[Any, str]] = [(value, where)]
    walked: set = set()
    while stack:
        item, where = stack.pop()
        if id(item) in walked:
            continue
        walked.add(id(item))
        if isinstance(item, dict):
            for key, child in item.items():
                if refused(sent_map_key(key)):
                    return where, key
                if isinstance(child, (dict, list, tuple)):
                    stack.append((child, f"{where}.{key}" if where else str(key)))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, f"{where}[{index}]") for index, child in enumerate(item)
                         if isinstance(child, (dict, list, tuple)))
    return None


def encode(obj: Any, reply: bool = False) -> bytes:
    """Encode a value in the reference (single-frame msgpack-numpy) format; `reply`: a server's result (its refusal of
    text words the policy's fault, not the request's)."""
    try:
        chunks: List[Any] = []
        _pack_spliced(obj, chunks, 0)  # one chunk (packed whole) unless a large array is spliced in
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except WireEncodeError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise packing_error(exc, "cannot encode message", reply) from exc


# Reference-format arrays from this size are spliced into the message: the msgpack around them is packed in pieces
# and joined with the array bytes in one copy. Packing them whole copies each array into the packer's growing
# buffer and that buffer into the result: a 2.6 MiB request took 417 us to encode, spliced about half.
_SPLICE_MIN_BYTES = 256 * 1024  # below it the copies cost less than packing in pieces (measured); >= 64 KiB: bin32
_SPLICE_MAX_BIN_BYTES = (1 << 32) - 1  # msgpack's largest bin; a larger array is left to the packer to refuse
_SPLICE_MAX_DEPTH = 16  # containers deeper than this are packed whole (their arrays copied as before)
_SPLICE_MAX_ITEMS = 64  # lists longer than this are packed whole instead of searched item by item


def _is_spliced_array(value: Any) -> bool:
    return (
        isinstance(value, np.ndarray)
        and _SPLICE_MIN_BYTES <= value.nbytes <= _SPLICE_MAX_BIN_BYTES
        and value.dtype.kind not in ("O", "V")
    )


def _holds_spliced_array(value: Any, depth: int) -> bool:
    """True when `value` is or holds (in maps and short lists, within _SPLICE_MAX_DEPTH levels) an array to splice."""
    if isinstance(value, dict):
        children: Any = dict.values(value)
    elif isinstance(value, (list, tuple)) and len(value) <= _SPLICE_MAX_ITEMS:
        children = value
    else:
        return _is_spliced_array(value)
    if depth >= _SPLICE_MAX_DEPTH:
        return False
    for child in children:  # a loop, not any(): this runs before every reference-format encode
        if isinstance(child, np.ndarray):
            if _is_spliced_array(child):
                return True
        elif isinstance(child, (dict, list, tuple)) and _holds_spliced_array(child, depth + 1):
            return True
    return False


def _bin32_header(size: int) -> bytes:
    """msgpack's bin header for `size` bytes from 64 KiB up (the form a Packer writes for them)."""
    return b"\xc6" + size.to_bytes(4, "big")


def _pack_spliced(value: Any, chunks: List[Any], depth: int) -> None:
    """Append to `chunks` the bytes a Packer writes for `value`, large arrays as views of their own memory."""
    if _is_spliced_array(value):
        fields = _encode_array(value)
        data = fields[b"data"]  # a flat uint8 view: len() is its size in bytes
        fields[b"data"] = b""
        head = _pack("reference", fields)
        chunks.append(head[:-2] + _bin32_header(len(data)))  # the empty bin (c4 00) becomes the real header
        chunks.append(data)
    elif isinstance(value, dict) and _holds_spliced_array(value, depth):
        chunks.append(_PACKERS.plain.pack_map_header(len(value)))
        for key, child in dict.items(value):  # the order (and the items) a Packer takes from a dict
            chunks.append(_pack("reference", key))
            _pack_spliced(child, chunks, depth + 1)
    elif isinstance(value, (list, tuple)) and _holds_spliced_array(value, depth):
        chunks.append(_PACKERS.plain.pack_array_header(len(value)))
        for child in value:
            _pack_spliced(child, chunks, depth + 1)
    else:
        chunks.append(_pack("reference", value))


def decode(data: BufferLike, limits: Optional[DecodeLimits] = None, share_buffer: bool = False) -> Any:
    """Decode a single-frame message in any accepted format; arrays come back writable.

    With `limits` (servers: `DecodeLimits.for_message_bytes(max_message_bytes)`), a message that would cost more
    than its size allows raises DecodeLimitError before the cost is paid. With `share_buffer`, large arrays may
    be writable views of `data` (no copy) when it is a writable buffer the caller hands over for good, such as a
    received ZeroMQ frame's `memoryview(frame)` (not its `.buffer`, which pyzmq 22 caches in a reference cycle that
    kept the frame until the cyclic GC ran); they keep it alive, and writing to them writes to it.
    """
    try:
        return _unpack(data, _decode_hook, limits, share_buffer=share_buffer)
    except WireDecodeError as exc:
        _locate(exc, data, lambda value: _unpack(value, _decode_hook, limits))
        raise
    except MALFORMED_BYTES_ERRORS as exc:  # msgpack raises many unrelated types on garbage; a caller's own goes on
        raise _undecodable(data, exc) from exc


def _is_npsave_marker_map(obj: Dict[Any, Any]) -> bool:
    """True for a map only an np.save-era peer writes: an `__ndarray_class__` array, or a ModalityConfig with
    the legacy marker alone (our np.save replies carry both markers, the newest upstream only the new one)."""
    if _has(obj, "__ndarray_class__"):
        return True
    return _has(obj, "__ModalityConfig_class__") and not _has(obj, "__ModalityConfig__")


def decode_noting_npsave(
    data: BufferLike, limits: Optional[DecodeLimits] = None, share_buffer: bool = False
) -> tuple[Any, bool]:
    """Decode like `decode` (`share_buffer` as there), and say whether the message was written by an np.save-era peer.

    The client uses this on replies to recognise an early-N1.6/early-N1.7 (or N1.5) server, which cannot read
    msgpack-numpy arrays and must be sent the np.save format (`encode_early_n16`) instead.
    """
    seen = []

    def hook(obj: Dict[Any, Any]) -> Any:
        if not seen and not _MARKER_KEYS.isdisjoint(obj) and _is_npsave_marker_map(obj):
            seen.append(True)
        return _decode_hook(obj)

    try:
        value = _unpack(data, hook, limits, share_buffer=share_buffer)
    except WireDecodeError as exc:  # what was seen before the failure still says who wrote it (the client learns
        exc.written_npsave = bool(seen)  # the wire from a reply whose configs it cannot read)
        _locate(exc, data, lambda value: _unpack(value, _decode_hook, limits))
        raise
    except MALFORMED_BYTES_ERRORS as exc:  # msgpack raises many unrelated types on garbage; a caller's own goes on
        error = _undecodable(data, exc)
        error.written_npsave = bool(seen)
        raise error from exc
    return value, bool(seen)


def encode_early_n16(obj: Any, reply: bool = False) -> bytes:
    """Encode in the early-N1.6 format (np.save wrappers); for talking to old reference servers and tests. `reply`: as
    encode's."""
    try:
        return _pack("npsave", obj)
    except WireEncodeError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:  # as encode(): msgpack's own errors name no format
        raise packing_error(exc, "cannot encode message in the early-N1.6 format", reply) from exc


__all__ = [
    "MAX_MODALITY_CONFIG_JSON_CHARS",
    "MULTIPART_MAGIC",
    "DecodeLimitError",
    "DecodeLimits",
    "WireDecodeError",
    "WireEncodeError",
    "_encode_hook",
    "decode",
    "decode_multipart",
    "decode_noting_npsave",
    "encode",
    "encode_early_n16",
    "encode_multipart",
    "is_multipart",
    "join_packed_array",
    "join_packed_map",
    "normalize_keys",
    "pack_multipart_header",
]
