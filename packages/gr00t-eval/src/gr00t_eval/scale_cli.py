"""CLI for scaled evaluation: suites and task lists, `--n-envs 0`, `--shard`, `--ray-address`; `batch` (batch_cli)
and `merge` (merge_cli).

Wiring in cli.py: `add_scale_arguments(rollout_parser)`, `register_scale_commands(subparsers)`, and in main()
run `args.scale_command(args)` when set (batch, merge, suites). `run_rollout_command` runs every rollout, from
one env to a suite on Ray: output directory, episode log, resume, interrupt and the exit status (its settings from
rollout_args, its folders from rollout_output, its policy checks from run_policy, its report from rollout_report).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from gr00t_client.cli_flags import flag as _flag
from gr00t_client.peer_text import shown_text

from .batch_cli import DEFAULT_BATCH_DIR, cmd_batch
from .cli_errors import path_flag
from .merge_cli import cmd_merge
from .rollout_args import (_check_env_names, _check_rollout_args, check_ray_flags, _registrations,
                           _registration_flags, _saved_rollout_config, _videos_moved_with_run, resumed_env_timeout,
                           resumed_video_dir, rollout_config_from_args, rollout_seed)
from .rollout.config import RESET_FAILED
from .rollout_output import (_claim_videos, _release_unstarted_run, _released_unless_started, _rollout_output_dir,
                             delete_earlier_videos)
from .rollout_report import _report_rollout, _start_storage_failure, _storage_failure
from .run_policy import (_adopt_run_policy, _check_policy_runs_settings, _ray_probe_client, _ray_run_policy,
                         _record_settings_not_applied)

__all__ = ["_adopt_run_policy", "_report_rollout", "add_scale_arguments", "cmd_suites", "register_scale_commands",
           "rollout_config_from_args", "run_rollout_command"]

logger = logging.getLogger(__name__)


def add_scale_arguments(rollout_parser: argparse.ArgumentParser) -> None:
    """Add --shard, --ray-address, --ray-shards and --ray-cpus-per-shard to the rollout parser."""
    group = rollout_parser.add_argument_group(
        "scaling",
        "--env-name also takes a comma-separated list or suite names (see `gr00t-eval suites`); --n-envs 0 picks "
        "floor(usable CPUs*0.7) capped by the episodes left and 64; --policy-client-host may list several hosts "
        "(h1,h2:5556) for --ray-address, assigned to shards round-robin.",
    )
    group.add_argument(*_flag("shard"), default=None, metavar="I/N",
                       help="run only shard I (0-based) of N: a fixed slice of the episodes with their seeds; needs --seed")
    group.add_argument(*_flag("ray-address"), default=None, metavar="auto|HOST:PORT|local",
                       help="run the shards as Ray tasks on this cluster (local: start one here) and merge them; "
                            'a ray://HOST:PORT address also needs pip install "ray[client]"')
    group.add_argument(*_flag("ray-shards"), type=int, default=0, help="shards for --ray-address (default 0: one per cluster CPU)")
    group.add_argument(*_flag("ray-cpus-per-shard"), type=float, default=1.0, help="CPUs Ray reserves per shard (default 1)")


def register_scale_commands(subparsers: Any) -> None:
    """Add the `batch`, `merge` and `suites` sub-commands."""
    p = subparsers.add_parser("batch", help="run rollout jobs from a JSON file in sequence (docs/batch-jobs.md)")
    p.add_argument(*_flag("jobs"), type=path_flag, default=None, help="job file (JSON); required unless --resume")
    p.add_argument(*_flag("output-dir"), type=path_flag, default=None,
                   help=f"where jobs.json and batch_results.json go; must be empty or new (default: a new dated "
                        f"directory {DEFAULT_BATCH_DIR}/YYYY-MM-DD/HH-MM-SS_batch)")
    p.add_argument(*_flag("overwrite"), action="store_true",
                   help="empty a non-empty --output-dir first: an earlier run's folder, holding its run, claim or "
                        "results file at its top (a folder without one is refused, deleting nothing)")
    p.add_argument(*_flag("resume"), type=path_flag, default=None, metavar="DIR",
                   help="continue the batch in DIR: jobs marked done are kept (unless their settings or policy_server "
                        "changed since), pending and failed ones run again")
    p.set_defaults(scale_command=cmd_batch)

    p = subparsers.add_parser("merge", help="merge `rollout --shard` results into the results of one run")
    p.add_argument("results", nargs="+", type=path_flag,
                   help="results files (or directories holding results*.json); each shard once: a merge given beside "
                        "a shard it holds (say, that shard resumed) is refused, naming both")
    p.add_argument(*_flag("output"), type=path_flag, required=True,
                   help="merged results file (a directory gets results.json; a symbolic link is written through, "
                        "to where it points)")
    p.add_argument(*_flag("allow-missing"), action="store_true",
                   help="merge even if some episodes are in no file, or a shard given is still running (its results "
                        "are left out; the merged status is then 'incomplete', exit status 1)")
    p.add_argument(*_flag("allow-errors"), action="store_true",
                   help="exit 0 even when episodes errored (they are still reported and left out of the metrics), "
                        "unless every episode errored: a merge that scored nothing exits 1")
    p.add_argument(*_flag("overwrite"), action="store_true",
                   help="replace an --output that is not an earlier merge of the same plan and policy (a rollout "
                        "results file no run keeps beside it, or another evaluation's merge), or write into a whole "
                        "run's --output-dir (its eval_info.json is replaced); a run's own files (episode log, run or "
                        "claim file, its results) and files that are no rollout results are never replaced")
    p.set_defaults(scale_command=cmd_merge)

    from .cli import add_env_import_flag

    p = subparsers.add_parser("suites", help="list the registered task suites (the built-in ones, and those the "
                                             "--env-import modules given register)")
    add_env_import_flag(p)
    p.set_defaults(scale_command=cmd_suites)


# --- rollout ------------------------------------------------------------------------------------


def run_rollout_command(args: argparse.Namespace) -> int:
    """Run a rollout (or resume one) into its output directory; exit 0, 1 (errors), 130 (interrupted)."""
    from .cli_errors import UsageError
    from .episode_log import EpisodeLog, latest_entries
    from .metrics import EpisodeOutcome
    from .output_files import episode_log_name, run_file_name
    from .rollout.config import draw_base_seed
    from .ray_connect import check_ray_address, import_ray
    from .ray_runner import parse_servers
    from .run_file import read_run_file, write_run_file
    from .run_resume import (ATTEMPTS_KEY, TASKS_KEY, add_earlier_task_eval_s, covered_attempts, earlier_eval_s,
                             earlier_results, refuse_changed_settings)
    from .run_stop import is_storage_error, is_storage_line
    from .shard import ShardSpec, planned_task_pairs, resolve_shard_n_envs

    try:  # a bad host list fails before the output directory is made
        parse_servers(args.host, args.port, port_given="port" in getattr(args, "given_flags", ()))
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
        check_ray_flags(args)
        import_ray()
        check_ray_address(args.ray_address)
    done: List[EpisodeOutcome] = []
    earlier = None
    earlier_task_s: Dict[str, float] = {}  # the seconds earlier attempts spent on each task
    first_policy = None  # the policy the run's first attempt evaluated (its run file), which a resume must match
    earlier_not_applied: Dict[str, Any] = {}  # settings the first attempt's server ignored (its run file)
    logged: List[Dict[str, Any]] = []  # a resumed log's entries: its attempts' time stamps
    made_folders: List[Path] = []  # a new dated directory and the parents it created, removed if it never starts
    if args.resume:  # a Ray run resumes like any other: its driver logged every episode in episodes.jsonl
        output_dir = Path(args.resume)
        saved = read_run_file(output_dir, shard)
        env_spec = saved["env_name"]
        _check_env_names(env_spec, output_dir, saved)  # first: flags left out that the env names need say "unknown prefix"
        refuse_changed_settings(args, saved)
        config = _saved_rollout_config(saved, output_dir, shard)
        config, moved = resumed_video_dir(saved, config, output_dir, shard)
        config = resumed_env_timeout(args, config, output_dir)
        _claim_videos(output_dir, shard, env_spec, config, resume=True)
        earlier_not_applied = saved.get("settings_not_applied") or {}
        earlier = earlier_results(output_dir, shard)
        # A Ray run whose driver could not ask every server records no policy in run.json; its results name the one
        # its shards ran, which the resumed episodes must share.
        first_policy = saved.get("policy") or (earlier or {}).get("policy")
        if earlier is not None and earlier.get("policy_conflict"):
            raise UsageError(f"--resume {output_dir}: its shards served different policies ({earlier.get('stop_reason')}); "
                             "its episodes are not one policy's, so resuming would pool them: serve one checkpoint or "
                             "dataset on every server and start a new run (a new --output-dir)")
        # read once: the episodes kept (the latest entry of each) and every attempt's time stamps come from one read
        logged = list(EpisodeLog(output_dir / episode_log_name(shard)).entries())
        done = [EpisodeOutcome.from_json_dict(e) for e in latest_entries(logged)]
        earlier_task_s = earlier_eval_s(logged, earlier)
        old_video_dir = saved.get("config", {}).get("video_dir") if moved else config.video_dir
        done = _videos_moved_with_run(done, old_video_dir, config.video_dir)  # the folder's videos, where they now are
        finished = sum(1 for o in done if o.error is None)
        print(f"Resuming {output_dir}: {finished} episodes finished, the rest of {shown_text(env_spec)} runs now (base "
              f"seed {config.seed})")
    else:
        _check_rollout_args(args)
        seed = rollout_seed(args)
        if seed is None and shard is not None:
            raise UsageError("--shard needs --seed (or $GR00T_EVAL_SEED): every shard must use the same episode seeds")
        seed = seed if seed is not None else draw_base_seed()
        env_spec = args.env_name
        made: Dict[str, Any] = {}

        def claim(path: Path) -> None:
            asked = rollout_config_from_args(args, seed, path)
            made["config"] = resolve_shard_n_envs(asked, shard)
            write_run_file(path, {"env_name": env_spec, TASKS_KEY: planned_task_pairs(env_spec),
                                  "config": dataclasses.asdict(made["config"]),
                                  "auto_n_envs_resolved": made["config"].n_envs != asked.n_envs,
                                  "shard": None if shard is None else str(shard),
                                  "default_video_dir": not args.no_video and not args.video_dir,
                                  "registrations": _registrations(args)}, shard)

        try:
            output_dir, earlier_videos, made_folders = _rollout_output_dir(args, env_spec, shard, claim)
        except OSError as exc:
            if not is_storage_error(exc):
                raise
            raise SystemExit(_start_storage_failure(exc)) from None
        config = made["config"]
        with _released_unless_started(output_dir, shard, made_folders=made_folders):
            _claim_videos(output_dir, shard, env_spec, config)
        delete_earlier_videos(args.video_dir, earlier_videos)
    print(f"Output directory: {output_dir} (base seed {config.seed})")
    log = EpisodeLog(output_dir / episode_log_name(shard), claim=run_file_name(shard))
    try:
        with _released_unless_started(output_dir, shard, new_run=not args.resume, made_folders=made_folders):
            results = _run(args, env_spec, config, shard, done, log, first_policy)
            # the envs the names were built with (a resume is held to its run's): merge refuses shards of others
            results["plan"]["registrations"] = _registrations(args)
            if not args.resume and _never_stepped(results):
                # every task failed to start, before its envs were sent a step (an --env-kwarg its env does not
                # take), every episode errored before its first step (a setting that fails every reset), or every
                # Ray shard stopped before scoring (no server answered its workers): as a plain run that reaches no
                # server, the folder is released, and the corrected command is not refused as "not empty" (a
                # --resume repeats the mistake). A run whose envs stepped (a simulator that crashed before the first
                # episode ended) ran: its results.json, episodes not run and --resume line are reported
                _release_unstarted_run(output_dir, shard, made_folders, errored_kept=False)
                raise UsageError(f"no episode was scored: {_why_never_stepped(results)}")
        if earlier_task_s:
            add_earlier_task_eval_s(results, earlier_task_s)
        results[ATTEMPTS_KEY] = covered_attempts(logged, log.attempt)
        if earlier_not_applied:
            results["settings_not_applied"] = {**earlier_not_applied, **(results.get("settings_not_applied") or {})}
        log.check_folder()  # results written into a folder that replaced the run's would report a run that is not there
        return _report_rollout(args, results, output_dir, shard)
    except OSError as exc:  # a folder of the run's turned read-only for this user too: the line says --resume
        if not is_storage_line(exc, output_dir, config.video_dir):
            raise
        raise SystemExit(_storage_failure(exc, output_dir, shard, _registration_flags(args))) from None


def _never_stepped(results: Mapping[str, Any]) -> bool:
    """Whether a run (not stopped by a signal) sent its envs no step and scored no episode: each task failed while its
    envs were built, or each episode errored at its reset (a setting its env takes but cannot reset with), or none
    ran at all (aborted or incomplete)."""
    if results.get("envs_stepped") or results.get("status") == "interrupted":
        return False
    entries = results.get("per_episode") or []
    if entries:
        return all(str(entry.get("error") or "").startswith(RESET_FAILED) for entry in entries)
    return results.get("status") in ("aborted", "incomplete")


def _why_never_stepped(results: Mapping[str, Any]) -> str:
    """'task T failed: ...' for each failed task, and 'every episode errored at its reset, before its envs were sent a
    step (the first: episode I of T: reset failed: ...)' where episodes errored; else the run's stop reason."""
    reasons = [f"task {task} failed: {why}" for task, why in (results.get("failed_tasks") or {}).items()]
    errored = results.get("per_episode") or []
    if errored:
        first = errored[0]
        reasons.append(f"every episode errored at its reset, before its envs were sent a step (the first: episode "
                       f"{first.get('episode_index')} of {first.get('task')}: {first.get('error')})")
    return "; ".join(reasons) or str(results.get("stop_reason"))


def _run(args: argparse.Namespace, env_spec: str, config: Any, shard: Any, done: Any, log: Any,
         first_policy: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    from . import connection
    from .cli_errors import UsageError
    from .output_files import results_file_name
    from .policy_identity import pinned_policy, policy_record
    from .ray_runner import parse_servers, run_with_ray
    from .run_dir import remove_merges_of
    from .run_stop import output_folder_checked, sigterm_as_interrupt
    from .shard import run_suite

    servers = parse_servers(args.host, args.port)
    output_dir = log.path.parent
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
        if shard is not None:  # its results change now (not when it stops before): a merge of them in its folder goes
            remove_merges_of(output_dir, results_file_name(shard))
        # a restart with another checkpoint stops it (pinned_policy), and so does its folder gone before a video, or
        # its --video-dir outside it gone (never made again beneath a share's mount point)
        with sigterm_as_interrupt(), pinned_policy(client, policy), output_folder_checked(log.check_folder), \
                output_folder_checked(_outside_video_dir_check(config, output_dir, shard)):
            results = run_suite(client, env_spec, config, shard, progress=True,
                                on_episode=lambda outcome: log.append(outcome.to_json_dict()), done=done)
    results["config"].update(policy_client_host=server.host, policy_client_port=server.port)
    results["policy"] = policy
    results["settings_not_applied"] = not_applied
    results["episode_log"] = str(log.path)
    return results


def _outside_video_dir_check(config: Any, output_dir: Path, shard: Any) -> Callable[[], None]:
    """The check of the run's --video-dir when it lies outside its output folder, whose claim the run holds there
    (rollout_output._claim_videos); else none (the output folder's check covers its own videos/)."""
    from .video_claims import video_claim_writer, video_dir_check
    from .video_dirs import within

    if not config.video_dir or within(Path(config.video_dir), output_dir):
        return lambda: None
    return video_dir_check(config.video_dir, video_claim_writer(output_dir, shard))


# --- suites -----------------------------------------------------------------------------------


def cmd_suites(args: argparse.Namespace) -> int:
    """`gr00t-eval suites`: the registered suites, one per line: the built-in ones and those its --env-import modules
    register (as rollout's --env-import does before it resolves --env-name)."""
    from .cli import import_env_modules
    from .suites import get_suite, suite_names

    import_env_modules(args.env_import)
    for name in suite_names():
        suite = get_suite(name)
        print(f"{name}: {len(suite.tasks)} tasks ({', '.join(sorted({t.group for t in suite.tasks}))}). {suite.description}")
    return 0
