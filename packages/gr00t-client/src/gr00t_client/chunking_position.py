"""Checks of a policy that advances its own position per call (a replay server): a reply from past one the chunker
never got is refused with PolicyPositionError, and a chunker that would not follow its steps is warned about."""

from __future__ import annotations

import logging
from collections.abc import Mapping  # isinstance with typing.Mapping is twice as slow (hot paths)
from typing import Any, List, Optional

import numpy as np

from .chunking_envs import _is_int
from .policy import ActionError

logger = logging.getLogger("gr00t_client.chunking")  # the ActionChunker's records, whichever of its modules logs them


class PolicyPositionError(ActionError):
    """A policy that advances its own position per call (a replay) reports a later step than the chunker expected: it
    moved on past a reply the chunker never got (a timed-out get_action), so playing on would skip recorded steps."""


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


class _PositionChecks:
    """ActionChunker's checks of an advancing policy's replies (it sets the expected steps and what the policy said)."""

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
