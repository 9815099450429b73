"""CLI for scaled evaluation: suites and task lists, `--n-envs 0`, `--shard`, `--ray-address`; `batch` (batch_cli)
and `merge` (merge_cli).

Wiring in cli.py: `add_scale_arguments(rollout_parser)`, `register_scale_commands(subparsers)`, and in main()
run `args.scale_command(args)` when set (batch, merge, suites). `run_rollout_command` runs every rollout, from
one env to a suite on Ray: output directory, episode log, resume, interrupt and the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from gr00t_client.cli_flags import flag as _flag

from .batch_cli import DEFAULT_BATCH_DIR, cmd_batch
from .merge_cli import cmd_merge
from .run_summary import errors_exit, format_summary, print_errored_episodes, print_incomplete
from .video_dirs import check_shard_video_dir, check_video_dir, check_writable, delete_episode_videos, within

logger = logging.getLogger(__name__)

DEFAULT_ROLLOUT_BASE = "/tmp/gr00t_rollout_eval"


def add_scale_arguments(rollout_parser: argparse.ArgumentParser) -> None:
    """Add --shard, --ray-address, --ray-shards and --ray-cpus-per-shard to the rollout parser."""
    group = rollout_parser.add_argument_group(
        "scaling",
        "--env-name also takes a comma-separated list or suite names (see `gr00t-eval suites`); --n-envs 0 picks "
        "floor(cores*0.7) capped by the episodes left and 64; --policy-client-host may list several hosts "
        "(h1,h2:5556) for --ray-address, assigned to shards round-robin.",
    )
    group.add_argument(*_flag("shard"), default=None, metavar="I/N",
                       help="run only shard I (0-based) of N: a fixed slice of the episodes with their seeds; needs --seed")
    group.add_argument(*_flag("ray-address"), default=None, metavar="auto|HOST:PORT|local",
                       help="run the shards as Ray tasks on this cluster (local: start one here) and merge them")
    group.add_argument(*_flag("ray-shards"), type=int, default=0, help="shards for --ray-address (default 0: one per cluster CPU)")
    group.add_argument(*_flag("ray-cpus-per-shard"), type=float, default=1.0, help="CPUs Ray reserves per shard (default 1)")


def register_scale_commands(subparsers: Any) -> None:
    """Add the `batch`, `merge` and `suites` sub-commands."""
    p = subparsers.add_parser("batch", help="run rollout jobs from a JSON file in sequence (docs/batch-jobs.md)")
    p.add_argument(*_flag("jobs"), default=None, help="job file (JSON); required unless --resume")
    p.add_argument(*_flag("output-dir"), default=None,
                   help=f"where jobs.json and batch_results.json go; must be empty or new (default: a new dated "
                        f"directory {DEFAULT_BATCH_DIR}/YYYY-MM-DD/HH-MM-SS_batch)")
    p.add_argument(*_flag("overwrite"), action="store_true", help="empty a non-empty --output-dir first")
    p.add_argument(*_flag("resume"), default=None, metavar="DIR",
                   help="continue the batch in DIR: jobs marked done are kept, pending and failed ones run again")
    p.set_defaults(scale_command=cmd_batch)

    p = subparsers.add_parser("merge", help="merge `rollout --shard` results into the results of one run")
    p.add_argument("results", nargs="+", help="results files (or directories holding results*.json)")
    p.add_argument(*_flag("output"), required=True, help="merged results file (a directory gets results.json)")
    p.add_argument(*_flag("allow-missing"), action="store_true",
                   help="merge even if some episodes are in no file (the merged status is then 'incomplete', exit status 1)")
    p.add_argument(*_flag("allow-errors"), action="store_true",
                   help="exit 0 even when episodes errored (they are still reported and left out of the metrics), "
                        "unless every episode errored: a merge that scored nothing exits 1")
    p.add_argument(*_flag("overwrite"), action="store_true",
                   help="replace an --output that is not an earlier merge's (a run's own results file), or write "
                        "into a whole run's --output-dir (its eval_info.json is replaced)")
    p.set_defaults(scale_command=cmd_merge)

    p = subparsers.add_parser("suites", help="list the registered task suites")
    p.set_defaults(scale_command=cmd_suites)


# --- rollout ------------------------------------------------------------------------------------


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

    output_dir = output_dir if output_dir is not None else Path(args.output_dir or DEFAULT_ROLLOUT_BASE)
    # the default folder is saved absolute: a resume from another working directory put its videos elsewhere
    video_dir = None if args.no_video else (args.video_dir or str(Path(os.path.abspath(output_dir)) / "videos"))
    return RolloutConfig(
        env_name=args.env_name, n_episodes=args.n_episodes, n_envs=args.n_envs, n_action_steps=args.n_action_steps,
        max_episode_steps=args.max_episode_steps, seed=seed, video_dir=video_dir, env_kwargs=dict(args.env_kwargs),
        vectorization=args.vectorization, client_chunking=args.client_chunking, chunk_merge=args.chunk_merge,
        rtc_frozen_steps=args.rtc_frozen_steps, max_episodes_rendered=args.max_episodes_rendered,
        env_timeout_s=env_timeout_from_args(args),
    )


def env_timeout_from_args(args: argparse.Namespace) -> Optional[float]:
    """--env-timeout in seconds, None for 0 (no limit)."""
    from .cli_errors import UsageError
    from .rollout.config import check_env_timeout

    try:
        return check_env_timeout(getattr(args, "env_timeout", None))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _rollout_output_dir(args: argparse.Namespace, label: str, shard: Any, claim: Callable[[Path], None]) -> Path:
    """--output-dir (refused when not empty, unless --overwrite), or a new dated directory under the default base;
    `claim(path)` writes the run's file there.

    Shards of one plan may share a directory: a shard only needs its own file names to be free. Both the
    output directory and an outside --video-dir are checked before anything is emptied or created. The last
    check, the emptying and the claim happen under a lock of the directory: of two runs started together into
    it, --overwrite or not, the second finds the first's run file and is refused (it used to empty it away).
    """
    from .cli_errors import UsageError
    from .run_dir import (ROLLOUT_LOCK_FILENAME, OutputDirError, check_output_dir, directory_lock, episode_log_name,
                          make_fresh_dated_output_dir, prepare_output_dir, results_file_name, run_file_name)

    own = None if shard is None else [run_file_name(shard), episode_log_name(shard), results_file_name(shard)]
    keep = (ROLLOUT_LOCK_FILENAME,)
    path = Path(args.output_dir) if args.output_dir else None
    try:
        if path is not None:
            check_output_dir(path, overwrite=args.overwrite, own_files=own, keep=keep)
        earlier_videos = []
        if args.video_dir and not args.no_video:
            earlier_videos = (check_video_dir(Path(args.video_dir), path, args.overwrite) if shard is None else
                              check_shard_video_dir(Path(args.video_dir), path, args.overwrite, args, shard))
        videos = Path(args.video_dir) if args.video_dir and not args.no_video else None
        inside = videos is not None and path is not None and within(videos, path)
        if videos is not None and not inside:  # before the claim: a refused folder leaves no run file behind
            check_writable(videos)
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            with directory_lock(path / ROLLOUT_LOCK_FILENAME):
                prepare_output_dir(path, overwrite=args.overwrite, own_files=own, keep=keep)
                claim(path)
        else:
            path = make_fresh_dated_output_dir(DEFAULT_ROLLOUT_BASE, label)
            claim(path)
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None
    if earlier_videos:
        logger.warning("deleting %d episode videos of an earlier run from --video-dir %s (--overwrite); other files "
                       "there are kept", len(earlier_videos), args.video_dir)
        delete_episode_videos(Path(args.video_dir), earlier_videos)
    if videos is not None and inside:  # made after the directory was checked and emptied
        with _released_unless_started(path, shard):
            check_writable(videos)
    return path


def _claim_videos(output_dir: Path, shard: Any, env_spec: str, config: Any) -> None:
    """Claim the run's video folder when it lies outside the output directory, while the run writes there
    (run_claim.claim_video_dir): of two runs started together into one, both passed the check for earlier videos
    and then overwrote each other's. The shards of one plan share it. The claim is marked finished with the run's
    (run_dir.held_run_claims)."""
    import hashlib
    import json

    from .cli_errors import UsageError
    from .run_claim import claim_video_dir
    from .run_dir import OutputDirError, hold_claim
    from .shard import shard_plan
    from .suites import resolve_tasks

    if not config.video_dir or within(Path(config.video_dir), output_dir):
        return  # none, or the output directory's own (its claim covers it)
    plan = None
    if shard is not None:
        key = {**shard_plan(resolve_tasks(env_spec)[0], config, None), "shards": shard.count}
        plan = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    writer = f"{os.path.abspath(output_dir)}{'' if shard is None else f' (shard {shard})'}"
    try:
        hold_claim(claim_video_dir(Path(config.video_dir), writer, plan))
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None


def _default_video_dir(saved: Mapping[str, Any], output_dir: Path) -> bool:
    """Whether a run file's video folder is the run's own OUTPUT_DIR/videos (recorded since `default_video_dir`;
    an older run file's relative path ending in its directory's name and 'videos'), which a resume, from any
    working directory or of a copied run, takes as the resumed directory's."""
    if "default_video_dir" in saved:
        return bool(saved["default_video_dir"])
    video_dir = (saved.get("config") or {}).get("video_dir")
    if not isinstance(video_dir, str) or os.path.isabs(video_dir):
        return False
    relative = Path(video_dir)
    return relative.name == "videos" and relative.parent.name == Path(os.path.abspath(output_dir)).name


def _check_rollout_args(args: argparse.Namespace) -> None:
    from .cli_errors import UsageError
    from .rollout.config import MAX_EPISODES

    if args.n_episodes < 1:
        raise UsageError(f"--n-episodes must be >= 1, got {args.n_episodes}")
    if args.n_episodes > MAX_EPISODES:
        raise UsageError(f"--n-episodes must be at most {MAX_EPISODES:,} per run (split bigger evaluations into "
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
    if args.n_action_steps < 1:
        raise UsageError(f"--n-action-steps must be >= 1, got {args.n_action_steps}")
    if args.max_episode_steps < 1:  # 0 cut every episode before its first step: a success rate of 0 from nothing
        raise UsageError(f"--max-episode-steps must be >= 1, got {args.max_episode_steps}")
    if args.ray_shards < 0:
        raise UsageError(f"--ray-shards must be >= 0 (0: one per cluster CPU), got {args.ray_shards}")
    if not 0 < args.ray_cpus_per_shard < float("inf"):  # NaN too
        raise UsageError(f"--ray-cpus-per-shard must be a finite number > 0, got {args.ray_cpus_per_shard}")
    if args.max_episodes_rendered is not None and args.max_episodes_rendered < 0:
        raise UsageError(f"--max-episodes-rendered must be >= 0, got {args.max_episodes_rendered}")
    env_timeout_from_args(args)  # before the output directory is made, as every setting no run can use
    _check_env_names(args.env_name)  # a bad env name fails before any connection is made


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


def _suite_hint(name: str) -> str:
    """'; or did you mean the suite ...' for a name without '/' that is close to a registered suite's."""
    import difflib

    from .suites import suite_names

    if "/" in name:
        return ""
    close = difflib.get_close_matches(name, suite_names(), n=3)
    if close:
        return f"; or did you mean the suite {' or '.join(close)}? (gr00t-eval suites lists them)"
    return "; a suite name? gr00t-eval suites lists them"


def run_rollout_command(args: argparse.Namespace) -> int:
    """Run a rollout (or resume one) into its output directory; exit 0, 1 (errors), 130 (interrupted)."""
    from .cli_errors import UsageError
    from .metrics import EpisodeOutcome
    from .rollout.config import draw_base_seed
    from .ray_connect import check_ray_address, import_ray
    from .ray_runner import parse_servers
    from .run_dir import (EpisodeLog, add_earlier_eval_s, earlier_results, episode_log_name, given_settings,
                          is_storage_error, read_run_file, refuse_changed_settings, write_run_file)
    from .shard import ShardSpec

    try:  # a bad host list fails before the output directory is made
        parse_servers(args.host, args.port)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        shard = ShardSpec.parse(args.shard) if args.shard else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if shard is not None and args.ray_address:
        raise UsageError("--shard and --ray-address do not combine (Ray makes its own shards)")
    if not args.ray_address:  # they were ignored: a run on one machine that the user thought was spread over Ray
        stray = [flag for flag, given in (("--ray-shards", args.ray_shards != 0),
                                          ("--ray-cpus-per-shard", args.ray_cpus_per_shard != 1.0)) if given]
        if stray:
            raise UsageError(f"{' and '.join(stray)} {'apply' if len(stray) > 1 else 'applies'} only to a run on Ray: "
                             "add --ray-address (auto, HOST:PORT or local), or leave it out")
    if args.ray_address:  # a missing Ray or an unreachable cluster fails in seconds, before the output directory is made
        import_ray()
        check_ray_address(args.ray_address)
    done: List[EpisodeOutcome] = []
    earlier = None
    first_policy = None  # the policy the run's first attempt evaluated (its run file), which a resume must match
    earlier_not_applied: Dict[str, Any] = {}  # settings the first attempt's server ignored (its run file)
    if args.resume:  # a Ray run resumes like any other: its driver logged every episode in episodes.jsonl
        output_dir = Path(args.resume)
        saved = read_run_file(output_dir, shard)
        refuse_changed_settings(args, saved)
        env_spec = saved["env_name"]
        _check_env_names(env_spec, output_dir, saved)
        config = _saved_rollout_config(saved, output_dir, shard)
        if _default_video_dir(saved, output_dir):  # OUTPUT_DIR/videos of the directory resumed, wherever it now is
            config = dataclasses.replace(config, video_dir=str(Path(os.path.abspath(output_dir)) / "videos"))
        if "env_timeout" in given_settings(args):  # not an outcome setting: a stalled run may resume with more time
            config = dataclasses.replace(config, env_timeout_s=env_timeout_from_args(args))
        _claim_videos(output_dir, shard, env_spec, config)
        earlier_not_applied = saved.get("settings_not_applied") or {}
        earlier = earlier_results(output_dir, shard)
        # A Ray run whose driver could not ask every server records no policy in run.json; its results name the one
        # its shards ran, which the resumed episodes must share.
        first_policy = saved.get("policy") or (earlier or {}).get("policy")
        if earlier is not None and earlier.get("policy_conflict"):
            raise UsageError(f"--resume {output_dir}: its shards served different policies ({earlier.get('stop_reason')}); "
                             "its episodes are not one policy's, so resuming would pool them: serve one checkpoint or "
                             "dataset on every server and start a new run (a new --output-dir)")
        done = [EpisodeOutcome.from_json_dict(e) for e in EpisodeLog(output_dir / episode_log_name(shard)).read()]
        finished = sum(1 for o in done if o.error is None)
        print(f"Resuming {output_dir}: {finished} episodes finished, the rest of {env_spec} runs now (base seed {config.seed})")
    else:
        _check_rollout_args(args)
        seed = rollout_seed(args)
        if seed is None and shard is not None:
            raise UsageError("--shard needs --seed (or $GR00T_EVAL_SEED): every shard must use the same episode seeds")
        seed = seed if seed is not None else draw_base_seed()
        env_spec = args.env_name
        made: Dict[str, Any] = {}

        def claim(path: Path) -> None:
            made["config"] = rollout_config_from_args(args, seed, path)
            write_run_file(path, {"env_name": env_spec, "config": dataclasses.asdict(made["config"]),
                                  "shard": None if shard is None else str(shard),
                                  "default_video_dir": not args.no_video and not args.video_dir,
                                  "registrations": _registrations(args)}, shard)

        output_dir = _rollout_output_dir(args, env_spec, shard, claim)
        config = made["config"]
        with _released_unless_started(output_dir, shard):
            _claim_videos(output_dir, shard, env_spec, config)
    print(f"Output directory: {output_dir} (base seed {config.seed})")
    try:
        with _released_unless_started(output_dir, shard, new_run=not args.resume):
            results = _run(args, env_spec, config, shard, done, output_dir, first_policy)
            if not args.resume and not results.get("per_episode") and results.get("status") in ("aborted", "incomplete"):
                # every task failed to start (an --env-kwarg its env does not take), or every Ray shard stopped before
                # scoring (no server answered its workers): as a plain run that reaches no server, the folder is
                # released, and the corrected command is not refused as "not empty" (a --resume repeats the mistake)
                failed = results.get("failed_tasks") or {}
                reasons = "; ".join(f"task {task} failed: {why}" for task, why in failed.items())
                raise UsageError(f"no episode was scored: {reasons or results.get('stop_reason')}")
        if earlier is not None:
            add_earlier_eval_s(results, earlier)
        if earlier_not_applied:
            results["settings_not_applied"] = {**earlier_not_applied, **(results.get("settings_not_applied") or {})}
        return _report_rollout(args, results, output_dir, shard)
    except OSError as exc:
        if not is_storage_error(exc):
            raise
        raise SystemExit(_storage_failure(exc, output_dir, shard)) from None


def _saved_rollout_config(saved: Mapping[str, Any], output_dir: Path, shard: Any) -> Any:
    """The RolloutConfig a run file saved; UsageError naming the file and the settings this version does not know
    (a run started by a newer gr00t-eval) or cannot take."""
    from .cli_errors import UsageError
    from .rollout import RolloutConfig
    from .run_dir import run_file_name

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


@contextlib.contextmanager
def _released_unless_started(output_dir: Path, shard: Any, new_run: bool = True) -> Iterator[None]:
    """Release a new run (_release_unstarted_run) when the block raises: its videos folder refused, the run stopped
    before scoring, Ctrl-C. A resumed run's files are never released."""
    try:
        yield
    except BaseException:
        if new_run:
            _release_unstarted_run(output_dir, shard)
        raise


def _release_unstarted_run(output_dir: Path, shard: Any) -> None:
    """A new run that stopped before it scored any episode (no server answered, the policy refused its settings)
    leaves no run file: the corrected command is not refused as 'not empty', nor pointed at a --resume that would
    repeat the mistake."""
    from .run_dir import EpisodeLog, episode_log_name, run_file_name

    log = output_dir / episode_log_name(shard)
    try:
        if EpisodeLog(log).read():
            return
        log.unlink(missing_ok=True)
        (output_dir / run_file_name(shard)).unlink(missing_ok=True)
    except (OSError, ValueError) as exc:  # never hide the reason the run stopped
        logger.debug("could not release %s: %s", output_dir, exc)


def _kept_episodes(output_dir: Path, shard: Any) -> Tuple[Path, int]:
    """The run's episode log and how many episodes it keeps (0 when it cannot be read)."""
    from .run_dir import EpisodeLog, episode_log_name

    log = output_dir / episode_log_name(shard)
    try:
        return log, len(EpisodeLog(log).read())
    except (OSError, ValueError):
        return log, 0


def _storage_failure(exc: OSError, output_dir: Path, shard: Any) -> str:
    """The one line for a run stopped by a full disk: the file, what is kept, and the command that continues."""
    from .run_dir import resume_command

    log, kept = _kept_episodes(output_dir, shard)
    where = f" writing {exc.filename}" if exc.filename else ""
    return (f"error: {exc.strerror or exc}{where}: the run stopped there; the {kept} episodes scored before it are kept "
            f"in {log}. Free some space, then continue with: {resume_command(output_dir, shard)} and the same server "
            "flags (and --env-import/--env-adapter/--env-prefix, if the run used them)")


def _summary_storage_failure(exc: OSError, files: List[Path], output_dir: Path, shard: Any) -> str:
    """The one line for a run whose episodes were all saved but whose results files could not be written."""
    from .run_dir import resume_command

    log, kept = _kept_episodes(output_dir, shard)
    names = " and ".join(p.name for p in files)
    where = f" writing {exc.filename}" if exc.filename else ""
    were, left = ("were", "any from an earlier attempt are left as they were") if len(files) > 1 else \
        ("was", "one from an earlier attempt is left as it was")
    return (f"error: {exc.strerror or exc}{where}: {names} {were} not written ({left}); "
            f"the {kept} episodes scored are kept in {log}, and are not run again. Free some space, then continue "
            f"with: {resume_command(output_dir, shard)} (it writes {names}) and the same server flags "
            "(and --env-import/--env-adapter/--env-prefix, if the run used them)")


def _report_rollout(args: argparse.Namespace, results: Dict[str, Any], output_dir: Path, shard: Any) -> int:
    """Write results.json and eval_info.json, print the summary and the reference's lines; return the exit code."""
    import numpy as np

    from .eval_info import EVAL_INFO_FILENAME, lerobot_eval_info
    from .results import write_results_together
    from .run_dir import INTERRUPTED_EXIT_CODE, interrupts_deferred, is_storage_error, results_file_name, resume_command

    files = [(output_dir / results_file_name(shard), results)]
    if shard is None:
        files.append((output_dir / EVAL_INFO_FILENAME, lerobot_eval_info(results)))
    with interrupts_deferred():  # a second Ctrl-C while an interrupted run saves its results must not lose them
        try:  # both or neither: a full disk never leaves a new results.json beside an earlier attempt's eval_info.json
            path = write_results_together(files)[0]
        except OSError as exc:
            if not is_storage_error(exc):
                raise
            raise SystemExit(_summary_storage_failure(exc, [p for p, _r in files], output_dir, shard)) from None
    overall = results["overall"]
    episodes = results["per_episode"]
    print(f"Collecting {len(episodes)} episodes took {overall['eval_s']:.2f} seconds")
    video_dir = results["config"].get("video_dir")
    if video_dir:
        if results.get("video_paths"):
            print("Video saved to: ", video_dir)
        elif not episodes:  # it said "Video saved to" over a folder holding only the stopped episodes' partial files
            print(f"No episode video was written to {video_dir} (no episode was scored)")
        elif results["config"].get("max_episodes_rendered") == 0:
            print(f"No episode video was written to {video_dir} (--max-episodes-rendered 0)")
        else:  # it said "Video saved to" over a folder no video could be written to
            print(f"No episode video was written to {video_dir} (see the errors above)")
    print(format_summary(results))
    print_errored_episodes(results)
    finished = [e for e in episodes if not e.get("error")]
    infos = {"episode_lengths": [e["length"] for e in finished], "episode_rewards": [e["sum_reward"] for e in finished]}
    print("results: ", (results["env_name"], [bool(e["success"]) for e in finished], infos))
    print("success rate: ", float(np.mean([e["success"] for e in finished])) if finished else "n/a (no episode finished)")
    n_errors = print_incomplete(results)
    status = results.get("status", "complete")
    not_run = results.get("n_not_run", 0)
    if status != "complete":
        reason = str(results.get("stop_reason"))
        count = "" if f"{not_run} episodes did not run" in reason else f"; {not_run} episodes did not run"  # Ray's names them
        advice = ("(its episodes are two policies', so it cannot be resumed: serve one checkpoint or dataset on every "
                  "server and start a new run)" if results.get("policy_conflict") else
                  f"(continue with: {resume_command(output_dir, shard)}"
                  f"{' --ray-address ' + args.ray_address if args.ray_address else ''}{_registration_flags(args)} and "
                  "the same server flags)")
        print(f"{status.upper()}: {reason}{count} {advice}")
    print(f"Results: {path}")
    if status == "interrupted":
        return INTERRUPTED_EXIT_CODE
    if status != "complete" or results["failed_tasks"] or results.get("failed_shards"):
        return 1
    return errors_exit(n_errors, bool(finished), args.allow_errors)


def _registrations(args: argparse.Namespace) -> Dict[str, Any]:
    """The run's --env-import/--env-prefix/--env-adapter values, as its run file records them."""
    return {"env_import": list(getattr(args, "env_import", None) or []),
            "env_prefix": [list(pair) for pair in getattr(args, "env_prefix", None) or []],
            "env_adapter": [list(pair) for pair in getattr(args, "env_adapter", None) or []]}


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


def _run(args: argparse.Namespace, env_spec: str, config: Any, shard: Any, done: Any, output_dir: Path,
         first_policy: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    from . import connection
    from .cli_errors import UsageError
    from .policy_identity import pinned_policy, policy_record
    from .ray_runner import parse_servers, run_with_ray
    from .run_dir import EpisodeLog, episode_log_name, sigterm_as_interrupt
    from .shard import run_suite

    servers = parse_servers(args.host, args.port)
    log = EpisodeLog(output_dir / episode_log_name(shard))
    if args.ray_address:
        policy = _ray_run_policy(servers, args)
        _adopt_run_policy(output_dir, shard, first_policy, policy, "the servers", len(done))
        if policy is not None:  # the servers answered here: the plan against the policy's chunk, as a plain run
            try:  # checks it (every shard failed the same way, and advised --resume)
                with _ray_probe_client(servers[0], args) as client:
                    _check_policy_runs_settings(client, env_spec, config, Path(args.resume) if args.resume else None,
                                                policy)
            except (TimeoutError, ConnectionError) as exc:  # gone since: the shards find out themselves
                logger.debug("could not check the plan against %s: %s", servers[0], exc)
        with sigterm_as_interrupt():
            results = run_with_ray(env_spec, config, servers, args.ray_address, args.ray_shards, args.api_token,
                                   args.timeout_ms, args.ray_cpus_per_shard, curve_keys=connection.portable_keys(args),
                                   done=done, on_episode=lambda outcome: log.append(outcome.to_json_dict()),
                                   policy=policy if policy is not None else first_policy,
                                   registrations=_registrations(args))
        # The driver's record, else the one the shards agreed on (None when they differed: the run is then aborted)
        results["policy"] = policy if policy is not None else results.get("policy") or first_policy
        results["episode_log"] = str(log.path)
        return results
    if len(servers) > 1:
        raise UsageError("several --policy-client-host entries need --ray-address (one server per shard)")
    server = servers[0]
    with connection.open_client(server.host, server.port, args) as client:
        policy = policy_record(client)
        _adopt_run_policy(output_dir, shard, first_policy, policy, f"the server at {server}", len(done))
        _check_policy_runs_settings(client, env_spec, config, Path(args.resume) if args.resume else None, policy)
        not_applied = _record_settings_not_applied(client, config, output_dir, shard)
        with sigterm_as_interrupt(), pinned_policy(client, policy):  # a restart with another checkpoint stops it
            results = run_suite(client, env_spec, config, shard, progress=True,
                                on_episode=lambda outcome: log.append(outcome.to_json_dict()), done=done)
    results["config"].update(policy_client_host=server.host, policy_client_port=server.port)
    results["policy"] = policy
    results["settings_not_applied"] = not_applied
    results["episode_log"] = str(log.path)
    return results


def _record_settings_not_applied(client: Any, config: Any, output_dir: Path, shard: Any) -> Dict[str, Any]:
    """The run's settings that its server ignores (--rtc-frozen-steps against a reference server), warned of and
    added to its run file."""
    from .applied_settings import settings_not_applied, warn_not_applied
    from .run_dir import record_settings_not_applied

    not_applied = settings_not_applied(client, {"rtc_frozen_steps": config.rtc_frozen_steps})
    if not_applied:
        warn_not_applied(client, not_applied)
        record_settings_not_applied(output_dir, shard, not_applied)
    return not_applied


def _adopt_run_policy(output_dir: Path, shard: Any, first_policy: Optional[Mapping[str, Any]],
                      policy: Optional[Mapping[str, Any]], who: str, resumed_episodes: int = 0) -> None:
    """Record the policy a run evaluates in its run file, or, for a resume, refuse one whose fingerprint differs
    from the first attempt's (its finished episodes would be reported with another policy's), or that cannot be
    learned when the first attempt's was; `who` serves it: "the server at HOST:PORT" or "the servers"."""
    from .cli_errors import UsageError
    from .policy_identity import describe, same_policy
    from .run_dir import record_run_policy

    plural = who == "the servers"
    serving = f"{who} {'serve' if plural else 'serves'}"

    if not same_policy(first_policy, policy):
        raise UsageError(f"--resume {output_dir}: {serving} {describe(policy)}, and this run started against "
                         f"{describe(first_policy)}; serve the same checkpoint (or dataset) to continue it, or start "
                         "a new run")
    if policy is None and first_policy is not None and resumed_episodes:
        # Nothing to compare with (a reference server, or get_server_info went unanswered): its episodes would be
        # pooled with the first attempt's under the first attempt's policy, whatever it serves.
        raise UsageError(f"--resume {output_dir}: {who} did not say which policy {'they serve' if plural else 'it serves'} "
                         f"(no get_server_info answer: a reference server, or one too busy to answer), and this run's "
                         f"{resumed_episodes} earlier episodes were scored against {describe(first_policy)}; resume "
                         "against a gr00t-server serving it, or start a new run")
    if policy is not None and first_policy is not None and not first_policy.get("identity") and policy.get("identity"):
        record_run_policy(output_dir, shard, policy)  # the checkpoint identity from now on: a later resume is held to it
    if policy is not None and first_policy is None:
        if resumed_episodes:  # a run file of an older gr00t-eval (or a server that gave no info then)
            logger.warning("--resume %s: this run recorded no policy for its %d earlier episodes (an older gr00t-eval, or "
                           "a server that did not say), so nothing checks that %s the same checkpoint as then; its "
                           "results will pool both. Recording %s from now on", output_dir, resumed_episodes, serving,
                           describe(policy))
        record_run_policy(output_dir, shard, policy)


def _check_policy_runs_settings(client: Any, env_spec: str, config: Any, resumed: Optional[Path],
                                policy: Optional[Mapping[str, Any]] = None) -> None:
    """UsageError, before any episode, when the policy cannot run the plan: a gr00t-server policy served without the
    sim wrapper (`policy` is its record; every episode errored on the flat observations a rollout sends), one served
    for another embodiment than a task's env, a replay whose execution horizon is not --n-action-steps, or
    --n-action-steps beyond its chunk (a failed task, a NaN success rate and advice to --resume the same settings)."""
    from .cli_errors import UsageError
    from .policy_identity import check_serves_env_embodiments, check_takes_flat_observations
    from .rollout.policy_io import HorizonSpec
    from .rollout.replay_plan import check_replay_horizon
    from .suites import resolve_tasks

    try:
        check_takes_flat_observations(policy)
        check_serves_env_embodiments(policy, [task.env_name for task in resolve_tasks(env_spec)[0]])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        check_replay_horizon(policy, config)
    except ValueError as exc:
        raise UsageError(f"the policy server cannot run this rollout: {exc}{_started_with(resumed)}") from None
    try:
        spec = HorizonSpec.from_modality_config(client.get_modality_config())
    except Exception as exc:  # noqa: BLE001 - the run itself reports a policy whose config cannot be read
        logger.debug("could not check the plan against the policy's modality config: %s", exc)
        return
    try:
        spec.check_n_action_steps(config.n_action_steps)
    except ValueError as exc:
        fix = (f"the run in {resumed} was started with it; start a new run (a new --output-dir) with another "
               "--n-action-steps" if resumed is not None else "pass a smaller --n-action-steps")
        raise UsageError(f"the policy server cannot run this rollout: {exc}; {fix}") from None


def _started_with(resumed: Optional[Path]) -> str:
    """For a refused --resume: the saved settings are the run's, so its fix is a new run."""
    return "" if resumed is None else (f" (the run in {resumed} was started with these settings: start a new run, in a "
                                       "new --output-dir, with the corrected ones)")


RAY_POLICY_PROBE_MS = 5000


def _ray_probe_client(server: Any, args: argparse.Namespace) -> Any:
    """A PolicyClient the driver asks a Ray run's server questions with (the run's flags, a short timeout: a server
    reachable from the workers only must not hold the start for a whole --timeout-ms)."""
    from gr00t_client import PolicyClient

    from . import connection

    options = {**connection.client_options(args), "timeout_ms": min(args.timeout_ms, RAY_POLICY_PROBE_MS)}
    return PolicyClient(host=server.host, port=server.port, **options)


def _ray_run_policy(servers: Any, args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """The policy every server of a Ray run serves, asked from the driver before any shard runs (as a plain run asks
    its one server); UsageError when two serve different ones (`merge` refuses such shards too). None, with a
    warning, when a server cannot be asked from here (reachable from the workers only): the run then records none."""
    from .cli_errors import UsageError
    from .policy_identity import describe, policy_record

    records = {}
    for server in servers:
        with _ray_probe_client(server, args) as client:
            records[str(server)] = policy_record(client)
    unknown = [name for name, record in records.items() if record is None]
    known = {name: record for name, record in records.items() if record is not None}
    fingerprints = {record.get("fingerprint") for record in known.values()}
    if len(fingerprints) > 1:
        tags = {record.get("embodiment_tag") for record in known.values()}
        fix = ("serve the same --embodiment-tag on every server" if len(tags) > 1 else
               "serve the same checkpoint (or dataset) on every server")
        raise UsageError("the policy servers of this Ray run serve different policies ("
                         + "; ".join(f"{name}: {describe(record)}" for name, record in known.items())
                         + f"); one run evaluates one policy: {fix}")
    if unknown:  # its episodes may be another policy's: naming the others' would claim too much
        logger.warning("could not ask %s from this machine which policy it serves; the run records no policy",
                       ", ".join(unknown))
        return None
    return next(iter(known.values()), None)


# --- suites -----------------------------------------------------------------------------------


def cmd_suites(args: argparse.Namespace) -> int:
    """`gr00t-eval suites`: the registered suites, one per line."""
    from .suites import get_suite, suite_names

    for name in suite_names():
        suite = get_suite(name)
        print(f"{name}: {len(suite.tasks)} tasks ({', '.join(sorted({t.group for t in suite.tasks}))}). {suite.description}")
    return 0
