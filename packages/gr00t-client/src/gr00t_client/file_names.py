"""File names as the libraries that take paths as UTF-8 text (pyarrow, tokenizers) see them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union


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
