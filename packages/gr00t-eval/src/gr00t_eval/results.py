"""results.json for open-loop and rollout runs (rollout: the shape of lerobot-eval's eval_info.json)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from gr00t_client.cli_signals import stop_signals_held

from .metrics import ActionErrors, EpisodeOutcome, overflow_safe_mean, rollout_aggregates
from .run_claim import partial_path
from .run_dir import remove_quietly

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


def _naming(exc: OSError, path: Path) -> OSError:
    """`exc` naming `path`, the file that could not be written (a failed write names no file, a failed open or
    rename the temporary written aside); the same class (OSError(errno, ...) picks it) and errno."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def results_text(results: Any) -> str:
    """`results` as write_results writes them (indented JSON, numpy values converted, NaN as null), without the final
    newline."""
    return json.dumps(_jsonable(results), indent=2)


def write_results(path: Union[str, Path], results: Mapping[str, Any], exclusive: bool = False) -> Path:
    """Write `results` as indented JSON (numpy values converted, NaN as null); return the path. An OSError (a full
    disk) names `path` and leaves the file as it was. `exclusive`: create the file, complete, never replacing one
    there (FileExistsError: another writer made it)."""
    if not exclusive:
        return write_results_together([(path, results)])[0]
    from .run_claim import _create_exclusively

    path = Path(path)
    _create_exclusively(path, results_text(results) + "\n", rename_without_links=True)
    return path


def write_results_text(path: Union[str, Path], text: str) -> Path:
    """Write `text` (results_text of some results, plus a newline) as write_results writes a file: complete or not at
    all, an OSError naming `path`."""
    return _write_texts_together([(path, text)])[0]


def write_results_together(files: Sequence[Tuple[Union[str, Path], Mapping[str, Any]]]) -> List[Path]:
    """Write several results files that must agree (results.json and its eval_info.json) as write_results does, all
    or none: each is written aside first, and they are renamed into place only once every one was written. A full
    disk thus leaves every file as it was (an earlier attempt's pair, or none), never a new one beside an old one; a
    rename failing after another succeeded (renames take no space: rare) deletes the older files not yet replaced.
    A Ctrl-C, SIGTERM or SIGHUP during the renames acts once they are done: its KeyboardInterrupt's `renamed` then
    lists the files, all new. The OSError names the file that could not be written."""
    return _write_texts_together([(path, results_text(results) + "\n") for path, results in files])


def _write_texts_together(files: Sequence[Tuple[Union[str, Path], str]]) -> List[Path]:
    """write_results_together of the files' texts."""
    staged: List[Tuple[Path, Path]] = []
    renamed = False
    try:
        for target, text in files:
            path = Path(target)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = partial_path(path)
                staged.append((tmp, path))
                tmp.write_text(text)
            except OSError as exc:
                raise _naming(exc, path) from exc
        with stop_signals_held():  # a stop between two renames left a new file beside an old partner: it acts after
            for done, (tmp, path) in enumerate(staged):
                try:
                    tmp.replace(path)  # never leave a half-written results file behind
                except OSError as exc:
                    if done:  # the files before are new: the older ones left would disagree with them
                        for _tmp, stale in staged[done:]:
                            remove_quietly(stale)
                    raise _naming(exc, path) from exc
            renamed = True
    except BaseException as exc:
        for tmp, _path in staged:
            remove_quietly(tmp)  # a full disk: no empty temporary left beside the results
        if renamed and isinstance(exc, KeyboardInterrupt):  # held during the renames: the caller's line says so
            exc.renamed = [path for _tmp, path in staged]  # type: ignore[attr-defined]
        raise
    return [path for _tmp, path in staged]


def open_loop_results(
    trajectories: Mapping[int, Dict[str, Any]],
    config: Mapping[str, Any],
    skipped: Sequence[int] = (),
    errored: Optional[Mapping[int, str]] = None,
    skip_reasons: Optional[Mapping[int, str]] = None,
    stop: Optional[Mapping[str, Any]] = None,
    policy: Optional[Mapping[str, Any]] = None,
    settings_not_applied: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Per-trajectory errors (each holding an ActionErrors under "errors") plus plain averages over trajectories.
    `policy`: what the server served (policy_identity.policy_record; None for a server that does not say).
    `settings_not_applied`: {setting: value} of the config that the server ignored (applied_settings).

    `errored` (id -> why) lists trajectories the policy did not follow and `skipped` those not evaluated
    (`skip_reasons` says why; the run is then "incomplete"); neither is in the averages. `stop` ({"status", "reason",
    "not_run"}) marks a run that ended part-way; its averages cover the trajectories scored before.
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
        "status": stop["status"] if stop else "incomplete" if skipped else "complete",
        "stop_reason": (stop["reason"] if stop else
                        f"trajectories {[int(t) for t in skipped]} skipped (see skip_reasons)" if skipped else None),
        "not_run_trajectories": [int(t) for t in stop["not_run"]] if stop else [],
        "config": dict(config),
        "policy": dict(policy) if policy else None,
        "settings_not_applied": dict(settings_not_applied or {}),
        "trajectories": per_traj,
        "skipped_trajectories": list(skipped),
        "skip_reasons": {str(k): v for k, v in (skip_reasons or {}).items()},
        "errored_trajectories": [{"traj_id": int(k), "error": v} for k, v in (errored or {}).items()],
        "aggregated": {
            "avg_mse": overflow_safe_mean(mses) if mses else None,
            "avg_mae": overflow_safe_mean(maes) if maes else None,
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
