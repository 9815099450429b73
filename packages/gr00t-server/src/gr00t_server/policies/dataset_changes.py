"""DatasetChanges: notice, from os.stat alone, that a replayed dataset's files were rewritten since the replay loaded it."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

logger = logging.getLogger(__name__)

Signature = Tuple[int, int, int, int]  # (device, inode, size, mtime_ns)


def file_signature(path: Path) -> Optional[Signature]:
    """(device, inode, size, mtime_ns) of a file, None when it is gone: a file rewritten in place (size, mtime) or
    replaced (a new inode, as `gr00t-eval record --overwrite` writes) changes it. Reads no bytes. Any other failure to
    stat it (EACCES, EIO) raises: it is no news of the file."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class DatasetChanges:
    """The signatures of a dataset's meta files and data files when a replay loaded it; `check` refuses, naming the
    first file rewritten, removed or added since, so that rows of a recording made under a running server are never
    served with the lengths and seeds of the one it loaded. Once a change is seen, every later check refuses; a check
    that cannot read the files (out of descriptors, an I/O error) sees no change, and the next one looks again."""

    def __init__(self, root: Path) -> None:
        from gr00t_eval.dataset.reader import dataset_root  # gr00t-eval comes with the `replay` extra

        # Found once, as the reader finds it (dataset_root): a relative root named other files once the process
        # changed directory (a .py modality config may, to read its neighbours), and a `run/../ds` none once run/ was
        # renamed; every file then looked removed. Named as given in messages.
        self.given = Path(root)
        self.root = dataset_root(root)
        self._meta = self._meta_signatures()
        self._data: Dict[Path, Optional[Signature]] = {}
        self.change: Optional[str] = None  # the first change seen, e.g. "meta/episodes.jsonl rewritten"
        self._unreadable: Optional[str] = None  # why the last check could not look, once told

    def record_data_file(self, path: Path) -> None:
        """Remember a data file's signature now (at start-up, before its footer is read)."""
        self._data.setdefault(Path(path), file_signature(path))

    def check(self, data_path: Path) -> None:
        """DatasetError naming the dataset and what changed when a meta file or `data_path` differs from when the
        replay loaded it. Only stats the files: called when an episode is read from disk, never per cached request."""
        if self.change is None:
            self.change = self._first_change_seen(Path(data_path))
        if self.change is not None:
            from gr00t_eval.dataset import DatasetError  # gr00t-eval comes with the `replay` extra

            raise DatasetError(f"dataset {self.given} changed on disk since this server loaded it ({self.change}); "
                               "restart the server to serve the new recording")

    def _first_change_seen(self, data_path: Path) -> Optional[str]:
        """_first_change, or None when the files cannot be read now: a failed read is no change, and marking it one
        refused every episode not yet read until a restart (told once, until a check reads the files again)."""
        try:
            change = self._first_change(data_path)
        except OSError as exc:
            if str(exc) != self._unreadable:
                logger.warning("dataset %s: cannot check it for changes on disk (%s); this episode is read without the "
                               "check, and the next episode read checks again", self.root, exc)
            self._unreadable = str(exc)
            return None
        self._unreadable = None
        return change

    def _meta_signatures(self) -> Dict[str, Optional[Signature]]:
        # the files a replay's identity hashes (gr00t-eval comes with the `replay` extra)
        from gr00t_eval.dataset.identity import meta_files

        return {self._name(p): file_signature(p) for p in meta_files(self.root)}

    def _first_change(self, data_path: Path) -> Optional[str]:
        now = self._meta_signatures()
        for name in sorted(set(self._meta) | set(now)):
            if self._meta.get(name) != now.get(name):
                return _describe(name, self._meta.get(name), now.get(name))
        if data_path in self._data:
            before, after = self._data[data_path], file_signature(data_path)
            if before != after:
                return _describe(self._name(data_path), before, after)
        return None

    def _name(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:  # a data file outside the dataset folder
            return str(path)


def _describe(name: str, before: Optional[Signature], after: Optional[Signature]) -> str:
    if before is None:
        return f"{name} added"
    return f"{name} removed" if after is None else f"{name} rewritten"
