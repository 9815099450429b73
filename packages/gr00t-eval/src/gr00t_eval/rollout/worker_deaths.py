"""An async env worker that died (a simulator's segfault or abort, the OOM killer's SIGKILL), named with its env row,
the episode and seed it ran and how it died, instead of its pipe's bare EOFError."""

from __future__ import annotations

import signal
import time
from typing import Any, Callable, List, Sequence

PIPE_ERRORS = (EOFError, BrokenPipeError, ConnectionResetError)  # what gymnasium's AsyncVectorEnv pipes raise
EXIT_WAIT_S = 2.0  # a worker whose pipe closed may not have been reaped yet

_SIGNAL_HINTS = {signal.SIGKILL: "the OOM killer?", signal.SIGSEGV: "a simulator crash?",
                 signal.SIGABRT: "a simulator abort?"}


class EnvWorkerDiedError(RuntimeError):
    """An async env worker process died during the rollout; the message names its row, episode, seed and exit."""


def dead_worker_error(processes: Sequence[Any], episodes: Sequence[int], seed_for: Callable[[int], int],
                      pipe_error: BaseException) -> EnvWorkerDiedError:
    """The error naming each worker of `processes` (one per env row) that has exited, the episode `episodes[row]` it
    ran (-1: idle) with its seed, and its exit code or signal; `pipe_error` is named when no worker's exit was seen."""
    held = [f"env {row} ({_episode_text(episodes, row, seed_for)}) {exit_text(processes[row].exitcode)}"
            for row in _exited_rows(processes)]
    what = "; ".join(held) or f"its pipe said {type(pipe_error).__name__}, and no worker's exit code was seen"
    return EnvWorkerDiedError(f"an env worker process died: {what}; the task's episodes still running and not yet "
                              "started did not run")


def exit_text(exitcode: int) -> str:
    """How a process ended, from its exit code: "killed by SIGKILL (-9: the OOM killer?)", "exited with code 3"."""
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    try:
        signum = signal.Signals(-exitcode)
    except ValueError:
        return f"was killed by signal {-exitcode} ({exitcode})"
    hint = _SIGNAL_HINTS.get(signum)
    return f"was killed by {signum.name} ({exitcode}{': ' + hint if hint else ''})"


def _episode_text(episodes: Sequence[int], row: int, seed_for: Callable[[int], int]) -> str:
    episode = episodes[row] if row < len(episodes) else -1
    return f"episode {episode}, seed {seed_for(episode)}" if episode >= 0 else "idle"


def _exited_rows(processes: Sequence[Any]) -> List[int]:
    deadline = time.monotonic() + EXIT_WAIT_S
    while True:
        exited = [row for row, process in enumerate(processes) if process.exitcode is not None]
        if exited or time.monotonic() >= deadline:
            return exited
        time.sleep(0.05)
