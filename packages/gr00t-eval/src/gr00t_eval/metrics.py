"""Error metrics for open-loop evaluation and aggregates for closed-loop rollouts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np


class NonFiniteError(ValueError):
    """An array scored holds NaN or inf, or a figure computed from finite numbers is not finite (their squares or sum
    overflowed float64)."""


@dataclass(frozen=True)
class ActionErrors:
    """MSE and MAE between ground-truth and predicted actions, overall, per action key and per dimension."""

    mse: float
    mae: float
    per_key: Dict[str, Dict[str, float]]
    per_dim_mse: List[float]
    per_dim_mae: List[float]
    # "key[i]" of each per_dim entry: their order is the action keys' (the policy's or --modality-keys'), which need
    # not be the dataset's columns, so an unlabelled per_dim[i] could not be read
    per_dim_labels: List[str] = field(default_factory=list)

    def to_json_dict(self) -> Dict[str, Any]:
        """The results.json form: mse, mae, per_key and per_dim (mse, mae and labels)."""
        return {
            "mse": self.mse,
            "mae": self.mae,
            "per_key": {k: dict(v) for k, v in self.per_key.items()},
            "per_dim": {"mse": list(self.per_dim_mse), "mae": list(self.per_dim_mae), "labels": list(self.per_dim_labels)},
        }


def action_errors(ground_truth: np.ndarray, prediction: np.ndarray, key_dims: Mapping[str, int]) -> ActionErrors:
    """Errors of (T, D) arrays whose columns are the action keys concatenated in `key_dims` order.

    Overall MSE/MAE are means over every element, as in the reference (physical units, no normalisation).
    NonFiniteError when an array holds NaN or inf, or when a figure is not finite (finite values whose squares or
    differences overflow float64).
    """
    gt = np.asarray(ground_truth, dtype=np.float64)
    pred = np.asarray(prediction, dtype=np.float64)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} must be equal (T, D) shapes")
    total = sum(int(d) for d in key_dims.values())
    if total != gt.shape[1]:
        raise ValueError(f"action keys {dict(key_dims)} sum to {total} dims but the arrays have {gt.shape[1]}")
    if gt.shape[0] == 0:
        raise ValueError("cannot compute errors over zero steps")
    # a NaN or inf given was reported as an overflow of the difference, which did not happen
    for name, values in (("ground truth", gt), ("prediction", pred)):
        rows, columns = np.nonzero(~np.isfinite(values))
        if rows.size:
            row, column = int(rows[0]), int(columns[0])
            raise NonFiniteError(f"the {name} holds {values[row, column]} at row {row}, column {column} "
                                 f"({_key_of_column(key_dims, column)}); expected finite actions (no NaN or inf)")
    with np.errstate(over="ignore"):  # a figure past float64's range is refused below, naming it
        diff = gt - pred
        per_dim_mse = np.mean(diff**2, axis=0)
        per_dim_mae = np.mean(np.abs(diff), axis=0)
        per_key: Dict[str, Dict[str, float]] = {}
        start = 0
        for key, dim in key_dims.items():
            block = diff[:, start : start + int(dim)]
            per_key[key] = {"mse": float(np.mean(block**2)), "mae": float(np.mean(np.abs(block)))}
            start += int(dim)
        errors = ActionErrors(
            mse=float(np.mean(diff**2)),
            mae=float(np.mean(np.abs(diff))),
            per_key=per_key,
            per_dim_mse=[float(v) for v in per_dim_mse],
            per_dim_mae=[float(v) for v in per_dim_mae],
            per_dim_labels=dim_labels(key_dims),
        )
    # inf was written to results.json as null (unknown) for a run reported complete
    for name, value in (("MSE", errors.mse), ("MAE", errors.mae)):
        if not np.isfinite(value):
            raise NonFiniteError(f"its action {name} is {value}: the ground truth and prediction differ by more than "
                                 f"float64 can square or add up (largest |difference| {float(np.max(np.abs(diff))):.4g});"
                                 " expected actions in the robot's physical units")
    return errors


def dim_labels(key_dims: Mapping[str, int]) -> List[str]:
    """"key[i]" of each column of the action keys concatenated in `key_dims` order (results.json's per_dim.labels, the
    plot's panels)."""
    return [f"{key}[{i}]" for key, dim in key_dims.items() for i in range(int(dim))]


def _key_of_column(key_dims: Mapping[str, int], column: int) -> str:
    """'action key NAME, value I' for a column of the concatenated action keys."""
    for key, dim in key_dims.items():
        if column < int(dim):
            return f"action key {key!r}, value {column}"
        column -= int(dim)
    raise AssertionError("column past the action keys' dims")  # the dims were checked to sum to the width


ERROR_REASON_CHARS = 4000  # an errored episode's reason as logged, saved (episodes.jsonl, results.json) and printed


@dataclass
class EpisodeOutcome:
    """One rollout episode, in the shape of lerobot-eval's `per_episode` entries.

    An episode whose env or policy raised carries `error`: it is neither a success nor a failure, and the
    aggregates leave it out (they count it in `n_errors`).
    """

    episode_index: int
    seed: Optional[int]
    success: bool
    sum_reward: float
    max_reward: float
    length: int
    env_index: int = 0
    video_path: Optional[str] = None
    error: Optional[str] = None
    extras: Dict[str, Any] = field(default_factory=dict)

    @property
    def failure_reason(self) -> Optional[str]:
        """Former name of `error` (kept for callers written against it)."""
        return self.error

    @property
    def finished(self) -> bool:
        """True when the episode ran to its end without an error (it counts in the metrics)."""
        return self.error is None

    def to_json_dict(self) -> Dict[str, Any]:
        """One `per_episode` entry of results.json (extras merged in)."""
        data = {
            "episode_index": self.episode_index,
            "env_index": self.env_index,
            "seed": self.seed,
            "success": bool(self.success) if self.error is None else None,
            "sum_reward": float(self.sum_reward),
            "max_reward": float(self.max_reward),
            "length": int(self.length),
            "video_path": self.video_path,
            "error": self.error,
        }
        data.update(self.extras)
        return data

    @classmethod
    def from_json_dict(cls, entry: Mapping[str, Any]) -> "EpisodeOutcome":
        """Rebuild an outcome from a `per_episode` entry or an episodes.jsonl line (`failure_reason` read as `error`)."""
        known = {"episode_index", "env_index", "seed", "success", "sum_reward", "max_reward", "length", "video_path",
                 "error", "failure_reason", "attempt", "attempt_s"}  # the last two: episode_log's stamp of its attempt
        error = entry.get("error", entry.get("failure_reason"))
        return cls(
            episode_index=int(entry["episode_index"]), seed=entry.get("seed"), success=bool(entry.get("success")) and error is None,
            # null (a non-finite reward, written as null) stays unknown: 0.0 made merges and resumes average it as 0
            sum_reward=_reward(entry, "sum_reward"), max_reward=_reward(entry, "max_reward"),
            length=int(entry.get("length") or 0), env_index=int(entry.get("env_index") or 0),
            video_path=entry.get("video_path"), error=error, extras={k: v for k, v in entry.items() if k not in known},
        )


def _reward(entry: Mapping[str, Any], key: str) -> float:
    value = entry.get(key)
    return float("nan") if value is None and key in entry else float(value or 0.0)


def rollout_aggregates(outcomes: Sequence[EpisodeOutcome], eval_s: float) -> Dict[str, Any]:
    """lerobot-eval's aggregates over the episodes that finished without an error, plus `n_errors`.

    pc_success, avg_sum_reward, avg_max_reward and avg_length are over the `n_episodes` finished episodes;
    `n_errors` episodes raised and are in no metric; eval_ep_s is eval_s over every episode run.
    """
    finished = [o for o in outcomes if o.error is None]
    n_run = len(outcomes)
    nan = float("nan")
    return {
        "pc_success": 100.0 * float(np.mean([o.success for o in finished])) if finished else nan,
        "avg_sum_reward": overflow_safe_mean([o.sum_reward for o in finished]) if finished else nan,
        "avg_max_reward": overflow_safe_mean([o.max_reward for o in finished]) if finished else nan,
        "avg_length": float(np.mean([o.length for o in finished])) if finished else nan,
        "n_episodes": len(finished),
        "n_errors": n_run - len(finished),
        "eval_s": float(eval_s),
        "eval_ep_s": float(eval_s) / n_run if n_run else nan,
    }


def overflow_safe_mean(values: Sequence[float]) -> float:
    """The mean of `values`; finite ones whose sum overflows float64 (two rewards or MSEs of 1e308) are averaged
    without it: their mean is finite, and inf was written to results.json as null (unknown)."""
    with np.errstate(over="ignore"):
        mean = float(np.mean(values))
    if np.isinf(mean) and np.isfinite(values).all():
        mean = float(np.sum(np.asarray(values, dtype=np.float64) / len(values)))
    return mean
