"""Checks of a policy that advances its own position per call (a replay server): a reply from past one the chunker
never got is refused with PolicyPositionError, and a chunker that would not follow its steps is warned about."""

from __future__ import annotations

import logging
from collections.abc import Mapping  # isinstance with typing.Mapping is twice as slow (hot paths)
from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np

from .chunking_envs import _is_int
from .policy import ActionError

logger = logging.getLogger("gr00t_client.chunking")  # the ActionChunker's records, whichever of its modules logs them


class PolicyPositionError(ActionError):
    """A policy that advances its own position per call (a replay) reports a later step than the chunker expected: it
    moved on past a reply the chunker never got (a timed-out get_action), so playing on would skip recorded steps."""


def _reported_ints(info: Any, key: str) -> Optional[List[int]]:
    """The per-row ints a policy's info reports under `key` (one int for every row, or a list), or None."""
    values = info.get(key) if isinstance(info, Mapping) else None
    values = list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
    return [int(v) for v in values] if values and all(_is_int(v) for v in values) else None


def _reported_steps(info: Any) -> Optional[List[int]]:
    """The per-row `current_step` a policy's info reports (a replay's position before the call), or None."""
    return _reported_ints(info, "current_step")


def _tiled(values: Optional[List[int]], n_rows: int) -> Optional[List[int]]:
    """`values` for `n_rows` rows: one value is every row's (a replay with one cursor for the batch), else as given."""
    return values * n_rows if values is not None and len(values) == 1 else values


def _past_episode_end(info: Any, steps: List[int]) -> bool:
    """Whether a row reports a step at or past its `episode_length`, where a replay may stop advancing."""
    lengths = _tiled(_reported_ints(info, "episode_length"), len(steps))
    return lengths is not None and any(step >= length for step, length in zip(steps, lengths))


def _chunk_steps(action: Any) -> Optional[int]:
    """The number of steps of a reply's action chunk {key: (B, H, ...)}, or None."""
    first = next(iter(action.values()), None) if isinstance(action, Mapping) else None
    return int(np.shape(first)[1]) if first is not None and np.ndim(first) >= 2 else None


def _skipped_steps_error(row: int, expected: int, reported: int, basis: str) -> str:
    """Why a reply reporting step `reported` for env row `row`, where `expected` (`basis`) was due, is not played."""
    return (f"the policy reports current_step {reported} for env row {row}; expected {expected} ({basis}): it moved "
            f"on past a reply this chunker never got (a timed-out or lost get_action), so recorded steps "
            f"{expected}..{reported - 1} would be skipped; the chunk was not used. Reset the env and the policy "
            "together (chunker.reset()) to go on")


@dataclass(frozen=True)
class _Reply:
    """An advancing policy's last reply to a request of every env: its rows' steps and episodes, and the steps the
    chunker had executed when it came."""

    steps: List[int]
    episodes: Optional[List[int]]
    executed: int


class _PositionChecks:
    """ActionChunker's checks of an advancing policy's replies (it sets the expected steps and why they are due, the last
    reply, whether a request was lost since, the horizon inferred and what the policy said)."""

    def _check_position(self, info: Any, n_rows: int) -> None:
        """Refuse a reply of a policy that advances its own position (a replay: `current_step` in its info) from past
        its last reply's step plus its execution_horizon: a reply was lost. A policy whose info has no
        `execution_horizon` (the reference's replay) has it inferred from two consecutive replies.

        A step behind it (the policy reset elsewhere, or a restarted server) is taken as the new position: the caller
        that moved it checks it (gr00t-eval rollout does)."""
        reported = _tiled(_reported_steps(info), n_rows)
        if reported is None or n_rows != self._n_envs or len(reported) != n_rows:
            # no position, or some envs alone (per_env: a replay re-tiles its rows)
            self._expected_steps = self._last_reply = None
            return
        expected = _tiled(self._expected_steps, n_rows)
        if expected is not None and len(expected) == n_rows:  # left as it was: every later reply is refused too
            self._refuse_skipped(expected, reported, self._expected_basis)
        served = info.get("execution_horizon")
        if _is_int(served):
            horizon, basis = int(served), f"its last reply's step + execution_horizon {int(served)}"
        else:  # the policy does not say it: what its replies showed (not its own execution_horizon)
            horizon = self._inferred_horizon
            if horizon is None:
                horizon = self._infer_horizon(info, reported)
            basis = f"its last reply's step + inferred advance {horizon}"
        self._reply_lost = False
        self._last_reply = _Reply(reported, _reported_ints(info, "episode_index"), self._executed_steps())
        self._expected_steps = None if horizon is None else [step + horizon for step in reported]
        self._expected_basis = basis

    def _infer_horizon(self, info: Any, reported: List[int]) -> Optional[int]:
        """The steps a policy reporting `current_step` but no `execution_horizon` advances per call: the same advance
        of every row between two consecutive replies of one episode (no reset between them), warned about as the
        policy's own execution_horizon is. A reply after a lost request is refused instead when it skips steps."""
        last = self._last_reply
        if last is None or last.episodes != _reported_ints(info, "episode_index"):
            return None
        if self._reply_lost:  # the lost request may have advanced the policy: its advance says nothing
            executed = self._executed_steps() - last.executed
            if not self.asynchronous:
                self._refuse_skipped([step + executed for step in last.steps], reported,
                                     f"its last reply's step + the {executed} steps executed since")
            return None
        if _past_episode_end(info, reported):  # a replay may stop there, or advance less
            return None
        advances = {step - was for step, was in zip(reported, last.steps)}
        if len(advances) != 1 or min(advances) < 1:
            return None
        self._inferred_horizon = advances.pop()
        self._warn_advance_mismatch(self._inferred_horizon, self._usable,
                                    f"its current_step advanced {self._inferred_horizon} between two calls")
        return self._inferred_horizon

    def _refuse_skipped(self, expected: List[int], reported: List[int], basis: str) -> None:
        """PolicyPositionError for the first row reporting a later step than `expected` (`basis` says why due)."""
        for row, (want, got) in enumerate(zip(expected, reported)):
            if got > want:
                raise PolicyPositionError(_skipped_steps_error(row, want, got, basis))

    def _executed_steps(self) -> int:
        """Steps executed so far (every env takes one per get_action, so env 0's count is every env's)."""
        return self._steps_taken[0] if self._steps_taken else 0

    def _check_policy_advance(self, result: Any) -> None:
        """Warn once when the policy says it advances `execution_horizon` steps per call (a replay server does: each
        call returns the chunk from where the last one left off) and this chunker executes another number of steps
        per chunk, or prefetches: the robot would replay steps twice or skip them, with no error anywhere."""
        info = result[1] if isinstance(result, (tuple, list)) and len(result) == 2 else None
        served = info.get("execution_horizon") if isinstance(info, Mapping) else None
        if _is_int(served) and served >= 1:
            self._warn_advance_mismatch(int(served), _chunk_steps(result[0]), "its info's execution_horizon")

    def _warn_advance_mismatch(self, served: int, chunk: Optional[int], source: str) -> None:
        """Warn when this chunker cannot follow a policy advancing `served` steps per call (`source` says how that is
        known), executing another number of the `chunk` steps, or prefetching. Checked once per server and episode
        (the horizon is then checked); the same warning is not given again after a reset."""
        self._horizon_checked = True
        self._advancing_policy = True
        steps = self.n_action_steps if self.n_action_steps is not None else chunk
        if self.asynchronous:
            warning = (f"the policy advances {served} steps per call ({source}: a replay server), but this "
                       "ActionChunker prefetches, so its calls do not follow the steps executed: steps will repeat or "
                       f"be skipped; use asynchronous=False and n_action_steps={served}")
        elif self.per_env and (self._n_envs or 0) > 1:
            warning = (f"the policy advances {served} steps per call ({source}: a replay server, one cursor per "
                       "session), but this ActionChunker fetches some envs at a time (per_env=True): the envs take "
                       "turns at the one cursor and skip steps; use per_env=False")
        elif steps is not None and steps != served:
            # A server horizon of `steps` is only a way out where the chunk holds that many steps
            serve_with = f" (or serve with --execution-horizon {steps})" if chunk is None or steps <= chunk else ""
            warning = (f"the policy advances {served} steps per call ({source}: a replay server), but this "
                       f"ActionChunker executes {steps} steps of each chunk: steps will "
                       f"{'repeat' if steps > served else 'be skipped'}; pass n_action_steps={served}{serve_with}")
        else:
            return
        if warning != self._advance_warning:
            self._advance_warning = warning
            logger.warning("%s", warning)
