"""Session table: which client sessions a stateful policy holds, evicted when idle or for room (a segmented LRU,
which ReplayPolicy's cursors use too)."""

from __future__ import annotations

import logging
import numbers
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Generic, Iterator, List, Optional, Tuple, TypeVar

import numpy as np

from .wrappers import policy_chain

logger = logging.getLogger(__name__)

# The endpoints whose options carry the session to a policy that keeps sessions: a use of a session is one of these.
SESSION_ENDPOINTS = frozenset({"get_action", "reset"})

K = TypeVar("K")
V = TypeVar("V")

# How long a dropped session's mark (its get_action refused until a reset) is kept, and how many are. A connection-keyed
# session (a reference client's, with no session_id nor our client's mark) is refused only while its mark is held, and
# the server cannot tell whether its connection still lives: the last 4 x max_sessions marks were lost to a few
# thousand reconnects, and the robot was then replayed from episode 0, step 0 with no error.
DROPPED_MARK_MIN_S = 7 * 24 * 3600.0  # at least a week ...
DROPPED_MARK_IDLE_TIMES = 24  # ... and at least this many idle timeouts (--session-idle-s)
MAX_DROPPED_MARKS = 1 << 16  # at most this many (or 4 x max_sessions where more), oldest lost first: about 22 MB
# (tracemalloc: about 330 bytes a mark with a 128-character session id)


def dropped_memory_s(idle_s: float) -> float:
    """How long a dropped session's mark is kept, for sessions idle after `idle_s`."""
    return max(DROPPED_MARK_MIN_S, DROPPED_MARK_IDLE_TIMES * float(idle_s))


class DroppedMarks(Generic[V]):
    """Sessions dropped, each with what its refusal needs, until each is taken back (`pop`), `max_age_s` old, or among
    the oldest past `capacity` marks: small entries, so that no cheap churn of other sessions loses a robot's mark."""

    def __init__(self, capacity: int, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = int(capacity)
        self.max_age_s = float(max_age_s)
        self._clock = clock
        self._marks: "OrderedDict[str, Tuple[float, V]]" = OrderedDict()  # session -> (dropped at, value), oldest first

    def __len__(self) -> int:
        return len(self._marks)

    def __contains__(self, session: object) -> bool:
        return self.get(session) is not None  # type: ignore[arg-type]

    def get(self, session: str) -> Optional[V]:
        """The mark's value while it is held and younger than max_age_s; else None."""
        mark = self._marks.get(session)
        return mark[1] if mark is not None and self._clock() - mark[0] <= self.max_age_s else None

    def add(self, session: str, value: V) -> None:
        """Mark `session` dropped now, forgetting the marks past their age and, past capacity, the oldest."""
        now = self._clock()
        self._marks[session] = (now, value)
        self._marks.move_to_end(session)
        while self._marks and (len(self._marks) > self.capacity
                               or now - next(iter(self._marks.values()))[0] > self.max_age_s):
            self._marks.popitem(last=False)

    def pop(self, session: str) -> Optional[V]:
        """Take the mark back (a reset); its value, or None."""
        mark = self._marks.pop(session, None)
        return mark[1] if mark is not None else None


class SegmentedLRU(Generic[K, V]):
    """At most `capacity` keys, each with a value, forgotten least recently used first, but keys used once before keys
    used again (a segmented LRU).

    A new key waits in probation; its second use promotes it to the protected segment, which holds all but a fifth
    of the room (its least recently used is demoted when it overflows, and promoted again at its next use). Room is
    made from the keys used once first, then from the demoted ones, then from the protected ones, never by dropping
    the key just used, so a flood of keys each used once (new session ids) pushes out only other keys used once
    while the table has room for the keys used again, and a key in use keeps its place through a pause. With a
    single LRU, one peer sending get_actions under fresh session ids evicted every robot that paused for a second.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.protected_capacity = self.capacity - max(1, self.capacity // 5)  # 0 for a capacity of 1: a plain LRU
        self._probation: "OrderedDict[K, V]" = OrderedDict()  # least recently used first; keys used once
        self._demoted: "OrderedDict[K, V]" = OrderedDict()  # keys used again that fell out of the protected segment
        self._protected: "OrderedDict[K, V]" = OrderedDict()
        self._uses: Dict[K, int] = {}  # how many times each key held was used, for the reason it is forgotten

    def __len__(self) -> int:
        return len(self._probation) + len(self._demoted) + len(self._protected)

    def __contains__(self, key: object) -> bool:
        return key in self._protected or key in self._demoted or key in self._probation

    def __iter__(self) -> Iterator[K]:
        """The keys used once, then the demoted, then the others, each least recently used first (a copy: safe while
        the table changes)."""
        return iter(list(self._probation) + list(self._demoted) + list(self._protected))

    def get(self, key: K) -> Optional[V]:
        """The key's value (None when not held), without counting a use."""
        for segment in (self._protected, self._demoted, self._probation):
            if key in segment:
                return segment[key]
        return None

    def values(self) -> List[V]:
        """Every value (a copy: safe while another thread uses the table)."""
        return list(self._probation.values()) + list(self._demoted.values()) + list(self._protected.values())

    def use(self, key: K, value: V) -> List[Tuple[K, V, int]]:
        """Store `value` under `key`, counting a use; return what was forgotten for room, least recently used first,
        as (key, value, uses: how many times it was used)."""
        self._uses[key] = self._uses.get(key, 0) + 1
        if key in self._protected:
            self._protected[key] = value
            self._protected.move_to_end(key)
        elif key in self._probation or key in self._demoted:
            self._probation.pop(key, None)
            self._demoted.pop(key, None)
            self._protected[key] = value
            while len(self._protected) > self.protected_capacity:
                demoted, demoted_value = self._protected.popitem(last=False)
                self._demoted[demoted] = demoted_value
        else:
            self._probation[key] = value
        forgotten: List[Tuple[K, V, int]] = []
        while len(self) > self.capacity:
            # a new key made the overflow: room from the others used once, else the demoted, else the protected
            segment = next(s for s in (self._probation, self._demoted, self._protected) if s and next(iter(s)) != key)
            oldest = next(iter(segment))
            forgotten.append((oldest, segment.pop(oldest), self._uses.pop(oldest)))
        return forgotten

    def pop(self, key: K) -> Optional[V]:
        """Forget `key`; its value, or None when it was not held."""
        self._uses.pop(key, None)
        for segment in (self._protected, self._demoted, self._probation):
            if key in segment:
                return segment.pop(key)
        return None


class SessionTable:
    """Remembers when each session was last used; `touch` returns the sessions to forget.

    At most `max_sessions` are kept, in a SegmentedLRU: the least recently used session used only once goes first
    (then the least recently used of the rest), and a session idle for longer than `idle_s` (until its next request
    arrived, never while one waits or runs: `arrived`) is forgotten. Reference clients get a new session at every
    reconnect, so without this a stateful policy's table would only grow. A
    forgotten session is remembered as dropped (DroppedMarks: for `dropped_memory_s(idle_s)`, a week at least, and the
    last MAX_DROPPED_MARKS, or 4 x max_sessions where more), so that its client is told (`dropped_reason`) instead of
    being served from a fresh start it did not ask for, until it resets. (Our client also marks the requests of a
    session it was served before, so its session is refused however long ago it was dropped: see
    execution._admit_sessions.)
    Times are read on `clock` (a server's StallClock: monotonic time less the server's stalls, so that a frozen
    server charges no session its freeze).
    """

    def __init__(self, max_sessions: int, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        if idle_s <= 0:
            raise ValueError(f"session idle time must be > 0 seconds, got {idle_s}")
        self.max_sessions = int(max_sessions)
        self.idle_s = float(idle_s)
        self._clock = clock
        self._last_used: SegmentedLRU[str, float] = SegmentedLRU(self.max_sessions)
        self._by_time: "OrderedDict[str, float]" = OrderedDict()  # the same sessions, least recently used first
        self._by_time_lock = threading.Lock()  # `arrived` changes _by_time on the socket thread
        self._in_flight: Dict[str, int] = {}  # held sessions' requests queued or running: not in _by_time meanwhile
        # session -> why it was forgotten: the uses of one evicted for room, 0 for an idle one (a small int, not a text)
        self._dropped: DroppedMarks[int] = DroppedMarks(max(MAX_DROPPED_MARKS, 4 * self.max_sessions),
                                                        dropped_memory_s(self.idle_s), clock)
        self.dropped_memory_s = self._dropped.max_age_s

    def __len__(self) -> int:
        return len(self._last_used)

    def __contains__(self, session: str) -> bool:
        return session in self._last_used

    def live_count(self) -> int:
        """Sessions used within `idle_s` or with a request waiting or running (safe from another thread): the idle ones
        still held are forgotten at the next request, and a gauge should not count them in the meantime."""
        now = self._clock()
        with self._by_time_lock:
            in_flight = [self._last_used.get(session) for session in self._in_flight]
        busy = sum(1 for used in in_flight if used is not None and now - used > self.idle_s)  # not counted below
        return busy + sum(1 for used in self._last_used.values() if now - used <= self.idle_s)

    def knows(self, session: str) -> bool:
        """True for a session held or remembered as dropped."""
        return session in self._last_used or session in self._dropped

    def dropped_reason(self, session: str) -> Optional[str]:
        """Why `session` was forgotten, while its client has not reset it since; None for a held or unknown one."""
        uses = self._dropped.get(session)
        if uses is None:
            return None
        if uses == 0:
            return f"it was idle for more than {self.idle_s:g} s (--session-idle-s)"
        return (f"the server holds at most {self.max_sessions} sessions (--max-sessions) and it was the least recently "
                f"used of those {used_how_often(uses)}")

    def touch(self, session: str, restart: bool = True) -> List[str]:
        """Forget the idle sessions (`forget_idle`, `session` too), then count a use of `session` (`use`); return the
        sessions forgotten, idle ones first."""
        return self.forget_idle() + self.use(session, restart)

    def arrived(self, session: str) -> bool:
        """A request of `session` arrived now (safe from another thread): a held session not idle by now is not
        idle until its requests are answered (`answered`), however long they wait in the queue behind others'.
        True when counted so (then call `answered` once for it)."""
        at = self._clock()  # the table's clock, not the request's received_at: a server's stalls are left out of it
        with self._by_time_lock:
            if session in self._in_flight:
                self._in_flight[session] += 1
                return True
            used = self._by_time.get(session)
            if used is None or at - used > self.idle_s:
                return False
            del self._by_time[session]  # out of forget_idle's reach while its request waits or runs
            self._in_flight[session] = 1
            return True

    def answered(self, session: str) -> None:
        """A request counted by `arrived` was answered: once none of the session's is left, its idle time counts
        from now."""
        with self._by_time_lock:
            left = self._in_flight.get(session, 0) - 1
            if left > 0:
                self._in_flight[session] = left
            elif self._in_flight.pop(session, None) is not None and session in self._last_used:
                self._by_time[session] = self._clock()

    def forget_idle(self) -> List[str]:
        """Forget every session idle for longer than `idle_s`, whichever segment holds it; return them. Done before
        room is made, so that an idle session makes room rather than a live one."""
        now = self._clock()
        idle: List[str] = []
        with self._by_time_lock:
            while self._by_time and now - next(iter(self._by_time.values())) > self.idle_s:
                session, _ = self._by_time.popitem(last=False)
                self._last_used.pop(session)
                self._dropped.add(session, 0)
                idle.append(session)
        return idle

    def use(self, session: str, restart: bool = True) -> List[str]:
        """Count a use of `session` now; return the sessions evicted to make room.

        A dropped session is taken back only by a request that restarts it (`restart`, a reset); any other request
        leaves it dropped, for the caller to refuse with `dropped_reason`.
        """
        if session in self._dropped:
            if not restart:
                return []
            self._dropped.pop(session)
        now = self._clock()
        evicted: List[str] = []
        with self._by_time_lock:
            if session not in self._in_flight:  # else back in _by_time when its last request is answered
                self._by_time[session] = now
                self._by_time.move_to_end(session)
            for oldest, _, uses in self._last_used.use(session, now):
                self._by_time.pop(oldest, None)
                self._dropped.add(oldest, max(1, uses))
                evicted.append(oldest)
        return evicted


def used_how_often(uses: int) -> str:
    """How often a session forgotten for room was used, in the words of its reason."""
    return "used only once" if uses == 1 else f"used more than once (it was used {uses} times)"


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


FACTS_AT_START_TIMEOUT_MS = 3000  # check_no_shared_replay_session's question to a served PolicyClient's server


def check_no_shared_replay_session(policy: Any) -> None:
    """ValueError when the policy's wrapper chain ends in a PolicyClient of a server whose policy keeps per-session
    state (its get_server_info `keeps_sessions`; for an older server without it, a replay kind), as a flat-key gateway
    Gr00tSimPolicyWrapper(PolicyClient(...)) does: that client sends every request under its one session, so every
    client of this server would share one state (robot B's reset sent robot A its episode, without an error)."""
    from gr00t_client import PolicyClient, PolicyTimeoutError

    if keeps_sessions(policy):  # the server hands the chain each client's session, which it keeps apart itself
        return
    chain = list(policy_chain(policy))
    for link in chain:
        if not isinstance(link, PolicyClient):
            continue
        try:
            # what its server serves (its get_server_info): asked within a few seconds, so that a gateway whose server
            # is not up yet starts (warned) without waiting out the client's whole timeout
            link._learn_server_facts(timeout_ms=min(link.timeout_ms, FACTS_AT_START_TIMEOUT_MS))
        except (PolicyTimeoutError, ConnectionError) as exc:
            logger.warning("could not ask the server at %s what it serves (%s: %s): were its policy one that keeps "
                           "sessions (a replay), every client of this server would share its one session",
                           link.address, type(exc).__name__, exc)
            continue
        kind, keeps = link.server_policy_kind, link.server_keeps_sessions
        if keeps if keeps is not None else kind == "replay":
            names = " -> ".join(type(served).__name__ for served in chain)
            upstream = "the replay server" if kind == "replay" else "the server"
            served_there = ", ".join([link.server_policy_class or "a policy"] + ([f"kind {kind!r}"] if kind else []))
            raise ValueError(
                f"the served policy ({names}) ends in a PolicyClient of {upstream} at {link.address}, whose policy "
                f"({served_there}) keeps state per client session (a replay's episode cursor, a custom policy's "
                f"history): every client of this server would share its one session ({link.session_id!r}), so one "
                "robot's reset or step would move every robot's state. Connect each robot to that server itself "
                "(serve it with --use-sim-policy-wrapper for flat keys), or use the wrapper in the robot's own process, not "
                "served")


def takes_session_lost(policy: Any) -> bool:
    """Whether the policy's chain takes the server's session-lost reset mark (`takes_session_lost`): the outermost
    link that says (a wrapper saying False keeps it from the replay inside, whose reset then keeps no episodes for a
    session it does not know)."""
    for link in policy_chain(policy):
        said = getattr(link, "takes_session_lost", None)
        if said is not None:
            return bool(said)
    return False


def policy_session_limit(policy: Any) -> Optional[int]:
    """The most sessions the policy's own table keeps (the `max_sessions` of the first policy in its wrapper chain
    that keeps sessions and says), or None when none says."""
    for link in policy_chain(policy):
        limit = getattr(link, "max_sessions", None)
        if getattr(link, "stateful_sessions", False) and isinstance(limit, numbers.Integral) \
                and not isinstance(limit, (bool, np.bool_)):
            if limit < 1:
                raise ValueError(f"{type(link).__name__}.max_sessions is {limit}; expected an int >= 1 (the server's "
                                 "session table follows the policy's own)")
            return int(limit)
    return None
