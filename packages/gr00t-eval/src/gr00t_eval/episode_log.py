"""episodes.jsonl, a run's per-episode log: one line appended and flushed the moment an episode is scored, so a
crash keeps every episode scored before it. Each line names the attempt that wrote it (ATTEMPT_KEY) and how long that
attempt had run by then (ATTEMPT_S_KEY): a resume adds up earlier attempts' time even where they wrote no results."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Union

from .run_stop import check_folder_kept, folder_identity

logger = logging.getLogger(__name__)

ATTEMPT_KEY = "attempt"  # the id of the run attempt (this EpisodeLog) that logged an entry
ATTEMPT_S_KEY = "attempt_s"  # seconds that attempt had run when it logged the entry


class EpisodeLog:
    """episodes.jsonl: one JSON object per scored episode, appended and flushed at once so a crash keeps it.
    With `claim` (the run file beside it) every append first checks that the folder is still the run's."""

    def __init__(self, path: Union[str, Path], claim: Optional[str] = None) -> None:
        self.path = Path(path)
        self._claim = claim
        self._folder = folder_identity(self.path.parent) if claim is not None else None
        self.attempt = uuid.uuid4().hex[:12]
        self._started = time.monotonic()

    def check_folder(self) -> None:
        """OutputFolderGone when the folder holding the log is no longer the one claimed (unmounted or deleted)."""
        if self._claim is not None and self._folder is not None:
            check_folder_kept(self.path.parent, self._folder, self._claim)

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append one episode entry (numpy values converted) and flush it to disk."""
        from .results import _jsonable

        stamp = {ATTEMPT_KEY: self.attempt, ATTEMPT_S_KEY: round(time.monotonic() - self._started, 3)}
        line = json.dumps(_jsonable({**entry, **stamp})) + "\n"
        self.check_folder()
        try:
            with open(self.path, "a+b") as handle:
                if handle.tell():  # a line cut short (a full disk) must not swallow this entry: start a line of its own
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        line = "\n" + line
                handle.write(line.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            if exc.filename is None:  # a write's error names no file: a full disk's message should
                raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
            raise

    def read(self) -> List[Dict[str, Any]]:
        """Every complete entry, later entries of the same (task, episode) replacing earlier ones (resumed runs)."""
        return latest_entries(self.entries())

    def entries(self) -> Iterator[Dict[str, Any]]:
        """Every complete entry in the order logged, those of episodes run again included."""
        if not self.path.is_file():
            return
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash: everything before it is intact
                logger.warning("%s:%d is not an episode entry: it is not complete JSON; ignoring it", self.path, number)
                continue
            problem = entry_problem(entry)
            if problem is not None:  # edited by hand, or another tool's: its episode runs again
                logger.warning("%s:%d is not an episode entry: %s; ignoring it", self.path, number, problem)
                continue
            yield entry


def entry_problem(entry: Any) -> Optional[str]:
    """Why a JSON value read from episodes.jsonl is no episode entry (None when it is one): an object with a
    whole-number `episode_index`, a text `task` and whole-number or numeric episode fields."""
    if not isinstance(entry, dict):
        return f"expected an object, got {type(entry).__name__}"
    index = entry.get("episode_index")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return f"expected 'episode_index' a whole number >= 0, got {index!r}"
    if entry.get("task") is not None and not isinstance(entry["task"], str):
        return f"expected 'task' text, got {entry['task']!r}"
    for key, kinds in (("length", (int,)), ("env_index", (int,)), ("sum_reward", (int, float)),
                       ("max_reward", (int, float))):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            return f"expected {key!r} a {'whole number' if kinds == (int,) else 'number'} or null, got {value!r}"
    return None


def latest_entries(entries: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The entries logged (EpisodeLog.entries), later entries of the same (task, episode) replacing earlier ones: what
    EpisodeLog.read gives, from entries already read (a resume needs both, and reads the file once)."""
    latest: Dict[Any, Dict[str, Any]] = {}
    for entry in entries:
        latest[(entry.get("task"), entry.get("episode_index"))] = dict(entry)
    return list(latest.values())
