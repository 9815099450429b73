"""What a dataset is, as hashes that are the same wherever it is copied: its meta/ files and its data files. A replay
server reports them as its identity; open-loop hashes the dataset it scores against the same way to compare them."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List

if TYPE_CHECKING:
    from .reader import LeRobotDataset

HASH_BLOCK_BYTES = 1 << 20  # a data file is hashed a block at a time: a large file is never held in memory whole

# Statistics files, which GR00T's stats tooling writes next to a dataset's others (relative_stats.json, after the
# recording): one written under a running replay made every episode not yet read refused as 'changed on disk'.
STATS_FILES = ("stats.json", "relative_stats.json", "episodes_stats.jsonl")

# Python's byte code of a `.py` modality config kept in meta/ (__pycache__/*.pyc, written when serve imports it): no
# reader reads it, and written after the signatures were taken it made every reset refused as 'changed on disk'.
BYTECODE_SUFFIXES = (".pyc", ".pyo")

# Suffixes of the names earlier `gr00t-eval record` versions staged meta files under (NAME.tmp, NAME.prev): one a kill -9
# left mid-rewrite is read by no reader, and hashed it made the same episodes another dataset.
WRITER_LEFTOVERS = (".tmp", ".prev")


def files_under(folder: Path) -> List[Path]:
    """Every file under `folder`, through symlinked folders too (Path.rglob does not enter them before Python 3.13:
    a meta/episodes/ linked in, as a dataset cache may, was left out of the identity); each real folder once. A folder
    that cannot be listed raises its OSError (out of descriptors, EACCES, EIO); one that is gone lists nothing."""
    files, seen = [], set()
    for top, dirs, names in os.walk(folder, followlinks=True, onerror=_raise_unless_gone):
        real = os.path.realpath(top)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        files.extend(Path(top) / name for name in names if os.path.isfile(os.path.join(top, name)))
    return files


def _raise_unless_gone(exc: OSError) -> None:
    """os.walk's onerror: it skips a folder it cannot list, which read as a dataset without those files (at the
    open-file limit, a replay took every meta file as removed). A folder removed meanwhile holds no files, and a hidden
    one (another user's .Trash-1000) or a __pycache__ none that any reader reads (meta_files leaves them out)."""
    name = os.path.basename(getattr(exc, "filename", None) or "")
    if exc.errno not in (errno.ENOENT, errno.ENOTDIR) and not (name.startswith(".") or name == "__pycache__"):
        raise exc


def meta_files(root: Path) -> List[Path]:
    """The files a replay's identity hashes and its change check watches: every file under meta/ but the statistics
    files (STATS_FILES: a replay serves recorded actions, never normalized ones), hidden files and folders (an editor's
    swap file such as .info.json.swp, .DS_Store, Jupyter's .ipynb_checkpoints/: no reader reads them, and one that
    came and went made every episode not yet read refused as 'changed on disk') and a writer's leftovers
    (WRITER_LEFTOVERS), sorted."""
    meta = Path(root) / "meta"
    return sorted(p for p in files_under(meta) if p.name not in STATS_FILES and p.suffix not in WRITER_LEFTOVERS
                  and p.suffix not in BYTECODE_SUFFIXES
                  and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(meta).parts))


def unhashed_meta_files(root: Path) -> List[str]:
    """The names (relative to meta/) of the files under the dataset's meta/ that meta_files leaves out, sorted: older
    gr00t-servers hashed some of them, so a meta hash of theirs differs on them alone."""
    meta = Path(root) / "meta"
    hashed = set(meta_files(root))
    return sorted(p.relative_to(meta).as_posix() for p in files_under(meta) if p not in hashed)


def dataset_hashes(root: Path, data_files: Iterable[Path]) -> Dict[str, str]:
    """{"dataset_meta_sha256", "dataset_data_sha256"} of the dataset at `root`: its meta/ files (episode list, tasks,
    info; by name) and the bytes of `data_files` (each episode's parquet, in episode order, each file once), whose
    recorded actions are what the replay serves: two recordings with the same meta/ files but other actions differ."""
    return {"dataset_meta_sha256": meta_sha256(Path(root)), "dataset_data_sha256": data_sha256(data_files)}


def replay_hashes(dataset: LeRobotDataset) -> Dict[str, str]:
    """dataset_hashes of `dataset` over its episodes' data files: what a replay of it reports in its identity."""
    return dataset_hashes(Path(dataset.root), replayed_data_files(dataset))


def replayed_data_files(dataset: LeRobotDataset) -> List[Path]:
    """The data files of `dataset`'s episodes in episode order, as dataset_data_sha256 hashes them."""
    return [dataset.episode_data_path(position) for position in range(dataset.num_episodes)]


def meta_sha256(root: Path) -> str:
    """The dataset_meta_sha256 of the dataset at `root` (meta_files by name and bytes)."""
    digest = hashlib.sha256()
    meta = Path(root) / "meta"
    for path in meta_files(root):
        digest.update(path.relative_to(meta).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def data_sha256(data_files: Iterable[Path]) -> str:
    """The dataset_data_sha256 of `data_files`: their bytes, each after its size (rows moved from one file to the next
    change it); not their names, which meta/info.json sets and the meta hash covers."""
    digest = hashlib.sha256()
    for path in dict.fromkeys(Path(p) for p in data_files):
        with open(path, "rb") as data:
            digest.update(str(os.fstat(data.fileno()).st_size).encode() + b"\0")
            for block in iter(lambda: data.read(HASH_BLOCK_BYTES), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
