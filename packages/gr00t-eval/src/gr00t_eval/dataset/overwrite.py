"""overwrite: a dataset directory's entries moved aside (a rename each) before any is deleted, so a stop or an error
part-way leaves the old dataset whole or entirely gone, never half deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..run_claim import claim_alive_name, claim_lock_name
from ..trash import OVERWRITE_TRASH, delete_trash, move_to_trash

__all__ = ["DATASET_ENTRIES", "OVERWRITE_TRASH", "RECORD_CLAIM", "delete_trash", "empty_dataset_dir"]

# What a dataset directory holds: LeRobot's three folders, and hidden files (a recording's claim, atomic-write
# leftovers). Anything else visible means the directory is not (only) a dataset.
DATASET_ENTRIES = frozenset({"meta", "data", "videos"})
RECORD_CLAIM = ".gr00t_record.json"  # in the dataset root: the recording's process and settings (run_claim)


def _is_writers_leftover(name: str) -> bool:
    """A hidden file the writer itself leaves (a partial episode file, a staged or kept meta file): overwrite deletes
    these with the dataset, and leaves any other hidden entry (.git/, .gitattributes, a user's notes) in place."""
    return (name in (RECORD_CLAIM, claim_lock_name(RECORD_CLAIM), claim_alive_name(RECORD_CLAIM)) or name.startswith(".partial-")
            or (name.startswith(".") and name.endswith((".tmp", ".prev"))))


def empty_dataset_dir(root: Path, keep: Sequence[str] = ()) -> None:
    """Delete a dataset's entries from `root` (overwrite): meta/, data/, videos/ and the writer's hidden leftovers,
    keeping `root` itself (it may be a mount point or a symlink's target), the entries named in `keep` (the claim of
    the recording about to fill it) and every other hidden entry (.git/, .gitattributes).
    FileExistsError, deleting nothing, when `root` holds anything a dataset does not: overwrite deleted any folder,
    a thesis beside a dataset or a folder that was never one. The entries are first moved into OVERWRITE_TRASH (a
    rename each, fast), so a stop or an error part-way leaves the old dataset whole, never half deleted."""
    entries = [entry for entry in root.iterdir() if entry.name not in keep and entry.name != OVERWRITE_TRASH]
    foreign = sorted(entry.name for entry in entries if entry.name not in DATASET_ENTRIES and not entry.name.startswith("."))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise FileExistsError(f"dataset directory {root} holds {shown}, which no LeRobot dataset has (only meta/, data/ "
                              f"and videos/); overwrite replaces a dataset only, so nothing was deleted: name an empty or "
                              f"new directory")
    trash = root / OVERWRITE_TRASH
    _move_aside([entry for entry in entries if entry.name in DATASET_ENTRIES or _is_writers_leftover(entry.name)],
                trash)
    delete_trash(trash)


def _move_aside(entries: Sequence[Path], trash: Path) -> None:
    """move_to_trash, its OSError naming the entry that could not be moved and saying nothing was deleted."""
    try:
        move_to_trash(entries, trash)
    except OSError as exc:
        raise OSError(exc.errno, f"overwrite could not move {exc.filename} into {trash} to delete it ({exc.strerror}); "
                                 f"nothing was deleted: the old dataset in {trash.parent} is as it was") from exc
