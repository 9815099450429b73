"""Closed-loop rollout: env registry and adapters, MultiStepWrapper, and the episode-accounting runner.

Names are imported on first use: the settings (`config`) need no simulator, so `gr00t-eval merge` and the shard plans
work without gymnasium; the runner and envs name the `sim` extra in one line when it is missing.
"""

from __future__ import annotations

import importlib
from typing import Any, List

_EXPORTS = {
    "ENV_PREFIX_TO_EMBODIMENT_TAG": ".envs",
    "EnvFactory": ".envs",
    "embodiment_for_env": ".envs",
    "env_factory": ".envs",
    "make_env": ".envs",
    "register_env_prefix": ".envs",
    "EpisodeSummary": ".multistep",
    "MultiStepWrapper": ".multistep",
    "success_from_info": ".multistep",
    "HorizonSpec": ".policy_io",
    "ObservationMapper": ".policy_io",
    "PolicyRowCursor": ".policy_io",
    "RolloutConfig": ".config",
    "RecordedEnvMismatchError": ".replay_recordings",
    "EnvStalledError": ".stalls",
    "EnvWorkerDiedError": ".worker_deaths",
    "RolloutResult": ".result",
    "RolloutRunner": ".runner",
    "run_rollout": ".runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gr00t_eval.rollout' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))
