"""Session table: which client sessions a stateful policy holds, evicted least-recently-used or when idle."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, List, Optional

from .wrappers import policy_chain


class SessionTable:
    """Remembers when each session was last used; `touch` returns the sessions to forget.

    At most `max_sessions` are kept (the least recently used goes first), and a session idle for longer than
    `idle_s` is forgotten. Reference clients get a new session at every reconnect, so without this a
    stateful policy's table would only grow.
    """

    def __init__(self, max_sessions: int, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        if idle_s <= 0:
            raise ValueError(f"session idle time must be > 0 seconds, got {idle_s}")
        self.max_sessions = int(max_sessions)
        self.idle_s = float(idle_s)
        self._clock = clock
        self._last_used: "OrderedDict[str, float]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._last_used)

    def __contains__(self, session: str) -> bool:
        return session in self._last_used

    def live_count(self) -> int:
        """Sessions used within `idle_s` (safe from another thread): the idle ones still held are forgotten at the
        next request, and a gauge should not count them in the meantime."""
        now = self._clock()
        return sum(1 for used in list(self._last_used.values()) if now - used <= self.idle_s)

    def touch(self, session: str) -> List[str]:
        """Mark `session` used now; return the sessions evicted to make room or for being idle."""
        now = self._clock()
        self._last_used[session] = now
        self._last_used.move_to_end(session)
        evicted: List[str] = []
        while self._last_used:
            oldest, used = next(iter(self._last_used.items()))
            if oldest == session or (len(self._last_used) <= self.max_sessions and now - used <= self.idle_s):
                break
            del self._last_used[oldest]
            evicted.append(oldest)
        return evicted


def session_dropper(policy: Any) -> Optional[Callable[[str], None]]:
    """The `drop_session` of the policy or of the first policy it wraps (wrappers chain through `.policy`)."""
    for link in policy_chain(policy):
        drop = getattr(link, "drop_session", None)
        if callable(drop):
            return drop
    return None


def keeps_sessions(policy: Any) -> bool:
    """True when the policy or any policy it wraps (through `.policy`) keeps per-session state."""
    return any(getattr(link, "stateful_sessions", False) for link in policy_chain(policy))
