"""The wire codec's exceptions, and the dtype refusal that encoding and decoding share."""

from __future__ import annotations

from typing import Optional

import msgpack
import numpy as np


class WireDecodeError(ValueError):
    """Bytes that are not a valid message in any format we accept."""


# What malformed bytes raise from msgpack's unpacker and our decode hooks (numpy, json and UTF-8 refusals are
# ValueErrors; numpy parses dtype strings and np.save headers as Python, hence SyntaxError): the decoders refuse these
# as WireDecodeError. Anything else, such as the exception a robot's SIGALRM watchdog raises in the middle of a
# decode, is the caller's own and goes through unchanged.
MALFORMED_BYTES_ERRORS = (msgpack.UnpackException, ValueError, TypeError, OverflowError, KeyError, IndexError,
                          RecursionError, SyntaxError)


class WireEncodeError(TypeError):
    """A value that has no wire representation (e.g. an object-dtype array)."""


REQUEST_TEXT_REMEDY = "send valid Unicode text"
# A reply's text is the policy's own (the request was decoded, so its text was valid): the sender's remedy misled.
REPLY_TEXT_REMEDY = "the policy returned it; a policy's result must hold valid Unicode text"


def lone_surrogate_at(text: str) -> Optional[int]:
    """The index of the first lone surrogate in `text` (what os.fsdecode or a JSON '\\ud800' escape makes), or None
    when it encodes as UTF-8, as every wire format carries a str."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def lone_surrogate_text(text: str, position: int, remedy: str = REQUEST_TEXT_REMEDY) -> str:
    """Why `text`, holding a lone surrogate at `position` (what os.fsdecode makes of a non-UTF-8 byte), cannot be sent:
    every wire format carries a str as UTF-8. A long text is shown as a window around the surrogate, its cuts marked
    '...' (the repr cut at 80 characters hid a surrogate past them)."""
    start, end = max(0, position - 30), position + 10
    excerpt = f"{'...' if start else ''}{text[start:end]!r}{'...' if end < len(text) else ''}"
    return (f"the text {excerpt} holds a lone surrogate at position {position}, which is not text: it has no UTF-8 "
            f"encoding, so no wire format can carry it as a str; {remedy}")


def packing_error(exc: Exception, what: str, reply: bool = False) -> WireEncodeError:
    """The WireEncodeError for what a msgpack packer raised: `what: <its words>`, or for a str holding a lone
    surrogate, lone_surrogate_text (the codec's 'surrogates not allowed' named no remedy) with the remedy of the
    request's sender or, for a `reply`, the policy's."""
    if isinstance(exc, UnicodeEncodeError) and isinstance(exc.object, str):
        return WireEncodeError(lone_surrogate_text(exc.object, exc.start,
                                                   REPLY_TEXT_REMEDY if reply else REQUEST_TEXT_REMEDY))
    return WireEncodeError(f"{what}: {exc}")


class DecodeLimitError(WireDecodeError):
    """A message that would cost far more to decode than its size: too many items, too deep, a lying header."""


_NAMED_BY_STR_KINDS = frozenset("biufcmMSU")  # dtypes whose `.str` rebuilds them in any numpy: np.dtype(dtype.str)
# The widest float and complex items whose bytes mean the same everywhere. A long double's type string ('<f16', '<c32';
# '<f12' on 32-bit x86) rebuilds a dtype in any numpy, but not its format: x86-64's is 80-bit extended precision
# padded to 16 bytes, aarch64's (Jetson) IEEE binary128, ppc64le's double-double. A peer read the bytes with its own
# layout: other numbers (zeros, NaN, huge), no error.
_PORTABLE_ITEMSIZE = {"f": 8, "c": 16}


def _rebuilds(dtype: np.dtype) -> bool:
    """Whether np.dtype(dtype.str), what a peer builds from the wire's type string, is this dtype."""
    try:
        return np.dtype(dtype.str) == dtype
    except TypeError:
        return False


def _unnamed_dtype_error(dtype: np.dtype, direction: str) -> str:
    """Why arrays of a dtype whose `.str` names nothing a peer can rebuild (numpy 2's StringDType) cannot go."""
    if dtype.kind == "T":
        return (f"arrays of numpy's variable-width string dtype {dtype.str!r} cannot be {direction}: its items are "
                "pointers into this process's memory; send np.array(value.tolist()), a fixed-width '<U' string array")
    return (f"arrays of dtype {dtype.str!r} cannot be {direction}: np.dtype({dtype.str!r}) does not rebuild it; "
            "expected a bool, number, datetime, bytes ('S') or str ('U') dtype")


def _long_double_error(dtype: np.dtype, direction: str) -> str:
    """Why arrays of a long double dtype (float over 8 bytes, complex over 16) cannot go, and what to send."""
    wide = "np.float64" if dtype.kind == "f" else "np.complex128"
    return (f"arrays of long double dtype {dtype.str!r} ({dtype.itemsize} bytes per item) cannot be {direction}: x86-64, "
            "aarch64 and ppc64le store different formats in those bytes and no type string says which, so a peer "
            f"would read other numbers; send value.astype({wide})")


def _refuse_dtype(dtype: np.dtype, direction: str) -> None:
    """Refuse object, void, zero-size and long double dtypes and those their `.str` cannot rebuild (callers cache the
    dtypes that pass, so this is off the hot path)."""
    error = WireEncodeError if direction == "encoded" else WireDecodeError
    if dtype.kind in ("O", "V"):
        kind = "object" if dtype.kind == "O" else "void/structured"
        raise error(f"arrays of {kind} dtype {dtype.str!r} cannot be {direction} (no pickle on the wire)")
    if dtype.kind not in _NAMED_BY_STR_KINDS and not _rebuilds(dtype):
        raise error(_unnamed_dtype_error(dtype, direction))
    if dtype.itemsize > _PORTABLE_ITEMSIZE.get(dtype.kind, dtype.itemsize):
        raise error(_long_double_error(dtype, direction))
    if dtype.itemsize == 0:
        # Any shape fits an empty buffer at 0 bytes per item: a 56-byte message made a 2**40-item '|S0' array
        # whose copies asked for 1 TiB and whose conversions read bytes outside the buffer.
        raise error(f"arrays of dtype {dtype.str!r} (itemsize 0) cannot be {direction}; expected a dtype with a size, "
                    "like '|S1'")
