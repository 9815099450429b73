"""Wire codec: the reference msgpack format, every legacy format a peer may send, and our multipart format.

Reference format (one ZeroMQ frame): msgpack with msgpack-numpy array maps (bin keys `nd`, `type`, `kind`,
`shape`, `data`) and `{"__ModalityConfig__": True, "as_json": {...}}`. Decoding also accepts the early-N1.6
`__ndarray_class__`/`as_npy` wrapper, openpi's `__ndarray__` maps, str or bytes keys, and both ModalityConfig
markers with `as_json` as a map, JSON string or bytes. No pickle anywhere: object and void dtypes are refused.

Multipart format (ours to ours): frame 0 is MULTIPART_MAGIC, frame 1 a msgpack header in which each array
is an ExtType pointing at a later frame that carries the raw bytes, sent and received without copies.
"""

from __future__ import annotations

import io
import json
import re
import threading
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import msgpack
import numpy as np

from .frame_views import NeedsFullUnpacker, unpack_viewing
from .modality import ModalityConfig

MULTIPART_MAGIC = b"\x00GR00T-MP1"
_EXT_BUFFER = 42  # ExtType code of an array reference in a multipart header
_COPY_BELOW_BYTES = 16 * 1024  # smaller buffers are cheaper to copy than to track as frames
# pyzmq sends frames below this size by copying: zero-copy tracking costs more than copying ~256 KiB.
ZERO_COPY_MIN_BYTES = 256 * 1024
# Decoding with share_buffer: messages from this size are read with frame_views, and arrays from
# SHARED_ARRAY_MIN_BYTES view the message instead of being copied twice (smaller ones are cheaper to copy). The
# Python reader costs more than msgpack's copies below about 1 MiB (wire round trips, server CPU per request:
# 2 x 256x256 0.55 -> 0.43 ms, 4 x 256x256 0.79 -> 0.69 ms, 1 x 480x640 even, 3 x 480x640 1.48 -> 1.35 ms viewed).
SHARED_DECODE_MIN_BYTES = 1024 * 1024
SHARED_ARRAY_MIN_BYTES = 16 * 1024
VIEWING_MAX_ITEMS = 4096  # the Python reader gives way to msgpack's C unpacker on messages of many small items
# A ModalityConfig's as_json string: real ones are a few hundred characters. Longer ones are refused unparsed, and
# within DecodeLimits each counts one item per JSON_CHARS_PER_ITEM characters (a JSON value takes at least two:
# "0,"), so JSON costs no more per byte than msgpack does: a 16 MB string of "[]," made 844 MB of lists.
MAX_MODALITY_CONFIG_JSON_CHARS = 64 * 1024
JSON_CHARS_PER_ITEM = 2

BufferLike = Union[bytes, bytearray, memoryview, Any]


class WireDecodeError(ValueError):
    """Bytes that are not a valid message in any format we accept."""


class WireEncodeError(TypeError):
    """A value that has no wire representation (e.g. an object-dtype array)."""


class DecodeLimitError(WireDecodeError):
    """A message that would cost far more to decode than its size: too many items, too deep, a lying header."""


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on one decode, so that decoding costs at most a small constant times the message size.

    Maps, arrays and their entries count as items; a message may hold `base_items` plus one item per
    `bytes_per_item` bytes of it (a Python object costs ~60 bytes, a msgpack item as little as 1). Lengths are
    checked on the msgpack header, before anything is allocated. Nesting deeper than `max_depth` is refused.
    """

    max_message_bytes: int
    max_depth: int = 32
    base_items: int = 16384
    bytes_per_item: int = 64

    @classmethod
    def for_message_bytes(cls, max_message_bytes: int) -> "DecodeLimits":
        """The limits a server that accepts messages up to `max_message_bytes` decodes with (made once per size:
        a server asks for every request)."""
        limits = _LIMITS_BY_SIZE.get(max_message_bytes) if cls is DecodeLimits else None
        if limits is None:
            limits = cls(max_message_bytes=int(max_message_bytes))
            if cls is DecodeLimits and len(_LIMITS_BY_SIZE) < 64:
                _LIMITS_BY_SIZE[max_message_bytes] = limits
        return limits

    def item_budget(self, message_bytes: int) -> int:
        """Items (maps, arrays and their entries) a message of this many bytes may hold."""
        return self.base_items + int(message_bytes) // self.bytes_per_item


_LIMITS_BY_SIZE: Dict[Any, DecodeLimits] = {}


def _refuse_dtype(dtype: np.dtype, direction: str) -> None:
    """Refuse object, void and zero-size dtypes (callers cache the dtypes that pass, so this is off the hot path)."""
    if dtype.kind in ("O", "V"):
        kind = "object" if dtype.kind == "O" else "void/structured"
        message = f"arrays of {kind} dtype {dtype.str!r} cannot be {direction} (no pickle on the wire)"
        raise (WireEncodeError if direction == "encoded" else WireDecodeError)(message)
    if dtype.itemsize == 0:
        # Any shape fits an empty buffer at 0 bytes per item: a 56-byte message made a 2**40-item '|S0' array
        # whose copies asked for 1 TiB and whose conversions read bytes outside the buffer.
        message = f"arrays of dtype {dtype.str!r} (itemsize 0) cannot be {direction}; expected a dtype with a size, like '|S1'"
        raise (WireEncodeError if direction == "encoded" else WireDecodeError)(message)


def _as_dtype(type_str: Any) -> np.dtype:
    if isinstance(type_str, bytes):
        type_str = type_str.decode("ascii", "replace")
    if not isinstance(type_str, str):
        raise WireDecodeError(f"array dtype must be a str like '<f4', got {type_str!r}")
    try:
        dtype = np.dtype(type_str)
    except TypeError as exc:
        raise WireDecodeError(f"unknown array dtype {type_str!r}") from exc
    _refuse_dtype(dtype, "decoded")
    return dtype


def _array_from_buffer(data: Any, dtype: np.dtype, shape: Any, copy: bool) -> np.ndarray:
    try:
        if not isinstance(shape, (list, tuple)):
            raise TypeError("bad shape")
        if copy and type(data) is bytes:  # small arrays, one per state key: one constructor over a writable copy
            size = dtype.itemsize
            for dim in shape:
                size *= dim
            if size != len(data):  # the constructor would accept a longer buffer
                raise ValueError("size mismatch")
            return np.ndarray(shape, dtype, bytearray(data))  # refuses negative and non-int dims
        if shape and min(shape) < 0:  # reshape reads -1 as "infer"
            raise ValueError("negative dimension")
        array = np.frombuffer(data, dtype=dtype).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise _shape_error(data, dtype, shape) from exc
    return array.copy() if copy or not array.flags.writeable else array


def _shape_error(data: Any, dtype: np.dtype, shape: Any) -> WireDecodeError:
    """The precise reason an array's shape and data do not fit (only computed on failure)."""
    if not isinstance(shape, (list, tuple)) or not all(type(d) is int and d >= 0 for d in shape):
        return WireDecodeError(f"array shape must be a list of non-negative ints, got {shape!r}")
    largest = np.iinfo(np.intp).max
    extent = dtype.itemsize  # numpy multiplies every dimension, zeros aside, before it sees a zero
    for dim in shape:
        extent *= max(dim, 1)
    if extent > largest:
        return WireDecodeError(
            f"array shape {list(shape)} of dtype {dtype.str} is larger than numpy can address ({largest} bytes, "
            "zero-length dimensions aside); expected a shape whose size matches the data sent"
        )
    expected = dtype.itemsize
    for dim in shape:
        expected *= dim
    size = memoryview(data).nbytes
    return WireDecodeError(f"array of dtype {dtype.str} and shape {list(shape)} needs {expected} bytes, got {size}")


_DTYPES: Dict[Any, np.dtype] = {}  # validated dtypes by their wire string (the hot path sees a handful)


def _cached_dtype(type_str: Any) -> np.dtype:
    try:
        dtype = _DTYPES.get(type_str)
    except TypeError:  # a list or map is unhashable: say what was expected instead
        raise WireDecodeError(f"array dtype must be a str like '<f4', got {type(type_str).__name__} {type_str!r:.40}") from None
    if dtype is None:
        dtype = _as_dtype(type_str)
        if len(_DTYPES) < 256:
            _DTYPES[type_str] = dtype
    return dtype


def _get(obj: Dict[Any, Any], name: str) -> Any:
    if name in obj:
        return obj[name]
    return obj.get(name.encode())


def _has(obj: Dict[Any, Any], name: str) -> bool:
    return name in obj or name.encode() in obj


def _modality_config_from(obj: Dict[Any, Any]) -> ModalityConfig:
    if not _has(obj, "as_json"):
        raise WireDecodeError("Malformed ModalityConfig payload: missing 'as_json'")
    payload = _get(obj, "as_json")
    if isinstance(payload, (bytes, bytearray, str)) and len(payload) > MAX_MODALITY_CONFIG_JSON_CHARS:
        raise DecodeLimitError(f"Malformed ModalityConfig payload: as_json is {len(payload)} characters long; a "
                               f"ModalityConfig's JSON is at most {MAX_MODALITY_CONFIG_JSON_CHARS} (real ones: a few hundred)")
    if isinstance(payload, (bytes, bytearray)):
        payload = payload.decode("utf-8")
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise WireDecodeError(f"Malformed ModalityConfig payload: as_json is not JSON ({exc})") from exc
    payload = normalize_keys(payload)  # nested maps (action_configs) may carry bytes keys too
    try:
        return ModalityConfig.from_json_dict(payload)
    except (ValueError, TypeError) as exc:
        raise WireDecodeError(f"Malformed ModalityConfig payload: {exc}") from exc


# Every special map below has one of these keys (str or bytes); other maps skip the checks (the hot path).
_MARKER_KEYS = frozenset(
    key
    for name in ("nd", "__ndarray__", "__npgeneric__", "__ndarray_class__", "__ModalityConfig__", "__ModalityConfig_class__", "complex")
    for key in (name, name.encode())
)


def _decode_hook(obj: Dict[Any, Any]) -> Any:
    """msgpack object_hook: turn every known special map back into its value."""
    if _MARKER_KEYS.isdisjoint(obj):
        return obj
    if len(obj) == 5 and obj.get(b"nd") is True and obj.get(b"kind") == b"" and type(obj.get(b"data")) is bytes:
        # The canonical msgpack-numpy array (what we and the reference send): the hot path.
        return _array_from_buffer(obj[b"data"], _cached_dtype(obj.get(b"type")), obj.get(b"shape"), copy=True)
    if _has(obj, "nd") and _has(obj, "type") and _has(obj, "data"):  # msgpack-numpy
        dtype = _as_dtype(_get(obj, "type"))
        kind = _get(obj, "kind")
        if kind not in (None, b"", ""):
            raise WireDecodeError(f"msgpack-numpy array kind {kind!r} (structured/object data) is refused")
        data = _get(obj, "data")
        if not isinstance(data, (bytes, bytearray)):
            raise WireDecodeError(f"msgpack-numpy 'data' must be bytes, got {type(data).__name__}")
        if _get(obj, "nd"):
            return _array_from_buffer(data, dtype, _get(obj, "shape"), copy=True)
        return _array_from_buffer(data, dtype, [], copy=True)[()]
    if _has(obj, "__ndarray__") and _has(obj, "data"):  # openpi-style
        dtype = _as_dtype(_get(obj, "dtype"))
        return _array_from_buffer(_get(obj, "data"), dtype, _get(obj, "shape"), copy=True)
    if _has(obj, "__npgeneric__"):  # openpi-style numpy scalar
        return _as_dtype(_get(obj, "dtype")).type(_get(obj, "data"))
    if _has(obj, "__ndarray_class__"):  # early N1.6 and N1/N1.5
        blob = _get(obj, "as_npy")
        if not isinstance(blob, (bytes, bytearray)):
            raise WireDecodeError("Malformed __ndarray_class__ payload: 'as_npy' must be bytes")
        return _load_npy(blob)
    if _has(obj, "__ModalityConfig__") or _has(obj, "__ModalityConfig_class__"):
        return _modality_config_from(obj)
    if _has(obj, "complex") and _has(obj, "data") and len(obj) == 2:
        data = _get(obj, "data")
        return complex(data.decode() if isinstance(data, bytes) else data)
    return obj


def _load_npy(blob: Union[bytes, bytearray]) -> np.ndarray:
    """An np.save blob -> array, its header checked against the bytes present before anything is allocated.

    (np.load on a file-like object allocates what the header claims first, so a 100-byte blob could ask for
    terabytes.) Object and structured dtypes are refused, as everywhere on the wire.
    """
    stream = io.BytesIO(blob)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"npy format version {version} is not accepted (1.0 and 2.0 are)")
    except ValueError as exc:
        raise WireDecodeError(f"Malformed __ndarray_class__ payload (np.save header): {exc}") from exc
    if dtype.hasobject:  # np.load's own words, which peers know
        raise WireDecodeError("Refused __ndarray_class__ payload: Object arrays cannot be loaded when allow_pickle=False")
    _refuse_dtype(dtype, "decoded")
    count = 1
    for dim in shape:
        count *= int(dim)
    offset = stream.tell()
    present = len(blob) - offset
    if count * dtype.itemsize != present:
        raise WireDecodeError(
            f"Malformed __ndarray_class__ payload: header says dtype {dtype.str} and shape {list(shape)} "
            f"({count * dtype.itemsize} bytes), the blob carries {present} bytes"
        )
    array = np.frombuffer(blob, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran_order else "C").copy(order="C")


def _json_items(obj: Dict[Any, Any]) -> int:
    """Decode-budget items of a ModalityConfig map's as_json string (none when its fields came as a msgpack map: the
    unpacker counted those already)."""
    payload = _get(obj, "as_json")
    return len(payload) // JSON_CHARS_PER_ITEM if isinstance(payload, (str, bytes, bytearray)) else 0


def _check_depth(value: Any, max_depth: int) -> None:
    """Refuse maps/arrays nested deeper than max_depth (walked with a stack: a hostile depth cannot recurse)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > max_depth:
            raise DecodeLimitError(f"message nests maps and arrays more than {max_depth} levels deep; the limit is {max_depth}")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _viewing_map_hook(object_hook: Callable[[Dict[Any, Any]], Any]) -> Callable[[Dict[Any, Any], bool], Any]:
    """The map hook of the viewing reader: canonical msgpack-numpy arrays over a view become arrays over the
    buffer; any other map gets its views copied to bytes and goes through `object_hook` as usual."""

    def on_map(obj: Dict[Any, Any], has_views: bool) -> Any:
        if has_views:
            if len(obj) == 5 and obj.get(b"nd") is True and obj.get(b"kind") == b"" and type(obj.get(b"data")) is memoryview:
                return _array_from_buffer(obj[b"data"], _cached_dtype(obj.get(b"type")), obj.get(b"shape"), copy=False)
            obj = {key: bytes(value) if type(value) is memoryview else value for key, value in obj.items()}
        value = object_hook(obj)
        if type(value) is ModalityConfig and _json_items(obj):  # its JSON is charged to the budget by _unpack only
            raise NeedsFullUnpacker("a ModalityConfig sent as JSON")
        return value

    return on_map


def _shareable_view(data: BufferLike) -> Optional[memoryview]:
    """`data` as a memoryview when arrays may view it: writable, and big enough that copies would cost."""
    try:
        view = memoryview(data)
    except TypeError:
        return None
    return view if not view.readonly and view.nbytes >= SHARED_DECODE_MIN_BYTES else None


def _unpack(data: BufferLike, object_hook: Callable[[Dict[Any, Any]], Any], limits: Optional[DecodeLimits],
            ext_hook: Optional[Callable[[int, bytes], Any]] = None, share_buffer: bool = False) -> Any:
    """msgpack.unpackb with our hooks; with `limits`, within the item budget and depth of the message's size.

    With `share_buffer` and a writable buffer, msgpack-numpy arrays view the buffer (frame_views) unless the
    message needs msgpack's own unpacker, which then decodes it as without.
    """
    view = _shareable_view(data) if share_buffer and ext_hook is None else None
    if view is not None:
        max_depth = limits.max_depth if limits is not None else DecodeLimits.max_depth
        try:
            return unpack_viewing(view, _viewing_map_hook(object_hook), SHARED_ARRAY_MIN_BYTES, VIEWING_MAX_ITEMS, max_depth)
        except NeedsFullUnpacker:
            pass
    extra: Dict[str, Any] = {} if ext_hook is None else {"ext_hook": ext_hook}
    if limits is None:
        return msgpack.unpackb(data, object_hook=object_hook, raw=False, strict_map_key=False, **extra)
    size = memoryview(data).nbytes
    budget = limits.item_budget(size)
    used = 0  # items spent
    containers = 0  # maps and arrays seen

    def over_budget(advice: str = "send arrays as numpy arrays, not lists") -> DecodeLimitError:
        return DecodeLimitError(
            f"message of {size} bytes holds more than {budget} maps, arrays and entries (the decode limit for "
            f"its size); {advice}"
        )

    # The counting is inlined in both hooks: they run once per map and array of every request.
    def counted_map(obj: Dict[Any, Any]) -> Any:
        nonlocal used, containers
        used += len(obj) + 1
        containers += 1
        if used > budget:
            raise over_budget()
        value = object_hook(obj)
        if type(value) is ModalityConfig:  # the values its JSON string held count too
            used += _json_items(obj)
            if used > budget:
                raise over_budget(f"counting one per {JSON_CHARS_PER_ITEM} characters of each ModalityConfig's as_json")
        return value

    def counted_list(obj: List[Any]) -> List[Any]:
        nonlocal used, containers
        used += len(obj) + 1
        containers += 1
        if used > budget:
            raise over_budget()
        return obj

    try:
        value = msgpack.unpackb(
            data, object_hook=counted_map, list_hook=counted_list, raw=False, strict_map_key=False,
            max_str_len=limits.max_message_bytes, max_bin_len=limits.max_message_bytes,
            max_array_len=budget, max_map_len=budget, max_ext_len=4096, **extra,
        )
    except msgpack.StackError as exc:  # msgpack's own nesting cap (1024 levels) comes before ours
        raise DecodeLimitError(
            f"message nests maps and arrays more than {limits.max_depth} levels deep; the limit is {limits.max_depth}"
        ) from exc
    except ValueError as exc:
        if "exceeds max_" in str(exc):  # a length header over the budget, refused before allocating
            raise _length_limit_error(data, size, exc) from exc
        raise
    # Every level of nesting is a container the hooks counted, so a message of few containers cannot be too deep:
    # the second walk is only needed for messages with more containers than levels allowed.
    if containers > limits.max_depth and isinstance(value, (dict, list)):
        _check_depth(value, limits.max_depth)
    return value


_LENGTH_OVER = re.compile(r"(\d+) exceeds max_(array|map)_len\((\d+)\)")  # msgpack's words for a long header
_MAP_HEADERS = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])  # fixmap, map 16, map 32
_STR_HEADERS = frozenset([*range(0xA0, 0xC0), 0xD9, 0xDA, 0xDB])  # fixstr, str 8, 16, 32
_PATH_DEPTH = 6  # keys followed at most (a request's lists sit 3 deep): each level decodes its value once more


def _length_limit_error(data: BufferLike, size: int, exc: ValueError) -> DecodeLimitError:
    """The DecodeLimitError for msgpack's refusal of a map or array header longer than the item budget: what it is,
    where (its keys), and that numbers belong in a numpy array."""
    found = _LENGTH_OVER.search(str(exc))
    if found is None:
        return DecodeLimitError(f"message of {size} bytes exceeds a decode limit: {exc}")
    items, kind, limit = int(found.group(1)), found.group(2), int(found.group(3))
    where = ".".join(_path_to_long_container(data, limit))
    what = "a list" if kind == "array" else "a map"
    return DecodeLimitError(
        f"message of {size} bytes exceeds a decode limit: it holds {what} of {items} items"
        f"{f' at {where}' if where else ''}, more than the {limit} its size allows; send numbers as a numpy array "
        "(np.asarray(...)), not a Python list"
    )


def _path_to_long_container(message: BufferLike, limit: int) -> List[str]:
    """The str keys that lead to the first map or array of more than `limit` items (['data', 'observation', 'extra']),
    at most _PATH_DEPTH of them. Only on the error path: each level checks its values without keeping what it decodes,
    so memory stays small, and a message nested deep costs at most _PATH_DEPTH more decodes of its size."""
    path: List[str] = []
    try:
        data = memoryview(message).cast("B")
        while data[0] in _MAP_HEADERS and len(path) < _PATH_DEPTH:
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(data))
            unpacker.feed(data)
            count = unpacker.read_map_header()
            if count > limit:
                return path
            for _ in range(count):
                if data[unpacker.tell()] not in _STR_HEADERS:
                    return path
                key = unpacker.unpack()
                start = unpacker.tell()
                unpacker.skip()
                if _holds_long_container(data[start:unpacker.tell()], limit):
                    path.append(str(key))
                    data = data[start:unpacker.tell()]
                    break
            else:
                return path
    except (ValueError, TypeError, IndexError, msgpack.UnpackException):
        pass
    return path


def _holds_long_container(value: memoryview, limit: int) -> bool:
    """True when the msgpack `value` holds a map or array of more than `limit` items (each dropped once decoded)."""
    try:
        msgpack.unpackb(value, object_hook=_dropped, list_hook=_dropped, max_array_len=limit, max_map_len=limit,
                        raw=False, strict_map_key=False)
    except ValueError as exc:
        return "exceeds max_" in str(exc)
    return False


def _dropped(_: Any) -> None:
    return None


def _raw_bytes(array: np.ndarray) -> memoryview:
    """The C-order bytes of an array without copying when possible (a flat byte view, so every dtype,
    datetime64 included, exports a buffer)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


_DTYPE_STRS: Dict[np.dtype, str] = {}  # the wire string of each dtype already accepted for encoding


def _dtype_str(dtype: np.dtype) -> str:
    """dtype.str (built anew on every access) from a cache; object and void dtypes refused."""
    type_str = _DTYPE_STRS.get(dtype)
    if type_str is None:
        _refuse_dtype(dtype, "encoded")
        type_str = dtype.str
        if len(_DTYPE_STRS) < 256:
            _DTYPE_STRS[dtype] = type_str
    return type_str


def _refuse_masked(array: np.ndarray) -> None:
    """Refuse a numpy masked array: the wire has no mask, and what its masked entries became depended on the path
    (the fill value, 1e20, from tobytes(); the hidden data from a view or np.save): a plausible action either way."""
    if type(array) is not np.ndarray and isinstance(array, np.ma.MaskedArray):
        masked = int(np.ma.count_masked(array))
        raise WireEncodeError(
            f"a numpy masked array (shape {array.shape}, {masked} masked entries) cannot be sent: the wire carries no "
            "mask; send array.filled(value) with the value the policy should see, or drop the masked rows"
        )


def _encode_array(array: np.ndarray) -> Dict[bytes, Any]:
    _refuse_masked(array)
    type_str = _dtype_str(array.dtype)
    # Small arrays: one tobytes() copy is cheaper than building a view; large ones are viewed, msgpack copies once.
    data = array.tobytes() if array.nbytes < _COPY_BELOW_BYTES else _raw_bytes(array)
    return {b"nd": True, b"type": type_str, b"kind": b"", b"shape": list(array.shape), b"data": data}


def _encode_hook(obj: Any) -> Any:
    """msgpack default: numpy arrays and scalars, ModalityConfig, enums, complex."""
    if isinstance(obj, np.ndarray):
        return _encode_array(obj)
    if isinstance(obj, np.generic):
        _refuse_dtype(obj.dtype, "encoded")
        return {b"nd": False, b"type": obj.dtype.str, b"data": obj.tobytes()}  # msgpack-numpy sends no kind here
    if isinstance(obj, ModalityConfig):
        return {"__ModalityConfig__": True, "as_json": obj.to_json_dict()}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, complex):
        return {b"complex": True, b"data": repr(obj)}
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, int):  # msgpack hands over the ints it cannot hold
        raise WireEncodeError(f"int {obj if abs(obj) < 10**30 else str(obj)[:30] + '...'} is outside the wire's "
                              "integer range, -2**63 to 2**64 - 1 (msgpack's 64 bits)")
    raise WireEncodeError(f"cannot encode value of type {type(obj).__name__} for the wire{_array_like_hint(obj)}")


def _array_like_hint(obj: Any) -> str:
    """How to send an array-like the wire does not know (a torch tensor, a JAX or CuPy array), or ''."""
    if type(obj).__module__.split(".")[0] == "torch":
        return "; send a numpy array: value.detach().cpu().numpy()"
    if hasattr(obj, "__array__"):
        return "; send a numpy array: np.asarray(value)"
    return ""


def unencodable_path(value: Any, encode_one: Callable[[Any], Any]) -> str:
    """The dotted key path ('observation.state.x', list items as [i]) of the first leaf of `value` that
    `encode_one` refuses alone; '' when each leaf encodes alone. For error messages only: it encodes every leaf."""
    stack: List[Tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            stack.extend((child, f"{where}.{key}" if where else str(key)) for key, child in reversed(list(item.items())))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, f"{where}[{index}]") for index, child in reversed(list(enumerate(item))))
        else:
            try:
                encode_one(item)
            except (WireEncodeError, TypeError, ValueError, OverflowError):
                return where
    return ""


class _Packers(threading.local):
    """This thread's reusable msgpack Packers.

    msgpack.packb builds a new Packer, and with it a 256 KiB buffer (an mmap, its page faults and a munmap), on
    every call: 20-30 us each, several times per request. A Packer keeps its buffer between packs, so each thread
    keeps one per hook; one busy in an outer pack (a hook that encodes) makes way for a fresh one.
    """

    def __init__(self) -> None:
        self.reference = msgpack.Packer(default=_encode_hook, use_bin_type=True)
        self.plain = msgpack.Packer(use_bin_type=True)
        self.multipart = msgpack.Packer(default=_multipart_hook, use_bin_type=True)
        self.npsave = msgpack.Packer(default=_npsave_hook, use_bin_type=True)
        self.buffers: Optional[List[Any]] = None  # the multipart pack in progress appends its array buffers here
        self.busy: set = set()


_KEEP_PACKER_BELOW_BYTES = 1 << 20  # a packer whose buffer grew past this is replaced, so no thread holds a big one


def _pack(kind: str, obj: Any) -> bytes:
    """msgpack.packb(obj) with this thread's `kind` Packer (a key of _HOOKS) and its hook."""
    packers = _PACKERS
    if kind in packers.busy:  # re-entered from a hook on this thread: a fresh packer, as packb would use
        return msgpack.Packer(default=_HOOKS[kind], use_bin_type=True).pack(obj)
    packers.busy.add(kind)
    try:
        packed = getattr(packers, kind).pack(obj)
    finally:
        packers.busy.discard(kind)
    if len(packed) >= _KEEP_PACKER_BELOW_BYTES:
        setattr(packers, kind, msgpack.Packer(default=_HOOKS[kind], use_bin_type=True))
    return packed


def encode(obj: Any) -> bytes:
    """Encode a value in the reference (single-frame msgpack-numpy) format."""
    try:
        chunks: List[Any] = []
        _pack_spliced(obj, chunks, 0)  # one chunk (packed whole) unless a large array is spliced in
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except WireEncodeError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireEncodeError(f"cannot encode message: {exc}") from exc


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


# A map key msgpack packed as an array or a map: a tuple or frozenset key on the sender's side (msgpack packs one
# without complaint, and no Python map can be keyed by the list it decodes to).
_UNHASHABLE_KEY_HINT = ("; a map key is a list or a map, as a tuple or frozenset key is sent: keys must be str, "
                        "bytes or numbers")


def _undecodable(data: BufferLike, exc: Exception, what: str = "message") -> WireDecodeError:
    """'undecodable message (FormatError: ...)', with the first bytes when msgpack said nothing more."""
    said = str(exc).strip()
    if not said:
        head = bytes(memoryview(data)[:8])
        said = f"not msgpack: {len(memoryview(data))} bytes starting {head.hex(' ')}"
    hint = _UNHASHABLE_KEY_HINT if isinstance(exc, TypeError) and "unhashable" in said else ""
    return WireDecodeError(f"undecodable {what} ({type(exc).__name__}: {said}){hint}")


def decode(data: BufferLike, limits: Optional[DecodeLimits] = None, share_buffer: bool = False) -> Any:
    """Decode a single-frame message in any accepted format; arrays come back writable.

    With `limits` (servers: `DecodeLimits.for_message_bytes(max_message_bytes)`), a message that would cost more
    than its size allows raises DecodeLimitError before the cost is paid. With `share_buffer`, large arrays may
    be writable views of `data` (no copy) when it is a writable buffer the caller hands over for good, such as a
    received ZeroMQ frame's `.buffer`; they keep it alive, and writing to them writes to it.
    """
    try:
        return _unpack(data, _decode_hook, limits, share_buffer=share_buffer)
    except WireDecodeError:
        raise
    except Exception as exc:  # msgpack raises many unrelated types on garbage
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
        raise
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        error = _undecodable(data, exc)
        error.written_npsave = bool(seen)
        raise error from exc
    return value, bool(seen)


def _npsave_hook(value: Any) -> Any:
    """msgpack default of the early-N1.6 format: np.save arrays, both ModalityConfig markers, Python scalars."""
    if isinstance(value, np.ndarray):
        _refuse_masked(value)
        _refuse_dtype(value.dtype, "encoded")
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return {"__ndarray_class__": True, "as_npy": buffer.getvalue()}
    if isinstance(value, ModalityConfig):
        # Both markers: np.save-era decoders look for the legacy one, the newest upstream for the other.
        return {"__ModalityConfig__": True, "__ModalityConfig_class__": True, "as_json": value.to_json_dict()}
    if isinstance(value, np.generic):  # np.save-era peers cannot read numpy scalars: send the Python value
        _refuse_dtype(value.dtype, "encoded")
        if value.dtype.kind in ("M", "m"):  # .item() gives a datetime msgpack cannot pack, or (ns) a bare int
            raise WireEncodeError(
                f"a numpy {value.dtype} scalar ({value!r}) has no early-N1.6 (np.save-era) form; "
                "send it as an array (np.asarray(value)), an int or a str"
            )
        return value.item()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise WireEncodeError(f"cannot encode value of type {type(value).__name__} in the early-N1.6 format{_array_like_hint(value)}")


def encode_early_n16(obj: Any) -> bytes:
    """Encode in the early-N1.6 format (np.save wrappers); for talking to old reference servers and tests."""
    try:
        return _pack("npsave", obj)
    except WireEncodeError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:  # as encode(): msgpack's own errors name no format
        raise WireEncodeError(f"cannot encode message in the early-N1.6 format: {exc}") from exc


# --- multipart (zero-copy) format --------------------------------------------------------------------


def encode_multipart(obj: Any) -> List[Any]:
    """Encode as [MULTIPART_MAGIC, header, buffers...]; large array buffers are referenced, not copied."""
    buffers: List[Any] = []
    header = pack_multipart_header(obj, buffers)
    return [MULTIPART_MAGIC, header, *buffers]


def _multipart_hook(value: Any) -> Any:
    """msgpack default of a multipart header: large arrays become references to frames appended to the buffers
    of the pack in progress (_PACKERS.buffers); everything else as in the reference format."""
    if isinstance(value, np.ndarray):
        if value.nbytes < _COPY_BELOW_BYTES:
            return _encode_array(value)
        _refuse_masked(value)
        type_str = _dtype_str(value.dtype)
        buffers = _PACKERS.buffers
        buffers.append(_raw_bytes(value))
        meta = _pack("plain", [len(buffers) + 1, type_str, list(value.shape)])
        return msgpack.ExtType(_EXT_BUFFER, meta)
    return _encode_hook(value)


_HOOKS: Dict[str, Optional[Callable[[Any], Any]]] = {
    "reference": _encode_hook, "plain": None, "multipart": _multipart_hook, "npsave": _npsave_hook,
}
_PACKERS = _Packers()


def pack_multipart_header(obj: Any, buffers: List[Any]) -> bytes:
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
        raise WireEncodeError(f"cannot encode message: {exc}") from exc
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
    first = frames[0]
    first_bytes = first.bytes if hasattr(first, "bytes") else bytes(first)
    return first_bytes == MULTIPART_MAGIC


def decode_multipart(frames: Sequence[Any], limits: Optional[DecodeLimits] = None) -> Any:
    """Decode [MULTIPART_MAGIC, header, buffers...]; arrays view the frames' memory (writable, no copy).

    `limits` bound the header's decode as for `decode` (the array frames are viewed, never copied).
    """
    if not is_multipart(frames):
        raise WireDecodeError("not a multipart GR00T message (missing magic frame)")
    if len(frames) < 2:
        raise WireDecodeError("multipart message without its header frame (only the magic frame came)")
    views = [frame.buffer if hasattr(frame, "buffer") else memoryview(frame) for frame in frames]
    referenced = set()

    def ext_hook(code: int, data: bytes) -> Any:
        if code != _EXT_BUFFER:
            raise WireDecodeError(f"unknown msgpack extension type {code}")
        try:
            index, type_str, shape = msgpack.unpackb(data, raw=False)
        except Exception as exc:
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
    except WireDecodeError:
        raise
    except Exception as exc:
        raise _undecodable(views[1], exc, "multipart header") from exc
    stray = sorted(set(range(2, len(views))) - referenced)
    if stray:  # a sender's framing bug: answering as if they were not there would hide it
        raise WireDecodeError(f"multipart message has {len(views) - 2} array frames but its header references "
                              f"{len(referenced)}; frames {stray[:8]} are referenced by nothing")
    return decoded


def normalize_keys(value: Any) -> Any:
    """Return maps with bytes keys turned into str keys, recursively (peers differ in key types)."""
    if isinstance(value, dict):
        return {(k.decode("utf-8", "replace") if isinstance(k, bytes) else k): normalize_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize_keys(v) for v in value]
    return value


__all__ = [
    "MULTIPART_MAGIC",
    "DecodeLimitError",
    "DecodeLimits",
    "WireDecodeError",
    "WireEncodeError",
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
