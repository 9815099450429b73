"""`gr00t-eval batch --jobs jobs.json`: run rollout jobs in sequence, isolate failures, write one combined file.

The job file format is documented in docs/batch-jobs.md. A job that cannot run (bad env, unknown field,
policy server gone) is marked failed with its reason and the next job runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from gr00t_client import BasePolicy, PolicyClient

from .results import write_results
from .rollout.runner import RolloutConfig
from .shard import run_suite

logger = logging.getLogger(__name__)

BATCH_RESULTS_FILENAME = "batch_results.json"
JOB_KEYS = {"name", "env_name", "policy_server", "n_episodes", "max_episode_steps", "n_envs", "seed", "overrides"}
SERVER_KEYS = {"host", "port", "api_token", "api_token_env", "timeout_ms"}
CONFIG_FIELDS = {f.name for f in dataclasses.fields(RolloutConfig)} - {"env_name"}
DEFAULT_TIMEOUT_MS = 15000


class JobError(ValueError):
    """A job's description is invalid (the message names the job and the field)."""


@dataclass(frozen=True)
class PolicyServerAddress:
    """Where a job's policy server listens, and how to authenticate."""

    host: str
    port: int
    api_token: Optional[str] = None
    timeout_ms: int = DEFAULT_TIMEOUT_MS

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Job:
    """One rollout of the batch: env names or suites, a policy server and the RolloutConfig fields to set."""

    name: str
    env_name: str
    server: PolicyServerAddress
    config: Dict[str, Any] = field(default_factory=dict)

    def rollout_config(self) -> RolloutConfig:
        return RolloutConfig(env_name=self.env_name, **self.config)


def _server(name: str, raw: Any) -> PolicyServerAddress:
    if not isinstance(raw, Mapping):
        raise JobError(f"job {name!r}: 'policy_server' must be an object with 'host' and 'port', got {raw!r}")
    unknown = set(raw) - SERVER_KEYS
    if unknown:
        raise JobError(f"job {name!r}: unknown policy_server fields {sorted(unknown)}; allowed: {sorted(SERVER_KEYS)}")
    if "port" not in raw:
        raise JobError(f"job {name!r}: policy_server needs a 'port'")
    token = raw.get("api_token")
    if raw.get("api_token_env"):
        token = os.environ.get(str(raw["api_token_env"]))
        if token is None:
            raise JobError(f"job {name!r}: environment variable {raw['api_token_env']!r} (api_token_env) is not set")
    return PolicyServerAddress(str(raw.get("host", "127.0.0.1")), int(raw["port"]), token, int(raw.get("timeout_ms", DEFAULT_TIMEOUT_MS)))


def parse_job(raw: Any, index: int, defaults: Optional[Mapping[str, Any]] = None) -> Job:
    """One job object (merged over `defaults`) -> Job; raises JobError naming the job and the bad field."""
    if not isinstance(raw, Mapping):
        raise JobError(f"job #{index} must be an object, got {type(raw).__name__}")
    merged = {**(defaults or {}), **raw}
    merged["overrides"] = {**((defaults or {}).get("overrides") or {}), **(raw.get("overrides") or {})}
    name = str(merged.get("name") or f"job-{index}")
    unknown = set(merged) - JOB_KEYS
    if unknown:
        raise JobError(f"job {name!r}: unknown fields {sorted(unknown)}; allowed: {sorted(JOB_KEYS)}")
    if not merged.get("env_name"):
        raise JobError(f"job {name!r}: 'env_name' (env names or suites, comma-separated) is required")
    if "policy_server" not in merged:
        raise JobError(f"job {name!r}: 'policy_server' ({{'host': ..., 'port': ...}}) is required")
    config = {k: merged[k] for k in ("n_episodes", "max_episode_steps", "n_envs", "seed") if k in merged}
    for key, value in merged["overrides"].items():
        if key not in CONFIG_FIELDS:
            raise JobError(f"job {name!r}: override {key!r} is not a rollout setting; allowed: {sorted(CONFIG_FIELDS)}")
        config[key] = value
    return Job(name, str(merged["env_name"]), _server(name, merged["policy_server"]), config)


def load_jobs(path: Union[str, Path]) -> List[Union[Job, JobError]]:
    """Read a job file: {"defaults": {...}, "jobs": [...]} or a bare list; invalid jobs come back as JobError."""
    data = json.loads(Path(path).read_text())
    defaults: Mapping[str, Any] = {}
    if isinstance(data, Mapping):
        unknown = set(data) - {"defaults", "jobs"}
        if unknown or "jobs" not in data:
            raise JobError(f"{path}: a job file is a list of jobs or an object with 'jobs' (and optional 'defaults'); got keys {sorted(data)}")
        defaults, data = data.get("defaults") or {}, data["jobs"]
    if not isinstance(data, list):
        raise JobError(f"{path}: 'jobs' must be a list, got {type(data).__name__}")
    jobs: List[Union[Job, JobError]] = []
    for index, raw in enumerate(data):
        try:
            jobs.append(parse_job(raw, index, defaults))
        except (JobError, TypeError, ValueError) as exc:
            jobs.append(exc if isinstance(exc, JobError) else JobError(f"job #{index}: {exc}"))
    return jobs


def connect(server: PolicyServerAddress) -> PolicyClient:
    """A PolicyClient for `server` that has answered a ping (ConnectionError otherwise)."""
    client = PolicyClient(server.host, server.port, timeout_ms=server.timeout_ms, api_token=server.api_token)
    if not client.ping():
        client.close()
        raise ConnectionError(f"policy server at {server} did not answer ping within {server.timeout_ms} ms")
    return client


def run_job(job: Job, policy_factory: Callable[[PolicyServerAddress], BasePolicy] = connect, progress: bool = False) -> Dict[str, Any]:
    """Run one job; returns its record {name, status ok|failed, reason, wall_s, results}."""
    start = time.perf_counter()
    record: Dict[str, Any] = {"name": job.name, "env_name": job.env_name, "policy_server": str(job.server),
                              "status": "ok", "reason": None, "results": None}
    policy = None
    try:
        config = job.rollout_config()
        policy = policy_factory(job.server)
        results = run_suite(policy, job.env_name, config, progress=progress)
        record["results"] = results
        reasons = [f"{task}: {error}" for task, error in results["failed_tasks"].items()]
        failed_episodes = [e for e in results["per_episode"] if e.get("failure_reason")]
        if not reasons and failed_episodes and len(failed_episodes) == len(results["per_episode"]):
            reasons.append(f"every episode failed, e.g. {failed_episodes[0]['failure_reason']}")
        if reasons:
            record["status"], record["reason"] = "failed", "; ".join(reasons)
    except Exception as exc:  # noqa: BLE001 - one broken job must not stop the batch
        logger.error("job %s failed: %s: %s", job.name, type(exc).__name__, exc)
        record["status"], record["reason"] = "failed", f"{type(exc).__name__}: {exc}"
    finally:
        close = getattr(policy, "close", None)
        if close is not None:
            close()
    record["wall_s"] = time.perf_counter() - start
    return record


def run_batch(jobs: Sequence[Union[Job, JobError]], output_path: Optional[Union[str, Path]] = None,
              policy_factory: Callable[[PolicyServerAddress], BasePolicy] = connect, progress: bool = False) -> Dict[str, Any]:
    """Run jobs in order; the combined file is rewritten after each job so a crash keeps the finished ones."""
    batch: Dict[str, Any] = {"kind": "batch", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "jobs": []}
    for index, job in enumerate(jobs):
        if isinstance(job, JobError):
            record = {"name": f"job-{index}", "env_name": None, "policy_server": None, "status": "failed",
                      "reason": f"invalid job: {job}", "results": None, "wall_s": 0.0}
        else:
            logger.info("job %d/%d: %s (%s on %s)", index + 1, len(jobs), job.name, job.env_name, job.server)
            record = run_job(job, policy_factory, progress)
        batch["jobs"].append(record)
        batch["n_failed"] = sum(1 for r in batch["jobs"] if r["status"] != "ok")
        if output_path is not None:
            write_results(output_path, batch)
    batch["n_failed"] = sum(1 for r in batch["jobs"] if r["status"] != "ok")
    return batch


def format_table(batch: Mapping[str, Any]) -> str:
    """A plain-text table: one row per job with status, episodes, success and reason."""
    header = ("job", "status", "tasks", "episodes", "success %", "avg_sum_reward", "eval_s", "reason")
    rows = [header]
    for record in batch["jobs"]:
        overall = (record.get("results") or {}).get("overall") or {}
        n_tasks = len((record.get("results") or {}).get("tasks") or [])

        def number(key: str, fmt: str) -> str:
            value = overall.get(key)
            return fmt.format(value) if isinstance(value, (int, float)) and value == value else "-"

        reason = record.get("reason") or ""
        rows.append((record["name"], record["status"], str(n_tasks or "-"), number("n_episodes", "{:d}"),
                     number("pc_success", "{:.1f}"), number("avg_sum_reward", "{:.3f}"), number("eval_s", "{:.1f}"),
                     reason if len(reason) <= 80 else reason[:77] + "..."))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
