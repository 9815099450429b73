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
    stateful policy's table would only grow. A forgotten session is remembered as dropped (the last
    `4 * max_sessions` of them), so that its client is told (`dropped_reason`) instead of being served from a
    fresh start it did not ask for, until it resets. (Our client also marks the requests of a session it was served
    before, so its session is refused however long ago it was dropped: see execution._admit_sessions.)
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
        self._dropped: "OrderedDict[str, str]" = OrderedDict()  # session -> why it was forgotten
        self._max_dropped = 4 * self.max_sessions

    def __len__(self) -> int:
        return len(self._last_used)

    def __contains__(self, session: str) -> bool:
        return session in self._last_used

    def live_count(self) -> int:
        """Sessions used within `idle_s` (safe from another thread): the idle ones still held are forgotten at the
        next request, and a gauge should not count them in the meantime."""
        now = self._clock()
        return sum(1 for used in list(self._last_used.values()) if now - used <= self.idle_s)

    def knows(self, session: str) -> bool:
        """True for a session held or remembered as dropped."""
        return session in self._last_used or session in self._dropped

    def dropped_reason(self, session: str) -> Optional[str]:
        """Why `session` was forgotten, while its client has not reset it since; None for a held or unknown one."""
        return self._dropped.get(session)

    def touch(self, session: str, restart: bool = True) -> List[str]:
        """Mark `session` used now; return the sessions evicted to make room or for being idle.

        A session idle for longer than `idle_s` is forgotten at its own next request too (not only at another
        client's). A dropped session is taken back only by a request that restarts it (`restart`, a reset); any
        other request leaves it dropped, for the caller to refuse with `dropped_reason`.
        """
        now = self._clock()
        evicted: List[str] = []
        used = self._last_used.get(session)
        if used is not None and now - used > self.idle_s:
            self._forget(session, self._idle_reason())
            evicted.append(session)
        if session in self._dropped:
            if not restart:
                return evicted
            del self._dropped[session]
        self._last_used[session] = now
        self._last_used.move_to_end(session)
        while self._last_used:
            oldest, used = next(iter(self._last_used.items()))
            if oldest == session:
                break
            if len(self._last_used) > self.max_sessions:
                reason = (f"the server holds at most {self.max_sessions} sessions (--max-sessions) and it was the "
                          "least recently used")
            elif now - used > self.idle_s:
                reason = self._idle_reason()
            else:
                break
            self._forget(oldest, reason)
            evicted.append(oldest)
        return evicted

    def _idle_reason(self) -> str:
        return f"it was idle for more than {self.idle_s:g} s (--session-idle-s)"

    def _forget(self, session: str, reason: str) -> None:
        del self._last_used[session]
        self._dropped[session] = reason
        self._dropped.move_to_end(session)
        while len(self._dropped) > self._max_dropped:
            self._dropped.popitem(last=False)


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
