"""For the command lines of gr00t-server and gr00t-eval: standard output that a closed pipe, a terminal that has gone
or a full disk does not break.

`gr00t-server serve | head -1` closed the pipe after the first line, and the next line of the start-up block raised
BrokenPipeError: the server never came up. `gr00t-eval rollout | head` saved its results and then exited 2. A command
started with `& disown` from an ssh session that then ended got EIO on its next line (open-loop lost every trajectory
it had scored; serve never came up after its model loaded), and one whose output went to a full disk got ENOSPC.
A path that the output's encoding cannot hold (PYTHONIOENCODING=ascii, a Latin-1 locale) raised UnicodeEncodeError
at its print(): it is written escaped instead.
Their standard output is a report; once it cannot be written, the rest goes to /dev/null and the command carries on
(its logs go to stderr, where one warning says why the report stopped). A standard output closed by the launcher
(`>&-`) is /dev/null from the start, and the same warning comes at its first line.
Library code that prints a line on the host program's standard output (PolicyServer.run()'s start-up lines) uses
print_if_writable: the host's stream, whatever it is, never fails the call, and is left as it is.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Set


class ClosedPipeTolerantStdout:
    """Wraps sys.stdout: a write or flush that fails (a pipe whose reader has gone, a terminal hung up: EIO, a full
    disk: ENOSPC) points file descriptor 1 at /dev/null and carries on, instead of raising in whatever print() came
    next."""

    def __init__(self, stream: Any, warn: bool = True, closed_at_start: bool = False) -> None:
        self._stream = stream
        self._warn = warn  # not for stderr itself: the warning would go where the failure is
        # said at the first line lost, not at start-up: the command has set up its logging by then
        self._closed_at_start_unsaid = closed_at_start

    def write(self, text: str) -> int:
        if self._closed_at_start_unsaid and text:
            self._closed_at_start_unsaid = False
            self._say_discarded("closed by the launcher, >&-")
        try:
            return self._stream.write(text)
        except OSError as exc:
            self._discard_from_now_on(exc)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self._discard_from_now_on(exc)

    def _discard_from_now_on(self, exc: OSError) -> None:
        if not isinstance(exc, BrokenPipeError):  # a reader that left meant it; a lost terminal is news
            self._say_discarded(os.strerror(exc.errno) if exc.errno else str(exc))
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no file descriptor (a test's capture): nothing to redirect
            pass

    def _say_discarded(self, why: str) -> None:
        if self._warn:
            logging.getLogger(__name__).warning(
                "standard output cannot be written (%s): the rest of this command's report is discarded; it carries on",
                why)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def print_if_writable(line: str) -> None:
    """Print `line` on sys.stdout, flushed, unless it cannot be written: a stdout that is None, closed (ValueError) or
    broken (a pipe whose reader has gone, a terminal hung up: OSError) loses the line instead of failing the caller;
    characters its encoding cannot hold are written escaped (a launcher waiting for the line still gets it). For
    library code printing on a host program's stdout, which is not replaced or redirected (guard_stdout, for the
    command lines, is what does that)."""
    try:
        try:
            print(line, flush=True)
        except UnicodeEncodeError:
            encoding = getattr(sys.stdout, "encoding", None) or "ascii"
            print(line.encode(encoding, "backslashreplace").decode(encoding), flush=True)
    except (OSError, ValueError) as exc:
        logging.getLogger(__name__).debug("a line for standard output was lost (%s: %s): %s",
                                          type(exc).__name__, exc, line)


def reopen_closed_standard_streams() -> Set[int]:
    """Point each of file descriptors 0, 1 and 2 that is closed (a command started with `2>&-`) at /dev/null, and give
    Python a stream for it: the next file opened took the free number (glfw's library probe failed with fd 2 closed,
    and record and rollout blamed a missing install), and messages for stderr went to stdout. Returns those reopened."""
    reopened = set()
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            reopened.add(fd)
            devnull = os.open(os.devnull, os.O_RDWR)  # takes the lowest free number: fd itself when it is the first
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
            os.set_inheritable(fd, True)  # os.open's are not: child processes (glfw's probe) would find it closed
            if getattr(sys, name) is None:  # Python starts with None for a closed standard stream
                setattr(sys, name, open(fd, mode, closefd=False))
    return reopened


def guard_stdout() -> None:
    """Make sys.stdout and sys.stderr ClosedPipeTolerantStdout (once; called by the command lines' main). stderr too:
    with both on a terminal that has gone, an interrupted run's last line ("... interrupted") raised EIO and the run
    that had saved its results exited 1 instead of 130. Closed standard file descriptors are reopened on /dev/null
    first (reopen_closed_standard_streams); a closed stdout is named on stderr at its first line. Characters the
    streams' encoding cannot hold are written escaped (backslashreplace), and stdout is line-buffered (a log file or
    pipe gets each line as it is printed)."""
    reopened = reopen_closed_standard_streams()
    for stream in (sys.stdout, sys.stderr):
        # a report line a strict stream's encoding cannot hold (a path in Japanese, or with a non-UTF-8 byte, under
        # PYTHONIOENCODING=ascii or a Latin-1 locale) is printed escaped: raising, it failed a command after its work.
        # Another handler is the user's (surrogateescape writes a path's own bytes, naming the file): kept
        if getattr(stream, "errors", None) != "strict":
            continue
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # no TextIOWrapper (a test's capture), or closed: left as is
            pass
    try:  # a log file or pipe gets each line as it is printed: `tail -f` of a nohup or cron run showed no "Output
        # directory:" line while it ran, and a run killed -9 (OOM, a preempted node) lost it, and with it the folder to resume
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):  # no TextIOWrapper (a test's capture), or closed: left as is
        pass
    if not isinstance(sys.stdout, ClosedPipeTolerantStdout) and sys.stdout is not None:
        sys.stdout = ClosedPipeTolerantStdout(sys.stdout, closed_at_start=1 in reopened)  # type: ignore[assignment]
    if not isinstance(sys.stderr, ClosedPipeTolerantStdout) and sys.stderr is not None:
        sys.stderr = ClosedPipeTolerantStdout(sys.stderr, warn=False)  # type: ignore[assignment]
