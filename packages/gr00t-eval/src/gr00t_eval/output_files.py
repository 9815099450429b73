"""The files of a rollout's output directory: their names (a shard's own too), and OutputDirError for a directory
that cannot be used as asked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

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
