"""Multipart format (ours to ours): frame 0 is MULTIPART_MAGIC, frame 1 a msgpack header in which each array
is an ExtType pointing at a later frame that carries the raw bytes, sent and received without copies."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import msgpack

from .wire_decode import _array_from_buffer, _cached_dtype, _decode_hook, _locate, _undecodable, _unpack
from .wire_encode import _EXT_BUFFER, _PACKERS, _pack
from .wire_errors import MALFORMED_BYTES_ERRORS, WireDecodeError, WireEncodeError, packing_error
from .wire_limits import DecodeLimits

MULTIPART_MAGIC = b"\x00GR00T-MP1"


def encode_multipart(obj: Any, reply: bool = False) -> List[Any]:
    """Encode as [MULTIPART_MAGIC, header, buffers...]; large array buffers are referenced, not copied. `reply`: a
    server's result (its refusal of text words the policy's fault, not the request's)."""
    buffers: List[Any] = []
    header = pack_multipart_header(obj, buffers, reply)
    return [MULTIPART_MAGIC, header, *buffers]


def pack_multipart_header(obj: Any, buffers: List[Any], reply: bool = False) -> bytes:
    """Pack obj as (part of) a multipart header; its large array buffers are appended to `buffers`.

    Frame i + 2 of the message must carry buffers[i]; sharing one list lets parts be packed separately.
    """
    packers = _PACKERS
    outer = packers.buffers
    packers.buffers = buffers
    try:
        return _pack("multipart", obj)
    except WireEncodeError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise packing_error(exc, "cannot encode message", reply) from exc
    finally:
        packers.buffers = outer


def join_packed_array(items: Sequence[bytes]) -> bytes:
    """A msgpack array made of already-packed items (so a caller can pack, and time, each part alone)."""
    return _PACKERS.plain.pack_array_header(len(items)) + b"".join(items)


def join_packed_map(items: Dict[str, bytes]) -> bytes:
    """A msgpack map of str keys to already-packed values."""
    packer = _PACKERS.plain
    return packer.pack_map_header(len(items)) + b"".join(_pack("plain", key) + value for key, value in items.items())


def is_multipart(frames: Sequence[Any]) -> bool:
    """True when the frames are a message in our multipart format."""
    if not frames:
        return False
    # The length first, then the few bytes: a zmq Frame's `.bytes` (or bytes()) copied a whole reference-wire message
    # (48 MB: 56 ms and 48 MB more) on the socket thread just to see it was not the magic frame, and pyzmq kept the copy.
    with memoryview(frames[0]) as view:
        return view.nbytes == len(MULTIPART_MAGIC) and view.tobytes() == MULTIPART_MAGIC


# An array reference [frame_index, dtype str, shape] takes tens of bytes (a shape has at most 64 dimensions).
MAX_ARRAY_REFERENCE_BYTES = 4096


def decode_multipart(frames: Sequence[Any], limits: Optional[DecodeLimits] = None) -> Any:
    """Decode [MULTIPART_MAGIC, header, buffers...]; arrays view the frames' memory (writable, no copy).

    `limits` bound the header's decode as for `decode` (the array frames are viewed, never copied).
    """
    if not is_multipart(frames):
        raise WireDecodeError("not a multipart GR00T message (missing magic frame)")
    if len(frames) < 2:
        raise WireDecodeError("multipart message without its header frame (only the magic frame came)")
    views = [memoryview(frame) for frame in frames]  # not a zmq Frame's `.buffer`: pyzmq 22 caches it, a cycle
    referenced = set()

    def ext_hook(code: int, data: bytes) -> Any:
        if code != _EXT_BUFFER:
            raise WireDecodeError(f"unknown msgpack extension type {code}; expected only type {_EXT_BUFFER} in a "
                                  "multipart header (an array reference to a later frame)")
        if len(data) > MAX_ARRAY_REFERENCE_BYTES:  # refused unread: decoding it could cost far more than its size
            raise WireDecodeError(f"array reference of {len(data)} bytes; expected at most {MAX_ARRAY_REFERENCE_BYTES} "
                                  "(a msgpack array [frame_index, dtype str, shape])")
        try:
            index, type_str, shape = msgpack.unpackb(data, raw=False)
        except MALFORMED_BYTES_ERRORS as exc:
            raise WireDecodeError(
                f"malformed array reference in multipart header ({type(exc).__name__}: {exc}); expected a msgpack "
                "array [frame_index, dtype str, shape]"
            ) from exc
        if not isinstance(index, int) or not 2 <= index < len(views):
            raise WireDecodeError(f"array reference points at frame {index!r}, message has {len(views)} frames")
        if index in referenced:  # a sender's framing bug, as stray frames are: refused, not decoded into two arrays
            raise WireDecodeError(f"multipart header: frame {index} is referenced twice; each array needs a frame of "
                                  "its own (two arrays viewing one frame would change together)")
        referenced.add(index)
        return _array_from_buffer(views[index], _cached_dtype(type_str), shape, copy=False)

    try:
        decoded = _unpack(views[1], _decode_hook, limits, ext_hook=ext_hook)
    except WireDecodeError as exc:
        def decodes(value: memoryview) -> Any:  # each value alone: frames the failed decode took are free again
            referenced.clear()
            return _unpack(value, _decode_hook, limits, ext_hook=ext_hook)

        _locate(exc, views[1], decodes)
        raise
    except MALFORMED_BYTES_ERRORS as exc:  # a caller's own exception (a signal handler's) goes on unchanged
        raise _undecodable(views[1], exc, "multipart header") from exc
    stray = sorted(set(range(2, len(views))) - referenced)
    if stray:  # a sender's framing bug: answering as if they were not there would hide it
        raise WireDecodeError(f"multipart message has {len(views) - 2} array frames but its header references "
                              f"{len(referenced)}; frames {stray[:8]} are referenced by nothing")
    return decoded
