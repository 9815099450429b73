"""A run's output directory: dated by default, never silently reused, with a per-episode log that survives a crash.

Layout of a rollout directory:
    run.json         the run's settings (base seed included), written before the first episode
    episodes.jsonl   one line per episode, appended (and flushed to disk) the moment it is scored
    results.json     the full results, written at the end or on Ctrl-C/SIGTERM ("status": "interrupted")
    eval_info.json   the same numbers in lerobot-eval's field names
    videos/          episode videos
`--resume DIR` reads run.json and episodes.jsonl and runs only the episodes still missing (or errored).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

logger = logging.getLogger(__name__)

RUN_FILENAME = "run.json"
EPISODE_LOG_FILENAME = "episodes.jsonl"
INTERRUPTED_EXIT_CODE = 130


class OutputDirError(ValueError):
    """An output directory that cannot be used as asked (not empty, nothing to resume, ...)."""


def dated_output_dir(base: Union[str, Path], label: str, now: Optional[float] = None) -> Path:
    """BASE/YYYY-MM-DD/HH-MM-SS_<label> (like lerobot-eval's outputs/eval/<date>/<time>_<env>)."""
    stamp = time.localtime(now if now is not None else time.time())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-")[:80] or "run"
    return Path(base) / time.strftime("%Y-%m-%d", stamp) / f"{time.strftime('%H-%M-%S', stamp)}_{slug}"


def fresh_dated_output_dir(base: Union[str, Path], label: str, now: Optional[float] = None) -> Path:
    """dated_output_dir, with -2, -3, ... appended while that name exists (two runs started in the same second)."""
    path = dated_output_dir(base, label, now)
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def shard_suffix(shard: Any) -> str:
    """'' for a whole run, '_shard{i}of{N}' for one shard (shards of a plan may share one directory)."""
    return "" if shard is None else f"_shard{shard.index}of{shard.count}"


def prepare_output_dir(path: Union[str, Path], overwrite: bool = False, own_files: Optional[List[str]] = None) -> Path:
    """Create `path`; an existing non-empty directory is refused unless `overwrite` (which empties it).

    With `own_files` (a shard's file names) the directory may hold other files (other shards' output); only
    those names must not exist yet.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--output-dir {path} exists and is not a directory")
    if own_files is not None and not overwrite:
        taken = [name for name in own_files if (path / name).exists()]
        if taken:
            raise OutputDirError(f"--output-dir {path} already holds {', '.join(taken)}; pass --resume {path} (with the "
                                 "same --shard) to continue that shard, or another directory")
        path.mkdir(parents=True, exist_ok=True)
        return path
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise OutputDirError(f"--output-dir {path} is not empty; pass --overwrite to empty it or --resume {path} to continue that run")
        logger.warning("emptying %s (--overwrite)", path)
        for child in path.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def claim_output_dir(path: Union[str, Path], filename: str, settings: Mapping[str, Any]) -> Path:
    """Create PATH/FILENAME with `settings` atomically (O_EXCL): a second run into the same directory is refused.

    The emptiness check and a run's first file are otherwise a window in which two runs both find the
    directory empty; OutputDirError when the file exists already.
    """
    from .results import _jsonable

    claim = Path(path) / filename
    try:
        handle = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise OutputDirError(f"--output-dir {path} is taken by another run (it holds {filename}); wait for that run "
                             "or name a new directory") from None
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(json.dumps(_jsonable({"created": created, "pid": os.getpid(), **settings}), indent=2) + "\n")
    return claim


def run_file_name(shard: Any = None) -> str:
    """run.json, or run_shard{i}of{N}.json for a shard."""
    return f"run{shard_suffix(shard)}.json"


def episode_log_name(shard: Any = None) -> str:
    """episodes.jsonl, or episodes_shard{i}of{N}.jsonl for a shard."""
    return f"episodes{shard_suffix(shard)}.jsonl"


def write_run_file(directory: Union[str, Path], settings: Mapping[str, Any], shard: Any = None) -> Path:
    """Save the run's settings (run.json) so `--resume` continues with the same plan and seeds."""
    from .results import write_results

    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return write_results(Path(directory) / run_file_name(shard), {"created": created, **settings})


def read_run_file(directory: Union[str, Path], shard: Any = None) -> Dict[str, Any]:
    """run.json (or a shard's run file) of a directory to resume (OutputDirError when there is none)."""
    path = Path(directory) / run_file_name(shard)
    if not path.is_file():
        raise OutputDirError(f"--resume {directory}: no {path.name} there (is it the --output-dir of a gr00t-eval rollout"
                             f"{'' if shard is None else ' with this --shard'}?)")
    return json.loads(path.read_text())


class EpisodeLog:
    """episodes.jsonl: one JSON object per scored episode, appended and flushed at once so a crash keeps it."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append one episode entry (numpy values converted) and flush it to disk."""
        from .results import _jsonable

        line = json.dumps(_jsonable(entry)) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def read(self) -> List[Dict[str, Any]]:
        """Every complete entry, later entries of the same (task, episode) replacing earlier ones (resumed runs)."""
        if not self.path.is_file():
            return []
        latest: Dict[Any, Dict[str, Any]] = {}
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash: everything before it is intact
                logger.warning("%s:%d is not complete JSON; ignoring it", self.path, number)
                continue
            latest[(entry.get("task"), entry.get("episode_index"))] = entry
        return list(latest.values())


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the block runs, so `kill` ends a run like Ctrl-C does."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
