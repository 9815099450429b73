"""PreviousActionError: a refused options['rtc']['previous_action'] that keeps the keys it names as data, so a wrapper
that handed the keys on renamed (Gr00tSimPolicyWrapper) can name them as its caller sent them."""

from __future__ import annotations

import ast
import re
from typing import Any, Callable, List, Optional

PREVIOUS_ACTION = "options['rtc']['previous_action']"


class PreviousActionError(ValueError):
    """options['rtc']['previous_action'] refused: for one `key` (`detail` the rest of the sentence), or for its keys:
    those expected (`keys`) with the `missing` and `extra` ones, or with `detail` when it is not a map."""

    wire_name = "ValueError"  # what a server's error reply calls it ("ValueError: ..."), as before this class

    def __init__(self, detail: str = "", *, key: Optional[str] = None, keys: Optional[List[Any]] = None,
                 missing: Optional[List[Any]] = None, extra: Optional[List[Any]] = None) -> None:
        self.detail, self.key, self.keys, self.missing, self.extra = detail, key, keys, missing, extra
        super().__init__(self._text())

    def rename_keys(self, expected: Callable[[Any], Any], sent: Callable[[Any], Any]) -> None:
        """Rename, in place, the expected and missing keys by `expected`, and the refused and extra ones (the keys the
        caller sent) by `sent`."""
        self.key = sent(self.key) if self.key is not None else None
        self.keys = [expected(key) for key in self.keys] if self.keys is not None else None
        self.missing = [expected(key) for key in self.missing] if self.missing is not None else None
        self.extra = [sent(key) for key in self.extra] if self.extra is not None else None
        self.args = (self._text(),)

    def _text(self) -> str:
        if self.key is not None:
            return f"{PREVIOUS_ACTION}['{self.key}']{self.detail}"
        if self.missing is not None:
            return (f"{PREVIOUS_ACTION} must have exactly the action keys {self.keys}; missing {self.missing}, "
                    f"extra {self.extra}")
        return f"{PREVIOUS_ACTION} must be a map with keys {self.keys}{self.detail}"



def parsed_previous_action_error(message: str) -> Optional[PreviousActionError]:
    """The PreviousActionError whose text `message` is (a server's reply, which only has the text), or None when the
    message is not one, or its keys cannot be read back from it without doubt."""
    if not message.startswith(PREVIOUS_ACTION):
        return None
    rest = message[len(PREVIOUS_ACTION):]
    error: Optional[PreviousActionError] = None
    one_key = re.match(r"\['([^']*)'\]", rest)
    exact = re.fullmatch(r" must have exactly the action keys (\[.*\]); missing (\[.*\]), extra (\[.*\])", rest, re.S)
    as_map = re.fullmatch(r" must be a map with keys (\[.*\])(; got \w+)", rest, re.S)
    if one_key is not None:
        error = PreviousActionError(rest[one_key.end():], key=one_key.group(1))
    elif exact is not None:
        keys, missing, extra = (_listed(text) for text in exact.groups())
        if keys is not None and missing is not None and extra is not None:
            error = PreviousActionError(keys=keys, missing=missing, extra=extra)
    elif as_map is not None:
        keys = _listed(as_map.group(1))
        if keys is not None:
            error = PreviousActionError(as_map.group(2), keys=keys)
    # a list holding "], extra [" could be split elsewhere: only a reading that words the message back is trusted
    return error if error is not None and str(error) == message else None


def _listed(text: str) -> Optional[List[Any]]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list) else None
