"""ActionChunker's per-env step buffers: a policy's chunk checked and split into them, one step popped per env per
call, and a newer chunk merged into the steps not yet executed by the chunker's merge rule."""

from __future__ import annotations

from collections.abc import Mapping  # isinstance with typing.Mapping is twice as slow (hot paths)
from typing import Any, Collection, Dict, List, Optional, Sequence

import numpy as np

from .chunking_merge import MergeResultError, merge_overlap
from .policy import ActionError, non_finite_rows

# Said when a chunk's keys, step shapes or dtypes differ from the earlier ones: buffered steps of both cannot mix.
_NEW_ACTIONS = ("; a policy now serving other actions needs every env reset first (reset(), or reset(env_ids) of each "
                "env: nothing buffered) or a new chunker")


def _refuse_hidden_values(key: str, value: np.ndarray) -> None:
    """ActionError for a chunk whose numbers the finite check cannot see: a masked array (its masked entries hold
    the values the robot would get) or a non-numeric dtype (an object array's items)."""
    if isinstance(value, np.ma.MaskedArray):
        raise ActionError(f"action key '{key}' is a numpy masked array; return value.filled(x) with the value the "
                          "robot should get (a masked entry has no value to act on); the chunk was not used")
    if value.dtype.kind not in "biufc":
        raise ActionError(f"action key '{key}' has dtype {value.dtype}; expected a numeric (float, int or bool) "
                          "array; the chunk was not used")


def _as_key_dtype(key: str, merged: np.ndarray, dtype: np.dtype, merge: Any) -> np.ndarray:
    """A merge's steps cast back to the key's dtype when of the same kind (float64 from np.average for a float32 key,
    native floats for big-endian ones, int64 from .astype(int) for an int32 key); ActionError naming the key and the
    merge for another kind (an object array hid NaN, floats for an int key) or ints outside the key dtype's range."""
    kinds = ("f", "iu", "b", "c")
    if not any(merged.dtype.kind in kind and dtype.kind in kind for kind in kinds):
        raise ActionError(f"merging the overlap of action key '{key}' ({merge!r}) gave dtype {merged.dtype}; expected "
                          f"{dtype}, the key's dtype in the policy's chunks, or another of its kind (cast back to it); "
                          "the chunk was not used")
    if dtype.kind in "iu" and merged.size:  # refused rather than wrapped (300 into an int8 gripper made 44)
        low, high, info = int(merged.min()), int(merged.max()), np.iinfo(dtype)
        if low < info.min or high > info.max:
            raise ActionError(f"merging the overlap of action key '{key}' ({merge!r}) gave values from {low} to "
                              f"{high}; expected values in [{info.min}, {info.max}], the range of the key's dtype "
                              f"{dtype}; the chunk was not used")
    if dtype.kind == "f" and merged.size and np.isfinite(merged).all():  # refused rather than cast to inf
        largest, limit = float(np.abs(merged).max()), float(np.finfo(dtype).max)
        if largest > limit:
            raise ActionError(f"merging the overlap of action key '{key}' ({merge!r}) gave finite values up to "
                              f"{largest:g} in magnitude; expected values in [-{limit:g}, {limit:g}], the range of the "
                              f"key's dtype {dtype}; the chunk was not used")
    with np.errstate(over="ignore"):
        return merged.astype(dtype, copy=False)


class _StepBuffers:
    """ActionChunker's buffers of chunk steps, one per env, with a cursor each (it sets them, the keys, step shapes and
    dtypes the first chunk since every env was reset fixes, and the merge rule)."""

    def _remaining(self, i: int) -> int:
        buffer = self._buffers[i]
        if buffer is None:
            return 0
        return len(next(iter(buffer.values()))) - self._cursors[i]

    def _forget_actions_when_empty(self) -> None:
        """After a reset: with no env's buffer left (each reset, together or in turn) and no prefetch pending, forget
        the keys, step shapes and dtypes: the next chunk may have others (a server now serving another embodiment)."""
        if self._pending is None and all(buffer is None for buffer in self._buffers):
            self._keys, self._step_shapes, self._step_dtypes = None, {}, {}

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
                raise ActionError(f"action keys changed from {sorted(self._keys)} to {sorted(keys)}; expected the keys of "
                                  f"the earlier chunks{_NEW_ACTIONS}")
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
            _refuse_hidden_values(key, value)
            rows = non_finite_rows(value)
            if rows:  # the last layer before a robot: whatever policy it wraps (a local one checks nothing), no NaN leaves
                raise ActionError(f"action key '{key}' has non-finite values (NaN or inf) in rows {rows}; the chunk was not used")
            step_shape = self._step_shapes.get(key)
            if step_shape is not None and value.shape[2:] != step_shape:
                raise ActionError(
                    f"action key '{key}' has shape {value.shape}, steps of shape {value.shape[2:]}; "
                    f"expected steps of shape {step_shape}, as in the earlier chunks{_NEW_ACTIONS}"
                )
            step_dtype = self._step_dtypes.get(key)
            if step_dtype is not None and value.dtype != step_dtype:  # merged into float steps, int64 rounded them
                raise ActionError(f"action key '{key}' has dtype {value.dtype}; expected {step_dtype}, as in the "
                                  f"earlier chunks{_NEW_ACTIONS}")
            horizon = value.shape[1]
        if self.n_action_steps is not None and horizon is not None and horizon < self.n_action_steps:
            # min(horizon, n_action_steps) asked the policy every `horizon` steps, not every n_action_steps, while a
            # rollout recorded n_action_steps (its chunking "off" refuses such a chunk): another setup than the one set
            raise ActionError(f"action chunk has {horizon} steps, fewer than n_action_steps={self.n_action_steps}: the "
                              f"policy would be asked every {horizon} steps instead of every {self.n_action_steps}; pass "
                              f"n_action_steps={horizon} or fewer (or serve a longer action horizon)")
        if self._keys is None:  # one statement: a Ctrl-C between them left keys without the dtypes a merge looks up
            self._keys, self._step_shapes, self._step_dtypes = (
                keys, {key: action[key].shape[2:] for key in keys}, {key: action[key].dtype for key in keys})
        usable = horizon if self.n_action_steps is None else min(horizon, self.n_action_steps)
        self._usable = usable
        self._warn_rtc_past_overlap()
        # Copies: a policy may reuse its output array for the next (prefetched) chunk while these steps still run.
        return [{key: np.array(action[key][row, :usable]) for key in keys} for row in range(n_rows)]

    def _install(self, env_ids: Sequence[int], action: Any, running: Collection[int] = ()) -> List[int]:
        """Put a fetched chunk in the buffers of `env_ids`; the envs in `running` (asynchronous: envs fetched in
        lockstep with another env's exhausted one, their own chunk still running) merge it by the merge rule instead,
        as a prefetch computed from this step's observation (their steps replaced it outright, and with merge
        "oldest" or RTC a robot jumped at every other env's episode end). With RTC they keep their own chunk: this
        fetch carried no options["rtc"] (the exhausted envs have no steps to continue), so its rows would not join
        the running ones; their next prefetch does. Returns the envs merged."""
        installed = {}
        for i, chunk in zip(env_ids, self._split(action, len(env_ids))):
            if i in running and self._buffers[i] is not None:
                if self.rtc_frozen_steps is None:
                    installed[i] = self._merged(i, chunk, elapsed=0)
            else:
                installed[i] = chunk
        merged = [i for i in installed if i in running and self._buffers[i] is not None]
        self._commit(installed)  # every merge above succeeded: a refused one left every buffer as it was
        self.stats.merged_envs += len(merged)
        return merged

    def _commit(self, buffers: Dict[int, Optional[Dict[str, np.ndarray]]]) -> None:
        """Put each env's new buffer in place, from its first step. The lists are swapped in one statement: a Ctrl-C
        between an env's buffer and its cursor left the new buffer with the old cursor (a step ahead, or IndexError)."""
        new_buffers, cursors = list(self._buffers), list(self._cursors)
        for i, buffer in buffers.items():
            new_buffers[i], cursors[i] = buffer, 0
        self._buffers, self._cursors = new_buffers, cursors

    def _merged(self, i: int, new: Dict[str, np.ndarray], elapsed: int) -> Optional[Dict[str, np.ndarray]]:
        """Env i's buffer with `new` (whose step `elapsed` lines up with its cursor) merged in; the buffers unchanged.
        The merged steps are checked as a policy's chunk is: ActionError naming the key for another kind of dtype (one
        of the key's kind is cast back to it), a masked array or NaN."""
        old = self._buffers[i]
        cursor = self._cursors[i]
        result = {}
        for key, new_steps in new.items():
            new_tail = new_steps[elapsed:]
            old_tail = old[key][cursor:] if old is not None else new_steps[:0]
            n = min(len(old_tail), len(new_tail))
            longer = new_tail if len(new_tail) >= len(old_tail) else old_tail
            if not n:  # nothing overlaps: a merge function is not asked to merge no steps (its float64 () cast ints)
                result[key] = longer.copy()
                continue
            old_overlap = old_tail[:n]
            if callable(self.merge):  # a copy: a function merging in place (old *= 0.3) wrote into the running buffer
                old_overlap = old_overlap.copy()  # before another env's merge was refused ("the chunk was not used")
            try:
                merged = merge_overlap(old_overlap, new_tail[:n], self.merge, self.new_weight)
            except MergeResultError as exc:  # a masked array or another shape: name the key, as the checks below do
                raise ActionError(f"merging the overlap of action key '{key}' ({self.merge!r}): {exc}; the chunk was "
                                  "not used") from exc
            merged = _as_key_dtype(key, merged, self._step_dtypes[key], self.merge)
            if merged.dtype.kind in "fc" and not np.isfinite(merged).all():  # a merge function's, or a rule's overflow
                raise ActionError(f"merging the overlap of action key '{key}' ({self.merge!r}) gave non-finite values "
                                  "(NaN or inf) from finite chunks; the chunk was not used")
            result[key] = np.concatenate([merged, longer[n:]])
        return result if len(next(iter(result.values()))) else None
