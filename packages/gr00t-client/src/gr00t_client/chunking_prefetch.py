"""ActionChunker's asynchronous prefetch: the background thread that runs its requests, when to ask for the next
chunk (with the steps real-time chunking continues), merging the answer in, and a fresh start in a forked child."""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from collections.abc import Mapping  # isinstance with typing.Mapping is twice as slow (hot paths)
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .client_errors import (ClientClosedError, DeadlineNotRunError, PolicyServerError, PolicyTimeoutError,
                            ServerBusyError, ServerStoppingError)
from .client_sockets import FORK_ADOPTION_LOCK

logger = logging.getLogger("gr00t_client.chunking")  # the ActionChunker's records, whichever of its modules logs them

CLOSE_POLL_S = 0.05  # a call waiting on a prefetch notices close() from another thread within this long


class _PrefetchWorker:
    """One daemon thread that runs the chunker's background requests in turn, each with its Future.

    Not a ThreadPoolExecutor: a program's exit joins an executor's worker, so with a request in flight to a stalled
    server, exit waited out timeout_ms. The thread ends with stop(), or once its chunker (`owner`) is garbage
    collected."""

    def __init__(self, owner: Any) -> None:
        self._queue: "queue.SimpleQueue[Optional[Tuple[Future, Callable[..., Any], Tuple[Any, ...]]]]" = queue.SimpleQueue()
        # stop() runs this once and unregisters it: a chunker closed and reused per episode kept a finalizer (and
        # with it a stopped worker) per episode for its whole life. It holds the queue only, never the chunker.
        self._stop = weakref.finalize(owner, self._queue.put, None)
        threading.Thread(target=self._run, args=(self._queue,), name="gr00t-chunk-prefetch", daemon=True).start()

    @staticmethod
    def _run(jobs: "queue.SimpleQueue[Optional[Tuple[Future, Callable[..., Any], Tuple[Any, ...]]]]") -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            future, function, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as exc:  # noqa: BLE001 - the caller's get_action re-raises it
                future.set_exception(exc)
            del job, future, function, args  # the function is the chunker's: waiting here must not keep it alive

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._queue.put((future, function, args))
        return future

    def stop(self) -> None:
        """End the thread after the request it runs (if any); returns at once; at most once."""
        self._stop()

    def forget(self) -> None:
        """Unregister the stop at the owner's collection: in a forked child, which has no thread of the worker."""
        self._stop.detach()


@dataclass
class _Prefetch:
    future: "Future[Tuple[Dict[str, Any], Dict[str, Any]]]"
    env_ids: List[int]
    generations: List[int]
    steps_at_observation: List[int]


def _copy_leaves(observation: Any) -> Any:
    # The robot may overwrite its camera buffers while a background request still reads them.
    if isinstance(observation, Mapping):
        return {key: _copy_leaves(value) for key, value in observation.items()}
    if isinstance(observation, np.ndarray):
        return observation.copy()
    if isinstance(observation, (list, tuple)):
        return [_copy_leaves(v) for v in observation]
    return observation


class _Prefetching:
    """ActionChunker's background requests (it sets the worker, the prefetch in flight, its lock and its process)."""

    @staticmethod
    def largest_rtc_overlap(usable_steps: int, prefetch_steps: Optional[int] = None) -> int:
        """The most steps of a running chunk a prefetch can overlap, and so the most its RTC request can pin: it is
        asked once at most its threshold (prefetch_steps, else usable_steps // 2) steps remain, plus this call's."""
        threshold = usable_steps // 2 if prefetch_steps is None else prefetch_steps
        return min(threshold, usable_steps - 1) + 1

    @staticmethod
    def rtc_frozen_steps_problem(rtc_frozen_steps: int, usable_steps: int, prefetch_steps: Optional[int] = None,
                                 usable_name: str = "n_action_steps") -> Optional[str]:
        """Why `rtc_frozen_steps` pins more steps than any prefetch overlaps (each then froze its whole overlap, no
        ramped rows, while k was what the caller recorded), or None: the chunker's and rollout's refusal."""
        largest = _Prefetching.largest_rtc_overlap(usable_steps, prefetch_steps)
        if rtc_frozen_steps <= largest:
            return None
        formula = (f"{usable_name} // 2 + 1" if prefetch_steps is None
                   else f"min(prefetch_steps {prefetch_steps}, {usable_name} - 1) + 1")
        return (f"rtc_frozen_steps must be at most {largest}, the most steps a prefetch overlaps with {usable_name} "
                f"{usable_steps} ({formula}), got {rtc_frozen_steps}")

    def _warn_rtc_past_overlap(self) -> None:
        """Warn once, when the first chunk says how many steps each runs, of an rtc_frozen_steps no prefetch can pin
        (with n_action_steps given it was refused at construction)."""
        if self.rtc_frozen_steps is None or self._usable is None or self._warned_rtc_overlap:
            return
        self._warned_rtc_overlap = True
        problem = self.rtc_frozen_steps_problem(self.rtc_frozen_steps, self._usable, self.prefetch_steps,
                                                "the chunk's steps")
        if problem is not None:
            logger.warning("%s: each prefetch pins its whole overlap and ramps no rows; pass rtc_frozen_steps <= %d "
                           "(or n_action_steps, to have it checked at construction)", problem,
                           self.largest_rtc_overlap(self._usable, self.prefetch_steps))

    def _threshold(self, i: int) -> int:
        if self.prefetch_steps is not None:
            return self.prefetch_steps
        # Half a chunk's usable steps, the same for every chunk: half the buffer after a merge (the new chunk less the
        # steps that passed while it was computed) asked with 4 or 5 of 16 steps left, and the robot stalled.
        return (self._usable or 0) // 2  # None before the first chunk, when no buffer holds a step anyway

    def _prefetch_worker(self) -> _PrefetchWorker:
        if self._worker is None:
            self._worker = _PrefetchWorker(self)  # a chunker dropped without close() ends its thread too
        return self._worker

    def _maybe_prefetch(self, observation: Any, options: Optional[Dict[str, Any]]) -> None:
        low = [i for i in range(self._n_envs or 0) if self._remaining(i) <= self._threshold(i)]
        if not low:
            return
        if self._usable is not None and self._usable < 2:
            # A chunk of one usable step: a prefetch from this step's observation predicts steps from the next one
            # on, and its one step is the step just taken: nothing of it is ever used. Every prefetch was thrown away
            # and asked for again, twice the requests of asynchronous=False, with each counted as merged.
            if not self._warned_one_step:
                self._warned_one_step = True
                logger.warning("asynchronous prefetching needs chunks of at least 2 usable steps (n_action_steps=%s): "
                               "a prefetch would always come after its step; fetching each chunk when it is needed, "
                               "as asynchronous=False does", self.n_action_steps)
            return
        ids = low if self.per_env else list(range(self._n_envs or 0))
        request_obs = _copy_leaves(self._rows(observation, ids))
        request_options = _copy_leaves(self._row_options(options, ids)) if options else None  # a refilled noise too
        rtc = self._rtc_options(ids)
        if rtc is not None:
            request_options = {**(request_options or {}), "rtc": rtc}
        self.stats.prefetches += 1
        self._pending = _Prefetch(
            future=self._prefetch_worker().submit(self._prefetch_request, request_obs, request_options, len(ids)),
            env_ids=ids,
            generations=[self._generations[i] for i in ids],
            steps_at_observation=[self._steps_taken[i] - 1 for i in ids],  # this call's step was already taken
        )

    def _rtc_options(self, env_ids: Sequence[int]) -> Optional[Dict[str, Any]]:
        """options["rtc"] for a prefetch: the old steps from this call's on, as many as every env still has.

        The new chunk's step 0 is this call's step (already popped, at cursor - 1), so the old chunk's steps
        cursor-1, cursor, ... line up with the new chunk's 0, 1, ...; all of them overlap.
        """
        if self.rtc_frozen_steps is None or self._keys is None:
            return None
        buffers = [self._buffers[i] for i in env_ids]
        if any(buffer is None for buffer in buffers) or any(self._cursors[i] < 1 for i in env_ids):
            return None  # an env without a running chunk has nothing to continue
        overlap = min(self._remaining(i) + 1 for i in env_ids)
        previous = {
            key: np.stack([buffer[key][self._cursors[i] - 1 : self._cursors[i] - 1 + overlap] for i, buffer in zip(env_ids, buffers)])
            for key in self._keys
        }
        return {
            "previous_action": previous,
            "overlap_steps": overlap,
            "frozen_steps": min(self.rtc_frozen_steps, overlap),
            "ramp_rate": self.rtc_ramp_rate,
        }

    def _prefetch_request(self, observation: Any, options: Optional[Dict[str, Any]], n_rows: int) -> Tuple[Any, Any]:
        """A prefetch's request (on the worker thread), its options["rtc"] cut to the action horizon the policy serves
        now: a server restarted with a shorter one refuses a longer previous_action.

        A request cut before the client saw the restart (sent while the server was down, or before its new connection
        was noticed) and refused by the new server is cut again to that server's horizon and sent once more."""
        if not options or options.get("rtc") is None:
            return self._request(observation, options, n_rows)
        cut = self._rtc_cut_to_served_horizon(options)
        server = self._server_changes  # the client's count when what the cut used was learnt
        try:
            return self._request(observation, cut, n_rows)
        except PolicyServerError:
            self._notice_new_server()
            if self._server_changes == server:
                raise
        logger.info("a prefetch cut to the previous server's action horizon was refused by the restarted one; "
                    "sending it again cut to the new one's")
        return self._request(observation, self._rtc_cut_to_served_horizon(options), n_rows)

    def _rtc_cut_to_served_horizon(self, options: Dict[str, Any]) -> Dict[str, Any]:
        """options with options["rtc"] cut to the action horizon the policy serves now (as is where it is no longer)."""
        rtc = options["rtc"]
        horizon = self._served_action_horizon()
        if horizon is None or rtc["overlap_steps"] <= horizon:
            return options
        return {**options, "rtc": {
            **rtc, "previous_action": {key: steps[:, :horizon] for key, steps in rtc["previous_action"].items()},
            "overlap_steps": horizon, "frozen_steps": min(rtc["frozen_steps"], horizon)}}

    def _served_action_horizon(self) -> Optional[int]:
        """The number of action steps the policy serves (_served_action_deltas), or None where it does not say."""
        deltas = self._served_action_deltas()
        return None if deltas is None else len(deltas)

    def _served_action_deltas(self) -> Optional[List[int]]:
        """The action delta_indices the policy serves (its modality config's; a wrapper's without one is its client's),
        or None where it does not say. A client answers from what it learnt of its server, and asks a restarted one
        again first."""
        self._notice_new_server()
        if self._configs_refused:  # not asked again until the server changes
            return None
        try:
            configs = self._served_configs()
        except (PolicyTimeoutError, ConnectionError):  # the prefetch is dropped and asked for again (_outlived)
            raise
        except Exception as exc:  # noqa: BLE001 - a policy without configs: its steps are not checked, nor RTC's cut
            logger.debug("no action delta_indices to check or to cut options['rtc'] to: get_modality_config failed "
                         "(%s: %s)", type(exc).__name__, exc)
            self._notice_new_server()
            self._configs_refused = True
            return None
        action = configs.get("action") if isinstance(configs, Mapping) else None
        indices = action.get("delta_indices") if isinstance(action, Mapping) else getattr(action, "delta_indices", None)
        # An in-process policy's map config holds them as it made them (ModalityConfig's constructor lists them):
        # a range or a 1-D integer array were not read, and its sparse steps were handed out a row per call
        if isinstance(indices, range) or (isinstance(indices, np.ndarray) and indices.ndim == 1
                                          and np.issubdtype(indices.dtype, np.integer)):
            indices = indices.tolist() if isinstance(indices, np.ndarray) else list(indices)
        return list(indices) if isinstance(indices, (list, tuple)) and indices else None

    def _collect(self, block: bool) -> List[int]:
        """Merge a finished prefetch into the buffers; return the env ids merged."""
        pending = self._pending
        if pending is None or (not block and not pending.future.done()):
            return []
        if block:
            self._await_prefetch(pending, "its next chunk")
        stale = all(generation != self._generations[i] for i, generation in zip(pending.env_ids, pending.generations))
        try:
            action, info = pending.future.result()  # a policy error surfaces in the robot's call
        except BaseException as exc:
            if pending.future.done():  # the request failed: it is over. A wait cut short (Ctrl-C) keeps it pending,
                self._pending = None  # so that the next call (or close/reset) still knows the request in flight
                # for envs all reset since: nobody's to raise (a stopping server's is kept: the next fetch needs it)
                if stale and isinstance(exc, Exception) and not isinstance(exc, ServerStoppingError):
                    self.stats.discarded_envs += len(pending.env_ids)
                    self._forget_actions_when_empty()
                    return []
                if self._outlived(exc):  # also while this call waited: the envs that ran out are fetched now
                    return []
            raise
        self._pending = None
        if stale:  # every env was reset since: its chunk is not used, nor checked against the actions a reset forgets
            self.stats.discarded_envs += len(pending.env_ids)
            self._forget_actions_when_empty()
            return []
        chunks = self._split(action, len(pending.env_ids))  # a bad chunk is dropped whole; the buffers run on
        self._last_info = info if isinstance(info, dict) else {}
        buffers, merged, late = {}, [], 0
        rows = zip(pending.env_ids, pending.generations, pending.steps_at_observation, chunks)
        for i, generation, at_obs, new in rows:
            if generation != self._generations[i]:
                self.stats.discarded_envs += 1
                continue
            elapsed = self._steps_taken[i] - at_obs
            buffers[i] = self._merged(i, new, elapsed=elapsed)
            if elapsed >= len(next(iter(new.values()))):  # every step it predicted has passed: nothing was merged
                late += 1
                continue
            merged.append(i)
        # Every env merged before any buffer changes: a merge refused for one env ("the chunk was not used") had
        # already been taken by the envs before it.
        self._commit(buffers)
        self.stats.late_envs += late
        self.stats.merged_envs += len(merged)
        return merged

    def _outlived(self, failure: BaseException) -> bool:
        """Whether a prefetch's `failure` is a transient one (a timeout, a lost connection, a server that did not run
        it: DeadlineNotRunError, ServerBusyError at its queue's cap, or ServerStoppingError, as a kill -9 is one): it is
        then dropped, warned about and reported in this step's info (prefetch_error). Buffered steps are handed out and
        the next chunk is asked for again; an env whose buffer is empty (used up, or reset) is fetched in this very
        call, and that request's failure raises (ServerStoppingError itself: no server is left to ask). A refused
        chunk or another error reply is not transient: it raises at once."""
        transient = isinstance(failure, (DeadlineNotRunError, ServerBusyError, ServerStoppingError)) or (
            isinstance(failure, (PolicyTimeoutError, ConnectionError))
            and not isinstance(failure, (PolicyServerError, ClientClosedError)))
        if not transient:
            return False
        self._prefetch_failure, self._prefetch_error = failure, f"{type(failure).__name__}: {failure}"
        logger.warning("the prefetch of the next chunk failed (%s); handing out the buffered steps and asking again",
                       self._prefetch_error)
        return True

    def _await_prefetch(self, pending: Any, awaited: str) -> None:
        """Wait for `pending`'s answer; ConnectionError naming `awaited` once close() takes the prefetch away."""
        while not pending.future.done():
            # close() from another thread, or from a signal handler on this one (which drops the prefetch), ends the
            # wait: it held close() up to timeout_ms, and a chunk abandoned by close() was merged after all.
            if self._closing.is_set() or self._pending is not pending:
                raise ConnectionError(f"the ActionChunker was closed while this call waited for {awaited}")
            futures_wait([pending.future], timeout=CLOSE_POLL_S)

    def _adopt_after_fork(self) -> None:
        """In a child forked from the process that made this chunker, start afresh: the prefetch thread does not
        exist there (a prefetch queued to it, or one in flight at the fork, left the child's next chunk boundary
        waiting for ever), and a lock a parent thread held at that moment stays held. The parent's prefetch is
        dropped (the child fetches its own); the buffers carry over, but a served policy's (ActionChunker's override)."""
        if self._pid == os.getpid():
            return
        with FORK_ADOPTION_LOCK:  # the child's other threads wait for it; the first to take it adopts
            if self._pid != os.getpid():
                self._start_afresh_in_child()

    def _start_afresh_in_child(self) -> None:
        self._lock = threading.RLock()
        if self._worker is not None:
            self._worker.forget()
        self._worker = None
        if self._pending is not None:
            self.stats.discarded_envs += len(self._pending.env_ids)
            self._pending = None
        logger.debug("ActionChunker in forked process %d: new prefetch thread; the parent's prefetch dropped", os.getpid())
        self._pid = os.getpid()  # last: a thread that sees the child's pid skips the adoption and uses the new lock
