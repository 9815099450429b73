"""The policy worker: one thread that runs policy calls in arrival order, so the socket thread never waits."""

from __future__ import annotations

import collections
import logging
import queue
import threading
from typing import Any, Callable, Deque, List, Optional, Tuple

from ..threads import block_stop_signals
from .messages import Request, last_resort_error_frames

logger = logging.getLogger("gr00t_server.serving")

Job = List[Request]  # one request, or several get_action requests to run as one batch
Reply = Tuple[Request, List[Any]]  # a request and its encoded reply frames

DEFAULT_INLINE_BELOW_MS = 1.0
INLINE_STREAK = 16  # get_action jobs in a row under the limit before the socket thread runs one itself


def only_get_action(job: Job) -> bool:
    """True for a job of get_action requests alone: the only jobs the InlineGate times and lets run inline."""
    return bool(job) and all(request.endpoint == "get_action" for request in job)


class InlineGate:
    """Whether the socket thread may run a get_action job itself instead of handing it to the worker.

    The hand-off to the worker and back costs two thread wake-ups, measured at about 0.2 ms per request on a 2-core
    machine: as much as the whole call of a cheap policy (a replay, a scripted or a null policy). Once `streak`
    get_action jobs in a row each took under `limit_ms`, the next one runs on the socket thread when the worker is
    idle. One job over the limit sends the following ones back to the worker until a new streak is complete, so a
    policy that turns slow holds up the socket thread (pings, kill) once, for that one call. Other endpoints always
    run on the worker. `limit_ms` 0 turns this off.
    """

    def __init__(self, limit_ms: float, streak: int = INLINE_STREAK) -> None:
        if not limit_ms >= 0:
            raise ValueError(f"inline_below_ms must be >= 0, got {limit_ms!r}")
        self.limit_s = float(limit_ms) / 1000.0
        self.streak = int(streak)
        self._fast = 0  # get_action jobs in a row that took under the limit (both threads count; the GIL orders them)

    def observe(self, seconds: float) -> None:
        """One get_action job's duration, wherever it ran."""
        self._fast = self._fast + 1 if seconds < self.limit_s else 0

    @property
    def open(self) -> bool:
        """True when the recent get_action jobs were all fast enough to run on the socket thread."""
        return self.limit_s > 0 and self._fast >= self.streak


class InlineCallAbandoned(BaseException):
    """Raised into a policy call on the socket thread that outlived a stop by shutdown_timeout_s (a BaseException,
    so that the policy's `except Exception` does not swallow it); run() ends on it as after any stop."""


class PolicyWorker:
    """Runs jobs one at a time on its own thread (the ZeroMQ guide's ROUTER-to-worker pattern).

    `execute(job)` returns the encoded replies; they are put in `outbox` and `notify()` wakes the socket
    thread, which alone sends. Jobs run in submission order, so stateful endpoints of one session stay ordered.
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
        self._jobs: "queue.Queue[Optional[Job]]" = queue.Queue()
        self.outbox: Deque[Reply] = collections.deque()
        self._pending = 0  # jobs submitted and not finished (the socket thread reads it)
        self._running: Optional[Job] = None  # the job being executed, until its replies are in the outbox
        self._abandoned = False  # the running job was answered by the socket thread (abandon_running)
        self._lock = threading.Lock()
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

    def submit(self, job: Job) -> None:
        """Queue a job behind the ones already submitted."""
        with self._lock:
            self._pending += 1
        self._jobs.put(job)

    def take_queued(self) -> List[Job]:
        """Remove and return the jobs not yet started (at shutdown, to answer them instead)."""
        taken: List[Job] = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                taken.append(job)
        with self._lock:
            self._pending -= len(taken)
        return taken

    def finish(self) -> None:
        """Let the running job finish and then end the thread (jobs queued behind it still run: take_queued first)."""
        self._jobs.put(None)

    @property
    def alive(self) -> bool:
        """True until the thread has ended."""
        return self._thread.is_alive()

    def join(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for the thread to end (after finish()); False when it is still running."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stop(self, timeout_s: float) -> bool:
        """Let the running job finish (up to timeout_s) and end the thread; False when it is still running."""
        self.finish()
        return self.join(timeout_s)

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
        block_stop_signals()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._running = job
            try:
                replies = self._execute(job)
            except BaseException as exc:  # execute answers every failure itself; this is the last line of defence
                logger.exception("policy worker failed on a job of %d request(s); answering each with an error", len(job))
                replies = [(request, self._failure_frames(request, exc)) for request in job]
            with self._lock:
                if not self._abandoned:
                    self.outbox.extend(replies)
                self._running, self._abandoned = None, False
                self._pending -= 1
            self._notify()

    def _failure_frames(self, request: Request, exc: BaseException) -> List[Any]:
        if self._fail is not None:
            try:
                return self._fail(request, exc)
            except BaseException:
                logger.exception("could not encode the error reply of a failed job")
        return last_resort_error_frames(request)
