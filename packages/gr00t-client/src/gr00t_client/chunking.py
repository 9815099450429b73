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

Chunk row j is handed out at the j-th call from the query, so the policy's action delta_indices must be the
consecutive steps 0..H-1; others ([0, 2, 4, ...]) are refused unless `allow_sparse_steps=True` says the robot loop
calls get_action once per delta_indices step (the coarser rate), and the chunk is then handed out a row per call.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import threading
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .chunking_buffers import _StepBuffers
from .chunking_envs import _EnvRows, _is_int, refuse_unsendable
from .chunking_merge import MERGE_RULES, MergeFn, merge_overlap
from .chunking_position import PolicyPositionError, _PositionChecks, _reported_steps, _Reply
from .chunking_prefetch import _Prefetch, _Prefetching, _PrefetchWorker
from .client import PolicyClient
from .client_errors import PolicyTimeoutError, ServerStoppingError
from .client_options import check_flag
from .modality import consecutive_action_deltas_problem
from .policy import ActionError

__all__ = ["MERGE_RULES", "ActionChunker", "ChunkerStats", "PolicyPositionError", "merge_overlap"]

logger = logging.getLogger(__name__)


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


def _wait_seconds(timeout: Any) -> Optional[float]:
    """wait_for_prefetch's `timeout` as threading takes it: None (no limit) for None, inf or more than threading can
    wait (it raised OverflowError); ValueError naming it for NaN, a negative or a non-number."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout >= 0:
        raise ValueError("wait_for_prefetch: timeout must be None or a number of seconds >= 0 (inf: no limit), "
                         f"got {timeout!r}")
    return None if timeout > threading.TIMEOUT_MAX else float(timeout)


def _is_real(value: Any) -> bool:
    """A real number, numpy's included, and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _as_float(name: str, value: Any) -> float:
    """float(value) for a real parameter; ValueError naming it where the value is too large for a float (10**400)."""
    try:
        return float(value)
    except OverflowError as exc:
        raise ValueError(f"{name} must be a real number within the float range (about 1.8e308), got one too large for "
                         f"a float ({type(value).__name__}: {exc})") from None


def _client_of(policy: Any) -> Optional[PolicyClient]:
    """`policy` itself if a PolicyClient, or the one it wraps through `.policy` (PolicyWrapper's attribute), or None; a
    cycle ends the search."""
    seen = set()
    while policy is not None and id(policy) not in seen:
        if isinstance(policy, PolicyClient):
            return policy
        seen.add(id(policy))
        policy = getattr(policy, "policy", None)
    return None


def _configs_source(policy: Any) -> Any:
    """What to ask for `policy`'s modality configs: `policy` where it has get_modality_config, else the PolicyClient it
    wraps through `.policy` (a pass-through wrapper that forwards get_action alone), else `policy` (which then has
    none)."""
    if callable(getattr(policy, "get_modality_config", None)):
        return policy
    return _client_of(policy) or policy


def _wraps_client(policy: Any) -> bool:
    """Whether `policy` is a PolicyClient or wraps one."""
    return _client_of(policy) is not None


def _server_changes(policy: Any) -> Optional[int]:
    """The wrapped client's server_changes (it moves when the server may have restarted), or None for a local policy."""
    client = _client_of(policy)
    return None if client is None else client.server_changes


class ActionChunker(_EnvRows, _StepBuffers, _Prefetching, _PositionChecks):
    """Wraps a policy (local BasePolicy or PolicyClient) and hands out one action step per env per call.

    Sync: refetch for all envs when a chunk runs out (or only the exhausted envs with per_env=True). A request for
    some envs sends their rows of options["noise"] (B, ...; nested lists too) and their seeds (options["seed"]); other
    options go whole.
    Async: request the next chunk in a background thread once at most `prefetch_steps` steps remain. A prefetch that
    timed out, lost its connection or was not run (DeadlineNotRunError, ServerBusyError, ServerStoppingError) is
    dropped (warned, and named in that step's info["prefetch_error"]) and asked for again; an env whose buffer is empty
    is fetched in that call, and only that request's failure raises (or the ServerStoppingError: no server is left to
    ask).
    Action delta_indices other than 0..H-1 ([0, 2, 4, ...]) raise ActionError when the policy's modality config is
    first learnt (again after a full reset or a server restart): row j would run at step j, not at the step it was
    predicted for. allow_sparse_steps=True is for a loop that steps at that coarser rate: rows go out one per call.
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
        allow_sparse_steps: bool = False,
    ) -> None:
        # None, an address or a class was taken, and the first get_action failed with a bare AttributeError
        if isinstance(policy, type) or not callable(getattr(policy, "get_action", None)):
            hint = " (an address? pass PolicyClient(host, port))" if isinstance(policy, str) else ""
            got = (f"the class {policy.__name__} (pass an instance: {policy.__name__}(...))" if isinstance(policy, type)
                   else f"{type(policy).__name__}{hint}")
            raise TypeError(f"policy must be a BasePolicy or PolicyClient (an object with a get_action method), "
                            f"got {got}")
        per_env = check_flag("per_env", per_env)  # asynchronous="no" ran asynchronously: bool("no") is True
        asynchronous = check_flag("asynchronous", asynchronous)
        allow_sparse_steps = check_flag("allow_sparse_steps", allow_sparse_steps)
        # Step counts index the chunk: a float (2.5) failed deep in a later step, a NaN prefetch never prefetched.
        if n_action_steps is not None and not (_is_int(n_action_steps) and n_action_steps >= 1):
            raise ValueError(f"n_action_steps must be an int >= 1 or None (the whole chunk), got {n_action_steps!r}")
        if prefetch_steps is not None and not (_is_int(prefetch_steps) and prefetch_steps >= 0):
            raise ValueError(f"prefetch_steps must be an int >= 0 or None (half the chunk), got {prefetch_steps!r}")
        if prefetch_steps is not None and not asynchronous:  # as merge and rtc_frozen_steps: it was never applied
            raise ValueError("prefetch_steps needs asynchronous=True: only an asynchronous chunker prefetches (a "
                             "synchronous one fetches when a chunk runs out); leave prefetch_steps None, or pass "
                             "asynchronous=True")
        if not callable(merge) and merge not in MERGE_RULES:
            raise ValueError(f"merge must be one of {MERGE_RULES} or a callable, got {merge!r}")
        if not _is_real(new_weight):  # a str or None raised a bare TypeError from the comparison, naming nothing
            raise ValueError(f"new_weight must be a real number in [0, 1] (not a bool), got {new_weight!r} "
                             f"({type(new_weight).__name__})")
        new_weight = _as_float("new_weight", new_weight)  # validated as stored: a Fraction's float may differ from it
        if not 0.0 <= new_weight <= 1.0:
            raise ValueError(f"new_weight must be in [0, 1], got {new_weight}")
        default_weight = math.isclose(new_weight, 0.7, abs_tol=1e-6)  # float32's 0.7 (0.699999988) was refused
        merging = ([f"merge={merge!r}"] if callable(merge) or merge != "newest" else []) + (
            [f"new_weight={new_weight!r}"] if not default_weight else [])
        if merging and not asynchronous:  # as rtc_frozen_steps and gr00t-eval's --chunk-merge: it was never applied
            raise ValueError(f"{' and '.join(merging)} needs asynchronous=True: only a prefetched chunk is merged with "
                             "the steps still running (a synchronous chunker replaces the chunks it fetches); leave "
                             "merge='newest' and new_weight=0.7, or pass asynchronous=True")
        if rtc_frozen_steps is not None:
            if not asynchronous:
                raise ValueError("rtc_frozen_steps needs asynchronous=True: only a prefetch overlaps a chunk still running")
            if not (_is_int(rtc_frozen_steps) and rtc_frozen_steps >= 1):
                raise ValueError(
                    f"rtc_frozen_steps must be an int >= 1 (this step + the steps executed while the policy runs), "
                    f"got {rtc_frozen_steps!r}"
                )
            problem = None if n_action_steps is None else self.rtc_frozen_steps_problem(
                int(rtc_frozen_steps), int(n_action_steps), None if prefetch_steps is None else int(prefetch_steps))
            if problem is not None:  # a prefetch pins at most its overlap: a larger k froze all of it, saying nothing
                raise ValueError(problem)
        if not _is_real(rtc_ramp_rate):  # True passed, and the server refused it
            raise ValueError(f"rtc_ramp_rate must be a finite number > 0, got {rtc_ramp_rate!r} "
                             f"({type(rtc_ramp_rate).__name__}); expected a real number, not a bool")
        ramp_rate = _as_float("rtc_ramp_rate", rtc_ramp_rate)  # Fraction(1, 10**400) is > 0 but its float is 0.0
        if not 0.0 < ramp_rate < float("inf"):
            raise ValueError(f"rtc_ramp_rate must be a finite number > 0 as a float (what the server gets), got "
                             f"{rtc_ramp_rate!r} ({type(rtc_ramp_rate).__name__}), {ramp_rate} as a float")
        self.policy = policy
        self.n_action_steps = None if n_action_steps is None else int(n_action_steps)
        self.per_env = per_env
        self.asynchronous = asynchronous
        self.prefetch_steps = None if prefetch_steps is None else int(prefetch_steps)
        self.merge = merge
        self.new_weight = new_weight  # a float: a Fraction failed the first merge of an int key (no rint for it)
        self.rtc_frozen_steps = None if rtc_frozen_steps is None else int(rtc_frozen_steps)
        self.rtc_ramp_rate = ramp_rate  # a float: a Fraction failed the first prefetch (the wire has no Fraction)
        self.allow_sparse_steps = allow_sparse_steps
        self.stats = ChunkerStats()
        self._warned_one_step = False
        self._warned_rtc_overlap = False  # rtc_frozen_steps checked against the first chunk (n_action_steps None)
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
        self._prefetch_error: Optional[str] = None  # this call's failed prefetch, dropped while steps remained
        self._prefetch_failure: Optional[BaseException] = None  # its error
        self._worker: Optional[_PrefetchWorker] = None  # started by the first prefetch
        self._last_info: Dict[str, Any] = {}
        self._partial_reset_warned = False
        self._advance_warning: Optional[str] = None  # the last advance mismatch warned about: not again after a reset
        self._expected_steps: Optional[List[int]] = None  # per policy row: the step an advancing policy reports next
        self._expected_basis = ""  # why those steps are due, for the error refusing a reply past them
        self._last_reply: Optional[_Reply] = None  # an advancing policy's last reply to every env, since its reset
        self._reply_lost = False  # a request failed since that reply (an advancing policy may have moved on for it)
        self._pid = os.getpid()  # the process whose prefetch thread this is (see _adopt_after_fork)
        self._forget_policy_server()  # nothing is known of it yet

    def _forget_policy_server(self) -> None:
        """Forget what was learnt of the policy's server (at a full reset, and when the wrapped client's server_changes
        moved: a restart, maybe with another horizon): its next replies and config tell it again."""
        self._horizon_checked = False  # whether a policy that says how far it advances per call was compared with us
        self._advancing_policy = False  # the policy said it advances per call (a replay server's execution_horizon)
        self._inferred_horizon: Optional[int] = None  # the advance per call of a policy whose info does not say it
        self._configs_refused = False  # its modality config could not be had (RTC then sends no action horizon cap)
        self._steps_checked = False  # whether its action delta_indices were found consecutive (or not said)
        self._server_changes = _server_changes(self.policy)  # the client's count when this was forgotten

    def _served_configs(self) -> Any:
        """The modality configs of the policy (or of the client a wrapper of it holds, _configs_source)."""
        return _configs_source(self.policy).get_modality_config()

    def _check_served_steps(self) -> None:
        """ActionError where the policy serves action delta_indices other than 0..H-1 and allow_sparse_steps is False:
        chunk row j is handed out at the j-th call, so each action would run at another step than it was predicted
        for (the action for step 2 at step 1: the trajectory at double speed)."""
        if self.allow_sparse_steps or self._steps_checked:
            return
        try:
            deltas = self._served_action_deltas()
        except (PolicyTimeoutError, ConnectionError) as exc:  # this reply is good: the next one checks again
            logger.debug("action delta_indices not checked yet: get_modality_config failed (%s: %s)",
                         type(exc).__name__, exc)
            return
        problem = None if deltas is None else consecutive_action_deltas_problem(deltas)
        if problem is not None:  # not marked checked: every later chunk of this server is refused too
            raise ActionError(
                f"{problem}, or each action would run at another step than it was predicted for: ActionChunker hands "
                "chunk row j out at the j-th get_action call from the query; serve a checkpoint whose action "
                "delta_indices are 0..H-1, or pass ActionChunker(..., allow_sparse_steps=True) if the robot loop calls "
                "get_action once per delta_indices step (the coarser rate)")
        self._steps_checked = True

    def _notice_new_server(self) -> None:
        """Forget what was learnt of the policy's server once the wrapped client may talk to another one."""
        if _server_changes(self.policy) != self._server_changes:
            self._forget_policy_server()

    def _refuse_unsendable(self, observation: Any) -> None:
        """An observation a served policy's wire cannot carry (torch tensors), refused in PolicyClient's words; a local
        policy's own types are its business."""
        if _wraps_client(self.policy):
            refuse_unsendable(observation)

    def _start_afresh_in_child(self) -> None:
        """In a forked child, also drop the buffered steps of a served policy (a PolicyClient) whose session the child
        does not share: they are the parent's session's, and the child's client has a session of its own (a replay
        refuses it until the child resets), so the child's next get_action asks the server. A client given its
        session_id keeps it in the child, and the buffered steps are that session's next ones; a local policy's state
        was copied with its buffers: both carry over."""
        client = _client_of(self.policy)
        if client is not None and not getattr(client, "_session_given", False):
            for i in range(self._n_envs or 0):
                self._clear(i)
        super()._start_afresh_in_child()

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
        # A call that raises hands out no step (a Ctrl-C after the pop lost it: the retry got the next one). Rolled
        # back under this call's own hold of the lock: after it, another thread's call may have popped a step.
        handed_out: List[List[int]] = []  # the cursors and steps taken just before this call's pop, once it came
        after: List[List[int]] = []  # and just after it, once the call is done
        try:
            with self._lock:
                try:
                    result = self._get_action_locked(observation, options, handed_out)
                    after[:] = [list(self._cursors), list(self._steps_taken)]
                    return result
                except BaseException:
                    if handed_out:  # before the pop, a merge that raised left the buffers whole (_commit)
                        self._cursors[:], self._steps_taken[:] = handed_out
                    after.clear()
                    raise
        except BaseException:
            if after:  # raised as the lock was let go, its step handed out: undone unless another call popped since
                with self._lock:
                    if [self._cursors, self._steps_taken] == after:
                        self._cursors[:], self._steps_taken[:] = handed_out
            raise

    def _get_action_locked(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]],
                           handed_out: List[List[int]]) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
        """get_action's body, under the lock; `handed_out` gets the cursors and steps taken just before the pop."""
        self._ensure_envs(observation)
        self.stats.calls += 1
        self._prefetch_error = self._prefetch_failure = None
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
            if isinstance(self._prefetch_failure, ServerStoppingError):  # no server left to fetch them from
                raise self._prefetch_failure
            waited = True
            ids = exhausted if self.per_env else list(range(self._n_envs))
            action, info = self._request(self._rows(observation, ids), self._row_options(options, ids), len(ids))
            self._last_info = info if isinstance(info, dict) else {}
            merged += self._install(ids, action, running=set(ids) - set(exhausted) if self.asynchronous else ())
            fetched = ids
        if waited:
            self.stats.blocking_waits += 1
        handed_out[:] = [list(self._cursors), list(self._steps_taken)]  # what a raise from here on restores
        step = self._pop_step()
        if self.asynchronous and self._pending is None:
            self._maybe_prefetch(observation, options)
        info = {
            "fetched_env_ids": fetched,  # envs whose chunk was fetched while this call waited
            "merged_env_ids": sorted(set(merged)),  # envs whose buffer took in a chunk by the merge rule
            "remaining": self.remaining(),
            "policy_info": self._last_info,
        }
        if self._prefetch_error is not None:  # "<type>: <message>" of the prefetch dropped at this step
            info["prefetch_error"] = self._prefetch_error
        return step, info

    @property
    def dropped_prefetch_failure(self) -> Optional[BaseException]:
        """The error of the prefetch the last get_action dropped (the one its info["prefetch_error"] names), or None."""
        return self._prefetch_failure

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
                # the caller moves the policy's rows: its next reply sets the positions
                self._expected_steps = self._last_reply = None
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
            self._forget_actions_when_empty()  # every env reset, together or in turn: their actions may be new
            return {}

    def _reset_policy(self, options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """Drop every buffer and the prefetch in flight, then reset the wrapped policy with `options`."""
        pending = self._pending
        if pending is not None:  # the policy may not be called concurrently; let it finish
            self._await_prefetch(pending, "the prefetch in flight to end before resetting the policy")
            self.stats.discarded_envs += len(pending.env_ids)
            self._pending = None
        for i in range(self._n_envs or 0):
            self._clear(i)
        # Nothing is buffered: the next chunk may have other keys or step shapes (a server now serving another
        # embodiment), which were refused for ever
        self._keys, self._step_shapes, self._step_dtypes = None, {}, {}
        self._expected_steps = self._last_reply = None
        self._reply_lost = False
        self._forget_policy_server()  # a new episode may be served with another advance (a restarted replay server)
        info = self.policy.reset(options) or {}
        self._expected_steps, self._expected_basis = _reported_steps(info), "the step its reset reported"
        return info

    def wait_for_prefetch(self, timeout: Optional[float] = None) -> bool:
        """Block until the background request (if any) has an answer (True; it is merged at the next get_action), or
        for at most `timeout` seconds (False): None or inf waits for the answer; NaN or a negative raises ValueError."""
        timeout = _wait_seconds(timeout)
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
        """End the background thread. Wrapping a PolicyClient (itself, or inside wrappers that keep it as `.policy`,
        as PolicyWrapper does), return at once: a request still in flight is abandoned (its chunk is not wanted; the
        client, safe to share between threads, finishes or times it out, and closing the client ends it at once), so
        leaving a `with` block on Ctrl-C against a stalled server does not wait out timeout_ms. A fetch another
        thread's get_action makes in the foreground (the first chunk, or with asynchronous=False) is not abandoned:
        close() from a third thread waits for its reply (up to the client's timeout_ms); closing the PolicyClient
        itself ends it at once. Wrapping a local policy (no client inside), wait for its call to end first (it may not
        be used by two callers at once). A program that exits without closing does not wait: the thread is a daemon."""
        self._adopt_after_fork()
        self._closing.set()  # a get_action blocked on a late prefetch holds the lock: it lets go within CLOSE_POLL_S
        with self._lock:
            self._closing.clear()
            pending, self._pending = self._pending, None
            if pending is not None:
                if _wraps_client(self.policy):
                    self.stats.discarded_envs += len(pending.env_ids)
                else:
                    pending.future.exception()
            if self._worker is not None:
                self._worker.stop()
                self._worker = None

    def __enter__(self) -> "ActionChunker":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _request(self, observation: Any, options: Optional[Dict[str, Any]], n_rows: int) -> Tuple[Any, Any]:
        self.stats.requests += 1
        try:
            result = self.policy.get_action(observation, options)
        except BaseException:
            self._reply_lost = True  # the policy may have run it all the same (a timeout) and advanced
            raise
        self._notice_new_server()  # this reply may be a restarted server's
        self._check_served_steps()  # before its chunk is used: a restarted server may serve other steps
        if not self._horizon_checked:
            self._check_policy_advance(result)
        if isinstance(result, (tuple, list)) and len(result) == 2:
            self._check_position(result[1], n_rows)
        return result
