"""Per-column statistics (mean, std, min, max, q01, q99) as GR00T's meta/stats.json holds them."""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import numpy as np

from .errors import DatasetError
from .modality import ArrayGroup

STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")


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
            "q01": np.where(has_nan, np.nan, _sorted_quantile(ordered, 0.01)).tolist(),
            "q99": np.where(has_nan, np.nan, _sorted_quantile(ordered, 0.99)).tolist(),
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
        try:
            values = np.asarray(column[name], dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{source}: '{group.original_key}.{name}' must be a list of numbers, got "
                               f"{str(column[name])[:80]} ({exc})") from None
        if values.shape[0] < group.end:
            raise DatasetError(
                f"{source}: '{group.original_key}.{name}' has {values.shape[0]} values; group '{group.name}' needs index {group.end - 1}"
            )
        out[name] = group.select(values[None, :])[0]
    return out

