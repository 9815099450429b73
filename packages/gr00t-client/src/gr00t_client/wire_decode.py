"""msgpack to values: the object hook that turns every accepted array and ModalityConfig map back into its value,
and the unpack that runs it within DecodeLimits, viewing large arrays in the buffer when asked (frame_views)."""

from __future__ import annotations

import cmath
import ast
import json
import re
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import msgpack
import numpy as np

from .frame_views import NeedsFullUnpacker, unpack_viewing
from .modality import ModalityConfig
from .wire_errors import MALFORMED_BYTES_ERRORS, DecodeLimitError, WireDecodeError, _refuse_dtype
from .wire_limits import BufferLike, DecodeLimits, _check_depth, _length_limit_error, path_to_culprit, shown_path

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
MAX_ARRAY_DIMS = getattr(np, "MAXDIMS", 64)  # numpy's own limit (32 before numpy 2, which dropped the name)


# What a dtype's `.str` (or a plain name) looks like: byte order, kind and size ('<f4', '|u1', '<U10', 'float32'), a
# datetime unit ('<M8[ns]', '<m8[25s]') or '?'. numpy's own parser takes more, and some of it kills the process: a
# 60-byte request of dtype 'M8[Y/0]' divided by zero in C (SIGFPE), with no reply and no log.
_DTYPE_TEXT = re.compile(r"[<>|=]?(?:\?|[A-Za-z]+[0-9]*(?:\[[0-9]{0,9}[A-Za-z]{1,3}\])?)")


def _checked_dtype_text(type_str: str, what: str = "array dtype") -> str:
    """`type_str` when it has the form of a dtype's str; WireDecodeError before numpy parses anything else."""
    if len(type_str) > 32 or not _DTYPE_TEXT.fullmatch(type_str):
        raise WireDecodeError(f"{what} {type_str[:40]!r} is not a dtype str; expected one like '<f4', '|u1' or "
                              "'<M8[ns]'")
    return type_str


def _as_dtype(type_str: Any) -> np.dtype:
    if isinstance(type_str, bytes):
        type_str = type_str.decode("ascii", "replace")
    if not isinstance(type_str, str):
        raise WireDecodeError(f"array dtype must be a str like '<f4', got {type_str!r}")
    _checked_dtype_text(type_str)
    try:
        dtype = np.dtype(type_str)
    except (TypeError, ValueError, SyntaxError) as exc:  # numpy parses a comma string like '1,2' as Python
        raise WireDecodeError(f"unknown array dtype {type_str!r}; expected a numpy dtype str like '<f4'") from exc
    _refuse_dtype(dtype, "decoded")
    return dtype


def _array_from_buffer(data: Any, dtype: np.dtype, shape: Any, copy: bool) -> np.ndarray:
    try:
        if not isinstance(shape, (list, tuple)):
            raise TypeError("bad shape")
        if copy and type(data) is bytes:  # small arrays, one per state key: one constructor over a writable copy
            size = dtype.itemsize
            for dim in shape:
                if type(dim) is not int or dim < 0:  # int * list (or str) repeats it: 100 bytes asked for gigabytes
                    raise TypeError("bad shape")
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
    if len(shape) > MAX_ARRAY_DIMS:  # numpy's own ValueError led to a size check that found nothing wrong
        return _dims_error(shape)
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


def _dims_error(shape: Any) -> WireDecodeError:
    return WireDecodeError(f"array shape has {len(shape)} dimensions; numpy allows at most {MAX_ARRAY_DIMS}")


_SCALAR_TYPES = {"b": (bool,), "i": (int,), "u": (int,), "f": (int, float), "c": (int, float, complex), "U": (str,),
                 "S": (bytes,)}  # what numpy's item() gives for a dtype kind, as openpi's encoder sends it


def _numpy_scalar(dtype: np.dtype, data: Any) -> Any:
    """An openpi numpy scalar: `data` of the kind numpy's item() gives for its dtype (nil was read as NaN, a list as an
    array, "nan" as NaN, 3.7 as int64 3, 1e300 as float32 inf, 70000 as int16 4464 on numpy 1.x)."""
    if type(data) not in _SCALAR_TYPES.get(dtype.kind, ()):
        raise WireDecodeError(f"openpi scalar 'data' must be one {dtype.str} value, got {type(data).__name__}")
    if dtype.kind in "iu":  # numpy 1.x wraps an integer out of range (int16 70000 -> 4464) without a word
        info = np.iinfo(dtype)
        if not info.min <= data <= info.max:
            raise WireDecodeError(f"openpi scalar 'data' {data!r} is not a {dtype.str} value: expected an integer "
                                  f"from {info.min} to {info.max}")
    try:
        with np.errstate(over="raise"):
            value = dtype.type(data)
    except (TypeError, ValueError, OverflowError, FloatingPointError) as exc:
        raise WireDecodeError(f"openpi scalar 'data' {data!r} is not a {dtype.str} value: {exc}") from None
    if dtype.kind in "fc" and np.isinf(value) and not cmath.isinf(data):  # numpy 1.21 casts 1e300 to float32 inf
        raise WireDecodeError(f"openpi scalar 'data' {data!r} is not a {dtype.str} value: expected a value within "
                              f"{dtype.str}'s range (+-{np.finfo(dtype).max}), it would become inf")
    return value


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
    if type(_get(obj, "nd")) in (bool, int):  # msgpack-numpy (a key "nd" holding anything else: a plain map)
        _require_fields(obj, "msgpack-numpy", ("type", "data", "shape") if _get(obj, "nd") else ("type", "data"))
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
    if _has(obj, "__ndarray__"):  # openpi-style
        _require_fields(obj, "openpi", ("data", "dtype", "shape"))
        dtype = _as_dtype(_get(obj, "dtype"))
        data = _get(obj, "data")
        if not isinstance(data, (bytes, bytearray)):
            raise WireDecodeError(f"openpi array 'data' must be bytes, got {type(data).__name__}")
        return _array_from_buffer(data, dtype, _get(obj, "shape"), copy=True)
    if _has(obj, "__npgeneric__"):  # openpi-style numpy scalar
        return _numpy_scalar(_as_dtype(_get(obj, "dtype")), _get(obj, "data"))
    if _has(obj, "__ndarray_class__"):  # early N1.6 and N1/N1.5
        blob = _get(obj, "as_npy")
        if not isinstance(blob, (bytes, bytearray)):
            raise WireDecodeError("Malformed __ndarray_class__ payload: 'as_npy' must be bytes")
        return _load_npy(blob)
    if _has(obj, "__ModalityConfig__") or _has(obj, "__ModalityConfig_class__"):
        return _modality_config_from(obj)
    # msgpack-numpy's complex number: {b"complex": True, b"data": repr}, bin keys, as its decoder reads it alone; a
    # user's map of str keys {"complex": False, "data": 7} (or True, "2") came back as a complex number, or was refused
    if obj.get(b"complex") is True and b"data" in obj and len(obj) == 2:
        data = obj[b"data"]
        try:
            return complex(data.decode() if isinstance(data, bytes) else data)
        except (TypeError, ValueError):  # complex()'s own words named neither the value nor what was expected
            raise WireDecodeError(f"complex map 'data' must be a complex number or its repr like '(1+2j)', got "
                                  f"{type(data).__name__} {data!r:.40}") from None
    return obj


def _require_fields(obj: Dict[Any, Any], form: str, fields: Tuple[str, ...]) -> None:
    """WireDecodeError naming the fields a marked array map lacks and the keys it has (it is no plain map)."""
    missing = [name for name in fields if not _has(obj, name)]
    if missing:
        present = [key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key) for key in list(obj)[:12]]
        raise WireDecodeError(f"malformed {form} array map: missing {', '.join(map(repr, missing))} (its keys: "
                              f"{', '.join(repr(key[:40]) for key in present)}); expected {', '.join(map(repr, fields))} "
                              "besides its marker")


_NPY_MAGIC = b"\x93NUMPY"
_NPY_MAX_HEADER_BYTES = 10000  # numpy's max_header_size: np.save writes a dict of three keys in about 120
_PY2_LONG = re.compile(r"\b([0-9]+)[lL]\b")


def _npy_header(blob: Union[bytes, bytearray]) -> Tuple[Tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, offset of the data) of an np.save blob (format 1.0 or 2.0), its header read here
    and not by numpy: numpy evaluates it as a Python literal and builds the dtype with a parser that some descr strings
    kill (see _DTYPE_TEXT), and a look at the header's text alone misses what the literal evaluates to ('M8' '[Y/0]',
    a key given twice, an escaped key). ValueError or SyntaxError for a malformed header."""
    head = bytes(blob[:12])
    if head[:6] != _NPY_MAGIC:
        raise ValueError(f"the magic string is not {_NPY_MAGIC!r}")
    version = tuple(head[6:8])
    if version == (1, 0):
        start, size = 10, int.from_bytes(head[8:10], "little")
    elif version == (2, 0):
        start, size = 12, int.from_bytes(head[8:12], "little")
    else:
        raise ValueError(f"npy format version {version} is not accepted (1.0 and 2.0 are)")
    if size > _NPY_MAX_HEADER_BYTES:  # before it is parsed: a 2 MB header padded with a list stalled a server 18 s
        raise ValueError(f"the header has {size} bytes; at most {_NPY_MAX_HEADER_BYTES} are read (numpy's own limit)")
    if len(head) < start or len(blob) < start + size:
        raise ValueError(f"the header is cut short ({len(blob)} bytes in all)")
    text = bytes(blob[start:start + size]).decode("latin1")
    try:
        header = ast.literal_eval(text)
    except SyntaxError:  # a Python 2 np.save wrote long ints as 2L: read as numpy reads them, without the L
        header = ast.literal_eval(_PY2_LONG.sub(r"\1", text))
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"the header must be a dict of 'descr', 'fortran_order' and 'shape'; got {text.strip()[:80]!r}")
    descr, fortran_order, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str):  # a list of fields: a structured dtype, refused everywhere on the wire
        raise WireDecodeError(f"Refused __ndarray_class__ payload: its header's 'descr' is {type(descr).__name__} "
                              f"{descr!r:.60}, not a dtype str (structured arrays cannot be decoded)")
    _checked_dtype_text(descr, "np.save header descr")
    if not isinstance(fortran_order, bool):
        raise ValueError(f"'fortran_order' must be True or False; got {fortran_order!r:.40}")
    if not isinstance(shape, tuple) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise ValueError(f"'shape' must be a tuple of whole numbers >= 0; got {shape!r:.60}")
    if len(shape) > MAX_ARRAY_DIMS:
        raise _dims_error(shape)
    return shape, fortran_order, np.dtype(descr), start + size


def _load_npy(blob: Union[bytes, bytearray]) -> np.ndarray:
    """An np.save blob -> array, its header checked against the bytes present before anything is allocated.

    (np.load on a file-like object allocates what the header claims first, so a 100-byte blob could ask for
    terabytes.) Object and structured dtypes are refused, as everywhere on the wire.
    """
    try:
        shape, fortran_order, dtype, offset = _npy_header(blob)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError) as exc:
        if isinstance(exc, WireDecodeError):
            raise
        raise WireDecodeError(f"Malformed __ndarray_class__ payload (np.save header): {exc}") from exc
    if dtype.hasobject:  # np.load's own words, which peers know
        raise WireDecodeError("Refused __ndarray_class__ payload: Object arrays cannot be loaded when allow_pickle=False")
    _refuse_dtype(dtype, "decoded")
    count = 1
    for dim in shape:
        count *= int(dim)
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


def _refuse_extension(code: int, data: bytes) -> Any:
    """ext_hook of the single-frame formats, which carry no msgpack extension type: msgpack's default handed a peer's
    ExtType to the policy (or the caller) as a value. The multipart header's refuses all but its array reference."""
    raise WireDecodeError(f"unknown msgpack extension type {code}; expected none in a single-frame message (arrays "
                          "travel as msgpack-numpy maps; ext 42 is an array reference of a multipart header only)")


def _unpack(data: BufferLike, object_hook: Callable[[Dict[Any, Any]], Any], limits: Optional[DecodeLimits],
            ext_hook: Optional[Callable[[int, bytes], Any]] = None, share_buffer: bool = False) -> Any:
    """_unpack_as_is, with a str that is not UTF-8 refused as a WireDecodeError (which decode then locates): msgpack's
    bare UnicodeDecodeError named neither the key nor what was expected."""
    try:
        return _unpack_as_is(data, object_hook, limits, ext_hook, share_buffer)
    except UnicodeDecodeError as exc:  # a peer's Latin-1 text, say (a str, a map key, a ModalityConfig's JSON)
        raise WireDecodeError(f"text that is not UTF-8 (byte 0x{exc.object[exc.start]:02x}: {exc.reason}); send "
                              "text as UTF-8") from exc
    except ValueError as exc:
        if isinstance(exc, WireDecodeError) or not _MALFORMED_TIMESTAMP.search(str(exc)):
            raise
        raise WireDecodeError(f"malformed msgpack timestamp (extension type -1: {exc}); expected 4, 8 or 12 bytes of "
                              "seconds and nanoseconds (msgpack's timestamp layout)") from exc


# msgpack's words (its C and pure-Python unpackers) for an ext -1 it could not read as a timestamp, which it decodes
# before any ext_hook sees it
_MALFORMED_TIMESTAMP = re.compile(r"invalid timestamp data|Timestamp type can only be created|nanoseconds must be")


def _unpack_as_is(data: BufferLike, object_hook: Callable[[Dict[Any, Any]], Any], limits: Optional[DecodeLimits],
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
    # A hook costs nothing until an ext type appears. An ext is bounded by the message size, as a bin is: each hook
    # refuses an unknown type unread, whatever its size, naming it (a size cap of its own refused a large one in
    # msgpack's words, without its type or key), and bounds what it reads of a type it knows.
    extra = {"ext_hook": ext_hook or _refuse_extension}
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
            max_array_len=budget, max_map_len=budget, max_ext_len=limits.max_message_bytes, **extra,
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


# Messages up to this size have a refused array's key path found (_locate decodes parts of them again, at most once
# per nesting level); a larger one, which could make a hostile sender's every refusal cost several decodes on the
# socket thread, is refused without it.
LOCATE_MAX_BYTES = 16 * 1024 * 1024


def _locate(error: WireDecodeError, message: BufferLike, decodes: Callable[[memoryview], Any]) -> None:
    """Prefix `error`'s message with the keys that lead to the value refused ('data.observation.state.joints: ...'),
    found by `decodes` (an unpack of one value with the failed decode's hooks), as wire_limits.shown_path shows them
    (escaped, cut); a decode limit is left as it is (its message says where already, and its values are not decoded
    again), and so is a message over LOCATE_MAX_BYTES."""
    if isinstance(error, DecodeLimitError) or memoryview(message).nbytes > LOCATE_MAX_BYTES:
        return
    try:
        where = shown_path(_path_to_refused_value(message, decodes))
    except MALFORMED_BYTES_ERRORS:  # the search decodes parts again from a deeper stack (a RecursionError, JSON nested
        return  # near the limit): the refusal stands, without its path
    if where:
        error.args = (f"{where}: {error}",)


def _path_to_refused_value(message: BufferLike, decodes: Callable[[memoryview], Any]) -> List[Union[str, int]]:
    """The str keys that lead to the innermost map value `decodes` refuses on its own (['data', 'observation',
    'state', 'joints']), at most _PATH_DEPTH of them (wire_limits.path_to_culprit): only on the error path, so the
    decode that succeeds carries no path at all."""
    return path_to_culprit(message, lambda value: _refuses(decodes, value))


def _refuses(decodes: Callable[[memoryview], Any], value: memoryview) -> bool:
    """Whether `decodes` refuses `value` as malformed (a decode limit on a part of a message is no such refusal)."""
    try:
        decodes(value)
    except DecodeLimitError:
        return False
    except WireDecodeError:
        return True
    return False


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


def normalize_keys(value: Any) -> Any:
    """Return maps with bytes keys turned into str keys, recursively (peers differ in key types)."""
    if isinstance(value, dict):
        return {(k.decode("utf-8", "replace") if isinstance(k, bytes) else k): normalize_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize_keys(v) for v in value]
    return value
