"""A msgpack reader that returns large bin payloads as views of the message buffer instead of copies.

msgpack's C unpacker copies every bin into a fresh bytes object, and a writable array then needs a second copy:
two allocations and two copies (and their page faults) per camera frame. For a message in a buffer we own (a
received ZeroMQ frame), the bin payloads can be viewed in place. This reader handles the plain msgpack types
only and raises `NeedsFullUnpacker` on anything else (ext types, deep nesting, many items, malformed bytes), so
callers fall back to msgpack's own unpacker, which then gives the canonical value or error.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Dict, List

from .wire_errors import MALFORMED_BYTES_ERRORS

MapHook = Callable[[Dict[Any, Any], bool], Any]  # (the map, whether any of its values is a view) -> value

_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_I8 = struct.Struct(">b").unpack_from
_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
_I64 = struct.Struct(">q").unpack_from
_F32 = struct.Struct(">f").unpack_from
_F64 = struct.Struct(">d").unpack_from


# The fixed parts of a msgpack-numpy array map (bin keys, as msgpack-numpy and wire_encode._encode_array write them):
# {b"nd": True, b"type": <fixstr>, b"kind": b"", b"shape": <fixarray of fixints>, b"data": <bin>}
_ND_TYPE = b"\xc4\x02nd\xc3\xc4\x04type"
_KIND_SHAPE = b"\xc4\x04kind\xc4\x00\xc4\x05shape"
_DATA = b"\xc4\x04data"
_ND_TYPE_LEN, _KIND_SHAPE_LEN, _DATA_LEN = len(_ND_TYPE), len(_KIND_SHAPE), len(_DATA)


class NeedsFullUnpacker(Exception):
    """This message is outside what the viewing reader handles; unpack it with msgpack instead."""


def unpack_viewing(buffer: memoryview, on_map: MapHook, min_view_bytes: int, max_items: int, max_depth: int) -> Any:
    """Unpack one msgpack value from `buffer`; bins of `min_view_bytes` or more come back as memoryview slices.

    `on_map(mapping, has_views)` is called on every completed map; with has_views, some values are memoryviews.
    Lists hold no views: their bins are copied to bytes. Raises NeedsFullUnpacker past `max_items` values or
    `max_depth` nested maps/arrays, on ext types, trailing bytes, or anything malformed.
    """
    data = buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer
    end = data.nbytes
    position = 0
    items = 0

    def take(size: int) -> int:
        nonlocal position
        start = position
        position = start + size
        if position > end:
            raise NeedsFullUnpacker("truncated")
        return start

    def binary(size: int) -> Any:
        start = take(size)
        view = data[start : start + size]
        return view if size >= min_view_bytes else bytes(view)

    def text(size: int) -> str:
        start = take(size)
        return str(data[start : start + size], "utf-8")

    def container(count: int, is_map: bool, depth: int) -> Any:
        nonlocal items, position
        if depth > max_depth:
            raise NeedsFullUnpacker("deep")
        items += count
        if items > max_items:
            raise NeedsFullUnpacker("many items")
        if not is_map:
            values: List[Any] = [read(depth + 1) for _ in range(count)]
            return [bytes(v) if type(v) is memoryview else v for v in values]
        mapping: Dict[Any, Any] = {}
        has_views = False
        for _ in range(count):
            code = data[position] if position < end else -1
            if 0xA0 <= code <= 0xBF or code == 0xC4:  # str or bin keys up to 255 bytes: read here (the common case)
                size = code & 0x1F if code != 0xC4 else data[position + 1]
                start = position + (1 if code != 0xC4 else 2)
                position = start + size
                if position > end:
                    raise NeedsFullUnpacker("truncated")
                key = str(data[start:position], "utf-8") if code != 0xC4 else bytes(data[start:position])
            else:
                key = read(depth + 1)
                if type(key) is memoryview:
                    key = bytes(key)
            value = mapping[key] = read(depth + 1)
            if type(value) is memoryview:
                has_views = True
        return on_map(mapping, has_views)

    def numpy_map(depth: int) -> Any:
        """A msgpack-numpy array map laid out as msgpack-numpy and our encoder write it (fixstr dtype, fixint dims),
        read in one go from just after its 0x85 byte; None, with nothing consumed, for any other map."""
        nonlocal position, items
        type_at = position + _ND_TYPE_LEN
        if data[position:type_at] != _ND_TYPE or depth + 1 > max_depth or type_at >= end:
            return None
        type_code = data[type_at]
        type_end = type_at + 1 + (type_code & 0x1F)
        if not 0xA0 <= type_code <= 0xBF or data[type_end : type_end + _KIND_SHAPE_LEN] != _KIND_SHAPE:
            return None
        shape_at = type_end + _KIND_SHAPE_LEN
        count_code = data[shape_at] if shape_at < end else 0
        dims_end = shape_at + 1 + (count_code & 0x0F)
        if not 0x90 <= count_code <= 0x9F or dims_end + _DATA_LEN > end:
            return None
        dims = data[shape_at + 1 : dims_end].tolist()
        if (dims and max(dims) > 0x7F) or data[dims_end : dims_end + _DATA_LEN] != _DATA:  # positive fixints only
            return None
        bin_at = dims_end + _DATA_LEN
        bin_code = data[bin_at] if bin_at < end else 0
        if bin_code == 0xC4 and bin_at + 2 <= end:
            size, payload = data[bin_at + 1], bin_at + 2
        elif bin_code == 0xC5 and bin_at + 3 <= end:
            size, payload = _U16(data, bin_at + 1)[0], bin_at + 3
        elif bin_code == 0xC6 and bin_at + 5 <= end:
            size, payload = _U32(data, bin_at + 1)[0], bin_at + 5
        else:
            return None
        if payload + size > end:
            return None
        items += 5 + len(dims)  # what container() would count: the map's entries and the shape's
        if items > max_items:
            raise NeedsFullUnpacker("many items")
        position = payload + size
        view = data[payload:position]
        viewed = size >= min_view_bytes
        mapping = {b"nd": True, b"type": str(data[type_at + 1 : type_end], "utf-8"), b"kind": b"", b"shape": dims,
                   b"data": view if viewed else bytes(view)}
        return on_map(mapping, viewed)

    def read(depth: int) -> Any:
        nonlocal position
        if position >= end:
            raise NeedsFullUnpacker("truncated")
        code = data[position]
        position += 1
        if code <= 0x7F:
            return code
        if code >= 0xE0:
            return code - 0x100
        if code == 0x85:
            array = numpy_map(depth)
            if array is not None:
                return array
        if code <= 0x8F:
            return container(code & 0x0F, True, depth)
        if code <= 0x9F:
            return container(code & 0x0F, False, depth)
        if code <= 0xBF:
            return text(code & 0x1F)
        if code == 0xC0:
            return None
        if code == 0xC2:
            return False
        if code == 0xC3:
            return True
        if code == 0xC4:
            return binary(data[take(1)])
        if code == 0xC5:
            return binary(_U16(data, take(2))[0])
        if code == 0xC6:
            return binary(_U32(data, take(4))[0])
        if code == 0xCA:
            return _F32(data, take(4))[0]
        if code == 0xCB:
            return _F64(data, take(8))[0]
        if code == 0xCC:
            return data[take(1)]
        if code == 0xCD:
            return _U16(data, take(2))[0]
        if code == 0xCE:
            return _U32(data, take(4))[0]
        if code == 0xCF:
            return _U64(data, take(8))[0]
        if code == 0xD0:
            return _I8(data, take(1))[0]
        if code == 0xD1:
            return _I16(data, take(2))[0]
        if code == 0xD2:
            return _I32(data, take(4))[0]
        if code == 0xD3:
            return _I64(data, take(8))[0]
        if code == 0xD9:
            return text(data[take(1)])
        if code == 0xDA:
            return text(_U16(data, take(2))[0])
        if code == 0xDB:
            return text(_U32(data, take(4))[0])
        if code == 0xDC:
            return container(_U16(data, take(2))[0], False, depth)
        if code == 0xDD:
            return container(_U32(data, take(4))[0], False, depth)
        if code == 0xDE:
            return container(_U16(data, take(2))[0], True, depth)
        if code == 0xDF:
            return container(_U32(data, take(4))[0], True, depth)
        raise NeedsFullUnpacker(f"type byte {code:#04x}")  # ext types and the never-used 0xc1

    try:
        value = read(0)
    except NeedsFullUnpacker:
        raise
    except (struct.error, *MALFORMED_BYTES_ERRORS) as exc:  # bad UTF-8, unhashable keys, refusals from on_map:
        # msgpack gives the canonical answer (a caller's own exception, a signal handler's, is no such refusal)
        raise NeedsFullUnpacker(f"{type(exc).__name__}: {exc}") from exc
    finally:
        # read and container call each other through their closures, which also hold the buffer: a reference
        # cycle that kept each received frame alive until the cyclic GC ran (GBs under large frames). Rebinding
        # read breaks it, so the frame goes with the last array that views it.
        read = None  # type: ignore[assignment]
    if position != end:
        raise NeedsFullUnpacker("trailing bytes")
    return bytes(value) if type(value) is memoryview else value
