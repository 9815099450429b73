"""gr00t-eval: open-loop and closed-loop evaluation of GR00T policy servers.

The public API is exported here and loaded on first use (PEP 562), so `import gr00t_eval` stays cheap:
it imports no simulator, no Ray, no video or parquet library and never torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

__version__ = "0.1.0"

# Public name -> the module (relative to this package) that defines it.
_EXPORTS: Dict[str, str] = {
    # LeRobot datasets
    "DatasetError": ".dataset",
    "DatasetFileNotFoundError": ".dataset",
    "DatasetModality": ".dataset",
    "DatasetWriter": ".dataset",
    "Episode": ".dataset",
    "LeRobotDataset": ".dataset",
    # open-loop
    "OpenLoopConfig": ".open_loop",
    "OpenLoopResult": ".open_loop",
    "TrajectoryResult": ".open_loop",
    "evaluate_open_loop": ".open_loop",
    # closed-loop rollout
    "ENV_PREFIX_TO_EMBODIMENT_TAG": ".rollout",
    "EpisodeSummary": ".rollout",
    "MultiStepWrapper": ".rollout",
    "RolloutConfig": ".rollout",
    "RolloutResult": ".rollout",
    "RolloutRunner": ".rollout",
    "embodiment_for_env": ".rollout",
    "make_env": ".rollout",
    "register_env_prefix": ".rollout",
    "run_rollout": ".rollout",
    # Meta-World expert recording
    "RecordSummary": ".record",
    "record_metaworld": ".record",
    # metrics and results files
    "ActionErrors": ".metrics",
    "EpisodeOutcome": ".metrics",
    "action_errors": ".metrics",
    "rollout_aggregates": ".metrics",
    "RESULTS_FILENAME": ".results",
    "load_results": ".results",
    "write_results": ".results",
    # suites, shards, batch jobs and Ray
    "Suite": ".suites",
    "Task": ".suites",
    "get_suite": ".suites",
    "register_suite": ".suites",
    "resolve_tasks": ".suites",
    "suite_names": ".suites",
    "MergeError": ".shard",
    "ShardSpec": ".shard",
    "merge_results": ".shard",
    "run_suite": ".shard",
    "Job": ".batch",
    "JobError": ".batch",
    "load_jobs": ".batch",
    "run_batch": ".batch",
    "run_with_ray": ".ray_runner",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .batch import Job, JobError, load_jobs, run_batch
    from .dataset import DatasetError, DatasetFileNotFoundError, DatasetModality, DatasetWriter, Episode, LeRobotDataset
    from .metrics import ActionErrors, EpisodeOutcome, action_errors, rollout_aggregates
    from .open_loop import OpenLoopConfig, OpenLoopResult, TrajectoryResult, evaluate_open_loop
    from .ray_runner import run_with_ray
    from .record import RecordSummary, record_metaworld
    from .results import RESULTS_FILENAME, load_results, write_results
    from .rollout import (ENV_PREFIX_TO_EMBODIMENT_TAG, EpisodeSummary, MultiStepWrapper, RolloutConfig, RolloutResult,
                          RolloutRunner, embodiment_for_env, make_env, register_env_prefix, run_rollout)
    from .shard import MergeError, ShardSpec, merge_results, run_suite
    from .suites import Suite, Task, get_suite, register_suite, resolve_tasks, suite_names


def __getattr__(name: str) -> Any:
    """Import the module defining a public name on first access (keeps `import gr00t_eval` light)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gr00t_eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))
