"""Values to msgpack: the default hook of each format (reference, multipart header, np.save) and this thread's
reusable Packers that run them."""

from __future__ import annotations

import io
import threading
from enum import Enum
from typing import Any, Callable, Dict, List, Optional

import msgpack
import numpy as np

from .modality import ModalityConfig
from .wire_errors import WireEncodeError, _refuse_dtype

_EXT_BUFFER = 42  # ExtType code of an array reference in a multipart header
_COPY_BELOW_BYTES = 16 * 1024  # smaller buffers are cheaper to copy than to track as frames


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
    if type(array) is not np.ndarray:  # only a subclass can be masked (a call saved per array of every message)
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
        raise _int_out_of_range(obj)
    raise WireEncodeError(f"cannot encode value of type {type(obj).__name__} for the wire{_array_like_hint(obj)}")


def _int_out_of_range(value: int) -> WireEncodeError:
    """The error for an int msgpack cannot hold (it hands those to the hook), in every format's words."""
    return WireEncodeError(f"int {value if abs(value) < 10**30 else str(value)[:30] + '...'} is outside the wire's "
                           "integer range, -2**63 to 2**64 - 1 (msgpack's 64 bits)")


def _array_like_hint(obj: Any) -> str:
    """How to send an array-like the wire does not know (a torch tensor, a JAX or CuPy array), or ''."""
    if type(obj).__module__.split(".")[0] == "torch":
        return "; send a numpy array: value.detach().cpu().numpy()"
    if hasattr(obj, "__array__"):
        return "; send a numpy array: np.asarray(value)"
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
    if isinstance(value, int):  # msgpack hands over the ints it cannot hold
        raise _int_out_of_range(value)
    raise WireEncodeError(f"cannot encode value of type {type(value).__name__} in the early-N1.6 format{_array_like_hint(value)}")


def _multipart_hook(value: Any) -> Any:
    """msgpack default of a multipart header: large arrays become references to frames appended to the buffers
    of the pack in progress (_PACKERS.buffers); everything else as in the reference format."""
    if isinstance(value, np.ndarray):
        if value.nbytes < _COPY_BELOW_BYTES:
            return _encode_array(value)
        if type(value) is not np.ndarray:
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
