"""results.json for open-loop and rollout runs (rollout: the shape of lerobot-eval's eval_info.json)."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from .metrics import ActionErrors, EpisodeOutcome, rollout_aggregates

RESULTS_FILENAME = "results.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Infinity; null keeps the file loadable everywhere
    if isinstance(value, Path):
        return str(value)
    return value


def write_results(path: Union[str, Path], results: Mapping[str, Any]) -> Path:
    """Write `results` as indented JSON (numpy values converted, NaN as null); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of this writer's own: two processes (or threads) writing one file never share a half-written temporary
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(_jsonable(results), indent=2) + "\n")
        tmp.replace(path)  # never leave a half-written results file behind
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: no empty temporary left beside the results
        raise
    return path


def open_loop_results(
    trajectories: Mapping[int, Dict[str, Any]],
    config: Mapping[str, Any],
    skipped: Sequence[int] = (),
    errored: Optional[Mapping[int, str]] = None,
    skip_reasons: Optional[Mapping[int, str]] = None,
    stop: Optional[Mapping[str, Any]] = None,
    policy: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Per-trajectory errors (each holding an ActionErrors under "errors") plus plain averages over trajectories.
    `policy`: what the server served (policy_identity.policy_record; None for a server that does not say).

    `errored` (id -> why) lists trajectories the policy did not follow and `skipped` those not evaluated
    (`skip_reasons` says why); neither is in the averages. `stop` ({"status", "reason", "not_run"}) marks a
    run that ended part-way; its averages cover the trajectories scored before.
    """
    per_traj = {}
    for traj_id, entry in trajectories.items():
        errors: ActionErrors = entry["errors"]
        per_traj[str(traj_id)] = {**{k: v for k, v in entry.items() if k != "errors"}, **errors.to_json_dict()}
    mses = [entry["errors"].mse for entry in trajectories.values()]
    maes = [entry["errors"].mae for entry in trajectories.values()]
    return {
        "kind": "open_loop",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": stop["status"] if stop else "complete",
        "stop_reason": stop["reason"] if stop else None,
        "not_run_trajectories": [int(t) for t in stop["not_run"]] if stop else [],
        "config": dict(config),
        "policy": dict(policy) if policy else None,
        "trajectories": per_traj,
        "skipped_trajectories": list(skipped),
        "skip_reasons": {str(k): v for k, v in (skip_reasons or {}).items()},
        "errored_trajectories": [{"traj_id": int(k), "error": v} for k, v in (errored or {}).items()],
        "aggregated": {
            "avg_mse": float(np.mean(mses)) if mses else None,
            "avg_mae": float(np.mean(maes)) if maes else None,
            "n_trajectories": len(mses),
            "n_errors": len(errored or {}),
        },
    }


def rollout_results(
    outcomes: Sequence[EpisodeOutcome], eval_s: float, config: Mapping[str, Any], env_name: str
) -> Dict[str, Any]:
    """eval_info.json-like: per_episode entries, aggregated metrics, video_paths and the run's config."""
    ordered = sorted(outcomes, key=lambda o: o.episode_index)
    return {
        "kind": "rollout",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "env_name": env_name,
        "config": dict(config),
        "per_episode": [o.to_json_dict() for o in ordered],
        "aggregated": rollout_aggregates(ordered, eval_s),
        "video_paths": [o.video_path for o in ordered if o.video_path],
    }


def load_results(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a results.json back."""
    return json.loads(Path(path).read_text())
