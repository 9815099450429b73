"""A policy's identity() made fit for get_server_info, whose reply must encode whatever a custom policy returns."""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import Enum
from typing import Any, Dict, List, Tuple

import numpy as np

_WIRE_SCALARS = (str, bytes, bool, int, float, complex, Enum, np.generic, type(None))


def encodable_identity(identity: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """`identity` with each value the wire cannot carry (a pathlib.Path, a datetime) replaced by its text, in nested
    dicts and lists too; and what was replaced, as "<type> under '<key>'"."""
    replaced: List[str] = []
    return _encodable(identity, "", replaced), replaced


# msgpack's integers: int64 and uint64 (a larger int failed the encode of every get_server_info reply)
_WIRE_INTS = range(-(1 << 63), 1 << 64)


def _fits_the_wire(value: Any) -> bool:
    """Whether a scalar of _WIRE_SCALARS' types encodes: not an int beyond 64 bits, nor a void or object numpy
    scalar."""
    if isinstance(value, int) and not isinstance(value, (bool, Enum)):
        return value in _WIRE_INTS
    if isinstance(value, np.generic):
        return value.dtype.kind not in "OV"
    return True


def _encodable(value: Any, where: str, replaced: List[str]) -> Any:
    if isinstance(value, _WIRE_SCALARS) and _fits_the_wire(value):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind not in "OV":
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            out[key if isinstance(key, (str, int)) else str(key)] = _encodable(item, path, replaced)
        return out
    if isinstance(value, (list, tuple)):
        return [_encodable(item, where, replaced) for item in value]
    replaced.append(f"{type(value).__name__} under '{where}'")
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
