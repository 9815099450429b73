"""The policy worker: one thread that runs policy calls, taking turns between connections, so the socket thread
never waits and no connection waits behind another's backlog."""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from ..threads import block_stop_signals, stop_signals_as
from .messages import Request, last_resort_error_frames

logger = logging.getLogger("gr00t_server.serving")

Job = List[Request]  # one request, or several get_action requests to run as one batch
Reply = Tuple[Request, List[Any]]  # a request and its encoded reply frames

DEFAULT_INLINE_BELOW_MS = 1.0
INLINE_STREAK = 16  # get_action jobs in a row under the limit before the socket thread runs one itself


def in_job_order(job: Job, replies: List[Reply]) -> List[Reply]:
    """`replies` in the order of their requests in `job`, which keeps each connection's order sent (batching.Turns):
    a batch's refused, NaN-row or expired requests are answered before the merged call answers the rest. Already in
    order (the common case: one merged call answered all) they come back as they are, unsorted."""
    if all(request is queued for (request, _), queued in zip(replies, job)):
        return replies
    position = {id(request): index for index, request in enumerate(job)}
    return sorted(replies, key=lambda reply: position.get(id(reply[0]), len(job)))


def only_get_action(job: Job) -> bool:
    """True for a job of get_action requests alone: the only jobs the InlineGate times and lets run inline."""
    return bool(job) and all(request.endpoint == "get_action" for request in job)


class InlineGate:
    """Whether the socket thread may run a get_action job itself instead of handing it to the worker.

    The hand-off to the worker and back costs two thread wake-ups, measured at about 0.2 ms per request on a 2-core
    machine: as much as the whole call of a cheap policy (a replay, a scripted or a null policy). Once `streak`
    get_action jobs in a row each took under `limit_ms`, the next one runs on the socket thread when the worker is
    idle. One job over the limit sends the following ones back to the worker until a new streak is complete, so a
    policy that turns slow holds up the socket thread (pings, kill) once, for that one call. Other endpoints, and a
    get_action registered in place of the built-in one, always run on the worker. `limit_ms` 0 turns this off.
    """

    def __init__(self, limit_ms: float, streak: int = INLINE_STREAK) -> None:
        if not limit_ms >= 0:
            raise ValueError(f"inline_below_ms must be >= 0, got {limit_ms!r}")
        self.limit_s = float(limit_ms) / 1000.0
        self.streak = int(streak)
        self._fast = 0  # get_action jobs in a row that took under the limit (both threads count; the GIL orders them)

    def observe(self, seconds: float, served: bool = True) -> None:
        """One get_action job's duration, wherever it ran; `served` False when none of its requests got an action
        (refused by the policy's own check, expired, a dropped session). Such a job says nothing of the policy's
        cost when it runs: fast, it leaves the streak as it was (40 refusals in a row opened the gate for a 0.5 s
        policy, whose next call then held every ping for its whole length); slow, it still ends the streak."""
        if seconds >= self.limit_s:
            self._fast = 0
        elif served:
            self._fast += 1

    @property
    def open(self) -> bool:
        """True when the recent get_action jobs were all fast enough to run on the socket thread."""
        return self.limit_s > 0 and self._fast >= self.streak


@dataclass(eq=False)
class _Waiting:
    """A queued job and the lanes (connections) and sessions whose order it must keep."""

    job: Job
    lanes: Tuple[bytes, ...]
    sessions: Tuple[str, ...]


def _sessions_of(job: Job) -> Tuple[str, ...]:
    return tuple(dict.fromkeys(s for s in (getattr(request, "session", None) for request in job) if s is not None))


class FairQueue:
    """Jobs waiting for the policy in one FIFO lane per connection (its ROUTER identity), taken round-robin.

    One connection pipelining many requests used to keep all of them ahead of every other client (one FIFO for
    all: a peer with 8 connections x 8 requests took 93% of the worker from three robots). Now each turn goes to
    the next connection with work waiting, and a connection that had its turn goes to the back of the round, so
    a request waits for at most one job per other waiting connection (plus the one running). A job of several
    connections (a batch) stands in each of their lanes and is taken when it is first in all of them, and a job
    is also never taken before an earlier one of a session it serves (a client that reconnected keeps its
    session's order): the earliest job queued is always first everywhere, so some job can always be taken.
    """

    def __init__(self) -> None:
        self._lanes: "collections.OrderedDict[bytes, Deque[_Waiting]]" = collections.OrderedDict()  # front: next turn
        self._sessions: Dict[str, Deque[_Waiting]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def put(self, job: Job) -> None:
        """Queue a job behind the earlier ones of its connections and sessions."""
        lanes = tuple(dict.fromkeys(getattr(request, "identity", b"") for request in job)) or (b"",)
        waiting = _Waiting(job, lanes, _sessions_of(job))
        for lane in lanes:
            if lane not in self._lanes:
                self._lanes[lane] = collections.deque()  # a connection with nothing waiting joins at the back
            self._lanes[lane].append(waiting)
        for session in waiting.sessions:
            self._sessions.setdefault(session, collections.deque()).append(waiting)
        self._count += 1

    def take(self) -> Optional[Job]:
        """The next job in turn (None when empty); each connection it serves goes to the back of the round."""
        chosen = next((lane[0] for lane in self._lanes.values() if self._first_everywhere(lane[0])), None)
        if chosen is None:
            return None
        for key in chosen.lanes:
            lane = self._lanes[key]
            lane.popleft()
            if lane:
                self._lanes.move_to_end(key)
            else:
                del self._lanes[key]
        for session in chosen.sessions:
            queued = self._sessions[session]
            queued.popleft()
            if not queued:
                del self._sessions[session]
        self._count -= 1
        return chosen.job

    def newest_of(self, lane: bytes) -> List[Request]:
        """The requests of connection `lane` that take_newest would hand out one by one, newest first: those of its
        newest jobs up to the first that holds another connection's requests too (a batch of several is never split)."""
        requests: List[Request] = []
        for waiting in reversed(self._lanes.get(lane, ())):
            if waiting.lanes != (lane,):
                break
            requests.extend(reversed(waiting.job))
        return requests

    def take_newest(self, lane: bytes) -> Optional[Request]:
        """The newest request of connection `lane`, taken out of its newest job when that job is of `lane` alone (a
        batch of its own requests keeps the rest queued); else None (a batch of several connections is never split)."""
        queued = self._lanes.get(lane)
        if not queued or queued[-1].lanes != (lane,):
            return None
        waiting = queued[-1]
        request = waiting.job.pop()
        sessions = _sessions_of(waiting.job)
        if not waiting.job:
            queued.pop()
            if not queued:
                del self._lanes[lane]
            self._count -= 1
        for session in waiting.sessions:
            if session in sessions:
                continue
            jobs = self._sessions[session]  # the job no longer serves it: a later one of the session need not wait
            jobs.remove(waiting)
            if not jobs:
                del self._sessions[session]
        waiting.sessions = sessions
        return request

    def requests(self) -> List[Request]:
        """Every request of the jobs waiting."""
        return [request for waiting in self._waiting() for request in waiting.job]

    def take_where(self, chosen: Callable[[Request], bool]) -> List[Request]:
        """Remove and return the waiting requests `chosen` picks, out of whatever jobs hold them (a batch keeps the
        rest); a job left empty leaves the queue. The others keep their order and lanes."""
        taken: List[Request] = []
        for waiting in self._waiting():
            picked = [request for request in waiting.job if chosen(request)]
            if not picked:
                continue
            taken.extend(picked)
            picked_ids = {id(request) for request in picked}
            waiting.job[:] = [request for request in waiting.job if id(request) not in picked_ids]
            if waiting.job:
                continue
            for key in waiting.lanes:
                lane = self._lanes[key]
                lane.remove(waiting)
                if not lane:
                    del self._lanes[key]
            for session in waiting.sessions:
                jobs = self._sessions[session]
                jobs.remove(waiting)
                if not jobs:
                    del self._sessions[session]
            self._count -= 1
        return taken

    def _waiting(self) -> List[_Waiting]:
        """Each queued job once (a batch stands in several lanes)."""
        return list(dict.fromkeys(waiting for lane in self._lanes.values() for waiting in lane))

    def take_all(self) -> List[Job]:
        """Every job, in the order they would have been taken."""
        jobs: List[Job] = []
        while self._count:
            job = self.take()
            assert job is not None  # the earliest queued job is first everywhere
            jobs.append(job)
        return jobs

    def _first_everywhere(self, waiting: _Waiting) -> bool:
        return (all(self._lanes[lane][0] is waiting for lane in waiting.lanes)
                and all(self._sessions[session][0] is waiting for session in waiting.sessions))


class InlineCallAbandoned(BaseException):
    """Raised into a policy call on the socket thread that outlived a stop by shutdown_timeout_s (a BaseException,
    so that the policy's `except Exception` does not swallow it); run() ends on it as after any stop."""


class PolicyWorker:
    """Runs jobs one at a time on its own thread (the ZeroMQ guide's ROUTER-to-worker pattern).

    `execute(job)` returns the encoded replies; they are put in `outbox` and `notify()` wakes the socket
    thread, which alone sends. Jobs wait in a FairQueue: connections take turns, and each connection's and each
    session's jobs run in submission order, so stateful endpoints of one session stay ordered. The next job is
    taken before `notify()`, so the socket thread woken by a finished job sees what is still waiting (`queued`).
    Should `execute` itself fail, every request of the job is answered with `fail(request, exc)`: the socket
    thread frees a request's queue slot only when it sends its reply, so a job left unanswered would leak its slots.
    """

    def __init__(
        self,
        execute: Callable[[Job], List[Reply]],
        notify: Callable[[], None],
        fail: Optional[Callable[[Request, BaseException], List[Any]]] = None,
    ) -> None:
        self._execute = execute
        self._notify = notify
        self._fail = fail
        self._jobs = FairQueue()
        self.outbox: Deque[Reply] = collections.deque()
        self._pending = 0  # jobs submitted and not finished (the socket thread reads it)
        self._running: Optional[Job] = None  # the job being executed, until its replies are in the outbox
        self._abandoned = False  # the running job was answered by the socket thread (abandon_running)
        self._finishing = False  # finish(): end once nothing is queued
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="gr00t-policy-worker", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def is_current_thread(self) -> bool:
        """True when called from this worker's thread (e.g. by a handler)."""
        return threading.current_thread() is self._thread

    @property
    def busy(self) -> bool:
        """True while a job is queued or running."""
        with self._lock:
            return self._pending > 0

    @property
    def queued(self) -> int:
        """Jobs submitted and not started."""
        with self._lock:
            return len(self._jobs)

    def submit(self, job: Job) -> None:
        """Queue a job behind the earlier ones of its connections and sessions (FairQueue)."""
        with self._lock:
            self._pending += 1
            self._jobs.put(job)
            self._lock.notify()

    def take_queued(self) -> List[Job]:
        """Remove and return the jobs not yet started (at shutdown, to answer them instead)."""
        with self._lock:
            taken = self._jobs.take_all()
            self._pending -= len(taken)
        return taken

    def paused(self) -> threading.Condition:
        """Held (`with worker.paused():`), the worker starts no queued job, so what newest_waiting_of saw is there
        for take_newest_of (the lock is reentrant)."""
        return self._lock

    def newest_waiting_of(self, identity: bytes) -> List[Request]:
        """The requests of connection `identity` that take_newest_of would hand out one by one, newest first."""
        with self._lock:
            return self._jobs.newest_of(identity)

    def take_newest_of(self, identity: bytes) -> Optional[Request]:
        """Remove and return the newest request of connection `identity` not yet started, when its job holds no other
        connection's (FairQueue.take_newest), to refuse it instead; None when there is none."""
        with self._lock:
            jobs = len(self._jobs)
            request = self._jobs.take_newest(identity)
            self._pending -= jobs - len(self._jobs)  # a job left with requests still counts until it finishes
        return request

    def waiting_requests(self) -> List[Request]:
        """Every request not yet started."""
        with self._lock:
            return self._jobs.requests()

    def take_where(self, chosen: Callable[[Request], bool]) -> List[Request]:
        """Remove and return the requests not yet started that `chosen` picks (FairQueue.take_where), to answer them
        instead."""
        with self._lock:
            jobs = len(self._jobs)
            taken = self._jobs.take_where(chosen)
            self._pending -= jobs - len(self._jobs)
        return taken

    def finish(self) -> None:
        """Let the running job finish and then end the thread (jobs queued behind it still run: take_queued first)."""
        with self._lock:
            self._finishing = True
            self._lock.notify()

    @property
    def alive(self) -> bool:
        """True until the thread has ended."""
        return self._thread.is_alive()

    def join(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for the thread to end (after finish()); False when it is still running."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def running_a_call(self) -> bool:
        """True while a job runs on the worker (abandoned or not)."""
        with self._lock:
            return self._running is not None

    def abandon_running(self) -> Optional[Job]:
        """At a stop that will not wait any longer: the job still running, which the caller answers itself, or None.
        Its replies, should it finish after all, are dropped, so that no request is answered twice."""
        with self._lock:
            if self._running is None or self._abandoned:
                return None
            self._abandoned = True
            return self._running

    def _loop(self) -> None:
        servers_mask = block_stop_signals()  # the mask of the thread that ran the server (start() is called from it)
        with self._lock:
            job = self._wait_for_job()
        while job is not None:
            try:
                with stop_signals_as(servers_mask):  # the policy's helper processes inherit it, not the worker's block
                    replies = self._execute(job)
            except BaseException as exc:  # execute answers every failure itself; this is the last line of defence
                logger.exception("policy worker failed on a job of %d request(s); answering each with an error", len(job))
                replies = [(request, self._failure_frames(request, exc)) for request in job]
            with self._lock:
                if not self._abandoned:
                    self.outbox.extend(replies)
                self._abandoned = False
                self._pending -= 1
                job = self._running = self._jobs.take()  # before notify: the socket thread sees what still waits
            self._notify()
            if job is None:
                with self._lock:
                    job = self._wait_for_job()

    def _wait_for_job(self) -> Optional[Job]:
        """The next job, waiting for one (None once finish() was called and nothing is queued); holds the lock."""
        while not len(self._jobs) and not self._finishing:
            self._lock.wait()
        self._running = self._jobs.take()
        return self._running

    def _failure_frames(self, request: Request, exc: BaseException) -> List[Any]:
        if self._fail is not None:
            try:
                return self._fail(request, exc)
            except BaseException:
                logger.exception("could not encode the error reply of a failed job")
        return last_resort_error_frames(request)
