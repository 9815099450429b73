"""Env resets and steps with a time limit: a simulator that hangs (a deadlocked renderer, a stuck physics step)
stops the run with the rows and episodes it held, instead of hanging the evaluation for ever.

Only envs in subprocesses (gymnasium's AsyncVectorEnv) can be timed out, from their construction on; an env stepped in
this process is waited for.
"""

from __future__ import annotations

import multiprocessing
from typing import Any, List, Optional, Sequence

from ..extras import require_gymnasium

require_gymnasium("closed-loop rollout")

import gymnasium as gym  # noqa: E402


class EnvStalledError(RuntimeError):
    """An env worker did not answer a reset or step within the rollout's `env_timeout_s`."""


def reset_envs(vec: gym.vector.VectorEnv, timeout_s: Optional[float], episodes: Sequence[int], **kwargs: Any) -> Any:
    """`vec.reset(**kwargs)`, raising EnvStalledError after `timeout_s` (None: no limit)."""
    if timeout_s is None or not isinstance(vec, gym.vector.AsyncVectorEnv):
        return vec.reset(**kwargs)
    vec.reset_async(**kwargs)
    try:
        return vec.reset_wait(timeout=timeout_s)
    except multiprocessing.TimeoutError:
        raise EnvStalledError(_stalled(vec, "reset", timeout_s, episodes)) from None


def step_envs(vec: gym.vector.VectorEnv, action: Any, timeout_s: Optional[float], episodes: Sequence[int]) -> Any:
    """`vec.step(action)`, raising EnvStalledError after `timeout_s` (None: no limit)."""
    if timeout_s is None or not isinstance(vec, gym.vector.AsyncVectorEnv):
        return vec.step(action)
    vec.step_async(action)
    try:
        return vec.step_wait(timeout=timeout_s)
    except multiprocessing.TimeoutError:
        raise EnvStalledError(_stalled(vec, "step", timeout_s, episodes)) from None


def _stalled(vec: gym.vector.AsyncVectorEnv, what: str, timeout_s: float, episodes: Sequence[int]) -> str:
    silent: List[int] = [row for row, pipe in enumerate(getattr(vec, "parent_pipes", [])) if not pipe.poll()]
    held = [f"env {row} (episode {episodes[row]})" if 0 <= episodes[row] else f"env {row}" for row in silent]
    return (f"{', '.join(held) or 'an env'} did not finish a {what} within {timeout_s:g} s (--env-timeout): a hung "
            f"simulator? Its worker processes are stopped; the episodes still running and not yet started did not run")


def construction_stalled(rows: Sequence[int], timeout_s: float) -> str:
    """The error of env workers (`rows`) that did not finish building their envs within `timeout_s`."""
    held = ", ".join(f"env {row}" for row in rows)
    return (f"{held} did not finish building within {timeout_s:g} s (--env-timeout): a hung simulator? The env worker "
            f"processes are stopped; the episodes did not run")
