"""Decode limits: the bounds on one decode (DecodeLimits), the depth check, and the error that says where a
map or array longer than its message's item budget sits."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import msgpack

from .peer_text import shown_key, shown_text

from .wire_errors import DecodeLimitError

BufferLike = Union[bytes, bytearray, memoryview, Any]


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on one decode, so that decoding costs at most a small constant times the message size.

    Maps, arrays and their entries count as items; a message may hold `base_items` plus one item per
    `bytes_per_item` bytes of it (a Python object costs ~60 bytes, a msgpack item as little as 1), and never more
    than `max_items`. Lengths are checked on the msgpack header, before anything is allocated. Nesting deeper than
    `max_depth` is refused.
    """

    max_message_bytes: int
    max_depth: int = 32
    base_items: int = 16384
    bytes_per_item: int = 64
    # Whatever the size: an opaque byte pad bought items too, and 200 MB of it let 1,000,000 one-element keys through,
    # seconds of decoding and checking on a server's socket thread while every other client waited. Items are what a
    # decode (and a server's checks after it) costs per message; arrays are a few items each whatever their bytes
    # (msgpack-numpy: a map of 5 and a shape list; multipart: a reference), so real observations hold hundreds, and
    # this many cost about 0.2 s on a loaded 2-core machine, the most one message holds the socket thread for.
    max_items: int = 131072

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
        return min(self.base_items + int(message_bytes) // self.bytes_per_item, self.max_items)


_LIMITS_BY_SIZE: Dict[Any, DecodeLimits] = {}


def _check_depth(value: Any, max_depth: int) -> None:
    """Refuse maps/arrays nested deeper than max_depth (walked with a stack: a hostile depth cannot recurse)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > max_depth:
            raise DecodeLimitError(f"message nests maps and arrays more than {max_depth} levels deep; the limit is {max_depth}")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


_LENGTH_OVER = re.compile(r"(\d+) exceeds max_(array|map)_len\((\d+)\)")  # msgpack's words for a long header
_MAP_HEADERS = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])  # fixmap, map 16, map 32
_STR_HEADERS = frozenset([*range(0xA0, 0xC0), 0xD9, 0xDA, 0xDB])  # fixstr, str 8, 16, 32
_BIN_HEADERS = frozenset([0xC4, 0xC5, 0xC6])  # bin 8, 16, 32: a key sent as bytes, which the decoders take too
_ARRAY_HEADERS = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])  # fixarray, array 16, array 32
# A key path an error names, escaped and cut to this many characters: the keys are the peer's, and a long one pushed
# the reason itself out of a server's bounded error reply.
SHOWN_PATH_CHARS = 200
_PATH_DEPTH = 6  # keys followed at most (a request's lists sit 3 deep): each level decodes its value once more


def _length_limit_error(data: BufferLike, size: int, exc: ValueError) -> DecodeLimitError:
    """The DecodeLimitError for msgpack's refusal of a map or array header longer than the item budget: what it is,
    where (its keys), and that numbers belong in a numpy array."""
    text = _exception_text(exc)
    found = _LENGTH_OVER.search(text)
    if found is None:
        return DecodeLimitError(f"message of {size} bytes exceeds a decode limit: {text}")
    items, kind, limit = int(found.group(1)), found.group(2), int(found.group(3))
    where = shown_path(_path_to_long_container(data, limit))
    what = "a list" if kind == "array" else "a map"
    return DecodeLimitError(
        f"message of {size} bytes exceeds a decode limit: it holds {what} of {items} items"
        f"{f' at {where}' if where else ''}, more than the {limit} its size allows; send numbers as a numpy array "
        "(np.asarray(...)), not a Python list"
    )


def _exception_text(exc: ValueError) -> str:
    """str(exc), formatted where msgpack 1.0.0-1.0.2's pure-Python fallback raised ValueError(format, items, limit)
    unformatted (its str is the raw tuple)."""
    if len(exc.args) > 1 and isinstance(exc.args[0], str):
        try:
            return exc.args[0] % exc.args[1:]
        except (TypeError, ValueError):
            pass
    return str(exc)


def shown_path(keys: Sequence[Union[str, int]]) -> str:
    """A key path ('data.observation.state.joints', or 'result[0].arm' with an array's index) as an error may show it:
    each key escaped and cut (the peer chose them), the whole cut to SHOWN_PATH_CHARS; '' for no keys."""
    text = "".join(f"[{key}]" if isinstance(key, int) else f".{shown_key(key)}" for key in keys)
    return shown_text(text[1:] if text.startswith(".") else text, SHOWN_PATH_CHARS)


def _path_to_long_container(message: BufferLike, limit: int) -> List[str]:
    """The str keys that lead to the first map or array of more than `limit` items (['data', 'observation', 'extra']),
    at most _PATH_DEPTH of them. Only on the error path: each level checks its values without keeping what it decodes,
    so memory stays small, and a message nested deep costs at most _PATH_DEPTH more decodes of its size."""
    return path_to_culprit(message, lambda value: _holds_long_container(value, limit), most_entries=limit)


def path_to_culprit(
    message: BufferLike, is_culprit: Callable[[memoryview], bool], most_entries: Optional[int] = None
) -> List[Union[str, int]]:
    """The str keys of nested maps and the indices of nested arrays (ints) that lead to the innermost value
    `is_culprit` holds true of (it is asked of each map value or array item in turn, as packed msgpack), at most
    _PATH_DEPTH of them; it stops at a map or array of more than `most_entries` entries, at a key that is no str, or
    where no value is the culprit. For error messages only (each level unpacks its values once more)."""
    path: List[Union[str, int]] = []
    try:
        data = memoryview(message).cast("B")
        while (data[0] in _MAP_HEADERS or data[0] in _ARRAY_HEADERS) and len(path) < _PATH_DEPTH:
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(data))
            unpacker.feed(data)
            is_map = data[0] in _MAP_HEADERS
            count = unpacker.read_map_header() if is_map else unpacker.read_array_header()
            if most_entries is not None and count > most_entries:
                return path
            for index in range(count):
                key: Union[str, int] = index
                if is_map:
                    if data[unpacker.tell()] not in _STR_HEADERS | _BIN_HEADERS:
                        return path
                    name = unpacker.unpack()
                    # named as the decoders read it (normalize_keys)
                    key = name.decode("utf-8", errors="replace") if isinstance(name, bytes) else str(name)
                start = unpacker.tell()
                unpacker.skip()
                if is_culprit(data[start:unpacker.tell()]):
                    path.append(key)
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
