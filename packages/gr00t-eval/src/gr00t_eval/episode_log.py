"""episodes.jsonl, a run's per-episode log: one line appended and flushed the moment an episode is scored, so a
crash keeps every episode scored before it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

logger = logging.getLogger(__name__)


class EpisodeLog:
    """episodes.jsonl: one JSON object per scored episode, appended and flushed at once so a crash keeps it."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append one episode entry (numpy values converted) and flush it to disk."""
        from .results import _jsonable

        line = json.dumps(_jsonable(entry)) + "\n"
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
