"""What a replay serves, as hashes that are the same wherever its dataset is copied: its meta/ files and its data files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Iterable

from .dataset_changes import meta_files

HASH_BLOCK_BYTES = 1 << 20  # a data file is hashed a block at a time: a large file is never held in memory whole


def dataset_hashes(root: Path, data_files: Iterable[Path]) -> Dict[str, str]:
    """{"dataset_meta_sha256", "dataset_data_sha256"} of the dataset at `root`: its meta/ files (episode list, tasks,
    info; by name) and the bytes of `data_files` (each episode's parquet, in episode order, each file once), whose
    recorded actions are what the replay serves: two recordings with the same meta/ files but other actions differ."""
    return {"dataset_meta_sha256": _meta_sha256(Path(root)), "dataset_data_sha256": _data_sha256(data_files)}


def _meta_sha256(root: Path) -> str:
    digest = hashlib.sha256()
    meta = root / "meta"
    for path in meta_files(root):
        digest.update(path.relative_to(meta).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _data_sha256(data_files: Iterable[Path]) -> str:
    """The files' bytes, each after its size (rows moved from one file to the next change it); not their names, which
    meta/info.json sets and the meta hash covers."""
    digest = hashlib.sha256()
    for path in dict.fromkeys(Path(p) for p in data_files):
        with open(path, "rb") as data:
            digest.update(str(os.fstat(data.fileno()).st_size).encode() + b"\0")
            for block in iter(lambda: data.read(HASH_BLOCK_BYTES), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
