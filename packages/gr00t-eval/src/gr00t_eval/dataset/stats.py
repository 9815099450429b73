"""Per-column statistics (mean, std, min, max, q01, q99) as GR00T's meta/stats.json holds them."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from .errors import DatasetError
from .modality import ArrayGroup

STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def column_stats(values: np.ndarray) -> Dict[str, List[float]]:
    """Statistics over axis 0 of a (N, D) or (N,) array, as per-dimension lists."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.shape[0] == 0:
        raise ValueError("cannot compute statistics of an empty column")
    return {
        "mean": array.mean(axis=0).tolist(),
        "std": array.std(axis=0).tolist(),
        "min": array.min(axis=0).tolist(),
        "max": array.max(axis=0).tolist(),
        "q01": np.quantile(array, 0.01, axis=0).tolist(),
        "q99": np.quantile(array, 0.99, axis=0).tolist(),
    }


class RunningColumnStats:
    """Statistics of a column that grows by episodes, equal to `column_stats` of all of it: the moments are merged
    (Chan et al.) and each dimension's values are kept sorted, so min, max, q01 and q99 are lookups, not a sort of
    all rows. Each episode is merged into the sorted values by one linear copy: its cost and the memory held grow
    with the rows seen (about 24 ms and 49 MiB at 1,000 episodes on a 2-core machine), against a sort of everything
    per episode before (about 10x the time)."""

    def __init__(self) -> None:
        self.count = 0
        self._mean: np.ndarray = np.zeros(0)
        self._m2: np.ndarray = np.zeros(0)  # sum of squared deviations from the mean, per dimension
        self._sorted: np.ndarray = np.zeros((0, 0))  # (D, count): each dimension's values in ascending order

    @property
    def width(self) -> Optional[int]:
        """Values per row (D), once rows were added; None before."""
        return int(self._sorted.shape[0]) if self.count else None

    def add(self, values: np.ndarray) -> None:
        """Add the rows of a (N, D) or (N,) array."""
        array = np.asarray(values, dtype=np.float64)
        if array.ndim == 1:
            array = array[:, None]
        if array.shape[0] == 0:
            return
        if self.count and array.shape[1] != self._sorted.shape[0]:
            raise ValueError(f"rows of {array.shape[1]} values added to a column of {self._sorted.shape[0]}")
        n = array.shape[0]
        mean = array.mean(axis=0)
        m2 = np.square(array - mean).sum(axis=0)
        runs = np.sort(array.T, axis=1)
        if not self.count:
            self._mean, self._m2, self._sorted = mean, m2, runs
        else:
            total = self.count + n
            delta = mean - self._mean
            self._mean = self._mean + delta * (n / total)
            self._m2 = self._m2 + m2 + np.square(delta) * (self.count * n / total)
            self._sorted = _merge_sorted(self._sorted, runs)
        self.count += n

    def quantile(self, q: float) -> List[float]:
        """numpy's default quantile of each dimension of the rows added (NaN for a dimension holding NaN)."""
        if not self.count:
            raise ValueError("cannot compute statistics of an empty column")
        has_nan = np.isnan(self._sorted[:, -1])
        return np.where(has_nan, np.nan, _sorted_quantile(self._sorted, q)).tolist()

    def stats(self) -> Dict[str, List[float]]:
        """mean, std, min, max, q01, q99 per dimension, as `column_stats` gives them."""
        if not self.count:
            raise ValueError("cannot compute statistics of an empty column")
        ordered = self._sorted
        has_nan = np.isnan(ordered[:, -1])  # NaN sorts last; numpy's statistics are NaN for such a dimension
        return {
            "mean": self._mean.tolist(),
            "std": np.sqrt(self._m2 / self.count).tolist(),
            "min": np.where(has_nan, np.nan, ordered[:, 0]).tolist(),
            "max": ordered[:, -1].tolist(),
            "q01": self.quantile(0.01),
            "q99": self.quantile(0.99),
        }


# The quantiles LeRobot (0.4) keeps beside GR00T's q01 and q99; its episode tables need the same set in every row.
LEROBOT_QUANTILES = {"q10": 0.10, "q50": 0.50, "q90": 0.90}


def episode_stats(values: np.ndarray) -> Dict[str, List[float]]:
    """One episode's statistics of a numeric column as LeRobot's per-episode stats hold them: `column_stats`,
    LeRobot's other quantiles and the row count (`count`, a one-element list; LeRobot weighs episodes by it when it
    merges statistics)."""
    array = np.asarray(values, dtype=np.float64)
    array = array[:, None] if array.ndim == 1 else array
    extra = {name: np.quantile(array, q, axis=0).tolist() for name, q in LEROBOT_QUANTILES.items()}
    return {**column_stats(array), **extra, "count": [int(array.shape[0])]}


IMAGE_STATS_FRAMES = 100  # frames of an episode its camera statistics look at, evenly spaced (LeRobot samples too)
IMAGE_STATS_SIDE = 128  # and every k-th pixel of each, so that the longer side has at most about this many


def image_stats(frames: np.ndarray) -> Dict[str, list]:
    """Per-channel statistics of uint8 (T, H, W, 3) frames scaled to [0, 1], each a (3, 1, 1) nested list as LeRobot
    keeps camera statistics (mean, std, min, max and the quantiles), and `count`, the frames sampled. Computed from each
    channel's 256-bin histogram of a sample of frames and pixels, so exact for that sample."""
    frames = np.asarray(frames)
    step = max(1, -(-frames.shape[0] // IMAGE_STATS_FRAMES))
    stride = max(1, -(-max(frames.shape[1], frames.shape[2]) // IMAGE_STATS_SIDE))
    sample = frames[::step, ::stride, ::stride, :]
    levels = np.arange(256, dtype=np.float64) / 255.0
    quantiles = {"q01": 0.01, **LEROBOT_QUANTILES, "q99": 0.99}
    out: Dict[str, list] = {name: [] for name in ("mean", "std", "min", "max", *quantiles)}
    for channel in range(3):
        counts = np.bincount(sample[..., channel].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float((counts * levels).sum() / total)
        present = np.flatnonzero(counts)
        values = {
            "mean": mean,
            "std": float(np.sqrt((counts * np.square(levels - mean)).sum() / total)),
            "min": float(levels[present[0]]),
            "max": float(levels[present[-1]]),
            **{name: _histogram_quantile(counts, levels, q) for name, q in quantiles.items()},
        }
        for name, value in values.items():
            out[name].append([[value]])
    return {**out, "count": [int(sample.shape[0])]}


def _histogram_quantile(counts: np.ndarray, levels: np.ndarray, q: float) -> float:
    """numpy's default ("linear") quantile of the values a histogram counts, as if they were sorted."""
    cumulative = np.cumsum(counts)
    position = (cumulative[-1] - 1) * q
    below = int(np.floor(position))
    at = lambda rank: levels[int(np.searchsorted(cumulative, rank, side="right"))]  # noqa: E731 - value of rank
    a, b = at(below), at(min(below + 1, int(cumulative[-1]) - 1))
    gamma = position - below
    return float(b - (b - a) * (1 - gamma) if gamma >= 0.5 else a + (b - a) * gamma)


def merge_episode_stats(per_episode: List[Mapping[str, Any]]) -> Dict[str, Any]:
    """One column's statistics over several episodes from their per-episode ones (`episode_stats`, `image_stats`),
    as LeRobot merges them: min of the minima, max of the maxima, means weighted by count, the pooled standard
    deviation, quantiles the count-weighted mean of the episodes' (an estimate), and the total count."""
    counts = np.array([float(stats["count"][0]) for stats in per_episode])
    weights = counts / counts.sum()

    def stacked(name: str) -> np.ndarray:
        return np.stack([np.asarray(stats[name], dtype=np.float64) for stats in per_episode])

    def weighted(values: np.ndarray) -> np.ndarray:
        return np.tensordot(weights, values, axes=1)

    means = stacked("mean")
    mean = weighted(means)
    variance = weighted(np.square(stacked("std")) + np.square(means - mean))
    quantiles = [name for name in per_episode[0] if name[:1] == "q" and name[1:].isdigit()]
    return {
        "mean": mean.tolist(),
        "std": np.sqrt(variance).tolist(),
        "min": stacked("min").min(axis=0).tolist(),
        "max": stacked("max").max(axis=0).tolist(),
        **{name: weighted(stacked(name)).tolist() for name in quantiles},
        "count": [int(counts.sum())],
    }


def _merge_sorted(ordered: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """Merge the ascending rows of `runs` (D, n) into those of `ordered` (D, N) in one pass of copies."""
    n_dims, n_old = ordered.shape
    n_new = runs.shape[1]
    # where each new value lands in its merged row: after the old values not above it, and the new ones before it
    landing = np.stack([np.searchsorted(old, new, side="right") for old, new in zip(ordered, runs)]) + np.arange(n_new)
    is_old = np.ones((n_dims, n_old + n_new), dtype=bool)
    is_old[np.arange(n_dims)[:, None], landing] = False
    merged = np.empty((n_dims, n_old + n_new))
    merged[is_old] = ordered.ravel()  # boolean assignment fills row by row, in order
    merged[~is_old] = runs.ravel()
    return merged


def _sorted_quantile(ordered: np.ndarray, q: float) -> np.ndarray:
    """numpy's default ("linear") quantile of each row of an ascending (D, N) array, without a partition."""
    position = (ordered.shape[1] - 1) * q
    below = int(np.floor(position))
    above = min(below + 1, ordered.shape[1] - 1)
    gamma = position - below
    a, b = ordered[:, below], ordered[:, above]
    # numpy's _lerp: from the nearer end, so equal neighbours give exactly their value
    return b - (b - a) * (1 - gamma) if gamma >= 0.5 else a + (b - a) * gamma


def group_stats(stats: Mapping[str, object], group: ArrayGroup, source: str) -> Dict[str, np.ndarray]:
    """Slice a raw column's statistics down to one state/action group: {stat: float32 (D,)}."""
    column = stats.get(group.original_key)
    if not isinstance(column, Mapping):
        raise DatasetError(f"{source}: no statistics for column '{group.original_key}' (group '{group.name}')")
    out: Dict[str, np.ndarray] = {}
    for name in STAT_NAMES:
        if name not in column:
            raise DatasetError(f"{source}: column '{group.original_key}' lacks the '{name}' statistic")
        try:  # float64 first: a value beyond float32's range (1e39) became inf silently, and so every action
            values = np.asarray(column[name], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{source}: '{group.original_key}.{name}' must be a list of numbers, got "
                               f"{str(column[name])[:80]} ({exc})") from None
        except OverflowError:  # an integer literal such as 1 and 400 zeros, which json reads as an exact int
            raise DatasetError(f"{source}: '{group.original_key}.{name}' must be a list of numbers within float32's "
                               "range; it holds an integer beyond float64's range") from None
        if values.shape[0] < group.end:
            raise DatasetError(
                f"{source}: '{group.original_key}.{name}' has {values.shape[0]} values; group '{group.name}' needs index {group.end - 1}"
            )
        used = group.select(np.arange(values.shape[0])[None, :])[0]  # the group's indices in the column
        selected = values[used]
        beyond = used[np.isfinite(selected) & (np.abs(selected) > _FLOAT32_MAX)]  # what the cast below turned into inf
        if beyond.size:  # as gr00t-server's statistics parse refuses them
            index = int(beyond[0])
            raise DatasetError(f"{source}: '{group.original_key}.{name}' value {values[index]:g} at index {index} is "
                               f"beyond float32's range ({_FLOAT32_MAX:.4g}); states and actions are float32, so "
                               "statistics must fit in it")
        out[name] = selected.astype(np.float32)
    return out

