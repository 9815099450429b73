"""Folders a command reads (a LeRobot dataset, a model checkpoint), which a command emptying its output folder must
never delete: shared by gr00t-eval's --output-dir checks and gr00t-server's make-test-checkpoint."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

DATASET_KIND = "a LeRobot dataset (meta/info.json)"

# The hidden entries the tools themselves make in a folder, each named here once: an overwrite's trash (what it
# replaces, moved aside to be deleted), a run's video-folder claims and lock, an export's and a TensorRT engine build's
# work folders and lock, a video folder's write probe.
OVERWRITE_TRASH = ".gr00t_overwritten"
VIDEO_FILES_PREFIX = ".gr00t_videos"
EXPORT_WORK_PREFIX = ".gr00t-export-"
EXPORT_LOCK_NAME = ".gr00t-export.lock"
ENGINE_WORK_PREFIX = ".gr00t-engines-"
WRITE_PROBE_PREFIX = ".gr00t-write-probe-"
# Their names and patterns: the only folders the searches for inputs and live runs below a folder leave out (a user's
# own `.gr00t_data/` or `.gr00t/` is searched like any other).
TOOL_FOLDERS = (OVERWRITE_TRASH, f"{VIDEO_FILES_PREFIX}*", f"{EXPORT_WORK_PREFIX}*", EXPORT_LOCK_NAME,
                f"{ENGINE_WORK_PREFIX}*", f"{WRITE_PROBE_PREFIX}*")


def is_tool_folder(name: str) -> bool:
    """Whether `name` is one of TOOL_FOLDERS, the tools' own hidden entries."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in TOOL_FOLDERS)


def searched_folders(path: Path) -> Iterator[Tuple[Path, List[str]]]:
    """Each folder at and below `path` with its file names, top first, hidden ones too (a dataset kept in .cache/),
    symbolic links not followed, the tools' own folders (TOOL_FOLDERS) left out: the one walk of what an --overwrite
    of `path` would delete."""
    for folder, subfolders, files in os.walk(path, followlinks=False):
        yield Path(folder), files
        subfolders[:] = [name for name in subfolders if not is_tool_folder(name)]


def dataset_kind(folder: Path) -> Optional[str]:
    """DATASET_KIND when `folder` is a LeRobot dataset (it holds meta/info.json, or a link by that name to a file not
    fetched yet: git-annex, an un-pulled LFS checkout), else None."""
    info = folder / "meta" / "info.json"
    return DATASET_KIND if info.is_file() or info.is_symlink() else None


def input_kind(folder: Path) -> Optional[str]:
    """What input `folder` is: a LeRobot dataset, a model checkpoint, or None."""
    if dataset_kind(folder) is not None:
        return DATASET_KIND
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors*")):
        return "a model checkpoint (config.json and safetensors weights)"
    return None


def input_around(path: Path, kind: Callable[[Path], Optional[str]] = input_kind,
                 also: Optional[Callable[[Path, Sequence[str]], None]] = None) -> Optional[Tuple[str, str]]:
    """(where, what) for the first input (by `kind`) that `path` lies inside ("lies inside ANCESTOR,"), is ("is") or
    holds below its top ("holds, in SUB/,"; searched_folders: hidden folders too, the tools' own aside); None when
    there is none. `also`, given, is called with each folder searched (the top too) and its file names, in the same
    walk: gr00t-eval's check for a run still running there, which raises to stop it."""
    for ancestor in path.resolve().parents:
        what = kind(ancestor)
        if what is not None:
            return f"lies inside {ancestor},", what
    for folder, files in searched_folders(path):
        what = kind(folder)
        if what is not None:
            relative = folder.relative_to(path)
            return ("is" if str(relative) == "." else f"holds, in {relative}/,"), what
        if also is not None:
            also(folder, files)
    return None
