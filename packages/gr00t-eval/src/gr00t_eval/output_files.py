"""The files of a rollout's output directory: their names (a shard's own too), and OutputDirError for a directory
that cannot be used as asked."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

# The longest name a run writes into a folder of its videos (videos/, a --video-dir): an episode's video as it is
# written aside (run_claim.partial_path: .NAME.PID.N@HOST.tmp), with room for a million episodes and a billion files
# written aside by one process. Every other file a run writes (results.json, a shard's, their asides) is shorter.
LONGEST_VIDEO_NAME = "episode_999999_failure.mp4"
DEFAULT_PATH_MAX = 4096  # bytes, with the closing NUL (Linux's PATH_MAX), where pathconf cannot tell
RUN_FILENAME = "run.json"
EPISODE_LOG_FILENAME = "episodes.jsonl"
# The files of one shard of a `rollout --shard I/N` split (shard_suffix).
SHARD_FILE_NAME = re.compile(r"(run|episodes|results)_shard(?P<index>[0-9]+)of(?P<count>[0-9]+)\.jsonl?")


class OutputDirError(ValueError):
    """An output directory that cannot be used as asked (not empty, nothing to resume, ...)."""


def shard_suffix(shard: Any) -> str:
    """'' for a whole run, '_shard{i}of{N}' for one shard (shards of a plan may share one directory)."""
    return "" if shard is None else f"_shard{shard.index}of{shard.count}"


def run_file_name(shard: Any = None) -> str:
    """run.json, or run_shard{i}of{N}.json for a shard."""
    return f"run{shard_suffix(shard)}.json"


def episode_log_name(shard: Any = None) -> str:
    """episodes.jsonl, or episodes_shard{i}of{N}.jsonl for a shard."""
    return f"episodes{shard_suffix(shard)}.jsonl"


def results_file_name(shard: Any = None) -> str:
    """results.json (RESULTS_FILENAME), or results_shard{i}of{N}.json for a shard."""
    return f"results{shard_suffix(shard)}.json"


def shard_files(directory: Union[str, Path]) -> List[str]:
    """The names of the `rollout --shard` files (run_, episodes_, results_shard{i}of{N}) in `directory`."""
    directory = Path(directory)
    return sorted(p.name for p in directory.iterdir() if SHARD_FILE_NAME.fullmatch(p.name)) if directory.is_dir() else []


def started_shards(directory: Union[str, Path]) -> List[Tuple[int, int]]:
    """(index, count) of each `rollout --shard I/N` that started in `directory` (its run file is there), in order."""
    found = (SHARD_FILE_NAME.fullmatch(name) for name in shard_files(directory))
    return sorted({(int(m.group("index")), int(m.group("count"))) for m in found if m is not None and m.group(1) == "run"})


def not_a_directory_above(path: Union[str, Path]) -> Optional[Path]:
    """The first folder above `path` (from the top) that exists and is not a directory (a file in the way): `path`
    cannot be made then; None when there is none."""
    for parent in reversed(Path(path).parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


# A run of several tasks writes each task's videos into a folder of its own below videos/ (or a --video-dir), named
# for its task: up to a file name's length.
LONGEST_TASK_FOLDER = "t" * 255 + "/"


def aside_name(name: str) -> str:
    """The longest name `name` is written aside under before it is renamed into place (run_claim.partial_path:
    .NAME.PID.N@HOST.tmp), with room for a billion files written aside by this process."""
    from .run_claim import host_tag

    return f".{name}.{os.getpid()}.{'9' * 9}@{host_tag()}.tmp"


def longest_written_name(below: str = "") -> str:
    """The longest path (relative) a run writes below a folder: `below` (e.g. 'videos/'), a task's folder of a run of
    several tasks, and then an episode video written aside."""
    return f"{below}{LONGEST_TASK_FOLDER}{aside_name(LONGEST_VIDEO_NAME)}"


def refuse_path_too_long(folder: Union[str, Path], flag: str = "--output-dir", below: str = "",
                         longest: Optional[str] = None) -> None:
    """OutputDirError naming `folder`, the lengths and the limit when its absolute path leaves no room for the longest
    file written in it: `longest` (a relative path) where given (a merge's, a recording's), else a run's
    (longest_written_name(below)). Without it every episode ran, and then results.json (written aside under a longer
    name) failed with 'File name too long', again on every --resume."""
    shown = longest
    if longest is None:
        longest = longest_written_name(below)
        shown = f"an episode video written aside in a task's folder of {len(LONGEST_TASK_FOLDER) - 1} characters"
    folder_bytes = len(os.fsencode(os.path.abspath(folder)))
    total = folder_bytes + 1 + len(os.fsencode(longest))
    limit = _path_max(Path(folder)) - 1  # PATH_MAX counts the closing NUL
    if total > limit:
        raise OutputDirError(
            f"{flag} {folder} is too long a path for the files written there: it is {folder_bytes} bytes, and with "
            f"the longest of those files ({shown}: {len(os.fsencode(longest))} bytes) {total} bytes, past this file "
            f"system's limit of {limit} bytes for a path (PATH_MAX); name a folder with a shorter path")


def _path_max(folder: Path) -> int:
    """PATH_MAX of the file system `folder` is (or would be made) on: pathconf of its nearest existing folder."""
    for candidate in (folder, *folder.absolute().parents):
        try:
            limit = os.pathconf(candidate, "PC_PATH_MAX")
        except (OSError, ValueError):  # not there yet, or not told: the folder above
            continue
        return limit if limit > 0 else DEFAULT_PATH_MAX  # -1: no limit told
    return DEFAULT_PATH_MAX
