"""overwrite: a dataset directory's entries moved aside (a rename each) before any is deleted, so a stop or an error
part-way leaves the old dataset whole or entirely gone, never half deleted."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Sequence

from ..run_claim import claim_alive_name, claim_lock_name
from ..trash import OVERWRITE_TRASH, delete_trash, move_to_trash

__all__ = ["DATASET_ENTRIES", "OVERWRITE_TRASH", "RECORD_CLAIM", "check_only_dataset_entries", "delete_trash",
           "empty_dataset_dir"]

# What a dataset directory holds: LeRobot's three folders, and hidden files (a recording's claim, atomic-write
# leftovers, the Hub's .gitattributes). Beside meta/info.json, also what stock LeRobot and the Hub leave there
# (LEROBOT_LEFTOVERS). Anything else visible means the directory is not (only) a dataset.
DATASET_ENTRIES = frozenset({"meta", "data", "videos"})
# images/: LeRobot's image writer's temporary frames (images/<key>/episode_<n>/frame_<n>.png; a saved episode's are
# deleted, its folder per camera stays); README.md: a Hub download's dataset card. Both are the old dataset's.
LEROBOT_LEFTOVERS = frozenset({"images", "README.md"})
_IMAGE_WRITER_NAMES = (None, re.compile(r"episode[_-]\d+"), re.compile(r"frame[_-]\d+\.png"))  # '-' in LeRobot v3.0
RECORD_CLAIM = ".gr00t_record.json"  # in the dataset root: the recording's process and settings (run_claim)


def _is_writers_leftover(name: str) -> bool:
    """A hidden file the writer itself leaves (a partial episode file, a staged or kept meta file): overwrite deletes
    these with the dataset, and leaves any other hidden entry (.git/, .gitattributes, a user's notes) in place."""
    return (name in (RECORD_CLAIM, claim_lock_name(RECORD_CLAIM), claim_alive_name(RECORD_CLAIM)) or name.startswith(".partial-")
            or (name.startswith(".") and name.endswith((".tmp", ".prev"))))


def empty_dataset_dir(root: Path, keep: Sequence[str] = ()) -> None:
    """Delete a dataset's entries from `root` (overwrite): meta/, data/, videos/, LeRobot's images/ and README.md and
    the writer's hidden leftovers, keeping `root` itself (it may be a mount point or a symlink's target), the entries
    named in `keep` (the claim of the recording about to fill it) and every other hidden entry (.git/, .gitattributes).
    FileExistsError, deleting nothing, when `root` holds anything a dataset does not (check_only_dataset_entries). The
    entries are first moved into OVERWRITE_TRASH (a rename each, fast), so a stop or an error part-way leaves the old
    dataset whole, never half deleted."""
    check_only_dataset_entries(root, keep)
    entries = _entries(root, keep)
    trash = root / OVERWRITE_TRASH
    _move_aside([entry for entry in entries
                 if entry.name in DATASET_ENTRIES | LEROBOT_LEFTOVERS or _is_writers_leftover(entry.name)], trash)
    delete_trash(trash)


def check_only_dataset_entries(root: Path, keep: Sequence[str] = ()) -> None:
    """FileExistsError naming what in `root` is no part of a LeRobot dataset: overwrite deleted any folder, a thesis
    beside a dataset or a folder that was never one. Checked again by empty_dataset_dir; callers check first to refuse
    before they change anything (a recording's claim)."""
    foreign = _foreign_entries(root, _entries(root, keep))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        verb, them = ("is", "it") if len(foreign) == 1 else ("are", "them")
        raise FileExistsError(f"dataset directory {root} holds {shown}, which {verb} not part of a LeRobot dataset "
                              f"(meta/, data/, videos/ and hidden files, and beside meta/info.json LeRobot's images/ "
                              f"of temporary frames and the Hub's README.md); overwrite replaces a dataset only, so "
                              f"nothing was deleted: move {them} out, or name an empty or new directory")


def _entries(root: Path, keep: Sequence[str]) -> List[Path]:
    return [entry for entry in root.iterdir() if entry.name not in keep and entry.name != OVERWRITE_TRASH]


def _foreign_entries(root: Path, entries: Sequence[Path]) -> List[str]:
    """The visible entries (paths relative to `root`) that are no part of a dataset; LeRobot's leftovers count as part
    only beside meta/info.json: a project folder's README.md (beside its data/) is not a dataset card."""
    beside_dataset = (root / "meta" / "info.json").is_file()
    foreign: List[str] = []
    for entry in entries:
        if entry.name.startswith(".") or entry.name in DATASET_ENTRIES:
            continue
        if beside_dataset and entry.name == "README.md" and entry.is_file():  # a link too (a Hub cache's snapshot)
            continue
        if beside_dataset and entry.name == "images" and _is_real_dir(entry):
            foreign.extend(str(path.relative_to(root)) for path in _not_image_writer_frames(entry))
            continue
        foreign.append(entry.name)
    return sorted(foreign)


def _not_image_writer_frames(folder: Path, depth: int = 0) -> List[Path]:
    """What in LeRobot's images/ `folder` is not laid out as its image writer's frames, images/<key>/episode_<n>/
    frame_<n>.png: each stray entry, not what is inside it; hidden entries are the dataset's, as in its root."""
    stray: List[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):  # hidden, as in the dataset's root (a Finder's .DS_Store)
            continue
        pattern = _IMAGE_WRITER_NAMES[depth]
        named = pattern is None or pattern.fullmatch(entry.name) is not None
        if depth == len(_IMAGE_WRITER_NAMES) - 1:
            if not (named and entry.is_file() and not entry.is_symlink()):
                stray.append(entry)
        elif not (named and _is_real_dir(entry)):
            stray.append(entry)
        else:
            stray.extend(_not_image_writer_frames(entry, depth + 1))
    return stray


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _move_aside(entries: Sequence[Path], trash: Path) -> None:
    """move_to_trash, its OSError naming the entry that could not be moved and saying nothing was deleted."""
    try:
        move_to_trash(entries, trash)
    except OSError as exc:
        raise OSError(exc.errno, f"overwrite could not move {exc.filename} into {trash} to delete it ({exc.strerror}); "
                                 f"nothing was deleted: the old dataset in {trash.parent} is as it was") from exc
