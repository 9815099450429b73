"""overwrite: a dataset directory's entries moved aside (a rename each) before any is deleted, so a stop or an error
part-way leaves the old dataset whole or entirely gone, never half deleted."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

# What a dataset directory holds: LeRobot's three folders, and hidden files (a recording's claim, atomic-write
# leftovers). Anything else means the directory is not (only) a dataset.
DATASET_ENTRIES = frozenset({"meta", "data", "videos"})
# In a dataset directory: the entries of the dataset an overwrite replaces, moved aside to be deleted. Readers never
# look there; a writer deletes one that a killed overwrite left.
OVERWRITE_TRASH = ".gr00t_overwritten"


def empty_dataset_dir(root: Path, keep: Sequence[str] = ()) -> None:
    """Delete a dataset's entries from `root` (overwrite), keeping `root` itself (it may be a mount point or a
    symlink's target) and the entries named in `keep` (the claim of the recording about to fill it).
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
    _move_aside(entries, trash)
    delete_trash(trash)


def _move_aside(entries: Sequence[Path], trash: Path) -> None:
    """Rename each entry into a new folder in `trash`; if one cannot be moved, or a Ctrl-C/SIGTERM comes, those moved
    are put back."""
    trash.mkdir(exist_ok=True)  # it may hold what an earlier overwrite could not delete
    aside = Path(tempfile.mkdtemp(dir=trash))
    try:
        for entry in entries:
            entry.rename(aside / entry.name)
    except BaseException as exc:
        for moved in aside.iterdir():  # what is in it: an entry renamed just before a stop goes back too
            moved.rename(trash.parent / moved.name)
        aside.rmdir()
        delete_trash(trash)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"overwrite could not move {entry} into {aside} to delete it ({exc.strerror}); "
                                     f"nothing was deleted: the old dataset in {trash.parent} is as it was") from exc
        raise


def delete_trash(trash: Path) -> None:
    """Delete an overwritten dataset moved aside; what cannot be deleted is left for the next writer, with a warning."""
    try:
        shutil.rmtree(trash)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not delete %s (%s): the rest of an overwritten dataset is left in %s, which the next "
                       "writer into %s deletes (or delete it yourself)", exc.filename, exc.strerror, trash, trash.parent)
