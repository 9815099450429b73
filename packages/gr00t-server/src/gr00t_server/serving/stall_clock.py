"""The clock a server's session idle time is read on: monotonic time less the seconds its socket loop was stalled."""

from __future__ import annotations

import time
from typing import Callable

# A loop turn that took longer than its poll asked for by more than this was stalled (the process stopped or paused,
# or its thread starved); shorter overruns are a busy turn's ordinary cost and are left on the clock.
STALL_MARGIN_S = 1.0


class LoopStallClock:
    """Monotonic time less the stalls of the socket loop (SIGSTOP, `docker pause`, a VM paused or migrated): a frozen
    server must not charge its freeze to its sessions' idle time, since their requests waited in its socket meanwhile.
    Deadlines and arrival times stay on the real clock: a client's timeout runs on through a freeze."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.stalled_s = 0.0  # written by the socket thread only; read by the worker's session checks too

    def __call__(self) -> float:
        return self._clock() - self.stalled_s

    def turned(self, asked_s: float, took_s: float) -> None:
        """The loop's poll, which asked to wait at most `asked_s`, returned `took_s` after its last one did: past the
        margin, the time beyond what it asked for was a stall."""
        overrun_s = took_s - asked_s
        if overrun_s > STALL_MARGIN_S:
            self.stalled_s += overrun_s
