"""For the command lines of gr00t-server and gr00t-eval: standard output that a closed pipe does not break.

`gr00t-server serve | head -1` closed the pipe after the first line, and the next line of the start-up block raised
BrokenPipeError: the server never came up. `gr00t-eval rollout | head` saved its results and then exited 2. Their
standard output is a report; once nobody reads it, the rest goes to /dev/null and the command carries on (its logs
go to stderr).
"""

from __future__ import annotations

import os
import sys
from typing import Any


class ClosedPipeTolerantStdout:
    """Wraps sys.stdout: a write or flush into a pipe whose reader has gone points file descriptor 1 at /dev/null
    and carries on, instead of raising BrokenPipeError in whatever print() came next."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._discard_from_now_on()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard_from_now_on()

    def _discard_from_now_on(self) -> None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no file descriptor (a test's capture): nothing to redirect
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_stdout() -> None:
    """Make sys.stdout a ClosedPipeTolerantStdout (once; called by the command lines' main)."""
    if not isinstance(sys.stdout, ClosedPipeTolerantStdout) and sys.stdout is not None:
        sys.stdout = ClosedPipeTolerantStdout(sys.stdout)  # type: ignore[assignment]
