"""trash: what an overwrite replaces, moved aside (a rename each, fast) into one hidden folder before any of it is
deleted, so a stop or an error part-way leaves the old files whole or entirely gone, never half deleted."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Sequence, Tuple

from gr00t_client import input_folders

logger = logging.getLogger(__name__)

# In a directory an overwrite empties (a dataset's, a run's): what it replaces, moved aside to be deleted. Readers never
# look there; the next writer deletes one that a killed overwrite left. One of the tools' own folders (TOOL_FOLDERS).
OVERWRITE_TRASH = input_folders.OVERWRITE_TRASH


def move_to_trash(entries: Sequence[Path], trash: Path) -> Path:
    """Rename each entry into a new folder in `trash` (on the entries' file system) and return that folder; if one
    cannot be moved, or a Ctrl-C/SIGTERM comes, those moved are put back where they were and the error goes on."""
    trash.mkdir(exist_ok=True)  # it may hold what an earlier overwrite could not delete
    aside = Path(tempfile.mkdtemp(dir=trash))
    # numbered: entries from several folders (episode videos of several tasks) may share a name
    moves: List[Tuple[Path, Path]] = [(entry, aside / f"{number}_{entry.name}") for number, entry in enumerate(entries)]
    try:
        for entry, target in moves:
            entry.rename(target)
    except BaseException:
        for entry, target in moves:  # those in `aside`: one renamed just before a stop goes back too
            if os.path.lexists(target):
                target.rename(entry)
        delete_trash(trash)
        raise
    return aside


def delete_trash(trash: Path) -> None:
    """Delete what an overwrite moved aside; what cannot be deleted is left for the next writer, with a warning."""
    try:
        shutil.rmtree(trash)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not delete %s (%s): the rest of what an overwrite replaced is left in %s, which the next "
                       "writer into %s deletes (or delete it yourself)", exc.filename, exc.strerror, trash, trash.parent)
