"""The wire codec's exceptions, and the dtype refusal that encoding and decoding share."""

from __future__ import annotations

import numpy as np


class WireDecodeError(ValueError):
    """Bytes that are not a valid message in any format we accept."""


class WireEncodeError(TypeError):
    """A value that has no wire representation (e.g. an object-dtype array)."""


class DecodeLimitError(WireDecodeError):
    """A message that would cost far more to decode than its size: too many items, too deep, a lying header."""


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
