"""Task suites: named task lists, multi-task rollouts (workers per task) and per-task, per-group, overall results.

`--env-name` takes one env name, a comma-separated list, or registered suite names (`metaworld/easy`,
`metaworld-mt10`, ...). Each task runs in turn with its own vector env, created when the task starts and
closed when it ends; episode i of every task uses seed `seed + i` and resets the policy with episode_index i
(a ReplayPolicy serving one task's recording replays its episode i, whichever shard runs it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from gr00t_client import BasePolicy
from gr00t_client.peer_text import shown_text

from .metrics import ERROR_REASON_CHARS, EpisodeOutcome, rollout_aggregates
from .rollout.config import MAX_ENVS, RolloutConfig, env_error_text, split_env_name
from .rollout.liveness import PolicyServerUnreachableError, unanswered_ping_reason
from .run_stop import is_storage_error, take_stop_while_closing
from gr00t_client.usable_cpus import usable_cpu_count

logger = logging.getLogger(__name__)

MAX_AUTO_ENVS = MAX_ENVS
AUTO_ENV_CORE_FRACTION = 0.7


@dataclass(frozen=True)
class Task:
    """One env name and the group its scores are pooled into (a suite's sub-set, or the env prefix)."""

    env_name: str
    group: str


@dataclass(frozen=True)
class Suite:
    """A registered, named list of tasks."""

    name: str
    tasks: Tuple[Task, ...]
    description: str = ""


# Meta-World v3 tasks by difficulty (Seo et al., "Masked World Models for Visual Control", 2022).
METAWORLD_DIFFICULTY: Dict[str, Tuple[str, ...]] = {
    "easy": (
        "button-press", "button-press-topdown", "button-press-topdown-wall", "button-press-wall", "coffee-button",
        "dial-turn", "door-close", "door-lock", "door-open", "door-unlock", "drawer-close", "drawer-open",
        "faucet-close", "faucet-open", "handle-press", "handle-press-side", "handle-pull", "handle-pull-side",
        "lever-pull", "peg-unplug-side", "plate-slide", "plate-slide-back", "plate-slide-back-side",
        "plate-slide-side", "reach", "reach-wall", "window-close", "window-open",
    ),
    "medium": (
        "basketball", "bin-picking", "box-close", "coffee-pull", "coffee-push", "hammer", "peg-insert-side",
        "push-wall", "soccer", "sweep", "sweep-into",
    ),
    "hard": ("assembly", "hand-insert", "pick-out-of-hole", "pick-place", "push", "push-back"),
    "very_hard": ("disassemble", "pick-place-wall", "shelf-place", "stick-pull", "stick-push"),
}
METAWORLD_MT10 = (
    "reach", "push", "pick-place", "door-open", "drawer-open", "drawer-close", "button-press-topdown",
    "peg-insert-side", "window-open", "window-close",
)
METAWORLD_MT3 = ("reach", "push", "pick-place")

_SUITES: Dict[str, Suite] = {}


def _metaworld_group(task: str) -> str:
    return next(level for level, names in METAWORLD_DIFFICULTY.items() if task in names)


def _metaworld_tasks(names: Sequence[str]) -> List[Task]:
    return [Task(f"metaworld/{name}-v3", _metaworld_group(name)) for name in names]


# Why a suite or task name with whitespace around it is refused: --env-name strips each comma-separated name.
_UNREACHABLE = (": --env-name strips the whitespace around each name, so it could never name it (a name read from a "
                "line of a file? strip it)")


def register_suite(name: str, tasks: Sequence[Union[str, Tuple[str, str], Task]], description: str = "", replace: bool = False) -> Suite:
    """Register a suite; a task is an env name (grouped by its prefix), an (env_name, group) pair or a Task, each env
    name once (ValueError naming a repeat and its two groups, or a suite or env name with whitespace around it, which
    --env-name could never give)."""
    if not name or "," in name:
        raise ValueError(f"a suite name must be non-empty and have no ',', got {name!r}")
    if name != name.strip():
        raise ValueError(f"a suite name must have no leading or trailing whitespace, got {name!r}{_UNREACHABLE}")
    if name in _SUITES and not replace:
        raise ValueError(f"suite {name!r} is already registered (pass replace=True to redefine it)")
    if isinstance(tasks, str):  # iterating it would register one task per character
        raise TypeError(f"suite {name!r}: tasks must be a list of env names, got the string {tasks!r} (pass [{tasks!r}])")
    resolved = [_suite_task(name, task) for task in tasks]
    if not resolved:
        raise ValueError(f"suite {name!r} has no tasks")
    groups: Dict[str, str] = {}
    for task in resolved:  # resolve_tasks runs each env name once, so a repeat would be listed but never run
        if task.env_name in groups:
            raise ValueError(f"suite {name!r}: {task.env_name!r} is listed twice (in groups {groups[task.env_name]!r} "
                             f"and {task.group!r}); a rollout runs each env name once, so list it once")
        groups[task.env_name] = task.group
    suite = Suite(name, tuple(resolved), description)
    _SUITES[name] = suite
    return suite


def _suite_task(suite: str, task: Union[str, Tuple[str, str], Task]) -> Task:
    """One task of a suite being registered; ValueError naming the suite and what was given for an empty env name or
    a pair that is not (env_name, group)."""
    if isinstance(task, Task):
        env_name, group = task.env_name, task.group
    elif isinstance(task, str):
        env_name, group = task, split_env_name(task)[0]
    elif isinstance(task, (tuple, list)) and len(task) == 2 and all(isinstance(part, str) for part in task):
        env_name, group = task
    else:
        raise ValueError(f"suite {suite!r}: a task must be an env name, an (env_name, group) pair of strings or a Task, "
                         f"got {task!r}")
    if not env_name.strip() or not group.strip():
        raise ValueError(f"suite {suite!r}: a task needs a non-empty env name and group, got {task!r}")
    if env_name != env_name.strip():
        raise ValueError(f"suite {suite!r}: a task's env name must have no leading or trailing whitespace, got "
                         f"{env_name!r}{_UNREACHABLE}")
    return Task(env_name, group)


def suite_names() -> List[str]:
    """The registered suite names."""
    return sorted(_SUITES)


def get_suite(name: str) -> Suite:
    """A registered suite by name (KeyError naming the known ones)."""
    if name not in _SUITES:
        raise KeyError(f"no suite {name!r}; registered suites: {', '.join(suite_names())}")
    return _SUITES[name]


for _level, _names in METAWORLD_DIFFICULTY.items():
    register_suite(f"metaworld/{_level}", _metaworld_tasks(_names), f"Meta-World v3 {_level} tasks")
register_suite("metaworld-mt50", _metaworld_tasks([n for names in METAWORLD_DIFFICULTY.values() for n in names]),
               "all 50 Meta-World v3 tasks, grouped by difficulty")
register_suite("metaworld-mt10", _metaworld_tasks(METAWORLD_MT10), "Meta-World MT10, grouped by difficulty")
register_suite("metaworld-mt3", _metaworld_tasks(METAWORLD_MT3), "reach, push and pick-place: a quick smoke suite")


def resolve_tasks(env_spec: str) -> Tuple[List[Task], Optional[str]]:
    """`--env-name` -> (tasks in order without duplicates, suite name when the spec is exactly one suite)."""
    items = [item.strip() for item in env_spec.split(",") if item.strip()]
    if not items:
        raise ValueError(f"--env-name must name at least one env or suite, got {env_spec!r}")
    tasks: List[Task] = []
    seen = set()
    for item in items:
        expanded = list(_SUITES[item].tasks) if item in _SUITES else [Task(item, split_env_name(item)[0])]
        for task in expanded:
            if task.env_name not in seen:
                seen.add(task.env_name)
                tasks.append(task)
    suite = items[0] if len(items) == 1 and items[0] in _SUITES else None
    return tasks, suite


def auto_n_envs(episodes_left: int, cores: Optional[int] = None) -> int:
    """`--n-envs 0`: floor(cores * 0.7), capped by the episodes left and by 64; at least 1. `cores` (None: the CPUs this
    process may use, usable_cpu_count: its affinity and cgroup quota, not the machine's cores)."""
    cores = cores if cores is not None else usable_cpu_count()
    return max(1, min(int(math.floor(cores * AUTO_ENV_CORE_FRACTION)), int(episodes_left), MAX_AUTO_ENVS))


def resolve_auto_n_envs(config: RolloutConfig, episodes_left: int, cores: Optional[int] = None) -> RolloutConfig:
    """`config` with an n_envs of 0 (auto) made auto_n_envs(episodes_left, cores), its envs kept in worker processes
    (vectorization "auto" made "async") however few that is: --env-timeout and crash isolation hold for a run of one
    episode, or on a machine of 2 cores, as with any --n-envs > 1."""
    if config.n_envs != 0:
        return config
    vectorization = "async" if config.vectorization == "auto" else config.vectorization
    return dataclasses.replace(config, n_envs=auto_n_envs(episodes_left, cores), vectorization=vectorization)


@dataclass
class TaskRun:
    """The episodes of one task (episode indices are the task's, not the shard's), or why it could not run."""

    task: Task
    episodes: range
    outcomes: List[EpisodeOutcome] = field(default_factory=list)
    eval_s: float = 0.0
    error: Optional[str] = None
    env_stepped: bool = False  # its envs were sent a step (False: it failed while they were built or first reset)


# How a run ended: every planned episode ran, Ctrl-C/SIGTERM stopped it, or the policy server was gone.
COMPLETE, INTERRUPTED, ABORTED = "complete", "interrupted", "aborted"
INCOMPLETE = "incomplete"  # ran to its end, but tasks failed or episodes of the plan did not run (or a merge lacks some)


@dataclass
class SuiteRun:
    """The task runs of a suite and how the run ended (`status`, with `stop_reason` unless complete)."""

    runs: List[TaskRun] = field(default_factory=list)
    status: str = COMPLETE
    stop_reason: Optional[str] = None


def task_video_dir(video_dir: str, env_name: str, several_tasks: bool) -> str:
    """Where a task's episode videos go: `video_dir` itself, or its folder of the task when the run has several
    (the videos are named by the task's episode index: episode_0003_success.mp4)."""
    return os.path.join(video_dir, task_folder_name(env_name)) if several_tasks else video_dir


def task_folder_name(env_name: str) -> str:
    """The name of a task's folder of videos in a run of several tasks: its env name with '/' and '\\' as '__', and
    '.' as '_' in the names '.' and '..' (gymnasium takes both as env ids): never the video folder or its parent."""
    folder = env_name.replace("/", "__").replace("\\", "__")
    return folder.replace(".", "_") if folder in (".", "..") else folder


# Longest file name most file systems take (ext4, APFS, NTFS: 255 bytes or UTF-16 units; bytes are the stricter)
MAX_FOLDER_NAME_BYTES = 255


def check_task_video_dirs(tasks: Sequence[Task]) -> None:
    """ValueError when two tasks would write their videos into one folder ('a/b/c' and 'a/b__c' both go to a__b__c;
    names that differ only in case, or in Unicode normalization, share a folder on case-insensitive file systems and on
    macOS: one_folder_key): each would overwrite the other's episode videos, and delete those of the other outcome.
    Also when a task's folder name cannot be one (too long, or holding NUL), which failed that task only when its turn
    came, after the others had run. A run of one task writes its videos into the video folder itself: no folder name to
    check."""
    seen: Dict[str, str] = {}
    for task in tasks:
        folder = task_folder_name(task.env_name)
        if len(tasks) > 1:
            _check_task_folder_name(task.env_name, folder)
        first = seen.setdefault(one_folder_key(folder), task.env_name)
        if first != task.env_name:
            raise ValueError(f"tasks {first!r} and {task.env_name!r} would write their episode videos into one "
                             f"folder, {task_folder_name(first)!r} under the video folder "
                             f"({why_one_folder(task_folder_name(first), folder)}): run them in separate runs, or pass "
                             "--no-video")


def one_folder_key(name: str) -> str:
    """What file systems that take two names for one folder compare: the name decomposed (NFD; APFS and HFS+ ignore
    Unicode normalization), then case-folded one character to one (simple_case_fold: NTFS, APFS and exFAT fold case so,
    making 'Fast' 'fast' and 'ς' 'σ', but 'straße' not 'strasse', which only str.casefold() makes equal)."""
    return simple_case_fold(unicodedata.normalize("NFD", name))


def simple_case_fold(text: str) -> str:
    """`text` with each character replaced by its Unicode simple case folding (one character for one: 'ς' -> 'σ',
    'µ' -> 'μ', 'ſ' -> 's'), which Python lacks: casefold() where it gives one character, else lower() where that
    does (a character whose full folding is longer, 'ß' -> 'ss', keeps its simple lower case), else the character."""
    return "".join(_one_character_fold(character) for character in text)


def _one_character_fold(character: str) -> str:
    for folded in (character.casefold(), character.lower()):
        if len(folded) == 1:
            return folded
    return character


def why_one_folder(first: str, second: str) -> str:
    """Why two folder names with one one_folder_key are one folder (check_task_video_dirs', batch job names')."""
    if first == second:
        return "a task's folder is its env name with '/' as '__', and '.' or '..' as '_' or '__'"
    if unicodedata.normalize("NFD", first) == unicodedata.normalize("NFD", second):
        return ("their folder names differ only in Unicode normalization (a composed or decomposed accent), one folder "
                "on macOS's APFS and HFS+")
    if simple_case_fold(first) == simple_case_fold(second):
        return "their folder names differ only in case, one folder on case-insensitive file systems (NTFS, APFS, exFAT)"
    return "their folder names differ only in case and Unicode normalization, one folder on macOS's APFS and HFS+"


def _check_task_folder_name(env_name: str, folder: str) -> None:
    if "\0" in folder:
        raise ValueError(f"task {env_name!r} holds a NUL character, which no folder name may: its episode videos "
                         "would go to a folder of its env name; rename the task, or pass --no-video")
    size = len(folder.encode("utf-8", "surrogatepass"))
    if size > MAX_FOLDER_NAME_BYTES:
        shown = env_name if len(env_name) <= 60 else f"{env_name[:60]}..."
        raise ValueError(f"task {shown!r} is too long for the name of its video folder ({size} bytes in "
                         f"UTF-8; a folder name may have at most {MAX_FOLDER_NAME_BYTES}): its episode videos would go "
                         "to a folder of its env name; run it alone (its videos then go to the video folder itself), "
                         "or pass --no-video")


def run_task(policy: BasePolicy, task: Task, config: RolloutConfig, episodes: Optional[range] = None, progress: bool = False,
             on_episode: Optional[Callable[[EpisodeOutcome], None]] = None, done: Sequence[EpisodeOutcome] = (),
             run: Optional[TaskRun] = None, video_subdir: bool = True) -> TaskRun:
    """Run episodes `episodes` (default: all of config.n_episodes) of one task; a task that cannot run is recorded.

    `done` holds outcomes from an earlier, interrupted run: those episodes are kept and not run again.
    PolicyServerUnreachableError and KeyboardInterrupt propagate; the episodes finished by then are in `run`.
    """
    episodes = episodes if episodes is not None else range(config.n_episodes)
    run = run if run is not None else TaskRun(task, episodes)
    kept = _kept_outcomes(done, episodes)
    run.outcomes.extend(kept)
    kept_indices = {o.episode_index for o in kept}  # once: built per episode, a resume of N episodes took O(N^2)
    todo = [i for i in episodes if i not in kept_indices]
    if not todo:
        return run
    video_dir = task_video_dir(config.video_dir, task.env_name, video_subdir) if config.video_dir else config.video_dir
    task_config = dataclasses.replace(  # episode i of the task keeps seed + i and replay episode i in any slice
        resolve_auto_n_envs(config, len(todo)), env_name=task.env_name, n_episodes=len(episodes), video_dir=video_dir,
        first_episode=episodes.start,
    )

    unrecorded: List[BaseException] = []

    def scored(outcome: EpisodeOutcome) -> None:
        outcome.extras = {**outcome.extras, "task": task.env_name, "group": task.group}
        run.outcomes.append(outcome)
        if on_episode is not None:
            try:
                on_episode(outcome)
            except BaseException as exc:
                unrecorded.append(exc)
                raise

    start = time.perf_counter()
    runner: Any = None
    try:
        try:
            from .rollout.runner import RolloutRunner  # the simulator, only when tasks run

            # run_suite checked the served policy against every task before any ran (run_rollout's checks, once a run)
            runner = RolloutRunner(policy, task_config, progress=progress, on_episode=scored, episodes=todo)
            runner.run()
        finally:  # the episodes' time, not the envs' close after them (up to --env-timeout for a hung close)
            ended = getattr(runner, "loop_ended_at", None)
            run.eval_s += (ended if ended is not None else time.perf_counter()) - start
            run.env_stepped = getattr(runner, "env_stepped", False)
    except (PolicyServerUnreachableError, KeyboardInterrupt):
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a task that cannot start (bad env) must not end the suite
        # the run's own files (its log, a video) could not be written (a full disk): the run stops, not only this task;
        if unrecorded or is_storage_error(exc):  # every later task's episodes would be lost the same way
            raise
        reason = env_error_text(exc)
        if isinstance(exc, (EOFError, BrokenPipeError, ConnectionResetError)):  # gymnasium's AsyncVectorEnv pipes
            reason = (f"an env worker process died (its pipe said {type(exc).__name__}: a simulator crash, or the "
                      f"process was killed); the task's episodes still running and not yet started did not run")
        reason = shown_text(reason, ERROR_REASON_CHARS)  # a simulator's XML dump or coloured traceback: one bounded line
        logger.error("task %s failed: %s", shown_text(task.env_name), reason)
        # the whole traceback, for --log-level DEBUG
        logger.debug("task %s failed", shown_text(task.env_name), exc_info=exc)
        run.error = reason
    run.outcomes.sort(key=lambda o: o.episode_index)
    return run


def _kept_outcomes(done: Sequence[EpisodeOutcome], episodes: range) -> List[EpisodeOutcome]:
    """The outcomes of `done` (an earlier attempt's) that a run of `episodes` keeps: those that finished; errored ones
    run again."""
    return [o for o in done if o.episode_index in episodes and o.error is None]


def run_tasks(policy: BasePolicy, tasks: Sequence[Task], config: RolloutConfig, episode_ranges: Optional[Mapping[str, range]] = None,
              progress: bool = False, on_episode: Optional[Callable[[EpisodeOutcome], None]] = None,
              done: Sequence[EpisodeOutcome] = ()) -> SuiteRun:
    """Run each task in turn (only `episode_ranges[task]` when given; tasks missing from it are skipped).

    The policy server is pinged before each task; a server that is gone, or Ctrl-C/SIGTERM, ends the run
    early with status "aborted"/"interrupted" and keeps every episode finished by then, and every one of `done`
    (tasks it did not reach are reported with those, running none). The caller has checked the
    served policy against the tasks (embodiment, replay plan) before any ran, as run_suite does.
    """
    if config.video_dir and len(tasks) > 1:
        check_task_video_dirs(tasks)
    suite_run = SuiteRun()
    done_by_task: Dict[str, List[EpisodeOutcome]] = {}
    for outcome in done:
        done_by_task.setdefault(str(outcome.extras.get("task")), []).append(outcome)
    if take_stop_while_closing():  # a Ctrl-C at the teardown of the process's run before (complete): this one does
        raise KeyboardInterrupt("a stop signal while the envs of the run before closed")  # not start
    for position, task in enumerate(tasks):
        episodes = range(config.n_episodes) if episode_ranges is None else episode_ranges.get(task.env_name, range(0))
        if len(episodes) == 0:
            continue
        run = TaskRun(task, episodes)
        suite_run.runs.append(run)
        task_done = done_by_task.get(task.env_name, ())
        if suite_run.status != COMPLETE:  # stopped at an earlier task: this one's kept episodes still count
            run.outcomes.extend(_kept_outcomes(task_done, episodes))
            continue
        try:
            if take_stop_while_closing():  # a Ctrl-C at the last task's teardown (its episodes were all scored)
                raise KeyboardInterrupt("a stop signal while the envs of the task before closed")
            gone = unanswered_ping_reason(policy, f"task {shown_text(task.env_name)}") if position else None
            if gone is not None:
                raise PolicyServerUnreachableError(f"{gone}; stopping the run (finished episodes are kept)")
            logger.info("task %s: episodes %d..%d", shown_text(task.env_name), episodes.start, episodes.stop - 1)
            run_task(policy, task, config, episodes, progress=progress, on_episode=on_episode,
                     done=task_done, run=run, video_subdir=len(tasks) > 1)
        except PolicyServerUnreachableError as exc:
            logger.error("%s", exc)
            suite_run.status, suite_run.stop_reason = ABORTED, str(exc)
        except KeyboardInterrupt:
            logger.warning("interrupted during task %s; keeping the finished episodes", shown_text(task.env_name))
            suite_run.status, suite_run.stop_reason = INTERRUPTED, "interrupted (SIGINT, SIGTERM or SIGHUP)"
        if suite_run.status != COMPLETE:  # a stop before run_task kept them (the ping) leaves them out of `run`
            held = {o.episode_index for o in run.outcomes}
            run.outcomes.extend(o for o in _kept_outcomes(task_done, episodes) if o.episode_index not in held)
            run.outcomes.sort(key=lambda o: o.episode_index)
    return suite_run


def outcome_from_json(entry: Mapping[str, Any]) -> EpisodeOutcome:
    """Rebuild an EpisodeOutcome from a per_episode entry of results.json (for merging shards and resuming)."""
    return EpisodeOutcome.from_json_dict(entry)


def _config_snapshot(config: RolloutConfig) -> Dict[str, Any]:
    return dataclasses.asdict(config)


def suite_results(tasks: Sequence[Task], runs: Sequence[TaskRun], config: Union[RolloutConfig, Mapping[str, Any]], env_spec: str,
                  suite: Optional[str] = None, extra: Optional[Mapping[str, Any]] = None, status: str = COMPLETE,
                  stop_reason: Optional[str] = None) -> Dict[str, Any]:
    """results.json of a multi-task run: per_episode (with task, group), per_task, per_group and overall aggregates.

    Aggregates pool the episodes that finished without an error (episode-weighted; errored episodes are
    counted in `n_errors` only); eval_s of a group or overall is the sum of its tasks' eval_s.
    `overall.avg_task_pc_success` is the plain mean of the pc_success of the `n_tasks_averaged` tasks that scored an
    episode. `aggregated` repeats `overall`.
    """
    by_task: Dict[str, List[TaskRun]] = {}
    for run in runs:
        by_task.setdefault(run.task.env_name, []).append(run)
    per_task: Dict[str, Dict[str, Any]] = {}
    group_outcomes: Dict[str, List[EpisodeOutcome]] = {}
    group_eval_s: Dict[str, float] = {}
    all_outcomes: List[EpisodeOutcome] = []
    errors: Dict[str, str] = {}
    for task in tasks:
        task_runs = by_task.get(task.env_name, [])
        outcomes = sorted((o for r in task_runs for o in r.outcomes), key=lambda o: o.episode_index)
        eval_s = sum(r.eval_s for r in task_runs)
        entry = {"group": task.group, **rollout_aggregates(outcomes, eval_s)}
        task_errors = [r.error for r in task_runs if r.error]
        if task_errors:
            entry["error"] = "; ".join(task_errors)
            errors[task.env_name] = entry["error"]
        per_task[task.env_name] = entry
        group_outcomes.setdefault(task.group, []).extend(outcomes)
        group_eval_s[task.group] = group_eval_s.get(task.group, 0.0) + eval_s
        all_outcomes.extend(outcomes)
    total_s = sum(group_eval_s.values())
    overall = rollout_aggregates(all_outcomes, total_s)
    scored = [v["pc_success"] for v in per_task.values() if v["n_episodes"]]
    overall["avg_task_pc_success"] = sum(scored) / len(scored) if scored else float("nan")
    overall["n_tasks_averaged"] = len(scored)  # a task whose every episode errored has no rate to average
    overall["n_tasks"] = len(tasks)
    overall["n_failed_tasks"] = len(errors)
    n_not_run = int((extra or {}).get("n_not_run") or 0)
    if status == COMPLETE and (errors or n_not_run):  # the files, not only the console, say the plan did not all run
        status = INCOMPLETE
        failed = f"{len(errors)} of {len(tasks)} tasks failed ({', '.join(map(shown_text, errors))})" if errors else ""
        stop_reason = "; ".join(part for part in (failed, f"{n_not_run} episodes did not run" if n_not_run else "") if part)
    snapshot = config if isinstance(config, Mapping) else _config_snapshot(config)
    results: Dict[str, Any] = {
        "kind": "rollout",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": status,
        "stop_reason": stop_reason,
        "metrics_over": "the episodes that finished without an error (n_episodes); errored ones are counted in n_errors",
        "env_name": env_spec,
        "suite": suite,
        "tasks": [{"env_name": t.env_name, "group": t.group} for t in tasks],
        "config": dict(snapshot),
        "per_episode": [o.to_json_dict() for o in all_outcomes],
        "per_task": per_task,
        "per_group": {group: rollout_aggregates(group_outcomes[group], group_eval_s[group]) for group in group_outcomes},
        "overall": overall,
        "aggregated": overall,
        "failed_tasks": errors,
        "video_paths": [o.video_path for o in all_outcomes if o.video_path],
    }
    results.update(extra or {})
    return results
