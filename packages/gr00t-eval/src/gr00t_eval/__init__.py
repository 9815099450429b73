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
    # errors the API raises that callers catch (docs/evaluation.md names them)
    "MissingExtraError": ".extras",
    "OutputDirError": ".output_files",
    "OutputFolderGone": ".run_stop",
    "RecordedEnvMismatchError": ".rollout.replay_recordings",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

# `Name as Name`: an explicit re-export, which a type checker needs to let users import the name from here (mypy
# --strict's no_implicit_reexport rejected `from <package> import <name>`); __all__ is not a literal.
if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .batch import Job as Job, JobError as JobError, load_jobs as load_jobs, run_batch as run_batch
    from .dataset import (DatasetError as DatasetError, DatasetFileNotFoundError as DatasetFileNotFoundError,
                          DatasetModality as DatasetModality, DatasetWriter as DatasetWriter, Episode as Episode,
                          LeRobotDataset as LeRobotDataset)
    from .metrics import (ActionErrors as ActionErrors, EpisodeOutcome as EpisodeOutcome,
                          action_errors as action_errors, rollout_aggregates as rollout_aggregates)
    from .open_loop import (OpenLoopConfig as OpenLoopConfig, OpenLoopResult as OpenLoopResult,
                            TrajectoryResult as TrajectoryResult, evaluate_open_loop as evaluate_open_loop)
    from .extras import MissingExtraError as MissingExtraError
    from .output_files import OutputDirError as OutputDirError
    from .ray_runner import run_with_ray as run_with_ray
    from .record import RecordSummary as RecordSummary, record_metaworld as record_metaworld
    from .results import (RESULTS_FILENAME as RESULTS_FILENAME, load_results as load_results,
                          write_results as write_results)
    from .rollout.replay_recordings import RecordedEnvMismatchError as RecordedEnvMismatchError
    from .run_stop import OutputFolderGone as OutputFolderGone
    from .rollout import (ENV_PREFIX_TO_EMBODIMENT_TAG as ENV_PREFIX_TO_EMBODIMENT_TAG,
                          EpisodeSummary as EpisodeSummary, MultiStepWrapper as MultiStepWrapper,
                          RolloutConfig as RolloutConfig, RolloutResult as RolloutResult,
                          RolloutRunner as RolloutRunner, embodiment_for_env as embodiment_for_env,
                          make_env as make_env, register_env_prefix as register_env_prefix, run_rollout as run_rollout)
    from .shard import (MergeError as MergeError, ShardSpec as ShardSpec, merge_results as merge_results,
                        run_suite as run_suite)
    from .suites import (Suite as Suite, Task as Task, get_suite as get_suite, register_suite as register_suite,
                         resolve_tasks as resolve_tasks, suite_names as suite_names)


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
