"""JSON parsing that refuses a key given twice in one object (json.loads keeps the last value without a word)."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple


class RepeatedKeyError(ValueError):
    """A JSON object gives one key twice; `key` and `where` (its object's place in the document, '' at the top)."""

    def __init__(self, key: str, where: str) -> None:
        at = f" (at {where})" if where else ""
        super().__init__(f"key {key!r} is given twice in one object{at}; give each key once")
        self.key = key
        self.where = where

    def __reduce__(self):  # pickled (a Ray task's error) as made: ValueError's would call this with its message
        return (type(self), (self.key, self.where))


def loads_unique_keys(text: str) -> Any:
    """json.loads of `text`; RepeatedKeyError naming the first key given twice in one object and where that object is
    (RFC 8259 leaves a repeated name undefined: a hand edit or two files merged as text kept the last one)."""
    repeated: List[Tuple[Dict[str, Any], str]] = []

    def unique_object(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        obj: Dict[str, Any] = {}
        for key, value in pairs:
            if key in obj and not repeated:
                repeated.append((obj, key))
            obj[key] = value
        return obj

    document = json.loads(text, object_pairs_hook=unique_object)
    if repeated:
        obj, key = repeated[0]
        raise RepeatedKeyError(key, _place_of(document, obj) or "")
    return document


def _place_of(document: Any, target: Dict[str, Any]) -> Optional[str]:
    """Where the object `target` is in `document`, as `a.b[2].c` ('' for the document itself); walked without
    recursion, as the document may nest deeper than Python's recursion limit."""
    pending: List[Tuple[Any, str]] = [(document, "")]
    while pending:
        node, place = pending.pop()
        if node is target:
            return place
        if isinstance(node, dict):
            pending.extend((value, f"{place}.{key}" if place else str(key)) for key, value in node.items())
        elif isinstance(node, list):
            pending.extend((value, f"{place}[{index}]") for index, value in enumerate(node))
    return None
