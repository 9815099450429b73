"""File names as the libraries that take paths as UTF-8 text (pyarrow, tokenizers) see them."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Union


def utf8_on_disk(path: Union[str, Path]) -> bool:
    """Whether the bytes of `path` on disk are its text as UTF-8, the bytes such a library opens for it: not so for a
    name holding a byte that is not UTF-8 (a Latin-1 byte from an old tool), or any non-ASCII name under a Latin-1
    locale."""
    try:
        on_disk = os.fsencode(path)
    except UnicodeEncodeError:  # a name the file system's encoding cannot hold: no file on disk has it
        return True
    try:
        return on_disk == str(path).encode("utf-8")  # differs under a Latin-1 locale
    except UnicodeEncodeError:  # a lone surrogate: a byte that is not UTF-8, as os.fsdecode keeps it
        return False


def unnameable_path_problem(path: Union[str, Path], what: str) -> Optional[str]:
    """A sentence naming `path` (`what`: 'video file') when this locale's file-system encoding cannot hold its text
    (a non-ASCII name under LC_ALL=C, a Chinese one under Latin-1), so no file can be opened under it: Path.is_file()
    and os.path.exists() swallow the UnicodeEncodeError and answer False, a file that is there read as 'not found'.
    None when the name can be encoded."""
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        return (f"{what} {path} cannot be named in this locale's file-system encoding "
                f"'{sys.getfilesystemencoding()}'; run with a UTF-8 locale, e.g. LANG=C.UTF-8, or PYTHONUTF8=1")
    return None


def non_utf8_path_problem(path: Union[str, Path], what: str, reader: str) -> Optional[str]:
    """A sentence naming `path` (`what`: 'the tokenizer folder') and the folder in it whose name on disk is not UTF-8,
    which `reader` ('the tokenizers library') cannot open; None when `path`, as it is given to `reader` (relative
    paths stay relative: a working folder so named is no matter), is UTF-8 on disk."""
    if utf8_on_disk(path):
        return None
    given = Path(path)
    odd = next((folder for folder in (*reversed(given.parents), given) if not utf8_on_disk(folder)), given)
    where = "its name" if odd == given else f"the name of {_shown(odd)}"
    return (f"{what} {_shown(given)}: {where} is not UTF-8 on disk ({reader} opens UTF-8 paths only); give that folder "
            "a valid UTF-8 name (rename it)")


def _shown(path: Path) -> str:
    """`path` as its bytes on disk read, a byte that is not UTF-8 escaped ('caf\\xe9')."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
