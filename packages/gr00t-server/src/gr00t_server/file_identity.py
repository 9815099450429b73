"""Which version of a file was read: (device, inode, size, mtime ns), taken before a load and compared after it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

FileIdentity = tuple[int, int, int, int]


def file_identity(path: Path) -> FileIdentity:
    """(device, inode, size, mtime ns) of `path`: a rename over it or a rewrite in place changes it."""
    info = path.stat()
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def file_identities(paths: Iterable[Path]) -> dict[Path, FileIdentity]:
    """file_identity of each of `paths`."""
    return {path: file_identity(path) for path in paths}


def first_changed(identities: dict[Path, FileIdentity]) -> Optional[Path]:
    """The first file of `identities` replaced, rewritten or removed since its identity was taken; None if none was."""
    for path, identity in identities.items():
        try:
            now: Optional[FileIdentity] = file_identity(path)
        except OSError:
            now = None
        if now != identity:
            return path
    return None
