"""CLI for scaled evaluation: suites and task lists, `--n-envs 0`, `--shard`, `--ray-address`, `batch` and `merge`.

Wiring in cli.py: `add_scale_arguments(rollout_parser)`, `register_scale_commands(subparsers)`, and in main()
run `args.scale_command(args)` when set; it returns None when a rollout needs none of this (the plain path runs).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

logger = logging.getLogger(__name__)

DEFAULT_BATCH_DIR = "/tmp/gr00t_batch_eval"


def _flag(name: str) -> List[str]:
    return [f"--{name}", f"--{name.replace('-', '_')}"] if "-" in name else [f"--{name}"]


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
    rollout_parser.set_defaults(scale_command=maybe_run_scaled_rollout)


def register_scale_commands(subparsers: Any) -> None:
    """Add the `batch`, `merge` and `suites` sub-commands."""
    p = subparsers.add_parser("batch", help="run rollout jobs from a JSON file in sequence (docs/batch-jobs.md)")
    p.add_argument(*_flag("jobs"), required=True, help="job file (JSON)")
    p.add_argument(*_flag("output-dir"), default=DEFAULT_BATCH_DIR, help=f"where batch_results.json goes (default {DEFAULT_BATCH_DIR})")
    p.set_defaults(scale_command=cmd_batch)

    p = subparsers.add_parser("merge", help="merge `rollout --shard` results into the results of one run")
    p.add_argument("results", nargs="+", help="results files (or directories holding results*.json)")
    p.add_argument(*_flag("output"), required=True, help="merged results file (a directory gets results.json)")
    p.add_argument(*_flag("allow-missing"), action="store_true", help="merge even if some episodes are in no file")
    p.set_defaults(scale_command=cmd_merge)

    p = subparsers.add_parser("suites", help="list the registered task suites")
    p.set_defaults(scale_command=cmd_suites)


# --- rollout ------------------------------------------------------------------------------------


def needs_scaling(args: argparse.Namespace) -> bool:
    """Whether a rollout uses suites, lists, --n-envs 0, several hosts, --shard or --ray-address."""
    from .suites import suite_names

    env_spec = str(args.env_name)
    return bool(
        args.shard or args.ray_address or args.n_envs == 0
        or "," in env_spec or env_spec.strip() in suite_names() or "," in str(args.host)
    )


def rollout_seed(args: argparse.Namespace) -> Optional[int]:
    """--seed, else $GR00T_EVAL_SEED, else None (unseeded)."""
    if args.seed is not None:
        return args.seed
    value = os.environ.get("GR00T_EVAL_SEED")
    return int(value) if value not in (None, "") else None


def rollout_config_from_args(args: argparse.Namespace, seed: Optional[int]) -> Any:
    """The RolloutConfig the rollout flags describe (videos under --output-dir/videos unless --video-dir)."""
    from .rollout import RolloutConfig

    video_dir = None if args.no_video else (args.video_dir or str(Path(args.output_dir) / "videos"))
    return RolloutConfig(
        env_name=args.env_name, n_episodes=args.n_episodes, n_envs=args.n_envs, n_action_steps=args.n_action_steps,
        max_episode_steps=args.max_episode_steps, seed=seed, video_dir=video_dir, env_kwargs=dict(args.env_kwargs),
        vectorization=args.vectorization, client_chunking=args.client_chunking, chunk_merge=args.chunk_merge,
        rtc_frozen_steps=args.rtc_frozen_steps,
    )


def maybe_run_scaled_rollout(args: argparse.Namespace) -> Optional[int]:
    """Run the rollout here when it needs scaling; None lets the plain rollout command run."""
    if not needs_scaling(args):
        return None
    from .results import RESULTS_FILENAME, write_results
    from .shard import ShardSpec

    if args.n_envs < 0:
        raise SystemExit(f"error: --n-envs must be >= 0 (0 = auto), got {args.n_envs}")
    shard = ShardSpec.parse(args.shard) if args.shard else None
    if shard is not None and args.ray_address:
        raise SystemExit("error: --shard and --ray-address do not combine (Ray makes its own shards)")
    seed = rollout_seed(args)
    if seed is None and (shard is not None or args.ray_address):
        raise SystemExit("error: --shard and --ray-address need --seed (or $GR00T_EVAL_SEED): every episode's seed must be fixed")
    output_dir = Path(args.output_dir)
    config = rollout_config_from_args(args, seed)
    results = _run(args, config, shard)
    name = RESULTS_FILENAME if shard is None else f"results_shard{shard.index}of{shard.count}.json"
    path = write_results(output_dir / name, results)
    print(format_summary(results))
    print("success rate: ", results["overall"]["pc_success"] / 100.0 if results["overall"]["n_episodes"] else float("nan"))
    print(f"Results: {path}")
    return 1 if results["failed_tasks"] or results.get("failed_shards") else 0


def _run(args: argparse.Namespace, config: Any, shard: Any) -> Dict[str, Any]:
    from .connection import open_client, portable_keys
    from .ray_runner import parse_servers, run_with_ray
    from .shard import run_suite

    servers = parse_servers(args.host, args.port)
    if args.ray_address:
        return run_with_ray(args.env_name, config, servers, args.ray_address, args.ray_shards, args.api_token,
                            args.timeout_ms, args.ray_cpus_per_shard, curve_keys=portable_keys(args))
    if len(servers) > 1:
        raise SystemExit("error: several --policy-client-host entries need --ray-address (one server per shard)")
    server = servers[0]
    with open_client(server.host, server.port, args) as client:
        results = run_suite(client, args.env_name, config, shard, progress=True)
    results["config"].update(policy_client_host=server.host, policy_client_port=server.port)
    return results


# --- batch and merge ----------------------------------------------------------------------------


def cmd_batch(args: argparse.Namespace) -> int:
    """`gr00t-eval batch`: run the jobs, print the table; exit 1 when a job failed."""
    from .batch import BATCH_RESULTS_FILENAME, format_table, load_jobs, run_batch

    jobs = load_jobs(args.jobs)
    path = Path(args.output_dir) / BATCH_RESULTS_FILENAME
    batch = run_batch(jobs, path)
    print(format_table(batch))
    print(f"Results: {path}")
    return 1 if batch["n_failed"] else 0


def _results_files(paths: List[str]) -> List[Path]:
    files: List[Path] = []
    for item in map(Path, paths):
        files.extend(sorted(item.glob("results*.json")) if item.is_dir() else [item])
    return files


def cmd_merge(args: argparse.Namespace) -> int:
    """`gr00t-eval merge`: combine shard results files into one."""
    from .results import RESULTS_FILENAME, load_results, write_results
    from .shard import MergeError, merge_results

    files = _results_files(args.results)
    try:
        merged = merge_results([load_results(f) for f in files], allow_missing=args.allow_missing)
    except MergeError as exc:
        raise SystemExit(f"error: {exc}") from None
    merged["merged_files"] = [str(f) for f in files]
    output = Path(args.output)
    path = write_results(output / RESULTS_FILENAME if output.is_dir() or args.output.endswith("/") else output, merged)
    print(format_summary(merged))
    print(f"Merged {len(files)} files into {path}")
    return 0


# --- printing -----------------------------------------------------------------------------------


def _table(rows: List[List[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _row(name: str, kind: str, agg: Mapping[str, Any]) -> List[str]:
    def fmt(key: str, spec: str) -> str:
        value = agg.get(key)
        return spec.format(value) if isinstance(value, (int, float)) and value == value else "-"

    return [name, kind, fmt("n_episodes", "{:d}"), fmt("pc_success", "{:.1f}"), fmt("avg_sum_reward", "{:.3f}"),
            fmt("avg_max_reward", "{:.3f}"), fmt("eval_s", "{:.1f}")]


def format_summary(results: Mapping[str, Any]) -> str:
    """Per-task, per-group and overall rows of a suite results dict."""
    rows = [["name", "level", "episodes", "success %", "avg_sum_reward", "avg_max_reward", "eval_s"]]
    rows += [_row(task, "task", agg) for task, agg in results["per_task"].items()]
    if len(results["per_group"]) > 1 or len(results["per_task"]) > 1:
        rows += [_row(group, "group", agg) for group, agg in results["per_group"].items()]
    rows.append(_row("overall", "overall", results["overall"]))
    text = _table(rows)
    for task, reason in results.get("failed_tasks", {}).items():
        text += f"\ntask {task} failed: {reason}"
    return text


def cmd_suites(args: argparse.Namespace) -> int:
    """`gr00t-eval suites`: the registered suites, one per line."""
    from .suites import get_suite, suite_names

    for name in suite_names():
        suite = get_suite(name)
        print(f"{name}: {len(suite.tasks)} tasks ({', '.join(sorted({t.group for t in suite.tasks}))}). {suite.description}")
    return 0
