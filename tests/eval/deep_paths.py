"""Folders whose paths come near the file system's path limit (PATH_MAX), for the tests of the refusals of output
folders too long for the files a command writes in them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple


def folder_near_path_max(tmp_path: Path, room: int) -> Tuple[Path, int]:
    """A folder (not made; the folders above it are) whose absolute path leaves `room` bytes below PATH_MAX, and that
    limit (PATH_MAX less its closing NUL)."""
    limit = os.pathconf(tmp_path, "PC_PATH_MAX") - 1
    folder = str(tmp_path)
    while len(folder) + 201 < limit - room:
        folder = os.path.join(folder, "d" * 200)
    os.makedirs(folder)
    return Path(os.path.join(folder, "o" * (limit - room - len(folder) - 1))), limit
