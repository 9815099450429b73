"""Text a peer chose (a server's error message, its action keys) as a message, log line or results file may show it:
bounded, so that a wrong or hostile server cannot flood them, and escaped, so that it cannot forge a log line."""

from __future__ import annotations

from typing import Any, Iterable

SHOWN_TEXT_CHARS = 2000  # a server's error; gr00t-server's own are at most 1,000 characters
SHOWN_KEY_CHARS = 200  # a key a server named (an action key)


def _escaped(character: str) -> str:
    return character if character.isprintable() else repr(character)[1:-1]


def shown_text(text: str, limit: int = SHOWN_TEXT_CHARS) -> str:
    """`text` cut to at most `limit` characters in all, saying how many were cut, with each character that is not
    printable (a newline, a terminal escape, a bidirectional override) escaped as repr() writes it."""
    if len(text) <= limit:
        escaped = text if text.isprintable() else "".join(map(_escaped, text))
        if len(escaped) <= limit:
            return escaped
    room = limit - len(f"... ({len(text)} more characters)")  # the suffix counts towards the limit too
    pieces, used = [], 0
    for shown, character in enumerate(text):
        piece = _escaped(character)
        if used + len(piece) > room:
            return "".join(pieces) + f"... ({len(text) - shown} more characters)"
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces)  # not reached: the text did not fit


def shown_key(key: Any) -> str:
    """A key a server named, for a message: its text cut to SHOWN_KEY_CHARS and escaped."""
    return shown_text(str(key), SHOWN_KEY_CHARS)


def shown_keys(keys: Iterable[Any]) -> str:
    """Keys a server sent, sorted, as a list for a message: cut to SHOWN_TEXT_CHARS and escaped."""
    return shown_text(str(sorted(keys, key=str)))
