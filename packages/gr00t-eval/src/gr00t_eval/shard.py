"""Episode sharding (`rollout --shard i/N`) and merging shard results into what one run would report.

The work list is every (task, episode) pair in task order; shard i of N takes the contiguous slice
[floor(i*M/N), floor((i+1)*M/N)) of its M items, so a shard touches few tasks (few env start-ups) and
every episode keeps its index, its seed `seed + episode_index` and the policy reset's `episode_index` (the
recorded episode a ReplayPolicy plays) whichever shard runs it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from gr00t_client import BasePolicy, PolicyClient
from gr00t_client.client_options import endpoint_host

from .applied_settings import settings_not_applied
from .extras import require
from .metrics import EpisodeOutcome
from .policy_identity import (check_serves_env_embodiments, describe, pins_checkpoint, policy_record, runtime_difference,
                              same_policy, serves_replay, unpinned_shards_text)
from .rollout.config import (RolloutConfig, check_on_episode, check_policy, check_rollout_config, draw_base_seed,
                             is_whole_number, simulator_extras, without_unkept_env_timeout)
from .rollout.replay_plan import check_replay_horizon
from .suites import (INCOMPLETE, Task, TaskRun, outcome_from_json, resolve_auto_n_envs, resolve_tasks, run_tasks,
                     suite_results)

logger = logging.getLogger(__name__)




class MergeError(ValueError):
    """Shard results that cannot be merged: different plans, overlapping or missing episodes."""


@dataclass(frozen=True)
class ShardSpec:
    """Shard `index` (0-based) of `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        # ShardSpec(True, 2) ran as shard 1/2 and recorded [True, 2], which merge refuses; a float failed in run_suite
        for name in ("index", "count"):
            value = getattr(self, name)
            if not is_whole_number(value):
                raise ValueError(f"shard {name} must be a whole number, got {type(value).__name__} {value!r}")
            object.__setattr__(self, name, int(value))
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"--shard must be i/N with N >= 1 and 0 <= i < N (0-based), got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> "ShardSpec":
        """'i/N' -> ShardSpec(i, N)."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_ranges(tasks: Sequence[Task], n_episodes: int, shard: ShardSpec) -> Dict[str, range]:
    """The episode range of each task that `shard` runs (tasks it does not touch are left out)."""
    total = len(tasks) * n_episodes
    start, stop = shard.index * total // shard.count, (shard.index + 1) * total // shard.count
    ranges: Dict[str, range] = {}
    for position, task in enumerate(tasks):
        first, last = max(start, position * n_episodes), min(stop, (position + 1) * n_episodes)
        if first < last:
            ranges[task.env_name] = range(first - position * n_episodes, last - position * n_episodes)
    return ranges


# The RolloutConfig fields that change what an episode does (the control loop included), beside tasks, counts and seed.
OUTCOME_SETTINGS = ("n_action_steps", "max_episode_steps", "terminate_on_success", "env_kwargs", "client_chunking",
                    "chunk_merge", "rtc_frozen_steps")
# Client chunking modes in which one row's chunk is re-planned when any row starts an episode or uses its chunk up:
# there n_envs changes what an episode does too.
ROW_COUPLED_CHUNKING = ("sync", "async")


def outcome_settings(config: RolloutConfig) -> Dict[str, Any]:
    """The settings of `config` that change an episode's outcome: OUTCOME_SETTINGS, plus n_envs under sync or async
    client chunking."""
    settings = {name: getattr(config, name) for name in OUTCOME_SETTINGS}
    if config.client_chunking in ROW_COUPLED_CHUNKING:
        settings["n_envs"] = config.n_envs
    return settings


def resolve_shard_n_envs(config: RolloutConfig, shard: Optional[ShardSpec]) -> RolloutConfig:
    """A shard's n_envs of 0 (auto) resolved once, from the plan's episodes per task and the CPUs it may use, so that
    its plan records the number it runs with: under sync or async client chunking merge holds shards to it."""
    if shard is None or config.n_envs != 0:
        return config
    resolved = resolve_auto_n_envs(config, config.n_episodes)
    logger.info("--n-envs 0: shard %s runs %d envs per task (recorded in its plan and kept by --resume)", shard,
                resolved.n_envs)
    return resolved


def task_pairs(tasks: Sequence[Task]) -> List[List[str]]:
    """The [env_name, group] of each task in order: how a plan (results.json) and a run file record its tasks."""
    return [[t.env_name, t.group] for t in tasks]


def planned_task_pairs(env_spec: str) -> List[List[str]]:
    """task_pairs of the tasks `env_spec` (env names and/or suites) resolves to now: what a run file records at its
    start, and what a resume or a batch job compares that record with."""
    return task_pairs(resolve_tasks(env_spec)[0])


def shard_plan(tasks: Sequence[Task], config: RolloutConfig, shard: Optional[ShardSpec]) -> Dict[str, Any]:
    """What a results file records so that merge can check its shards belong together."""
    return {
        "tasks": task_pairs(tasks),
        "n_episodes": int(config.n_episodes),
        "seed": config.seed,
        "settings": outcome_settings(config),
        "shard": None if shard is None else [shard.index, shard.count],
    }


def recorded_settings(results: Mapping[str, Any]) -> Dict[str, Any]:
    """The outcome settings `results` ran with: its plan's, and each its plan does not record from its `config` (a
    gr00t-eval of 2026-11-21 to 12-01 wrote client_chunking, chunk_merge and rtc_frozen_steps there only), or at
    RolloutConfig's default where its config lacks it too (written before the setting existed). A setting with no
    config to read it from is left out: not recorded, so merge refuses it beside a shard that records it."""
    settings = dict(results["plan"].get("settings") or {})
    config = results.get("config")
    if not isinstance(config, Mapping):
        return settings
    default_config = dataclasses.asdict(RolloutConfig(env_name=""))
    for name in OUTCOME_SETTINGS:
        settings.setdefault(name, config.get(name, default_config[name]))
    if settings["client_chunking"] in ROW_COUPLED_CHUNKING and "n_envs" in config:
        settings.setdefault("n_envs", config["n_envs"])
    return settings


# The run's --env-import, --env-prefix and --env-adapter values (rollout_args._registrations), as its plan records them.
REGISTRATIONS = ("env_import", "env_prefix", "env_adapter")


def recorded_registrations(plan: Mapping[str, Any]) -> Dict[str, list]:
    """The env registrations a plan records, none for each it does not (a results file written before they were
    recorded ran without any, as far as anything shows)."""
    recorded = plan.get("registrations") or {}
    return {name: list(recorded.get(name) or []) for name in REGISTRATIONS}


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_results_shape(results: Mapping[str, Any]) -> None:
    """MergeError naming the first field of `results` that merge reads and that is not what a run writes there (a
    hand-edited or damaged file: an entry without its task, a plan without n_episodes, per_task a list, ...)."""
    plan = results.get("plan")
    if plan is None:
        raise MergeError("results have no 'plan' (only results of `rollout --shard` or gr00t-eval suites can be merged)")
    if not isinstance(plan, dict):
        raise MergeError(f"'plan' is a {type(plan).__name__}, expected an object with tasks, n_episodes and seed")
    for name in ("tasks", "n_episodes", "seed"):
        if name not in plan:
            raise MergeError(f"'plan' has no {name!r} (a run writes tasks, n_episodes, seed, settings and shard)")
    tasks = plan["tasks"]
    if not isinstance(tasks, list) or not all(
            isinstance(t, list) and len(t) == 2 and all(isinstance(part, str) for part in t) for t in tasks):
        raise MergeError(f"'plan.tasks' is {tasks!r}, expected a list of [env_name, group] pairs of strings")
    if not _is_index(plan["n_episodes"]) or plan["n_episodes"] < 0:
        raise MergeError(f"'plan.n_episodes' is {plan['n_episodes']!r}, expected a whole number >= 0")
    if plan["seed"] is not None and not _is_index(plan["seed"]):
        raise MergeError(f"'plan.seed' is {plan['seed']!r}, expected a whole number or null")
    if not isinstance(plan.get("settings") or {}, dict):
        raise MergeError(f"'plan.settings' is {plan['settings']!r}, expected an object of setting names and values")
    shard = plan.get("shard")
    if shard is not None:
        try:
            valid = isinstance(shard, list) and len(shard) == 2 and all(map(_is_index, shard)) and ShardSpec(*shard)
        except ValueError:
            valid = False
        if not valid:
            raise MergeError(f"'plan.shard' is {shard!r}, expected null or [index, count] with 0 <= index < count")
    registrations = plan.get("registrations")
    if registrations is not None and not (isinstance(registrations, dict) and all(
            isinstance(registrations.get(name) or [], list) for name in REGISTRATIONS)):
        raise MergeError(f"'plan.registrations' is {json.dumps(registrations)[:80]}, expected null or an object of "
                         "env_import, env_prefix and env_adapter lists")
    try:
        _registered_envs(plan)
    except ValueError as exc:
        raise MergeError(f"'plan.registrations': {exc}") from None
    for name, expected, nullable in (("per_episode", list, False), ("per_task", dict, False), ("policy", dict, True),
                                     ("config", dict, True), ("settings_not_applied", dict, True)):
        value = results.get(name)
        if name in results and not isinstance(value, expected) and not (nullable and value is None):
            raise MergeError(f"'{name}' is {json.dumps(value)[:80]}, expected "
                             f"{'a list' if expected is list else 'an object'}{' or null' if nullable else ''}")
    for position, entry in enumerate(results.get("per_episode") or []):
        if not isinstance(entry, dict):
            raise MergeError(f"per_episode[{position}] is {entry!r}, expected an object with task and episode_index")
        if not isinstance(entry.get("task"), str):
            raise MergeError(f"per_episode[{position}] has task {entry.get('task')!r}, expected the env name it ran")
        if not _is_index(entry.get("episode_index")):
            raise MergeError(f"per_episode[{position}] ({entry['task']}) has episode_index "
                             f"{entry.get('episode_index')!r}, expected a whole number")
    for task, entry in (results.get("per_task") or {}).items():
        if not isinstance(entry, dict):
            raise MergeError(f"per_task[{task!r}] is {entry!r}, expected an object of that task's aggregates")
    for field in ("missing_episodes", "not_run_episodes"):  # a merge's, which a merge of it reads
        names = results.get(field, [])
        if not isinstance(names, list) or not all(map(_is_episode_name, names)):
            raise MergeError(f"'{field}' is {json.dumps(names)[:80]}, expected a list of 'TASK#EPISODE_INDEX' names")


def _plan_key(results: Mapping[str, Any]) -> Tuple[Any, ...]:
    _check_results_shape(results)
    plan = results["plan"]
    settings = json.dumps(recorded_settings(results), sort_keys=True)
    registrations = json.dumps(_registered_envs(plan), sort_keys=True)
    return (tuple(tuple(t) for t in plan["tasks"]), plan["n_episodes"], plan["seed"], settings, registrations)


_MISSING = object()


def plan_difference(first: Mapping[str, Any], other: Mapping[str, Any], first_name: str = "the first") -> str:
    """What differs between two results' plans, e.g. "setting client_chunking 'async' ('off' in the first)", for
    MergeError messages (`first_name`: how they name `first`)."""
    a, b = first["plan"], other["plan"]
    for name in ("tasks", "n_episodes", "seed"):
        if a.get(name) != b.get(name):
            return f"{name} {b.get(name)!r} ({a.get(name)!r} in {first_name})"
    settings_a, settings_b = recorded_settings(first), recorded_settings(other)
    for name in sorted(set(settings_a) | set(settings_b)):
        value_a, value_b = settings_a.get(name, _MISSING), settings_b.get(name, _MISSING)
        if value_a != value_b:
            shown_a = _NOT_RECORDED if value_a is _MISSING else repr(value_a)
            shown_b = _NOT_RECORDED if value_b is _MISSING else repr(value_b)
            why = (f"; with client_chunking {settings_a.get('client_chunking')!r} the number of envs changes what "
                   f"an episode does{_AUTO_N_ENVS_UNKNOWN if 0 in (value_a, value_b) else ''}" if name == "n_envs" else "")
            return f"setting {name} {shown_b} ({shown_a} in {first_name}{why})"
    if _registered_envs(a) != _registered_envs(b):  # one env name, two envs: a built-in and an adapter
        from .rollout_args import _recorded_registration_flags

        flags_a, flags_b = (_NOT_RECORDED if plan.get("registrations") is None
                            else _recorded_registration_flags(plan).strip() or "none" for plan in (a, b))
        # an older shard may have run with the same flags: what it ran is unknown, not "none"
        older = (f"; rerun {first_name if flags_a == _NOT_RECORDED else 'this shard'} with this "
                 "gr00t-eval and the --env-import/--env-prefix/--env-adapter flags it was run with"
                 if _NOT_RECORDED in (flags_a, flags_b) else "")
        return f"env registrations {flags_b} ({flags_a} in {first_name}: the same env names may be other envs){older}"
    return "the plan"


def evaluation_difference(earlier: Mapping[str, Any], later: Mapping[str, Any], earlier_name: str) -> Optional[str]:
    """What makes `later` (results) another evaluation than `earlier`: its plan (plan_difference) or its policy (both
    recorded, other fingerprints); None for the same one. `earlier_name` names `earlier` in the answer."""
    try:
        earlier_key = _plan_key(earlier)
    except MergeError as exc:
        return f"{earlier_name} records no plan to compare ({exc})"
    if earlier_key != _plan_key(later):
        return plan_difference(earlier, later, earlier_name)
    if not same_policy(earlier.get("policy"), later.get("policy")):
        return f"policy {describe(later.get('policy'))} ({describe(earlier.get('policy'))} in {earlier_name})"
    return None


_NOT_RECORDED = "not recorded (written by an older gr00t-eval)"


def _registered_envs(plan: Mapping[str, Any]) -> Dict[str, Any]:
    """What a plan's recorded registrations register (rollout_args.registered_envs): flags given in another order, or
    repeated, register the same envs; a plan recording none, or written before they were recorded, registers none."""
    from .rollout_args import registered_envs

    return registered_envs(recorded_registrations(plan))


# n_envs 0 in a plan: a shard of an earlier gr00t-eval, which resolved --n-envs 0 per task and recorded 0.
_AUTO_N_ENVS_UNKNOWN = "; 0 is --n-envs auto recorded by an earlier gr00t-eval, not the number that shard ran with"


def _warn_of_unknown_n_envs(settings: Mapping[str, Any], label: Sequence[str]) -> None:
    """Shards of one plan that record n_envs 0 under sync or async client chunking ran with numbers of envs that
    nothing recorded: they merge (each may have run with another number), with a warning that says so."""
    if len(label) > 1 and settings.get("n_envs") == 0:
        logger.warning("%s record n_envs 0 (--n-envs auto, by an earlier gr00t-eval), not the number of envs each "
                       "ran with; with client_chunking %r that number changes what an episode does, so nothing checks "
                       "that these shards ran alike (rerun them with one --n-envs to be sure)", ", ".join(label),
                       settings.get("client_chunking"))


def format_missing(missing: Sequence[str], shown: int = 10) -> str:
    """'task#0, task#1 and 5 more': the first `shown` missing episodes of a merge and how many others."""
    more = len(missing) - shown
    return ", ".join(missing[:shown]) + (f" and {more} more" if more > 0 else "")


def _results_list(shards: Any) -> List[Mapping[str, Any]]:
    """`shards` (any iterable, read once) as a list of results dicts; TypeError naming `shards` for a path or another
    non-dict (paths failed with "'PosixPath' object has no attribute 'get'", one dict with KeyError: 0)."""
    if isinstance(shards, Mapping):
        raise TypeError("shards must be a list of results dicts (as load_results returns), got one results dict; "
                        "pass [results]")
    if isinstance(shards, (str, bytes, Path)) or not isinstance(shards, Iterable):
        raise TypeError(f"shards must be a list of results dicts (as load_results returns), got "
                        f"{type(shards).__name__} {shards!r}")
    shards = list(shards)
    for position, results in enumerate(shards):
        if not isinstance(results, Mapping):
            hint = " - read it with load_results" if isinstance(results, (str, Path)) else ""
            raise TypeError(f"shards[{position}] must be a results dict (as load_results returns), got "
                            f"{type(results).__name__} {str(results)[:200]!r}{hint}")
    return shards


def merge_results(shards: Iterable[Mapping[str, Any]], allow_missing: bool = False,
                  names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Combine shard results into the results one run of the whole plan reports (timings are summed).

    `shards`: results dicts (any iterable; files are read with load_results), TypeError otherwise.
    Raises MergeError when the shards ran different plans, repeat an episode, or (unless allow_missing)
    leave episodes out; `names` (e.g. the file names) label the shards in those messages. Episodes in no
    file are listed in `missing_episodes` and counted in `n_not_run`, and make the status "incomplete" (or
    a shard's "interrupted"/"aborted"). Per-episode `env_index` is the shard's worker row and may differ from
    a single run.
    """
    shards = _results_list(shards)
    if not isinstance(allow_missing, (bool, np.bool_)):  # "no" is true to Python: an incomplete merge was returned
        raise TypeError(f"allow_missing must be a bool (True or False), got {type(allow_missing).__name__} "
                        f"{allow_missing!r}")
    if not shards:
        raise MergeError("nothing to merge: no results given")
    if names is not None and len(names) != len(shards):
        raise MergeError(f"names has {len(names)} entries for {len(shards)} results; give one name per results")
    label = list(names) if names is not None else [f"results #{i}" for i in range(len(shards))]
    try:
        key = _plan_key(shards[0])
    except MergeError as exc:
        raise MergeError(f"{label[0]}: {exc}") from None
    for position, results in enumerate(shards[1:], start=1):
        try:
            other = _plan_key(results)
        except MergeError as exc:
            raise MergeError(f"{label[position]}: {exc}") from None
        if other != key:
            raise MergeError(f"{label[position]} ran a different plan than {label[0]}: "
                             f"{plan_difference(shards[0], results)}; only shards of one plan merge")
    _warn_of_unknown_n_envs(recorded_settings(shards[0]), label)
    policies = [(label[i], results.get("policy")) for i, results in enumerate(shards) if results.get("policy")]
    # a shard that scored no episode (a Ray shard that never reached its server) adds nothing to check
    unrecorded = [label[i] for i, results in enumerate(shards)
                  if not results.get("policy") and results.get("per_episode")]
    if policies and unrecorded:
        logger.warning("%s record no policy (an older gr00t-eval, or a server that did not say): nothing checks that "
                       "they ran the policy of %s", ", ".join(unrecorded), policies[0][0])
    unpinned = [name for name, policy in policies if not pins_checkpoint(policy)]
    if len(policies) > 1 and unpinned:
        logger.warning("%s", unpinned_shards_text(unpinned))
    for index, (name, policy) in enumerate(policies):  # every pair: a record without identity matches both of
        for first_name, first in policies[:index]:  # two checkpoints that are not the same as each other
            if same_policy(first, policy):
                continue
            computed = runtime_difference(policy, first, "in that shard", f"in {first_name}")
            if computed is not None:  # one checkpoint: "rerun against the same checkpoint" would not say what to do
                raise MergeError(f"{name} was run against {first_name}'s policy computed otherwise: {computed[0]}; "
                                 f"{describe(policy)}, not {describe(first)}; only shards of one policy merge (rerun "
                                 f"that shard against a server started with {computed[1]})")
            raise MergeError(f"{name} was run against another policy than {first_name}: {describe(policy)}, not "
                             f"{describe(first)}; only shards of one policy merge (rerun that shard against "
                             "the same checkpoint or dataset)")
    _check_each_shard_once(shards, label)
    task_pairs, n_episodes, seed, _, _ = key
    tasks = [Task(env_name, group) for env_name, group in task_pairs]
    plan_tasks = [task.env_name for task in tasks]
    seen: Dict[Tuple[str, int], int] = {}
    runs: List[TaskRun] = []
    for position, results in enumerate(shards):
        per_task = results.get("per_task") or {}
        planned = _planned_ranges(tasks, n_episodes, results)
        outcomes_by_task: Dict[str, list] = {}
        for entry in results.get("per_episode") or []:
            pair = (entry["task"], int(entry["episode_index"]))
            if pair[0] not in plan_tasks:
                raise MergeError(f"{label[position]}: per_episode has episode {pair[1]} of {pair[0]}, a task not in "
                                 f"the plan (tasks {', '.join(plan_tasks)}); a hand-edited or mixed-up results file?")
            if pair[1] not in planned.get(pair[0], ()):
                raise MergeError(f"{label[position]}: per_episode has episode {pair[1]} of {pair[0]}, which is not "
                                 f"in {_planned_part(results, planned)}; a hand-edited or mixed-up results file?")
            if pair in seen:
                raise MergeError(f"episode {pair[1]} of {pair[0]} is in both {label[seen[pair]]} and {label[position]}")
            seen[pair] = position
            outcomes_by_task.setdefault(entry["task"], []).append(outcome_from_json(entry))
        for task in tasks:
            entry = per_task.get(task.env_name)
            if entry is None and task.env_name not in outcomes_by_task:
                continue
            outcomes = outcomes_by_task.get(task.env_name, [])
            run = TaskRun(task, range(0), outcomes, float((entry or {}).get("eval_s") or 0.0), (entry or {}).get("error"))
            runs.append(run)
    # A task that failed (its env would not build, ...) in the shard that planned it did not run those episodes,
    # as in a single run: they are counted in n_not_run (the error is in failed_tasks), not missing from the merge.
    not_run_by_failed_task = {pair for results in shards
                              for pair in _not_run_by_failed_task(tasks, n_episodes, results) if pair not in seen}
    missing = [f"{t.env_name}#{i}" for t in tasks for i in range(n_episodes)
               if (t.env_name, i) not in seen and (t.env_name, i) not in not_run_by_failed_task]
    # a merged input's status holds while an episode it lacks is still lacking; a shard's holds for its own file
    unfinished = [position for position, results in enumerate(shards)
                  if results.get("status", "complete") != "complete"
                  and ("merged_from" not in results or _lacks_any(results, tasks, n_episodes, seen))]
    if missing and not allow_missing:
        stopped = [_stopped_shard_hint(label[i], shards[i], missing=missing) for i in unfinished
                   if shards[i].get("status") in ("interrupted", "aborted") or "merged_from" in shards[i]]
        cause = "; ".join(stopped) if stopped else "is a shard missing or failed?"
        raise MergeError(f"{len(missing)} episodes are in no results file: {format_missing(missing)} ({cause})")
    first = shards[0]
    config = dict(first.get("config") or {})
    config.pop("shard", None)
    extra = {
        "plan": {**shards[0]["plan"], "settings": recorded_settings(shards[0]), "shard": None},
        "merged_from": [results.get("plan", {}).get("shard") for results in shards],
        "missing_episodes": missing,
        # the episodes of the shards whose task failed: what a merge of this merge counts as not run (not the plan's)
        "not_run_episodes": [f"{t.env_name}#{i}" for t in tasks for i in range(n_episodes)
                             if (t.env_name, i) in not_run_by_failed_task],
        "n_not_run": len(missing) + len(not_run_by_failed_task),  # as a single run counts the episodes it never ran
        # a run whose envs stepped ran, though no episode ended: rollout reports it (results, --resume), no usage error
        "envs_stepped": any(bool(results.get("envs_stepped")) for results in shards),
        "policy": _fullest(record for _, record in policies),
        "merged_servers": [_server_of(results) for results in shards],
        # a setting one shard's server ignored was not applied to all the merged episodes either
        "settings_not_applied": {name: value for results in shards
                                 for name, value in (results.get("settings_not_applied") or {}).items()},
    }
    statuses = [shards[i].get("status") for i in unfinished]
    # A merge with episodes in no file is no complete run, even when every shard given completed.
    status = next((s for s in ("interrupted", "aborted") if s in statuses), INCOMPLETE if missing else "complete")
    # an incomplete shard (a task failed: an env worker killed, ...) or a merge is named with the commands that rerun
    # what it lacks (a merge's own reason counted episodes this merge may hold)
    reasons = [_stopped_shard_hint(label[i], r, missing=missing)
               if r.get("status") == INCOMPLETE or "merged_from" in r else f"{label[i]}: {r.get('stop_reason')}"
               for i, r in ((i, shards[i]) for i in unfinished)]
    if missing:
        reasons.append(f"{len(missing)} episodes are in no results file (merged with --allow-missing)")
    # a merge with every episode is complete: its inputs' reasons (a partial merge merged again) no longer hold
    merged = suite_results(tasks, runs, config, first.get("env_name", ""), first.get("suite"), extra, status,
                           "; ".join(reasons) if status != "complete" else None)
    if status == "complete" and merged["status"] == INCOMPLETE:  # its reason counts the merge's failed tasks and
        # episodes not run: the shards' would repeat it
        resumes = [_stopped_shard_hint(label[i], shards[i], with_reason=False, missing=missing) for i in unfinished]
        merged["stop_reason"] = "; ".join([merged["stop_reason"], *resumes])
    return merged


def _fullest(policies: Iterable[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    """Of matching policy records, the one that names the most (the first of equals): an identity over none, a runtime
    over none, then more identity hashes; a later resume or merge against the merged results is held to it."""
    def named(record: Mapping[str, Any]) -> Tuple[bool, bool, int]:
        identity = record.get("identity")
        return bool(identity), bool(record.get("runtime")), len(identity) if isinstance(identity, Mapping) else 0

    return max(policies, key=named, default=None)


def _planned_ranges(tasks: Sequence[Task], n_episodes: int, results: Mapping[str, Any]) -> Dict[str, range]:
    """The episodes of each task that `results` planned: its shard's slice, or every episode of a whole run."""
    shard = results["plan"].get("shard")
    return (shard_ranges(tasks, n_episodes, ShardSpec(*shard)) if shard
            else {t.env_name: range(n_episodes) for t in tasks})


def _episode_key(name: str) -> Tuple[str, int]:
    """'walkto/slow#4' (as missing_episodes and not_run_episodes name an episode) -> ('walkto/slow', 4)."""
    task, hash_mark, index = name.rpartition("#")
    if not hash_mark or not task:
        raise ValueError(f"{name!r} is not TASK#EPISODE_INDEX")
    return task, int(index)


def _is_episode_name(name: Any) -> bool:
    try:
        return isinstance(name, str) and _episode_key(name) is not None
    except ValueError:
        return False


def _not_run_by_failed_task(tasks: Sequence[Task], n_episodes: int, results: Mapping[str, Any]) -> Set[Tuple[str, int]]:
    """The (task, episode) pairs `results` did not run because their task failed: a merge's `not_run_episodes` (those
    of its shards whose task failed), or every planned episode of each failed task (a shard's slice; the whole plan for
    a merge of an earlier gr00t-eval, which recorded none: read as it was)."""
    if "not_run_episodes" in results:
        return set(map(_episode_key, results["not_run_episodes"]))
    ranges = _planned_ranges(tasks, n_episodes, results)
    return {(task, i) for task, entry in (results.get("per_task") or {}).items()
            if entry.get("error") and task in ranges for i in ranges[task]}


def _lacks_any(results: Mapping[str, Any], tasks: Sequence[Task], n_episodes: int,
               present: Set[Tuple[str, int]]) -> bool:
    """Whether an episode of the plan that `results` (a merge) does not hold is still not among `present`."""
    held = {(entry["task"], int(entry["episode_index"])) for entry in results.get("per_episode") or []}
    return any((t.env_name, i) not in held and (t.env_name, i) not in present
               for t in tasks for i in range(n_episodes))


def _shards_held(results: Mapping[str, Any], label: str) -> List[Tuple[Tuple[int, int], str, str]]:
    """((index, count), where, file) of each shard `results` brings to a merge: a shard's own file ('as LABEL'), or
    each shard a merge's `merged_from` records ('in LABEL (merged from FILE)'); a whole run brings none."""
    if "merged_from" not in results:
        shard = results["plan"].get("shard")
        return [((shard[0], shard[1]), f"as {label}", label)] if shard else []
    paths = _merged_paths(results)
    held = []
    for position, spec in enumerate(_merged_specs(results)):
        if spec is None:
            continue
        path = paths[position] if position < len(paths) else None
        held.append(((spec.index, spec.count), f"in {label} (merged from {path or 'a file it does not name'})", path))
    return held


def _check_each_shard_once(shards: Sequence[Mapping[str, Any]], label: Sequence[str]) -> None:
    """MergeError naming both places when a shard that a merged input holds reaches the merge again (as its own file,
    a resumed one say, or in another merge): its episodes, failed tasks and time would count from both."""
    held = [(position, *shard) for position, results in enumerate(shards)
            for shard in _shards_held(results, label[position])]
    where: Dict[Tuple[int, int], Tuple[int, str]] = {}
    for position, spec, place, _ in held:
        earlier = where.setdefault(spec, (position, place))
        if earlier[0] != position and "merged_from" in shards[earlier[0]].keys() | shards[position].keys():
            raise MergeError(f"shard {ShardSpec(*spec)} reaches this merge twice: {earlier[1]} and {place}; give each "
                             f"shard once: merge the shards' own results files{_merge_hint([h[3] for h in held])}, "
                             "not a merge of some of them beside one of them")


def _merge_hint(files: Sequence[Optional[str]]) -> str:
    """' (gr00t-eval merge FOLDER ...)' of the folders of the shard results files `files` (none known: '')."""
    folders = sorted({str(shard_folder(str(file))) for file in files if file and str(file).endswith(".json")})
    return f" (gr00t-eval merge {' '.join(folders)})" if folders else ""


def _planned_part(results: Mapping[str, Any], planned: Mapping[str, range]) -> str:
    """'shard 1/2's episodes (metaworld/reach-v3 2..3)' or 'the plan's episodes (...)', for MergeError messages."""
    shard = results["plan"].get("shard")
    owner = f"shard {ShardSpec(*shard)}'s" if shard else "the plan's"
    return f"{owner} episodes ({', '.join(f'{name} {r.start}..{r.stop - 1}' for name, r in planned.items()) or 'none'})"


def _server_of(results: Mapping[str, Any]) -> Optional[str]:
    """HOST:PORT of the server a shard ran against: a CLI shard's connection flags, or a Ray shard's `policy_server`."""
    config = results.get("config") or {}
    host, port = config.get("policy_client_host"), config.get("policy_client_port")
    if host is None and port is None:
        return config.get("policy_server")
    return f"{endpoint_host(host) if isinstance(host, str) else host}:{port}"  # '[::1]:5555', as a Ray shard says it


def results_from_outcomes(env_spec: str, config: RolloutConfig, shard: Optional[ShardSpec],
                          outcomes: Sequence[EpisodeOutcome], status: str = "complete",
                          stop_reason: Optional[str] = None) -> Dict[str, Any]:
    """The results a run (or shard) that produced `outcomes` reports, built without running anything.

    For shards a Ray run did not need to start (every episode finished earlier) or that it lost part-way;
    episodes of the plan that are not in `outcomes` are counted in `n_not_run`.
    """
    tasks, suite = resolve_tasks(env_spec)
    ranges = (shard_ranges(tasks, config.n_episodes, shard) if shard is not None
              else {t.env_name: range(config.n_episodes) for t in tasks})
    by_task: Dict[str, List[EpisodeOutcome]] = {}
    for outcome in outcomes:
        by_task.setdefault(str(outcome.extras.get("task")), []).append(outcome)
    runs = []
    for task in tasks:
        episodes = ranges.get(task.env_name)
        if episodes is None:
            continue
        kept = sorted((o for o in by_task.get(task.env_name, []) if o.episode_index in episodes), key=lambda o: o.episode_index)
        runs.append(TaskRun(task, episodes, kept))
    snapshot = {**dataclasses.asdict(config), "env_name": env_spec, "shard": None if shard is None else str(shard)}
    extra = {"plan": shard_plan(tasks, config, shard),
             "n_not_run": sum(len(r) for r in ranges.values()) - sum(len(run.outcomes) for run in runs)}
    return suite_results(tasks, runs, snapshot, env_spec, suite, extra, status, stop_reason)


def run_suite(policy: BasePolicy, env_spec: str, config: RolloutConfig, shard: Optional[ShardSpec] = None,
              progress: bool = False, on_episode: Optional[Callable[[EpisodeOutcome], None]] = None,
              done: Sequence[EpisodeOutcome] = ()) -> Dict[str, Any]:
    """Run `env_spec` (env names and/or suites) with `policy`, all episodes or one shard; return results.json.

    Without a seed a random base seed is drawn once and recorded. `done` holds the outcomes of an earlier,
    interrupted run (episodes.jsonl): they are kept and not run again (ValueError for one given twice, of a task not in
    the plan or of another group, or of another seed or max_episode_steps: _checked_done). Each new outcome goes to `on_episode`
    as it finishes. `status` is "complete", "interrupted" (Ctrl-C/SIGTERM) or "aborted" (server gone).
    Each task's episodes are numbered from 0 (a shard's slice comes from `shard`), so config.first_episode must be 0.
    The results record the served `policy` (policy_record), which merge_results holds every shard to.
    """
    check_policy(policy)
    check_rollout_config(config, auto_n_envs=True)
    check_on_episode(on_episode)
    config = without_unkept_env_timeout(config)  # envs in this process keep no default timeout: recorded as None
    config = resolve_shard_n_envs(config, shard)
    if config.first_episode != 0:  # the plan, shards, merge and resume all count each task's episodes from 0
        raise ValueError(f"run_suite runs each task's episodes 0 .. n_episodes - 1 and takes a slice only with shard=; "
                         f"RolloutConfig.first_episode must be 0, got {config.first_episode} (run_rollout runs one env "
                         f"from another episode)")
    require("gymnasium", simulator_extras(env_spec), "closed-loop rollout")  # the extra of these envs, not both
    tasks, suite = resolve_tasks(env_spec)
    served = policy_record(policy)
    check_serves_env_embodiments(served, [task.env_name for task in tasks])
    check_replay_horizon(served, config)
    ranges = None
    if shard is not None:
        if config.seed is None:
            raise ValueError("--shard needs --seed: every episode's seed must be fixed for shards to merge into one run")
        ranges = shard_ranges(tasks, config.n_episodes, shard)
        logger.info("shard %s runs %s", shard, {k: f"{r.start}..{r.stop - 1}" for k, r in ranges.items()})
    seed_given = config.seed is not None
    if config.seed is None:
        config = dataclasses.replace(config, seed=draw_base_seed())
        logger.info("no --seed given: drew base seed %d (episode i uses seed %d + i)", config.seed, config.seed)
    done = _checked_done(done, config, seeds_known(served, policy), seed_given, tasks)
    suite_run = run_tasks(policy, tasks, config, ranges, progress=progress, on_episode=on_episode, done=done)
    snapshot = {**dataclasses.asdict(config), "env_name": env_spec, "shard": None if shard is None else str(shard)}
    planned = sum(len(r) for r in ranges.values()) if ranges is not None else len(tasks) * config.n_episodes
    extra = {"plan": shard_plan(tasks, config, shard),
             "n_not_run": planned - sum(len(r.outcomes) for r in suite_run.runs),
             "envs_stepped": any(r.env_stepped for r in suite_run.runs),
             "policy": served,  # merge refuses shards of another checkpoint or dataset by it
             "settings_not_applied": settings_not_applied(policy, {"rtc_frozen_steps": config.rtc_frozen_steps})}
    return suite_results(tasks, suite_run.runs, snapshot, env_spec, suite, extra, suite_run.status, suite_run.stop_reason)


def seeds_known(served: Optional[Mapping[str, Any]], policy: Any = None) -> bool:
    """True when the episodes' seeds are the run's (base seed + index): a policy whose record (policy_record) says
    it is no replay, or a served one (a PolicyClient; Ray shards' servers) whose server cannot say. A replay's
    recorded seeds differ by design, and a policy in this process without a record may be one
    (Gr00tSimPolicyWrapper(ReplayPolicy))."""
    if serves_replay(served):
        return False
    return served is not None or policy is None or isinstance(policy, PolicyClient)


def _checked_done(done: Iterable[EpisodeOutcome], config: RolloutConfig, check_seeds: bool,
                  seed_given: bool, tasks: Sequence[Task]) -> List[EpisodeOutcome]:
    """`done` as a list; ValueError naming `done` for outcomes this run cannot keep as its own: an episode given twice
    (counted twice in the metrics), one of a task not in `tasks` (dropped without a word) or of another group (pooled
    under a group its record does not name), or one longer than max_episode_steps or, when `check_seeds`
    (seeds_known), of another seed (another plan's). They were kept, and results.json said the new settings."""
    done = list(done)
    seen: Set[Tuple[str, int]] = set()
    groups = {task.env_name: task.group for task in tasks}
    for outcome in done:
        key = (str(outcome.extras.get("task")), outcome.episode_index)
        if key in seen:
            raise ValueError(f"done has episode {key[1]} of {key[0]} twice; give each episode's outcome once (the "
                             "latest, as episodes.jsonl's latest_entries are)")
        seen.add(key)
        _check_done_task(outcome, groups)
        if outcome.error is not None:  # run again, not kept
            continue
        if check_seeds and not seed_given:
            raise ValueError("done needs config.seed, the base seed of the run its outcomes came from (without one "
                             "this run draws another, and its episodes' seeds differ from theirs)")
        if check_seeds and outcome.seed != config.seed_for(outcome.episode_index):
            raise ValueError(f"done has episode {outcome.episode_index} of {key[0]} with seed {outcome.seed}, but this "
                             f"run gives it seed {config.seed_for(outcome.episode_index)} (config.seed {config.seed} + "
                             "episode index): it is another run's outcome; resume with that run's seed")
        if outcome.length > config.max_episode_steps:
            raise ValueError(f"done has episode {outcome.episode_index} of {key[0]} of length {outcome.length}, more "
                             f"than this run's max_episode_steps {config.max_episode_steps}: it ran under other "
                             "settings; resume with that run's settings")
    return done


def _check_done_task(outcome: EpisodeOutcome, groups: Mapping[str, str]) -> None:
    """ValueError when a `done` outcome's task is not one of the plan's ({env_name: group}) or its group is another."""
    outside = outside_plan(outcome, groups)
    if outside is not None:
        changed = "tasks" if outcome.extras.get("task") not in groups else "groups"
        raise ValueError(f"done has {outside}: it is another plan's outcome; resume with the {changed} that run "
                         "started with")


def outside_plan(outcome: EpisodeOutcome, groups: Mapping[str, str]) -> Optional[str]:
    """How an episode's outcome is not the plan's ({env_name: group}): 'episode I of TASK, a task this run's plan does
    not hold ...' or '... in group G, but this run's plan puts that task in group H'; None when its task is the plan's
    (and its group, where it records one)."""
    task, group = outcome.extras.get("task"), outcome.extras.get("group")
    if task not in groups:
        return (f"episode {outcome.episode_index} of {task!r}, a task this run's plan does not hold (its tasks: "
                f"{', '.join(map(repr, groups))})")
    if group is not None and group != groups[task]:
        return (f"episode {outcome.episode_index} of {task!r} in group {group!r}, but this run's plan puts that task "
                f"in group {groups[task]!r}")
    return None


def _stopped_shard_hint(label: str, results: Mapping[str, Any], with_reason: bool = True,
                        missing: Optional[Sequence[str]] = None) -> str:
    """'<label> is an interrupted run (<reason>): continue it with gr00t-eval rollout --resume DIR --shard I/N' (or an
    aborted or incomplete run; without '(<reason>)' unless `with_reason`). For a merge's output: _merged_remedies."""
    from .rollout_args import _recorded_registration_flags
    from .run_resume import resume_command

    if "merged_from" in results:  # a merge's folder holds no run to resume: its shards' folders do
        return f"{label} is an {results.get('status')} merge: {_merged_remedies(results, missing)}"
    reason = f" ({results.get('stop_reason') or 'no reason recorded'})" if with_reason else ""
    shard = (results.get("plan") or {}).get("shard")
    spec = ShardSpec(*shard) if shard else None
    flags = _recorded_registration_flags(results.get("plan") or {})  # a resume is held to the shard's own
    resume = (f": continue it with {resume_command(shard_folder(label), spec)}{flags}" if label.endswith(".json")
              else "")
    return f"{label} is an {results.get('status')} run{reason}{resume}"


def _merged_remedies(merge: Mapping[str, Any], missing: Optional[Sequence[str]]) -> str:
    """What completes `merge` (a merge's results): continue its own shards that lack episodes, run the shards it lacks
    while their episodes are still among `missing` (the new merge's; None: unknown), and merge again: the merge with
    the missing shards' results, or, once one of its shards is continued, the shards' own files (a merge takes each
    shard once, and this merge holds the one continued)."""
    resumes = _merged_shard_resumes(merge)
    absent = _missing_shards_text(merge)
    still_missing = missing is None or bool(set(merge.get("missing_episodes") or ()) & set(missing))
    if not resumes:
        return f"merge it again with the missing shards' results{absent}"
    paths = _merged_paths(merge)
    run_missing = [f"run the missing shards{absent}"] if still_missing else []
    return ", and ".join([*resumes, *run_missing, f"merge the shards' own results files{_merge_hint(paths)}, each "
                          "once (not this merge beside them)"])


def _merged_shard_resumes(merge: Mapping[str, Any]) -> List[str]:
    """'continue its shard FILE with gr00t-eval rollout --resume DIR --shard I/N' for each shard of `merge` (a merge's
    results) whose own results lack episodes (a failed task's, or a stopped run's: in its `not_run_episodes` or
    `missing_episodes`; a merge of an earlier gr00t-eval, which recorded no not_run_episodes: each shard that planned
    episodes of a failed task), found by the path the merge recorded for it."""
    from .rollout_args import _recorded_registration_flags
    from .run_resume import resume_command

    plan = merge.get("plan") or {}
    tasks = [Task(env_name, group) for env_name, group in plan.get("tasks") or []]
    flags = _recorded_registration_flags(plan)  # a resume is held to the shard's own
    resumes = []
    paths = _merged_paths(merge)
    for spec, path in zip(_merged_specs(merge), paths):
        if spec is not None and _shard_lacks(merge, shard_ranges(tasks, plan.get("n_episodes") or 0, spec)):
            resumes.append(f"continue its shard {path} with {resume_command(shard_folder(path), spec)}{flags}")
    return resumes


def _merged_paths(merge: Mapping[str, Any]) -> List[str]:
    """The results files `merge` merged, by position as its merged_from: absolute; an older merge's as given."""
    return merge.get("merged_paths") or merge.get("merged_files") or []


def _merged_specs(merge: Mapping[str, Any]) -> List[Optional[ShardSpec]]:
    """The ShardSpec of each results file `merge` merged, None for a whole run or a hand-edited record."""
    specs = []
    for shard in merge.get("merged_from") or []:
        try:
            specs.append(ShardSpec(*shard))
        except (TypeError, ValueError):
            specs.append(None)
    return specs


def _shard_lacks(merge: Mapping[str, Any], ranges: Mapping[str, range]) -> bool:
    """Whether the shard that planned `ranges` lacks episodes in `merge`: one of them is among its not_run_episodes or
    missing_episodes, or, for a merge that recorded no not_run_episodes (an earlier gr00t-eval), its task failed."""
    if "not_run_episodes" not in merge:
        failed = {name for name, entry in (merge.get("per_task") or {}).items()
                  if isinstance(entry, dict) and entry.get("error")}
        return bool(failed & set(ranges))
    lacking = set(map(_episode_key, [*merge["not_run_episodes"], *(merge.get("missing_episodes") or [])]))
    return any((task, i) in lacking for task, episodes in ranges.items() for i in episodes)


def _missing_shards_text(merge: Mapping[str, Any]) -> str:
    """' (shard 1/5)' or ' (shards 1/5, 3/5)': the shards of `merge`'s split that it did not merge and whose episodes
    it lacks; '' when its shards are of several splits, or none is known."""
    specs = [spec for spec in _merged_specs(merge) if spec is not None]
    counts = {spec.count for spec in specs}
    if len(counts) != 1 or "not_run_episodes" not in merge:
        return ""
    count, merged = counts.pop(), {spec.index for spec in specs}
    plan = merge.get("plan") or {}
    tasks = [Task(env_name, group) for env_name, group in plan.get("tasks") or []]
    absent = [str(ShardSpec(index, count)) for index in range(count) if index not in merged
              and _shard_lacks(merge, shard_ranges(tasks, plan.get("n_episodes") or 0, ShardSpec(index, count)))]
    return f" (shard{'s' if len(absent) > 1 else ''} {', '.join(absent)})" if absent else ""


def shard_folder(path: str) -> Path:
    """The folder a shard's file (its results or run file) really lives in, where a resume must run: a symbolic link
    to the file (a folder of links to each node's shard files) is followed; the path is kept as given otherwise."""
    file = Path(path)
    return (file.resolve() if file.is_symlink() else file).parent
