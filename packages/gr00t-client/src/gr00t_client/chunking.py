"""ActionChunker: execute a policy's action chunks one step per call, per env, optionally prefetching the next chunk.

Alignment rule used everywhere: a chunk requested with the observation of call k has its step 0 aligned with
call k. If it arrives when the env has executed `e` more steps since then, its steps `new[e:]` line up with the
old chunk's steps not yet executed, `old[cursor:]`; the `n = min(len(old[cursor:]), len(new[e:]))` overlapping
steps are merged by `merge_overlap`, and the longer of the two tails follows unchanged.

    chunker = ActionChunker(PolicyClient(host, port), asynchronous=True, prefetch_steps=8, merge="weighted")
    while running:
        action, _ = chunker.get_action(observation)   # {key: (B, D)}: this control step, per env
        chunker.reset(env_ids=[i])                    # when env i starts a new episode

Real-time chunking (async only, `rtc_frozen_steps=k`): each prefetch also sends the old chunk's steps that the
new chunk will cover, from this call's step on, as options["rtc"] (the Gr00tPolicy option). The server pins
the new chunk's first k steps to them (this step plus the k - 1 steps the robot executes while the policy
runs) and blends the rest of the overlap in, so the new chunk continues the motion instead of jumping.
"""

from __future__ import annotations

import logging
import numbers
import os
import queue
import threading
import weakref
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from collections.abc import Mapping  # isinstance with typing.Mapping is twice as slow (hot paths)
from collections.abc import Sequence as SequenceABC
from typing import Any, Callable, Collection, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .client import PolicyClient
from .policy import ActionError, non_finite_rows

logger = logging.getLogger(__name__)

MergeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
MERGE_RULES = ("newest", "oldest", "average", "weighted")
CLOSE_POLL_S = 0.05  # a call waiting on a prefetch notices close() from another thread within this long


def merge_overlap(old: np.ndarray, new: np.ndarray, rule: Union[str, MergeFn] = "newest", new_weight: float = 0.7) -> np.ndarray:
    """Merge the overlapping steps of the old and new chunk, both (n, ...) and aligned step by step.

    newest: new; oldest: old; average: (old + new) / 2, rounded to the nearest for integers and bools (a tie
    goes to the newer value); weighted: new_weight * new + (1 - new_weight) * old (LeRobot's weighted_average is
    new_weight=0.7), rounded to the nearest for integers and bools. A callable gets (old, new) and returns the
    merged steps.
    """
    if old.shape != new.shape:
        raise ValueError(f"overlapping steps must have equal shapes; got old {old.shape} and new {new.shape}")
    if callable(rule):
        merged = np.asarray(rule(old, new))
        if merged.shape != old.shape:
            raise ValueError(f"merge function returned shape {merged.shape}; expected {old.shape}")
        return merged
    if rule == "newest":
        return new.copy()
    if rule == "oldest":
        return old.copy()
    if rule == "average":
        if new.dtype.kind not in "iub":  # halves first: two finite float16 steps over 32752 summed to inf
            return (old / 2 + new / 2).astype(new.dtype, copy=False)
        # old + new in an int8 gripper's own dtype wrapped (100 and 120 made -18): add in float64 and round back.
        # Two ints (or bools) average to a whole or a half; a half goes to the newer value, as the default rule would.
        mean = (old.astype(np.float64) + new.astype(np.float64)) / 2
        return np.where(new >= old, np.ceil(mean), np.floor(mean)).astype(new.dtype)
    if rule == "weighted":
        merged = new_weight * new + (1.0 - new_weight) * old  # float64 for integer steps: no wrap-around
        if new.dtype.kind in "iub":  # rounded to the nearest, not truncated (0.7 * 101 + 0.3 * 100 is 101, not 100)
            merged = np.rint(merged)
        return merged.astype(new.dtype, copy=False)
    raise ValueError(f"merge rule must be one of {MERGE_RULES} or a callable; got {rule!r}")


class PolicyPositionError(ActionError):
    """A policy that advances its own position per call (a replay) reports a later step than the chunker expected: it
    moved on past a reply the chunker never got (a timed-out get_action), so playing on would skip recorded steps."""


class _PrefetchWorker:
    """One daemon thread that runs the chunker's background requests in turn, each with its Future.

    Not a ThreadPoolExecutor: a program's exit joins an executor's worker, so with a request in flight to a stalled
    server, exit waited out timeout_ms. The thread ends with stop(), or once its chunker is garbage collected."""

    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue[Optional[Tuple[Future, Callable[..., Any], Tuple[Any, ...]]]]" = queue.SimpleQueue()
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
        """End the thread after the request it runs (if any); returns at once."""
        self._queue.put(None)


@dataclass
class ChunkerStats:
    """Counters a caller (or a test) can read to see how often the robot waited for the policy."""

    calls: int = 0  # get_action calls
    requests: int = 0  # policy.get_action calls, foreground and background
    prefetches: int = 0  # requests started in the background
    blocking_waits: int = 0  # get_action calls that had to wait for a policy answer
    merged_envs: int = 0  # env buffers merged with a prefetched chunk
    discarded_envs: int = 0  # prefetched rows dropped because their env was reset meanwhile
    late_envs: int = 0  # prefetched rows that came after all of their steps had passed (nothing of them was used)


@dataclass
class _Prefetch:
    future: "Future[Tuple[Dict[str, Any], Dict[str, Any]]]"
    env_ids: List[int]
    generations: List[int]
    steps_at_observation: List[int]


def observation_batch_size(observation: Any) -> int:
    """The batch size B of an observation: the first array's leading axis, or the first list's length."""
    if isinstance(observation, Mapping):
        for value in observation.values():
            size = observation_batch_size(value)
            if size >= 0:
                return size
        return -1
    if isinstance(observation, np.ndarray):
        return int(observation.shape[0]) if observation.ndim > 0 else -1
    if isinstance(observation, (list, tuple)):
        return len(observation)
    return -1


def select_envs(observation: Any, env_ids: Sequence[int], batch_size: int) -> Any:
    """The rows `env_ids` of every batched leaf (arrays and lists of length B); other leaves pass through."""
    if isinstance(observation, Mapping):
        return {key: select_envs(value, env_ids, batch_size) for key, value in observation.items()}
    if isinstance(observation, np.ndarray) and observation.ndim > 0 and observation.shape[0] == batch_size:
        return observation[list(env_ids)]
    if isinstance(observation, (list, tuple)) and len(observation) == batch_size:
        return [observation[i] for i in env_ids]
    return observation


def _copy_leaves(observation: Any) -> Any:
    # The robot may overwrite its camera buffers while a background request still reads them.
    if isinstance(observation, Mapping):
        return {key: _copy_leaves(value) for key, value in observation.items()}
    if isinstance(observation, np.ndarray):
        return observation.copy()
    if isinstance(observation, (list, tuple)):
        return [_copy_leaves(v) for v in observation]
    return observation


def _is_int(value: Any) -> bool:
    """An int, numpy's included, and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_mask(items: Any) -> bool:
    """A non-empty sequence of bools (numpy's included): a vector env's done-mask."""
    return len(items) > 0 and all(isinstance(item, (bool, np.bool_)) for item in items)


def _reported_steps(info: Any) -> Optional[List[int]]:
    """The per-row `current_step` a policy's info reports (a replay's position before the call), or None."""
    steps = info.get("current_step") if isinstance(info, Mapping) else None
    values = list(steps) if isinstance(steps, (list, tuple, np.ndarray)) else [steps]
    return [int(v) for v in values] if values and all(_is_int(v) for v in values) else None


def _skipped_steps_error(row: int, expected: int, reported: int, horizon: int) -> str:
    """Why a reply reporting step `reported` for env row `row`, where `expected` was due, is not played."""
    return (f"the policy reports current_step {reported} for env row {row}; expected {expected} (its last reply's step "
            f"+ execution_horizon {horizon}): it moved on past a reply this chunker never got (a timed-out or lost "
            f"get_action), so recorded steps {expected}..{reported - 1} would be skipped; the chunk was not used. Reset "
            "the env and the policy together (chunker.reset()) to go on")


class ActionChunker:
    """Wraps a policy (local BasePolicy or PolicyClient) and hands out one action step per env per call.

    Sync: refetch for all envs when a chunk runs out (or only the exhausted envs with per_env=True).
    Async: request the next chunk in a background thread once at most `prefetch_steps` steps remain.
    """

    def __init__(
        self,
        policy: Any,
        *,
        n_action_steps: Optional[int] = None,
        per_env: bool = False,
        asynchronous: bool = False,
        prefetch_steps: Optional[int] = None,
        merge: Union[str, MergeFn] = "newest",
        new_weight: float = 0.7,
        rtc_frozen_steps: Optional[int] = None,
        rtc_ramp_rate: float = 6.0,
    ) -> None:
        # Step counts index the chunk: a float (2.5) failed deep in a later step, a NaN prefetch never prefetched.
        if n_action_steps is not None and not (_is_int(n_action_steps) and n_action_steps >= 1):
            raise ValueError(f"n_action_steps must be an int >= 1 or None (the whole chunk), got {n_action_steps!r}")
        if prefetch_steps is not None and not (_is_int(prefetch_steps) and prefetch_steps >= 0):
            raise ValueError(f"prefetch_steps must be an int >= 0 or None (half the chunk), got {prefetch_steps!r}")
        if not callable(merge) and merge not in MERGE_RULES:
            raise ValueError(f"merge must be one of {MERGE_RULES} or a callable, got {merge!r}")
        if not 0.0 <= new_weight <= 1.0:
            raise ValueError(f"new_weight must be in [0, 1], got {new_weight}")
        if rtc_frozen_steps is not None:
            if not asynchronous:
                raise ValueError("rtc_frozen_steps needs asynchronous=True: only a prefetch overlaps a chunk still running")
            if not (_is_int(rtc_frozen_steps) and rtc_frozen_steps >= 1):
                raise ValueError(
                    f"rtc_frozen_steps must be an int >= 1 (this step + the steps executed while the policy runs), "
                    f"got {rtc_frozen_steps!r}"
                )
        if not 0.0 < rtc_ramp_rate < float("inf"):
            raise ValueError(f"rtc_ramp_rate must be a finite number > 0, got {rtc_ramp_rate}")
        self.policy = policy
        self.n_action_steps = None if n_action_steps is None else int(n_action_steps)
        self.per_env = per_env
        self.asynchronous = asynchronous
        self.prefetch_steps = None if prefetch_steps is None else int(prefetch_steps)
        self.merge = merge
        self.new_weight = new_weight
        self.rtc_frozen_steps = None if rtc_frozen_steps is None else int(rtc_frozen_steps)
        self.rtc_ramp_rate = rtc_ramp_rate
        self.stats = ChunkerStats()
        self._warned_one_step = False
        self._usable: Optional[int] = None  # steps of each chunk executed (the last chunk's horizon, n_action_steps)
        self._n_envs: Optional[int] = None
        self._keys: Optional[List[str]] = None
        self._step_shapes: Dict[str, Tuple[int, ...]] = {}  # per key: a step's shape, set by the first chunk
        self._step_dtypes: Dict[str, np.dtype] = {}  # per key: the first chunk's dtype (a merge would cast to another)
        self._buffers: List[Optional[Dict[str, np.ndarray]]] = []
        self._cursors: List[int] = []
        self._steps_taken: List[int] = []
        self._generations: List[int] = []
        self._lock = threading.RLock()
        self._closing = threading.Event()  # set by close() before it takes the lock: a call waiting on a chunk gives up
        self._pending: Optional[_Prefetch] = None
        self._worker: Optional[_PrefetchWorker] = None  # started by the first prefetch
        self._last_info: Dict[str, Any] = {}
        self._horizon_checked = False  # whether a policy that says how far it advances per call was compared with us
        self._advancing_policy = False  # the policy said it advances per call (a replay server's execution_horizon)
        self._partial_reset_warned = False
        self._expected_steps: Optional[List[int]] = None  # per policy row: the step an advancing policy reports next
        self._pid = os.getpid()  # the process whose prefetch thread this is (see _adopt_after_fork)

    # --- public API -----------------------------------------------------------------------------

    @property
    def n_envs(self) -> Optional[int]:
        """The batch size seen so far (None before the first call)."""
        return self._n_envs

    def remaining(self) -> np.ndarray:
        """Steps left in each env's buffer."""
        return np.array([self._remaining(i) for i in range(self._n_envs or 0)], dtype=np.int64)

    def get_action(
        self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
        """Return ({key: (B, ...)} for this step, info); fetches or merges chunks as needed."""
        self._adopt_after_fork()
        with self._lock:
            self._ensure_envs(observation_batch_size(observation))
            self.stats.calls += 1
            merged = self._collect(block=False)
            fetched: List[int] = []
            waited = False
            exhausted = [i for i in range(self._n_envs) if self._remaining(i) == 0]
            if exhausted and self._pending is not None:
                waited = True  # the prefetch is late: the robot waits here (only at a chunk boundary)
                logger.debug("chunk exhausted for envs %s before the prefetch arrived; waiting", exhausted)
                merged += self._collect(block=True)
                exhausted = [i for i in range(self._n_envs) if self._remaining(i) == 0]
            if exhausted:
                waited = True
                ids = exhausted if self.per_env else list(range(self._n_envs))
                action, info = self._request(self._rows(observation, ids), self._row_options(options, ids), len(ids))
                self._last_info = info if isinstance(info, dict) else {}
                merged += self._install(ids, action, running=set(ids) - set(exhausted) if self.asynchronous else ())
                fetched = ids
            if waited:
                self.stats.blocking_waits += 1
            step = self._pop_step()
            if self.asynchronous and self._pending is None:
                self._maybe_prefetch(observation, options)
            return step, {
                "fetched_env_ids": fetched,  # envs whose chunk was fetched while this call waited
                "merged_env_ids": sorted(set(merged)),  # envs whose buffer took in a chunk by the merge rule
                "remaining": self.remaining(),
                "policy_info": self._last_info,
            }

    def reset(self, env_ids: Optional[Sequence[int]] = None, options: Optional[Dict[str, Any]] = None, *,
              policy_reset_by_caller: bool = False) -> Dict[str, Any]:
        """Drop the buffers of `env_ids` (all when None); a reset of every env also resets the wrapped policy.

        `env_ids`: env indices (ints), or a boolean mask with one entry per env (a vector env's `terminated |
        truncated`). Anything else (a float, a bool among ints, a mask of another length) is refused before any
        buffer is dropped. Naming every env (all indices, or a mask of all True; before the first get_action only
        such a mask) is a reset of every env. `options` go to the policy's reset only, so a reset of some envs refuses
        them. `policy_reset_by_caller=True`: the caller resets these envs' rows in the policy itself (per-row reset
        options, as gr00t-eval rollout does), so a replay policy is not left out of step by them, nor reset here."""
        self._adopt_after_fork()
        with self._lock:
            indices = None if env_ids is None else self._env_indices(env_ids)
            if indices is None or (self._covers_every_env(env_ids, indices) and not policy_reset_by_caller):
                return self._reset_policy(options)
            if options:
                raise ValueError(f"reset options {sorted(options)} go to the policy's reset, which only a reset of every "
                                 f"env makes (env_ids=None, or all {self._n_envs} envs without policy_reset_by_caller); "
                                 f"this reset of envs {indices} does not reset the policy: pass no options, or reset "
                                 "those rows in the policy yourself")
            if policy_reset_by_caller:
                self._expected_steps = None  # the caller moves the policy's rows: its next reply sets the positions
            if self._n_envs is None:  # before the first get_action nothing is buffered
                if indices:
                    logger.warning("reset(env_ids=%s) before the first get_action: the number of envs is not known yet, "
                                   "so the policy was not reset; call reset() or pass a boolean mask of every env",
                                   indices)
                return {}
            if self._advancing_policy and indices and not policy_reset_by_caller and not self._partial_reset_warned:
                self._partial_reset_warned = True
                logger.warning("a reset of envs %s alone is not passed to the policy, which advances its own cursor per "
                               "call (a replay server): the other envs will skip the steps the reset ones replay "
                               "again; reset every env together (reset()), or evaluate with gr00t-eval rollout, which "
                               "resets a replay server's rows by episode", indices)
            for i in indices:
                self._clear(i)
            return {}

    def _reset_policy(self, options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """Drop every buffer and the prefetch in flight, then reset the wrapped policy with `options`."""
        if self._pending is not None:  # the policy may not be called concurrently; let it finish
            self._pending.future.exception()
            self.stats.discarded_envs += len(self._pending.env_ids)
            self._pending = None
        for i in range(self._n_envs or 0):
            self._clear(i)
        self._expected_steps = None
        info = self.policy.reset(options) or {}
        self._expected_steps = _reported_steps(info)
        return info

    def _covers_every_env(self, env_ids: Any, indices: List[int]) -> bool:
        """Whether reset()'s env_ids name every env; before the first get_action only a mask of all True does."""
        if self._n_envs is not None:
            return set(indices) == set(range(self._n_envs))
        return bool(indices) and len(indices) == len(env_ids) and _is_mask(env_ids)

    def _env_indices(self, env_ids: Any) -> List[int]:
        """reset()'s env_ids as checked indices: ints in range, or the True entries of a mask of n_envs booleans."""
        if isinstance(env_ids, (str, bytes)) or not isinstance(env_ids, (SequenceABC, np.ndarray)) or np.ndim(env_ids) == 0:
            got = f"a 0-d {type(env_ids).__name__}" if isinstance(env_ids, np.ndarray) else type(env_ids).__name__
            raise TypeError(f"env_ids must be a sequence of env indices or a boolean mask (e.g. [2]); got {got}")
        items = list(env_ids.tolist() if isinstance(env_ids, np.ndarray) else env_ids)
        if _is_mask(items):
            if self._n_envs is not None and len(items) != self._n_envs:
                raise ValueError(f"env_ids is a boolean mask of {len(items)} entries; this chunker serves {self._n_envs} "
                                 "envs (pass one entry per env, or the env indices)")
            return [i for i, done in enumerate(items) if done]
        for item in items:
            if not _is_int(item):
                raise TypeError(f"env_ids must hold env indices (ints) or be a boolean mask of one entry per env; got "
                                f"{item!r} ({type(item).__name__}) in {env_ids!r}")
            if self._n_envs is not None and not 0 <= int(item) < self._n_envs:
                raise IndexError(f"env id {item} is out of range for {self._n_envs} envs")
        return [int(item) for item in items]

    def wait_for_prefetch(self, timeout: Optional[float] = None) -> bool:
        """Block until the background request (if any) has an answer; it is merged at the next get_action."""
        self._adopt_after_fork()
        pending = self._pending
        if pending is None:
            return True
        try:
            pending.future.exception(timeout=timeout)
        except FutureTimeoutError:  # a distinct class before Python 3.11
            return False
        return True

    def close(self) -> None:
        """End the background thread. Wrapping a PolicyClient, return at once: a request still in flight is
        abandoned (its chunk is not wanted; the client, safe to share between threads, finishes or times it out,
        and closing the client ends it at once), so leaving a `with` block on Ctrl-C against a stalled server does
        not wait out timeout_ms. A fetch another thread's get_action makes in the foreground (the first chunk, or
        with asynchronous=False) is not abandoned: close() from a third thread waits for its reply (up to the
        client's timeout_ms); closing the PolicyClient itself ends it at once. Wrapping a local policy, wait for its
        call to end first (it may not be used by two callers at once). A program that exits without closing does
        not wait: the thread is a daemon."""
        self._adopt_after_fork()
        self._closing.set()  # a get_action blocked on a late prefetch holds the lock: it lets go within CLOSE_POLL_S
        with self._lock:
            self._closing.clear()
            pending, self._pending = self._pending, None
            if pending is not None:
                if isinstance(self.policy, PolicyClient):
                    self.stats.discarded_envs += len(pending.env_ids)
                else:
                    pending.future.exception()
            if self._worker is not None:
                self._worker.stop()
                self._worker = None

    def _adopt_after_fork(self) -> None:
        """In a child forked from the process that made this chunker, start afresh: the prefetch thread does not
        exist there (a prefetch queued to it, or one in flight at the fork, left the child's next chunk boundary
        waiting for ever), and a lock a parent thread held at that moment stays held. The buffers carry over; the
        parent's prefetch is dropped (the child fetches its own)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._worker = None
        if self._pending is not None:
            self.stats.discarded_envs += len(self._pending.env_ids)
            self._pending = None
        logger.debug("ActionChunker in forked process %d: new prefetch thread; the parent's prefetch dropped", self._pid)

    def __enter__(self) -> "ActionChunker":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- buffers --------------------------------------------------------------------------------

    def _ensure_envs(self, batch_size: int) -> None:
        if batch_size == 0:
            raise ValueError("observation has 0 rows (a batch of size 0): expected one row per env")
        if batch_size < 1:
            raise ValueError("cannot tell the batch size of the observation: it holds no array or list")
        if self._n_envs is None:
            self._n_envs = batch_size
            self._buffers = [None] * batch_size
            self._cursors = [0] * batch_size
            self._steps_taken = [0] * batch_size
            self._generations = [0] * batch_size
        elif batch_size != self._n_envs:
            raise ValueError(f"observation has batch size {batch_size}; this chunker serves {self._n_envs} envs (make a new one)")

    def _rows(self, observation: Any, env_ids: Sequence[int]) -> Any:
        return observation if len(env_ids) == self._n_envs else select_envs(observation, env_ids, self._n_envs or 0)

    def _row_options(self, options: Optional[Dict[str, Any]], env_ids: Sequence[int]) -> Optional[Dict[str, Any]]:
        """The options of a request for `env_ids`: an array option of one row per env (a `noise` of (B, ...)) keeps
        the rows of those envs (it went whole, and a server refused the request for the rows it did not ask for)."""
        if not options or len(env_ids) == self._n_envs:
            return options
        rows = list(env_ids)
        picked = {key: value[rows] if isinstance(value, np.ndarray) and value.ndim > 0 and value.shape[0] == self._n_envs
                  else value for key, value in options.items()}
        seed = picked.get("seed")
        if isinstance(seed, (list, tuple)) and len(seed) == self._n_envs:  # one seed per env: those envs' seeds
            picked["seed"] = [seed[k] for k in rows]
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
            # Row i of a request uses seed + i: env k's seed is seed + k however few envs this fetch is for. Envs
            # k, k+1, ... in a run shift the int; others get a list of their own seeds (Gr00tPolicy takes one).
            own = [int(seed) + k for k in rows]
            picked["seed"] = own[0] if own == list(range(own[0], own[0] + len(own))) else own
        return picked

    def _remaining(self, i: int) -> int:
        buffer = self._buffers[i]
        if buffer is None:
            return 0
        return len(next(iter(buffer.values()))) - self._cursors[i]

    def _clear(self, i: int) -> None:
        self._buffers[i] = None
        self._cursors[i] = 0
        self._generations[i] += 1  # a prefetched row for this env is now stale

    def _pop_step(self) -> Dict[str, np.ndarray]:
        assert self._keys is not None
        rows = []
        for i in range(self._n_envs or 0):
            buffer = self._buffers[i]
            assert buffer is not None
            rows.append({key: buffer[key][self._cursors[i]] for key in self._keys})
            self._cursors[i] += 1
            self._steps_taken[i] += 1
        return {key: np.stack([row[key] for row in rows]) for key in self._keys}

    def _split(self, action: Any, n_rows: int) -> List[Dict[str, np.ndarray]]:
        """Check an action chunk {key: (n_rows, H, ...)}; return one {key: (H', ...)} per row."""
        if not isinstance(action, Mapping) or not action:
            raise ActionError(f"policy must return a non-empty dict of (B, H, ...) arrays; got {type(action).__name__}")
        # The policy's own key order, kept from its first chunk: robot code that joins a step's values in dict order
        # must get the columns it would get from the policy itself (sorted keys sent them to other joints).
        keys = list(action)
        if self._keys is not None:
            if set(keys) != set(self._keys):
                raise ActionError(f"action keys changed from {sorted(self._keys)} to {sorted(keys)}")
            keys = self._keys
        # Every check runs before a key, shape or buffer changes: a refused chunk leaves the chunker as it was.
        horizon = None
        for key in keys:
            value = action[key]
            if not isinstance(value, np.ndarray) or value.ndim < 2:
                got = getattr(value, "shape", type(value).__name__)
                raise ActionError(f"action key '{key}' must be an array of shape (B, H, ...); got {got}")
            if value.shape[0] != n_rows:
                raise ActionError(f"action key '{key}' has batch size {value.shape[0]}; expected {n_rows} (the envs asked for)")
            if value.shape[1] == 0:
                raise ActionError(f"action key '{key}' has horizon 0 (shape {value.shape}); expected a chunk of at least 1 step")
            if horizon is not None and value.shape[1] != horizon:
                raise ActionError(f"action key '{key}' has horizon {value.shape[1]}; other keys have {horizon}")
            rows = non_finite_rows(value)
            if rows:  # the last layer before a robot: whatever policy it wraps (a local one checks nothing), no NaN leaves
                raise ActionError(f"action key '{key}' has non-finite values (NaN or inf) in rows {rows}; the chunk was not used")
            step_shape = self._step_shapes.get(key)
            if step_shape is not None and value.shape[2:] != step_shape:
                raise ActionError(
                    f"action key '{key}' has shape {value.shape}, steps of shape {value.shape[2:]}; "
                    f"expected steps of shape {step_shape}, as in the earlier chunks"
                )
            step_dtype = self._step_dtypes.get(key)
            if step_dtype is not None and value.dtype != step_dtype:  # merged into float steps, int64 rounded them
                raise ActionError(f"action key '{key}' has dtype {value.dtype}; expected {step_dtype}, as in the "
                                  "earlier chunks")
            horizon = value.shape[1]
        if self.n_action_steps is not None and horizon is not None and horizon < self.n_action_steps:
            # min(horizon, n_action_steps) asked the policy every `horizon` steps, not every n_action_steps, while a
            # rollout recorded n_action_steps (its chunking "off" refuses such a chunk): another setup than the one set
            raise ActionError(f"action chunk has {horizon} steps, fewer than n_action_steps={self.n_action_steps}: the "
                              f"policy would be asked every {horizon} steps instead of every {self.n_action_steps}; pass "
                              f"n_action_steps={horizon} or fewer (or serve a longer action horizon)")
        if self._keys is None:
            self._keys = keys
            self._step_shapes = {key: action[key].shape[2:] for key in keys}
            self._step_dtypes = {key: action[key].dtype for key in keys}
        usable = horizon if self.n_action_steps is None else min(horizon, self.n_action_steps)
        self._usable = usable
        # Copies: a policy may reuse its output array for the next (prefetched) chunk while these steps still run.
        return [{key: np.array(action[key][row, :usable]) for key in keys} for row in range(n_rows)]

    def _install(self, env_ids: Sequence[int], action: Any, running: Collection[int] = ()) -> List[int]:
        """Put a fetched chunk in the buffers of `env_ids`; the envs in `running` (asynchronous: envs fetched in
        lockstep with another env's exhausted one, their own chunk still running) merge it by the merge rule instead,
        as a prefetch computed from this step's observation (their steps replaced it outright, and with merge
        "oldest" or RTC a robot jumped at every other env's episode end). Returns the envs merged."""
        merged = []
        for i, chunk in zip(env_ids, self._split(action, len(env_ids))):
            if i in running and self._buffers[i] is not None:
                self._merge_into(i, chunk, elapsed=0)
                merged.append(i)
            else:
                self._buffers[i] = chunk
                self._cursors[i] = 0
        self.stats.merged_envs += len(merged)
        return merged

    # --- asynchronous prefetch ------------------------------------------------------------------

    def _request(self, observation: Any, options: Optional[Dict[str, Any]], n_rows: int) -> Tuple[Any, Any]:
        self.stats.requests += 1
        result = self.policy.get_action(observation, options)
        if not self._horizon_checked:
            self._check_policy_advance(result)
        if isinstance(result, (tuple, list)) and len(result) == 2:
            self._check_position(result[1], n_rows)
        return result

    def _check_position(self, info: Any, n_rows: int) -> None:
        """Refuse a reply of a policy that advances its own position (a replay: `current_step` and
        `execution_horizon` in its info) from past its last reply's step plus its execution_horizon: a reply was lost.

        A step behind it (the policy reset elsewhere, or a restarted server) is taken as the new position: the caller
        that moved it checks it (gr00t-eval rollout does)."""
        reported = _reported_steps(info)
        horizon = info.get("execution_horizon") if isinstance(info, Mapping) else None
        if reported is None or not _is_int(horizon) or n_rows != self._n_envs or len(reported) != n_rows:
            self._expected_steps = None  # no position, or some envs alone (per_env: a replay re-tiles its rows)
            return
        expected = self._expected_steps
        if expected is not None and len(expected) == 1:  # one row reset, tiled to the batch by the replay
            expected = expected * n_rows
        if expected is not None and len(expected) == n_rows:
            for row, (want, got) in enumerate(zip(expected, reported)):
                if got > want:  # left as it was: every later reply is refused too, until a reset
                    raise PolicyPositionError(_skipped_steps_error(row, want, got, int(horizon)))
        self._expected_steps = [step + int(horizon) for step in reported]

    def _check_policy_advance(self, result: Any) -> None:
        """Warn once when the policy says it advances `execution_horizon` steps per call (a replay server does: each
        call returns the chunk from where the last one left off) and this chunker executes another number of steps
        per chunk, or prefetches: the robot would replay steps twice or skip them, with no error anywhere."""
        info = result[1] if isinstance(result, (tuple, list)) and len(result) == 2 else None
        served = info.get("execution_horizon") if isinstance(info, Mapping) else None
        if not _is_int(served) or served < 1:
            return
        self._horizon_checked = True
        self._advancing_policy = True
        action = result[0]
        first = next(iter(action.values()), None) if isinstance(action, Mapping) else None
        chunk = int(np.shape(first)[1]) if first is not None and np.ndim(first) >= 2 else None
        steps = self.n_action_steps if self.n_action_steps is not None else chunk
        if self.asynchronous:
            logger.warning("the policy advances %d steps per call (its info's execution_horizon: a replay server), but "
                           "this ActionChunker prefetches, so its calls do not follow the steps executed: steps will "
                           "repeat or be skipped; use asynchronous=False and n_action_steps=%d", served, served)
        elif self.per_env and (self._n_envs or 0) > 1:
            logger.warning("the policy advances %d steps per call (its info's execution_horizon: a replay server, one "
                           "cursor per session), but this ActionChunker fetches some envs at a time (per_env=True): "
                           "the envs take turns at the one cursor and skip steps; use per_env=False", served)
        elif steps is not None and steps != served:
            logger.warning("the policy advances %d steps per call (its info's execution_horizon: a replay server), but "
                           "this ActionChunker executes %d steps of each chunk: steps will %s; pass n_action_steps=%d "
                           "(or serve with --execution-horizon %d)", served, steps,
                           "repeat" if steps > served else "be skipped", served, steps)

    def _threshold(self, i: int) -> int:
        if self.prefetch_steps is not None:
            return self.prefetch_steps
        buffer = self._buffers[i]
        length = len(next(iter(buffer.values()))) if buffer is not None else 0
        return length // 2

    def _prefetch_worker(self) -> _PrefetchWorker:
        if self._worker is None:
            self._worker = _PrefetchWorker()
            weakref.finalize(self, self._worker.stop)  # a chunker dropped without close() ends its thread too
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
        request_options = dict(self._row_options(options, ids)) if options else None
        rtc = self._rtc_options(ids)
        if rtc is not None:
            request_options = {**(request_options or {}), "rtc": rtc}
        self.stats.prefetches += 1
        self._pending = _Prefetch(
            future=self._prefetch_worker().submit(self._request, request_obs, request_options, len(ids)),
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

    def _collect(self, block: bool) -> List[int]:
        """Merge a finished prefetch into the buffers; return the env ids merged."""
        pending = self._pending
        if pending is None or (not block and not pending.future.done()):
            return []
        while block and not pending.future.done():
            # close() from another thread, or from a signal handler on this one (which drops the prefetch), ends the
            # wait: it held close() up to timeout_ms, and a chunk abandoned by close() was merged after all.
            if self._closing.is_set() or self._pending is not pending:
                raise ConnectionError("the ActionChunker was closed while this call waited for its next chunk")
            futures_wait([pending.future], timeout=CLOSE_POLL_S)
        try:
            action, info = pending.future.result()  # a policy error surfaces in the robot's call
        except BaseException:
            if pending.future.done():  # the request failed: it is over. A wait cut short (Ctrl-C) keeps it pending,
                self._pending = None  # so that the next call (or close/reset) still knows the request in flight
            raise
        self._pending = None
        chunks = self._split(action, len(pending.env_ids))  # a bad chunk is dropped whole; the buffers run on
        self._last_info = info if isinstance(info, dict) else {}
        merged = []
        rows = zip(pending.env_ids, pending.generations, pending.steps_at_observation, chunks)
        for i, generation, at_obs, new in rows:
            if generation != self._generations[i]:
                self.stats.discarded_envs += 1
                continue
            elapsed = self._steps_taken[i] - at_obs
            self._merge_into(i, new, elapsed=elapsed)
            if elapsed >= len(next(iter(new.values()))):  # every step it predicted has passed: nothing was merged
                self.stats.late_envs += 1
                continue
            merged.append(i)
        self.stats.merged_envs += len(merged)
        return merged

    def _merge_into(self, i: int, new: Dict[str, np.ndarray], elapsed: int) -> None:
        old = self._buffers[i]
        cursor = self._cursors[i]
        result = {}
        for key, new_steps in new.items():
            new_tail = new_steps[elapsed:]
            old_tail = old[key][cursor:] if old is not None else new_steps[:0]
            n = min(len(old_tail), len(new_tail))
            longer = new_tail if len(new_tail) >= len(old_tail) else old_tail
            merged = merge_overlap(old_tail[:n], new_tail[:n], self.merge, self.new_weight)
            if merged.dtype.kind in "fc" and not np.isfinite(merged).all():  # a merge function's, or a rule's overflow
                raise ActionError(f"merging the overlap of action key '{key}' ({self.merge!r}) gave non-finite values "
                                  "(NaN or inf) from finite chunks; the chunk was not used")
            result[key] = np.concatenate([merged, longer[n:]])
        self._buffers[i] = result if len(next(iter(result.values()))) else None
        self._cursors[i] = 0
