"""`rollout --resume`: the command that continues a run, the settings it keeps from the run file (a command line
changing them is refused), and the eval_s of its earlier attempts."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Union

from .episode_log import ATTEMPT_KEY, ATTEMPT_S_KEY
from .output_files import results_file_name

logger = logging.getLogger(__name__)

ATTEMPTS_KEY = "attempts"  # a results file: the episode-log attempts its eval_s covers (earlier_eval_s)
TASKS_KEY = "tasks"  # a run file: the [env_name, group] of each task its --env-name resolved to at its start


def command_path(directory: Union[str, Path]) -> str:
    """`directory` as one shell word that argparse reads as a value: quoted, and a relative name starting with '-'
    (which argparse takes for an option) given as ./-name."""
    text = str(directory)
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def resume_command(directory: Union[str, Path], shard: Any = None) -> str:
    """'gr00t-eval rollout --resume DIR [--shard I/N]': what the messages about an unfinished run tell the user to
    type, pasteable into a shell (`shard`: a ShardSpec, or anything whose str() is I/N; None for a whole run)."""
    return f"gr00t-eval rollout --resume {command_path(directory)}{'' if shard is None else f' --shard {shard}'}"


# rollout flag (dest) -> the run.json config field it sets; --env-name is run.json's env_name.
RESUMED_SETTINGS = {
    "n_episodes": "n_episodes", "n_envs": "n_envs", "n_action_steps": "n_action_steps",
    "max_episode_steps": "max_episode_steps", "seed": "seed", "env_kwargs": "env_kwargs", "video_dir": "video_dir",
    "vectorization": "vectorization", "client_chunking": "client_chunking", "chunk_merge": "chunk_merge",
    "rtc_frozen_steps": "rtc_frozen_steps", "max_episodes_rendered": "max_episodes_rendered",
}
FLAG_NAMES = {"env_kwargs": "--env-kwarg", "no_video": "--no-video"}


def _flag_name(dest: str) -> str:
    return FLAG_NAMES.get(dest, "--" + dest.replace("_", "-"))


def given_settings(args: argparse.Namespace) -> Set[str]:
    """The rollout flags this command line set: `args.given_flags` (cli.main records them), else those that
    differ from the parser's defaults."""
    given = getattr(args, "given_flags", None)
    if given is not None:
        return set(given)
    from .cli import build_parser, subcommand_parsers

    rollout = subcommand_parsers(build_parser())["rollout"]
    return {dest for dest in [*RESUMED_SETTINGS, "env_name", "no_video", "output_dir", "overwrite"]
            if getattr(args, dest, None) != rollout.get_default(dest)}


def refuse_changed_settings(args: argparse.Namespace, saved: Mapping[str, Any]) -> None:
    """UsageError when a `--resume DIR` command line sets a run setting other than the one saved in DIR's run.json.

    A resumed run continues with its saved settings (they decide every episode's outcome and seed); flags that
    would change them were silently dropped before. Connection and --ray-* flags come from the resuming command
    line; its --env-import/prefix/adapter flags must be those the run file records (they decide which env an env
    name is).
    """
    from .cli_errors import UsageError

    _refuse_changed_registrations(args, saved)
    _refuse_changed_tasks(args, saved)
    given = given_settings(args)
    config = saved.get("config", {})
    conflicts = []
    if "env_name" in given and args.env_name != saved.get("env_name"):
        conflicts.append(f"--env-name {args.env_name} (saved: {saved.get('env_name')})")
    for dest, field_name in RESUMED_SETTINGS.items():
        if dest not in given:
            continue
        value = dict(args.env_kwargs) if dest == "env_kwargs" else getattr(args, dest)
        if dest == "video_dir" and value is not None and config.get(field_name) is not None:
            if os.path.realpath(value) == os.path.realpath(config[field_name]):  # saved absolute; given as typed
                continue
        if value != config.get(field_name) and not _resolved_for_shard(saved, dest, value):
            conflicts.append(f"{_flag_name(dest)} {value} (saved: {config.get(field_name)})")
    if "no_video" in given and args.no_video and config.get("video_dir") is not None:
        conflicts.append(f"--no-video (saved: videos in {config.get('video_dir')})")
    if "output_dir" in given and args.output_dir and Path(args.output_dir).resolve() != Path(args.resume).resolve():
        conflicts.append(f"--output-dir {args.output_dir} (a resumed run writes into {args.resume})")
    if "overwrite" in given and args.overwrite:
        conflicts.append("--overwrite (it would empty the run being resumed)")
    if conflicts:
        raise UsageError(f"--resume {args.resume} continues the run with the settings saved in its run file, but this "
                         f"command line also gives {'; '.join(conflicts)}. Drop those flags to resume, or start a new "
                         "run (a new --output-dir) with the new settings")


def _refuse_changed_registrations(args: argparse.Namespace, saved: Mapping[str, Any]) -> None:
    """UsageError when the resuming command line's --env-import/--env-prefix/--env-adapter flags do not register what
    those its run file records do (another adapter under one env name pooled two envs' episodes; their order, a
    repeated flag or a tag's spelling is no difference); a run file from before they were recorded is not checked."""
    from .cli_errors import UsageError
    from .rollout_args import _recorded_registration_flags, _registration_flags, _registrations, registered_envs

    recorded = saved.get("registrations")
    if not isinstance(recorded, dict):
        return
    try:  # what the flags register, not their text: the same flags in another order are the run's
        if registered_envs(recorded) == registered_envs(_registrations(args)):
            return
    except ValueError as exc:  # a damaged or hand-edited run file: its flags cannot be read back to name them
        raise UsageError(f"--resume {args.resume}: the run file's 'registrations' cannot be read ({exc}); expected the "
                         "--env-import/--env-prefix/--env-adapter values the run was started with") from None
    started = _recorded_registration_flags(saved).strip() or "no --env-import/--env-prefix/--env-adapter flags"
    raise UsageError(f"--resume {args.resume}: this run was started with {started}, but this command line gives "
                     f"{_registration_flags(args).strip() or 'none'} (an env name may then build another env, whose "
                     "episodes would be pooled with the run's): resume it with the flags it was started with, or start "
                     "a new run (a new --output-dir) with the new ones")


def _refuse_changed_tasks(args: argparse.Namespace, saved: Mapping[str, Any]) -> None:
    """UsageError when the run's --env-name resolves to other tasks or groups now than the run file recorded at its start
    (a suite redefined since: its kept episodes were dropped or pooled under another group without a word, and a
    shard's slice moved); a run file from before the tasks were recorded is not checked."""
    from .cli_errors import UsageError
    from .shard import planned_task_pairs

    started = recorded_tasks(saved)
    if started is None:
        return
    difference = tasks_difference(started, planned_task_pairs(saved["env_name"]))
    if difference is None:
        return
    raise UsageError(f"--resume {args.resume}: the tasks of --env-name {saved['env_name']} changed since the run started: "
                     f"{difference} (a suite redefined since, in the --env-import module that registers it?); its kept "
                     "episodes are of the tasks it started with: restore that definition to resume, or start a new run "
                     "(a new --output-dir, or --overwrite)")


def recorded_tasks(saved: Mapping[str, Any]) -> Optional[List[List[str]]]:
    """The tasks a run file (a rollout's or a batch job's run.json) recorded its run started with ([env_name, group]
    pairs); None for one written by an older gr00t-eval, before they were recorded."""
    started = saved.get(TASKS_KEY)
    return [list(pair) for pair in started] if isinstance(started, list) else None


def tasks_difference(started: List[List[str]], now: List[List[str]]) -> Optional[str]:
    """What differs between two task lists of [env_name, group] pairs (task_pairs): the tasks removed, added or moved
    to another group, else their order; None for the same list."""
    if started == now:
        return None
    before, after = dict(map(tuple, started)), dict(map(tuple, now))
    parts = [f"{task!r} (group {group!r}) removed" for task, group in before.items() if task not in after]
    parts += [f"{task!r} (group {group!r}) added" for task, group in after.items() if task not in before]
    parts += [f"{task!r} moved from group {group!r} to {after[task]!r}" for task, group in before.items()
              if task in after and after[task] != group]
    if parts:
        return "; ".join(parts)
    return (f"the same tasks in another order ({', '.join(repr(task) for task in after)}; started as "
            f"{', '.join(repr(task) for task in before)})")


def _resolved_for_shard(saved: Mapping[str, Any], dest: str, value: Any) -> bool:
    """Whether `value` is the auto setting a shard's run file records resolved (shard.resolve_shard_n_envs): --n-envs 0
    and --vectorization auto, repeated from the command line that started the shard (not one started with explicit
    values, whose saved ones would run in place of the flags)."""
    return bool(saved.get("auto_n_envs_resolved")) and (dest, value) in (("n_envs", 0), ("vectorization", "auto"))


def earlier_results(output_dir: Path, shard: Any) -> Optional[Dict[str, Any]]:
    """The results file an earlier attempt of the run wrote (interrupted or aborted), if any."""
    path = output_dir / results_file_name(shard)
    if not path.is_file():
        return None
    try:
        earlier = json.loads(path.read_text())
    except json.JSONDecodeError:
        logger.warning("%s is not valid JSON; the resumed run's eval_s covers this attempt only", path)
        return None
    return earlier if isinstance(earlier, dict) and earlier.get("kind") == "rollout" else None


def earlier_eval_s(logged: Iterable[Mapping[str, Any]], earlier: Optional[Mapping[str, Any]]) -> Dict[str, float]:
    """The seconds earlier attempts of a run spent on each task. A results file `earlier` that names the attempts its
    eval_s covers (ATTEMPTS_KEY) counts for those, and the stamps in its episode log (attempt_seconds) for the attempts
    logged after it that wrote no results file (stopped before; their time after their last episode is not known).
    Else the count with the larger total: the stamps, or the results file (every attempt that wrote it, to its end;
    the only count for a log an older version wrote without stamps); {} without either. The two split the time
    between tasks differently (a task that failed to start logs no entry, so the stamps give its time to the next
    task, and the first task's stamps hold the attempt's start-up), so they are mixed per task only for different
    attempts: a resume with nothing left to run kept a complete run's times, where the stamps' total had won."""
    stamps = [entry for entry in logged if isinstance(entry.get(ATTEMPT_S_KEY), (int, float))]
    per_task = (earlier or {}).get("per_task") or {}
    written = {str(task): float((entry or {}).get("eval_s") or 0.0) for task, entry in per_task.items()}
    covered = (earlier or {}).get(ATTEMPTS_KEY)
    if isinstance(covered, list) and written:
        later = attempt_seconds(entry for entry in stamps if str(entry.get(ATTEMPT_KEY)) not in covered)
        return {task: written.get(task, 0.0) + later.get(task, 0.0) for task in {**written, **later}}
    stamped = attempt_seconds(stamps)
    return written if sum(written.values()) >= sum(stamped.values()) else stamped


def covered_attempts(logged: Iterable[Mapping[str, Any]], attempt: str) -> List[str]:
    """ATTEMPTS_KEY of a results file written now: this `attempt` and those of the entries `logged` before it (the
    resumed log, whose time add_earlier_task_eval_s added)."""
    attempts = dict.fromkeys(str(entry[ATTEMPT_KEY]) for entry in logged if entry.get(ATTEMPT_KEY) is not None)
    attempts[attempt] = None
    return list(attempts)


def attempt_seconds(logged: Iterable[Mapping[str, Any]]) -> Dict[str, float]:
    """Per task, the seconds the attempts that logged `logged` ran until their last entry: each entry's attempt time
    (ATTEMPT_S_KEY) past its attempt's entry before it counts for its task."""
    by_attempt: Dict[Any, List[Mapping[str, Any]]] = {}
    for entry in logged:
        by_attempt.setdefault(entry.get(ATTEMPT_KEY), []).append(entry)
    seconds: Dict[str, float] = {}
    for entries in by_attempt.values():
        before = 0.0
        for entry in sorted(entries, key=lambda e: float(e[ATTEMPT_S_KEY])):
            task = str(entry.get("task"))
            seconds[task] = seconds.get(task, 0.0) + float(entry[ATTEMPT_S_KEY]) - before
            before = float(entry[ATTEMPT_S_KEY])
    return seconds


def add_earlier_eval_s(results: Dict[str, Any], earlier: Mapping[str, Any]) -> None:
    """Add the eval_s of earlier attempts (their results file `earlier`) to a resumed run's, per task, group and
    overall (add_earlier_task_eval_s)."""
    add_earlier_task_eval_s(results, earlier_eval_s((), earlier))


def add_earlier_task_eval_s(results: Dict[str, Any], earlier_tasks: Mapping[str, float]) -> None:
    """Add the seconds earlier attempts spent on each task (earlier_eval_s) to a resumed run's eval_s, per task,
    group and overall.

    The episodes they finished are kept in the resumed results, so their time must be too: eval_s and
    eval_ep_s then cover every attempt, as for an uninterrupted run.
    """
    groups: Dict[str, float] = {}
    total = 0.0
    for task, entry in results["per_task"].items():
        entry["eval_s"] = float(entry.get("eval_s") or 0.0) + float(earlier_tasks.get(task) or 0.0)
        _set_eval_ep_s(entry)
        groups[entry.get("group")] = groups.get(entry.get("group"), 0.0) + entry["eval_s"]
        total += entry["eval_s"]
    for group, entry in results.get("per_group", {}).items():
        if group in groups:
            entry["eval_s"] = groups[group]
            _set_eval_ep_s(entry)
    results["overall"]["eval_s"] = total
    _set_eval_ep_s(results["overall"])
    results["aggregated"] = results["overall"]


def _set_eval_ep_s(entry: Dict[str, Any]) -> None:
    n_run = int(entry.get("n_episodes") or 0) + int(entry.get("n_errors") or 0)
    entry["eval_ep_s"] = entry["eval_s"] / n_run if n_run else float("nan")
