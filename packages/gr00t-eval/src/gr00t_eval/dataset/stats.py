"""Per-column statistics (mean, std, min, max, q01, q99) as GR00T's meta/stats.json holds them."""

from __future__ import annotations

from typing import Dict, List, Mapping

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


def group_stats(stats: Mapping[str, object], group: ArrayGroup, source: str) -> Dict[str, np.ndarray]:
    """Slice a raw column's statistics down to one state/action group: {stat: float32 (D,)}."""
    column = stats.get(group.original_key)
    if not isinstance(column, Mapping):
        raise DatasetError(f"{source}: no statistics for column '{group.original_key}' (group '{group.name}')")
    out: Dict[str, np.ndarray] = {}
    for name in STAT_NAMES:
        if name not in column:
            raise DatasetError(f"{source}: column '{group.original_key}' lacks the '{name}' statistic")
        values = np.asarray(column[name], dtype=np.float32).reshape(-1)
        if values.shape[0] < group.end:
            raise DatasetError(
                f"{source}: '{group.original_key}.{name}' has {values.shape[0]} values; group '{group.name}' needs index {group.end - 1}"
            )
        out[name] = group.select(values[None, :])[0]
    return out

