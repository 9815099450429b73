"""The rollout's settings from its flags, or from the run file a --resume reads: the seed, the RolloutConfig, the checks
no run could pass (before any output directory or connection), and the --env-import/--env-prefix/--env-adapter flags
a run records for its resume."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)


def rollout_seed(args: argparse.Namespace) -> Optional[int]:
    """--seed, else $GR00T_EVAL_SEED, else None (unseeded)."""
    from .cli_errors import UsageError

    if args.seed is not None:
        seed, where = args.seed, "--seed"
    else:
        value = os.environ.get("GR00T_EVAL_SEED")
        if value in (None, ""):
            return None
        if not (value.strip().isascii() and value.strip().isdigit()):  # int() also takes '1_0' and '+5'
            raise UsageError(f"$GR00T_EVAL_SEED must be a whole number >= 0, got {value!r}")
        seed, where = int(value), "$GR00T_EVAL_SEED"
    if seed < 0:  # env seeds are non-negative (numpy's SeedSequence): each episode would error at its reset
        raise UsageError(f"{where} must be >= 0, got {seed}")
    return seed


def rollout_config_from_args(args: argparse.Namespace, seed: Optional[int], output_dir: Optional[Path] = None) -> Any:
    """The RolloutConfig the rollout flags describe (videos under OUTPUT_DIR/videos unless --video-dir)."""
    from .rollout import RolloutConfig
    from .rollout_output import DEFAULT_ROLLOUT_BASE

    output_dir = output_dir if output_dir is not None else Path(args.output_dir or DEFAULT_ROLLOUT_BASE)
    # saved absolute (a resume from another working directory put its videos elsewhere), any '..' kept: after a link
    # the OS takes it from the link's target, where the run's other files go
    video_dir = None if args.no_video else str(Path(args.video_dir or Path(output_dir) / "videos").absolute())
    return RolloutConfig(
        env_name=args.env_name, n_episodes=args.n_episodes, n_envs=args.n_envs, n_action_steps=args.n_action_steps,
        max_episode_steps=args.max_episode_steps, seed=seed, video_dir=video_dir, env_kwargs=dict(args.env_kwargs),
        vectorization=args.vectorization, client_chunking=args.client_chunking, chunk_merge=args.chunk_merge,
        rtc_frozen_steps=args.rtc_frozen_steps, max_episodes_rendered=args.max_episodes_rendered,
        env_timeout_s=env_timeout_from_args(args),
    )


def env_timeout_from_args(args: argparse.Namespace) -> Optional[float]:
    """--env-timeout in seconds, None for 0 (no limit); without it, the default of the run's --vectorization."""
    from .cli_errors import UsageError
    from .rollout.config import check_env_timeout, default_env_timeout

    given = getattr(args, "env_timeout", None)
    if given is None:
        return default_env_timeout(args.vectorization, args.n_envs)
    try:
        return check_env_timeout(given)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check_env_timeout_applies(args: argparse.Namespace) -> None:
    """UsageError for an --env-timeout given with --vectorization sync, or with --n-envs 1 and auto vectorization: both
    run the envs in this process."""
    from .cli_errors import UsageError
    from .rollout.config import check_env_timeout_applies

    try:
        check_env_timeout_applies(args.vectorization, env_timeout_from_args(args), "--env-timeout",
                                  "use --vectorization async (or auto with --n-envs other than 1) for a time limit, "
                                  "or --env-timeout 0 for none", n_envs=args.n_envs, n_envs_name="--n-envs")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def resumed_env_timeout(args: argparse.Namespace, config: Any, output_dir: Path) -> Any:
    """The resumed run's `config` with this command line's --env-timeout (not an outcome setting: a stalled run may
    resume with more time), else the saved one. A run an earlier version started with its envs in this process
    (--vectorization sync, or auto with --n-envs 1) and an --env-timeout (taken then, and not kept) resumes with no
    limit and a warning; UsageError for an --env-timeout such a run cannot keep."""
    from .cli_errors import UsageError
    from .rollout.config import DEFAULT_ENV_TIMEOUT_S, check_env_timeout_applies, without_unkept_env_timeout
    from .run_resume import given_settings

    if "env_timeout" not in given_settings(args):
        resumed = without_unkept_env_timeout(config)
        if config.env_timeout_s not in (resumed.env_timeout_s, DEFAULT_ENV_TIMEOUT_S):  # the default: asked by nobody
            logger.warning("--resume %s: its saved env timeout of %g s cannot apply to its envs, which run in this "
                           "process (vectorization %r with n_envs %s), where a hung reset or step cannot be stopped; "
                           "the run resumes with no limit, as it ran before", output_dir, config.env_timeout_s,
                           config.vectorization, config.n_envs)
        return resumed
    config = dataclasses.replace(config, env_timeout_s=env_timeout_from_args(args))
    try:
        check_env_timeout_applies(config.vectorization, config.env_timeout_s, "--env-timeout",
                                  "a resumed run keeps its vectorization and n_envs: resume with --env-timeout 0 (no "
                                  "limit), or without --env-timeout", n_envs=config.n_envs)
    except ValueError as exc:
        raise UsageError(f"--resume {output_dir}: {exc}") from None
    return config


def runs_default_video_dir(saved: Mapping[str, Any], output_dir: Path, shard: Any = None) -> bool:
    """Whether a run file's video folder is the run's own OUTPUT_DIR/videos (recorded since `default_video_dir`;
    for an older run file, a path ending in 'videos' that is either relative and ends in its directory's name and
    'videos', or the folder the earlier episodes' videos came from and are found under the directory's videos/, as
    in a copied or moved run), which a resume, from any working directory or of a copied run, takes as the resumed
    directory's."""
    if "default_video_dir" in saved:
        return bool(saved["default_video_dir"])
    video_dir = (saved.get("config") or {}).get("video_dir")
    if not isinstance(video_dir, str) or Path(video_dir).name != "videos":
        return False
    if not os.path.isabs(video_dir) and Path(video_dir).parent.name == Path(os.path.abspath(output_dir)).name:
        return True
    return _videos_came_with_folder(video_dir, output_dir, shard)


def _videos_came_with_folder(video_dir: str, output_dir: Path, shard: Any) -> bool:
    """Whether the episode log lists videos under `video_dir` (an older run file's) and each is also under
    OUTPUT_DIR/videos: the folder is that run's own output directory, copied or moved with its videos."""
    from .run_dir import EpisodeLog, episode_log_name

    listed = []
    for entry in EpisodeLog(output_dir / episode_log_name(shard)).read():
        path = entry.get("video_path")
        if not isinstance(path, str):
            continue
        try:
            listed.append(Path(path).relative_to(video_dir))
        except ValueError:  # not one of the run's own videos
            return False
    own = output_dir / "videos"
    return bool(listed) and all((own / relative).is_file() for relative in listed)


def resumed_video_dir(saved: Mapping[str, Any], config: Any, output_dir: Path, shard: Any) -> Tuple[Any, bool]:
    """The resumed run's `config` with its video folder, and whether that folder moved: the resumed directory's
    videos/ when it is the run's default one (runs_default_video_dir), wherever the directory now is; else the saved
    folder, unchanged."""
    if runs_default_video_dir(saved, output_dir, shard):  # OUTPUT_DIR/videos of the directory resumed, wherever it now is
        return dataclasses.replace(config, video_dir=str(output_dir.absolute() / "videos")), True
    return config, False


def _videos_moved_with_run(done: Sequence[Any], old_video_dir: Any, new_video_dir: str) -> List[Any]:
    """The earlier episodes (EpisodeOutcome) of a resumed run, their video_path under `old_video_dir` (the run file's)
    moved onto `new_video_dir` (its default folder where the run now is; else the same folder), the part after it (a
    task's folder) kept; None where that file is not there (deleted since: by hand, or by another run's --overwrite)."""
    if not isinstance(old_video_dir, str):
        return list(done)
    moved = []
    for outcome in done:
        path = moved_video_path(outcome.video_path, old_video_dir, new_video_dir) if outcome.video_path else None
        if path is not None:
            outcome = dataclasses.replace(outcome, video_path=str(path) if path.is_file() else None)
        moved.append(outcome)
    return moved


def moved_video_path(video_path: str, old_video_dir: str, new_video_dir: str) -> Optional[Path]:
    """Where a video a run listed under `old_video_dir` (its run file's) is now that its folder is `new_video_dir`,
    the part after it (a task's folder) kept; None for a path not under `old_video_dir` (not one of the run's own)."""
    try:
        return Path(new_video_dir) / Path(video_path).relative_to(old_video_dir)
    except ValueError:
        return None


def check_ray_flags(args: argparse.Namespace) -> None:
    """UsageError for a --ray-shards or --ray-cpus-per-shard no run can use: before the cluster is asked (a flag
    mistake, not an unreachable or stale Ray address, is what such a command is told)."""
    from .cli_errors import UsageError

    if args.ray_shards < 0:
        raise UsageError(f"--ray-shards must be >= 0 (0: one per cluster CPU), got {args.ray_shards}")
    if not 0 < args.ray_cpus_per_shard < float("inf"):  # NaN too
        raise UsageError(f"--ray-cpus-per-shard must be a finite number > 0, got {args.ray_cpus_per_shard}")


def _check_rollout_args(args: argparse.Namespace) -> None:
    from .cli_errors import UsageError
    from .rollout.config import MAX_ENVS, MAX_EPISODES

    if args.n_episodes < 1:
        raise UsageError(f"--n-episodes must be >= 1, got {args.n_episodes}")
    if args.n_episodes > MAX_EPISODES:
        raise UsageError(f"--n-episodes must be at most {MAX_EPISODES:,} per task (split bigger evaluations into "
                         f"--shard runs or batch jobs), got {args.n_episodes}")
    if args.client_chunking == "async" and args.n_action_steps < 2:
        raise UsageError("--client-chunking async needs --n-action-steps >= 2: with one step per chunk every prefetch "
                         "comes after its step, and is thrown away and asked for again (twice the requests of sync); "
                         "use --client-chunking sync")
    if args.client_chunking != "async":  # settings only async client chunking uses: a run that would fail every task
        if args.rtc_frozen_steps is not None:
            raise UsageError(f"--rtc-frozen-steps needs --client-chunking async (got --client-chunking {args.client_chunking})")
        if args.chunk_merge != "newest":
            raise UsageError(f"--chunk-merge {args.chunk_merge} needs --client-chunking async, which merges a prefetched "
                             f"chunk with the buffered steps (got --client-chunking {args.client_chunking})")
    if args.no_video and (args.video_dir or args.max_episodes_rendered is not None):
        logger.warning("--no-video: %s ignored", " and ".join(
            flag for flag, given in (("--video-dir", args.video_dir), ("--max-episodes-rendered", args.max_episodes_rendered is not None))
            if given))
    if args.n_envs < 0:
        raise UsageError(f"--n-envs must be >= 0 (0 = auto), got {args.n_envs}")
    if args.n_envs > MAX_ENVS:  # one subprocess per env: a typo such as 1000000 started that many
        raise UsageError(f"--n-envs must be at most {MAX_ENVS} (the most a run starts: one subprocess per env), got "
                         f"{args.n_envs}")
    if args.n_action_steps < 1:
        raise UsageError(f"--n-action-steps must be >= 1, got {args.n_action_steps}")
    if args.rtc_frozen_steps is not None and args.rtc_frozen_steps < 1:  # the upper bound is the policy's horizon
        raise UsageError(f"--rtc-frozen-steps must be >= 1, got {args.rtc_frozen_steps}")
    if args.max_episode_steps < 1:  # 0 cut every episode before its first step: a success rate of 0 from nothing
        raise UsageError(f"--max-episode-steps must be >= 1, got {args.max_episode_steps}")
    check_ray_flags(args)
    if args.max_episodes_rendered is not None and args.max_episodes_rendered < 0:
        raise UsageError(f"--max-episodes-rendered must be >= 0, got {args.max_episodes_rendered}")
    _check_env_timeout_applies(args)  # before the output directory is made, as every setting no run can use
    _check_env_names(args.env_name)  # a bad env name fails before any connection is made
    if not args.no_video:
        _check_task_video_dirs(args.env_name)


def _check_env_names(env_spec: str, resumed: Optional[Path] = None, saved: Optional[Mapping[str, Any]] = None) -> None:
    """UsageError naming an env name (or suite) of `env_spec` that no registered prefix makes. For a resume (of
    `resumed`, whose run file is `saved`), checked before anything runs: without the --env-import/--env-prefix/
    --env-adapter flags its run was started with, every task failed and an interrupted run was rewritten as
    incomplete."""
    from .cli_errors import UsageError
    from .rollout.envs import check_env_name
    from .suites import resolve_tasks

    try:
        for task in resolve_tasks(env_spec)[0]:
            try:
                check_env_name(task.env_name)
            except ValueError as exc:
                raise ValueError(f"{exc}{_suite_hint(task.env_name)}") from None
    except (ValueError, KeyError) as exc:
        message = str(exc).strip("\"'") if isinstance(exc, KeyError) else str(exc)
        if resumed is None:
            raise UsageError(message) from None
        started = _recorded_registration_flags(saved or {})
        how = (f"this run was started with{started}: resume it with those flags too" if started else
               "resume it with the --env-import/--env-prefix/--env-adapter flags the run was started with")
        raise UsageError(f"--resume {resumed}: {message}; {how}") from None


def _check_task_video_dirs(env_spec: str) -> None:
    """UsageError, before the output directory is made, when two tasks of `env_spec` would share a video folder."""
    from .cli_errors import UsageError
    from .suites import check_task_video_dirs, resolve_tasks

    try:
        check_task_video_dirs(resolve_tasks(env_spec)[0])
    except ValueError as exc:
        raise UsageError(f"--env-name {env_spec}: {exc}") from None


def _suite_hint(name: str) -> str:
    """'; or did you mean the suite ...' for a name without '/' that is close to a registered suite's."""
    import difflib

    from .suites import suite_names

    if "/" in name:
        return ""
    close = difflib.get_close_matches(name, suite_names(), n=3)
    if close:
        return f"; or did you mean the suite {' or '.join(close)}? ({SUITES_LISTING})"
    return f"; a suite name? {SUITES_LISTING}"


# Where a user finds the suite names --env-name takes, its own suites included (registered by an --env-import module).
SUITES_LISTING = "gr00t-eval suites lists them; with --env-import MODULE, those MODULE registers too"


def _saved_rollout_config(saved: Mapping[str, Any], output_dir: Path, shard: Any) -> Any:
    """The RolloutConfig a run file saved; UsageError naming the file and the settings this version does not know
    (a run started by a newer gr00t-eval) or cannot take."""
    from .cli_errors import UsageError
    from .rollout import RolloutConfig
    from .output_files import run_file_name

    where = output_dir / run_file_name(shard)
    known = {field.name for field in dataclasses.fields(RolloutConfig)}
    unknown = sorted(set(saved["config"]) - known)
    if unknown:
        raise UsageError(f"--resume {output_dir}: {where} holds settings this gr00t-eval does not know: "
                         f"{', '.join(unknown)} (was the run started by a newer version?); resume it with that version")
    try:
        return RolloutConfig(**saved["config"])
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--resume {output_dir}: the settings in {where} are not valid: {exc}") from None


def _registrations(args: argparse.Namespace) -> Dict[str, Any]:
    """The run's --env-import/--env-prefix/--env-adapter values, as its run file records them."""
    return {"env_import": list(getattr(args, "env_import", None) or []),
            "env_prefix": [list(pair) for pair in getattr(args, "env_prefix", None) or []],
            "env_adapter": [list(pair) for pair in getattr(args, "env_adapter", None) or []]}


def registered_envs(registrations: Mapping[str, Any]) -> Dict[str, Any]:
    """What --env-import/--env-prefix/--env-adapter values (as _registrations or a run file records them) register:
    the modules imported, sorted, and each prefix's [embodiment tag value, adapter] where the flags change the
    built-in ones. As apply_env_registrations applies them: the last flag for a prefix wins, a tag is read in any
    spelling, an adapter's prefix without --env-prefix gets its built-in tag (else new_embodiment). So flags that
    differ only in order, repetition, a tag's spelling or a flag that changes nothing register the same envs. With an
    --env-import (its module may register prefixes itself) each prefix's flags count as given, last one winning.
    ValueError when a value is not a list of NAME or [PREFIX, VALUE] (a hand-edited file)."""
    from gr00t_client import EmbodimentTag

    from .rollout.env_tables import BUILT_IN_ADAPTERS, BUILT_IN_TAGS

    def pairs(name: str) -> Dict[str, str]:
        values = registrations.get(name) or []
        if not (isinstance(values, list) and all(isinstance(pair, (list, tuple)) and len(pair) == 2
                                                 and all(isinstance(v, str) for v in pair) for pair in values)):
            raise ValueError(f"{name} is {values!r}, expected a list of [PREFIX, VALUE] pairs")
        return dict(values)  # the last for a prefix wins

    def tag_value(tag: str) -> str:
        try:
            return EmbodimentTag.resolve(tag).value
        except ValueError:  # refused when registered: compared as written
            return tag

    modules = registrations.get("env_import") or []
    if not (isinstance(modules, list) and all(isinstance(module, str) for module in modules)):
        raise ValueError(f"env_import is {modules!r}, expected a list of module names")
    tags = {prefix: tag_value(tag) for prefix, tag in pairs("env_prefix").items()}
    adapters = pairs("env_adapter")
    envs = {}
    if modules:  # an imported module may register prefixes itself: what the flags change from is unknown, so each
        # prefix's flags count as given (last wins), none dropped as the built-in's and no tag assumed
        return {"env_import": sorted(set(modules)),
                "envs": {prefix: [tags.get(prefix), adapters.get(prefix)] for prefix in sorted({*tags, *adapters})}}
    for prefix in sorted({*tags, *adapters}):
        built_in_tag = BUILT_IN_TAGS[prefix].value if prefix in BUILT_IN_TAGS else None
        built_in = [built_in_tag, BUILT_IN_ADAPTERS.get(prefix)]
        default_tag = built_in_tag or (EmbodimentTag.NEW_EMBODIMENT.value if prefix in adapters else None)
        registered = [tags.get(prefix, default_tag), adapters.get(prefix, built_in[1])]
        if registered != built_in:
            envs[prefix] = registered
    return {"env_import": sorted(set(modules)), "envs": envs}


def _registration_flags(args: argparse.Namespace) -> str:
    """The run's --env-import/--env-prefix/--env-adapter flags, as a resume needs them again (its printed command
    without them failed with "unknown prefix")."""
    return _flags_of(_registrations(args))


def _recorded_registration_flags(saved: Mapping[str, Any]) -> str:
    """The registration flags a run file recorded ('' for none, or a run file from before they were recorded)."""
    recorded = saved.get("registrations")
    if not isinstance(recorded, dict):
        return ""
    try:
        return _flags_of(recorded)
    except (TypeError, ValueError):  # a hand-edited run file: the generic advice instead
        return ""


def _flags_of(registrations: Mapping[str, Any]) -> str:
    import shlex

    flags = [f" --env-import {shlex.quote(str(module))}" for module in registrations.get("env_import") or []]
    for flag, name in (("--env-prefix", "env_prefix"), ("--env-adapter", "env_adapter")):
        flags += [f" {flag} {shlex.quote(f'{key}={value}')}" for key, value in registrations.get(name) or []]
    return "".join(flags)
