"""The clock a server's session idle time is read on: monotonic time less the seconds the server process was stalled."""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Optional

from ..threads import block_stop_signals

# A watchdog tick that came later than its sleep by more than this was a stall (the process stopped or paused, or
# starved of CPU); shorter overruns are ordinary scheduling and are left on the clock.
STALL_MARGIN_S = 1.0
WATCH_PERIOD_S = 0.25  # how long the watchdog sleeps between ticks
WATCHDOG_NAME = "gr00t-stall-watch"


class StallClock:
    """Monotonic time less the stalls of the whole server process (SIGSTOP, `docker pause`, a VM paused or migrated),
    as a watchdog thread sleeping WATCH_PERIOD_S at a time sees them: a frozen server must not charge its freeze to its
    sessions' idle time, since their requests waited in its socket meanwhile, whatever its socket thread was doing.
    A slow call on the socket thread or the worker is no stall (the watchdog ticks on through it), and a tick still
    overrunning counts at once: after a freeze the worker may judge sessions before the watchdog has woken.
    Deadlines and arrival times stay on the real clock: a client's timeout runs on through a freeze."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, period_s: float = WATCH_PERIOD_S) -> None:
        self._clock = clock
        self._period_s = period_s
        self._lock = threading.Lock()  # the watchdog writes, the worker's and socket thread's session checks read
        self._stalled_s = 0.0
        self._last_read = -math.inf
        self._sleeping_since: Optional[float] = None  # when the watchdog's sleep in progress began (None: no watch)
        self._stop_watching = threading.Event()
        self._watchdog: Optional[threading.Thread] = None

    def __call__(self) -> float:
        with self._lock:
            now = self._clock()
            # never back: an overrun counts whole once it passes the margin, which would step the clock back by the
            # margin (a session stamped just before would read as newer than later ones); it stands still instead
            self._last_read = max(self._last_read, now - self._stalled_s - self._overrun(now))
            return self._last_read

    def tick(self) -> None:
        """The watchdog woke: its sleep's overrun past the margin, if any, was a stall; its next sleep begins."""
        with self._lock:
            now = self._clock()
            self._stalled_s += self._overrun(now)
            self._sleeping_since = now

    def start_watching(self) -> None:
        """Start the watchdog thread (the server starts serving); stop_watching ends it."""
        if self._watchdog is not None:
            return
        self._stop_watching.clear()
        self.tick()
        self._watchdog = threading.Thread(target=self._watch, name=WATCHDOG_NAME, daemon=True)
        self._watchdog.start()

    def stop_watching(self) -> None:
        """Stop the watchdog thread and wait for it to end (the server stops serving); no stall is counted after."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        self._stop_watching.set()
        watchdog.join()
        with self._lock:  # a stall the stop woke it from still counts
            self._stalled_s += self._overrun(self._clock())
            self._sleeping_since = None

    def _watch(self) -> None:
        block_stop_signals()  # the server's stop signals go to the main thread
        while not self._stop_watching.wait(self._period_s):
            self.tick()

    def _overrun(self, now: float) -> float:
        if self._sleeping_since is None:
            return 0.0
        overrun_s = now - self._sleeping_since - self._period_s
        return overrun_s if overrun_s > STALL_MARGIN_S else 0.0
