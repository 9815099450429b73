"""PreviousActionError: a refused options['rtc']['previous_action'] that keeps the keys it names as data, so a wrapper
that handed the keys on renamed (Gr00tSimPolicyWrapper) can name them as its caller sent them."""

from __future__ import annotations

import ast
import re
from typing import Any, Callable, List, Optional

PREVIOUS_ACTION = "options['rtc']['previous_action']"
_ONE_KEY = re.compile(r"\['([^']*)'\]")  # the one key a refusal names right after PREVIOUS_ACTION


class PreviousActionError(ValueError):
    """options['rtc']['previous_action'] refused: for one `key` (`detail` the rest of the sentence), or for its keys:
    those expected (`keys`) with the `missing` and `extra` ones, or with `detail` when it is not a map."""

    wire_name = "ValueError"  # what a server's error reply calls it ("ValueError: ..."), as before this class

    def __init__(self, detail: str = "", *, key: Optional[str] = None, keys: Optional[List[Any]] = None,
                 missing: Optional[List[Any]] = None, extra: Optional[List[Any]] = None) -> None:
        self.detail, self.key, self.keys, self.missing, self.extra = detail, key, keys, missing, extra
        super().__init__(self._text())

    def __reduce__(self):  # pickled (a Ray task's error) or copied from its fields: ValueError's calls cls(*self.args)
        return (_rebuilt, (type(self), self.detail, self.key, self.keys, self.missing, self.extra), self.__dict__)

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


def _rebuilt(cls: type, detail: str, key: Optional[str], keys: Optional[List[Any]], missing: Optional[List[Any]],
             extra: Optional[List[Any]]) -> PreviousActionError:
    return cls(detail, key=key, keys=keys, missing=missing, extra=extra)


def parsed_previous_action_error(message: str) -> Optional[PreviousActionError]:
    """The PreviousActionError whose text `message` is (a server's reply, which only has the text), or None when the
    message is not one, or its keys cannot be read back from it without doubt."""
    if not message.startswith(PREVIOUS_ACTION):
        return None
    rest = message[len(PREVIOUS_ACTION):]
    error: Optional[PreviousActionError] = None
    one_key = _ONE_KEY.match(rest)
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


# how a server's error bound (gr00t_server.serving.messages.bounded) ends a text it cut
_CUT = re.compile(r"\.\.\. \(\d+ more characters\)\Z")
# the words before each list of a refusal's keys, and how the wrapper renames that list: "expected" or "sent"
_LISTS = {
    " must have exactly the action keys [": [("expected", "]; missing ["), ("expected", "], extra ["), ("sent", "]")],
    " must be a map with keys [": [("expected", "]")],
}


def renamed_cut_previous_action_error(message: str, expected: Callable[[Any], Any],
                                      sent: Callable[[Any], Any]) -> Optional[str]:
    """`message`, a previous_action refusal that a server's error bound cut ("... (N more characters)"), with the keys
    it names whole before the cut renamed as rename_keys would (the rest, and the suffix, kept); None when it is not
    one. The cut text cannot be read back whole (parsed_previous_action_error), yet its keys read as sent."""
    cut = _CUT.search(message)
    if cut is None or not message.startswith(PREVIOUS_ACTION):
        return None
    text, suffix = message[len(PREVIOUS_ACTION):cut.start()], message[cut.start():]
    one_key = _ONE_KEY.match(text)
    if one_key is not None:
        return f"{PREVIOUS_ACTION}['{sent(one_key.group(1))}']{text[one_key.end():]}{suffix}"
    opening = next((words for words in _LISTS if text.startswith(words)), None)
    if opening is None:
        return None
    renamers = {"expected": expected, "sent": sent}
    out, at = [PREVIOUS_ACTION, opening], len(opening)
    for renamer, closing in _LISTS[opening]:
        while not text.startswith(closing, at):
            item_end = _item_end(text, at)
            if item_end is None:  # the cut fell in this item (or in the words after it): kept as it is
                return "".join(out) + text[at:] + suffix
            out.append(repr(renamers[renamer](ast.literal_eval(text[at:item_end]))))
            at = item_end
            if text.startswith(", ", at):
                out.append(", ")
                at += 2
            elif not text.startswith(closing, at):
                return "".join(out) + text[at:] + suffix
        out.append(closing)
        at += len(closing)
    return "".join(out) + text[at:] + suffix


def _item_end(text: str, start: int) -> Optional[int]:
    """Where the list item at `start` of `text` ends: the first ", " or "]" after which the text before reads as a
    key that words itself back exactly (a quoted key may hold either), or None when the item is not whole."""
    for end in (at for at in range(start + 1, len(text)) if text.startswith((", ", "]"), at)):
        try:
            value = ast.literal_eval(text[start:end])
            hash(value)  # a key: a list or dict read here is none
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        if repr(value) == text[start:end]:
            return end
    return None


def _listed(text: str) -> Optional[List[Any]]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list) else None
