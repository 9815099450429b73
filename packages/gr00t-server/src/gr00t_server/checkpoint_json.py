"""Read a checkpoint's JSON file, naming an empty or cut-short copy (a download or copy interrupted, a full disk)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Union

from gr00t_client.json_keys import RepeatedKeyError, loads_unique_keys

_REMEDY = "download or copy it again"
# Where a cut leaves a number, true, false or null unfinished, the parser stops at the unfinished rest.
_UNFINISHED_TOKEN = re.compile(r"\.|[eE][+-]?|-|t(r(u)?)?|f(a(l(s)?)?)?|n(u(l)?)?")


def read_checkpoint_json(path: Union[str, Path]) -> Any:
    """The parsed JSON of `path`; ValueError naming the file, and saying so when it is empty, ends mid-document, ends
    in NUL bytes (a copy cut short into a preallocated file), is UTF-16/32 text, gives a key twice in one object or
    nests too deeply to parse."""
    path = Path(path)
    raw = path.read_bytes()
    text_part = raw.rstrip(b"\0")  # a copy cut short and padded with NUL bytes (a preallocated file after a crash)
    padded = len(text_part) != len(raw)
    if not text_part.strip():
        if padded:
            raise ValueError(f"{path} holds only NUL bytes and white space (cut short?); {_REMEDY}")
        size = f"{len(raw)} bytes" + (" of white space" if raw else "")
        raise ValueError(f"{path} is empty ({size}); expected a JSON document: {_REMEDY}")
    encoding = json.detect_encoding(raw)
    if encoding not in ("utf-8", "utf-8-sig"):
        raise ValueError(f"{path} is {encoding.upper()} text; expected UTF-8 JSON: save it as UTF-8, or {_REMEDY}")
    nul = f"ends in NUL bytes after {len(text_part)} bytes of text (cut short?)"
    try:
        document = loads_unique_keys(text_part.decode("utf-8"))
    except RepeatedKeyError as exc:  # json.loads keeps the last value: one of two settings or statistics, unsaid
        raise ValueError(f"{path}: {exc}") from None
    except RecursionError:  # arrays or objects nested thousands deep: no checkpoint file is
        raise ValueError(f"{path} is nested too deeply to read (arrays or objects thousands of levels deep); expected "
                         f"a checkpoint's JSON: {_REMEDY}") from None
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":  # cut inside a character
            what = nul if padded else f"ends mid-document (cut short?) after {len(raw)} bytes ({exc})"
            raise ValueError(f"{path} {what}; {_REMEDY}") from exc
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    except json.JSONDecodeError as exc:
        if padded and not exc.msg.startswith("Extra data"):
            raise ValueError(f"{path} {nul}; {_REMEDY}") from exc
        if _ends_mid_document(exc):
            raise ValueError(f"{path} ends mid-document (cut short?) after {len(raw)} bytes ({exc}); "
                             f"{_REMEDY}") from exc
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if padded:
        raise ValueError(f"{path} holds a whole document followed by {len(raw) - len(text_part)} NUL bytes (a damaged "
                         f"copy); {_REMEDY}")
    return document


def _ends_mid_document(exc: json.JSONDecodeError) -> bool:
    """True when the parser stopped at the end of the text wanting more: inside a string, or after a part of a
    number, literal or escape that only the missing rest would finish (a whole document that is malformed is not)."""
    if exc.msg.startswith("Extra data"):  # a whole document with bytes after it: not cut short
        return False
    tail = exc.doc[exc.pos:].rstrip()
    if not tail or exc.msg.startswith("Unterminated string"):
        return True
    if exc.msg.startswith("Invalid \\uXXXX escape"):
        return bool(re.fullmatch(r"u[0-9a-fA-F]{0,3}", tail))
    return bool(_UNFINISHED_TOKEN.fullmatch(tail))
