"""The benchmarks' child processes (servers, client farms): waits that notice a child that died, and a SIGTERM that
stops them as Ctrl-C does."""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from typing import Any, Callable, Mapping, Optional

SLICE_S = 0.2  # how often a wait looks at the children it depends on


class BenchmarkError(RuntimeError):
    """A run that can give no result; `run_benchmark` prints it in one line and exits 1."""


class ChildDied(BenchmarkError):
    """A child process the benchmark was waiting on exited with an error."""


def check_children(watched: Mapping[str, Any], what: str) -> None:
    """Raise ChildDied for the first watched process (multiprocessing.Process) that exited with a non-zero code."""
    for name, process in watched.items():
        if process.exitcode not in (None, 0):
            raise ChildDied(f"the {name} (pid {process.pid}) exited with code {process.exitcode} while waiting for {what}")


def wait_for(what: str, source: Any, watched: Mapping[str, Any], timeout_s: float) -> Any:
    """The next item of `source` (a multiprocessing or threading queue), waited for in slices: a watched process that
    died ends the wait at once (ChildDied), and `timeout_s` without an item BenchmarkError."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return source.get(timeout=SLICE_S)
        except queue.Empty:
            pass
        check_children(watched, what)
        if time.monotonic() >= deadline:
            raise BenchmarkError(f"nothing came within {timeout_s:g} s while waiting for {what}")


def wait_at(barrier: Any, what: str, watched: Mapping[str, Any], timeout_s: float) -> None:
    """This process's turn at a multiprocessing Barrier, given up (and the barrier broken for the others) when a
    watched process dies."""
    outcome: "queue.Queue[Optional[BaseException]]" = queue.Queue()

    def wait() -> None:
        try:
            barrier.wait(timeout_s)
            outcome.put(None)
        except threading.BrokenBarrierError as exc:
            outcome.put(exc)

    threading.Thread(target=wait, daemon=True).start()
    try:
        broken = wait_for(what, outcome, watched, timeout_s + 1.0)
    except BaseException:
        barrier.abort()
        raise
    if broken is not None:
        check_children(watched, what)
        raise BenchmarkError(f"{what} broke off: a process failed or waited longer than {timeout_s:g} s")


def _exit_as_interrupted(signum: int, _frame: Any) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise SystemExit(128 + signum)


def run_benchmark(main: Callable[[], Optional[int]]) -> int:
    """Run a benchmark's main: SIGTERM unwinds it as Ctrl-C does (finally blocks run, daemon children are
    terminated), and a BenchmarkError is one line on stderr with exit status 1."""
    signal.signal(signal.SIGTERM, _exit_as_interrupted)
    try:
        return main() or 0
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
