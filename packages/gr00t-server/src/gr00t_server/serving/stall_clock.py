"""The clock a server's session idle time is read on: monotonic time less the seconds its socket loop was stalled."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional, Tuple

# A poll that returned later than it asked to wait by more than this was stalled (the process stopped or paused, or
# its thread starved); shorter overruns are ordinary scheduling and are left on the clock.
STALL_MARGIN_S = 1.0


class LoopStallClock:
    """Monotonic time less the stalls of the socket loop's polls (SIGSTOP, `docker pause`, a VM paused or migrated): a
    frozen server must not charge its freeze to its sessions' idle time, since their requests waited in its socket
    meanwhile. Only the poll's own overrun counts (a slow call run on the socket thread is no stall), and a poll still
    overrunning counts at once: after a freeze the worker may judge sessions before the socket thread's poll returns.
    Deadlines and arrival times stay on the real clock: a client's timeout runs on through a freeze."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # the socket thread writes, the worker's session checks read
        self._stalled_s = 0.0
        self._polling: Optional[Tuple[float, float]] = None  # (started, asked_s) of the poll in progress

    def __call__(self) -> float:
        with self._lock:
            now = self._clock()
            return now - self._stalled_s - self._overrun(now)

    def poll_started(self, asked_s: float) -> None:
        """The socket loop starts a poll that waits at most `asked_s`."""
        with self._lock:
            self._polling = (self._clock(), asked_s)

    def poll_returned(self) -> None:
        """The poll returned: its overrun past the margin, if any, was a stall."""
        with self._lock:
            self._stalled_s += self._overrun(self._clock())
            self._polling = None

    def _overrun(self, now: float) -> float:
        if self._polling is None:
            return 0.0
        started, asked_s = self._polling
        overrun_s = now - started - asked_s
        return overrun_s if overrun_s > STALL_MARGIN_S else 0.0
