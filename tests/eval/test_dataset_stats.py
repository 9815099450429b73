"""stats.json statistics kept per episode (RunningColumnStats) equal those of the whole column (column_stats):
`record` rewrites stats.json after every episode, and recomputing them from all rows made that quadratic."""

from __future__ import annotations

import numpy as np
import pytest

from gr00t_eval.dataset.stats import RunningColumnStats, column_stats


def episodes(seed: int, n_episodes: int, dims: int):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_episodes):
        length = int(rng.integers(1, 40))
        values = rng.normal(size=(length, dims)) * rng.uniform(0.1, 100.0) + rng.uniform(-50, 50)
        values[:, 0] = np.round(values[:, 0])  # ties
        if dims > 1:
            values[:, 1] = 3.25  # a constant dimension (std 0, q01 == q99)
        out.append(values)
    return out


def assert_equal_stats(running, whole):
    for name in ("min", "max", "q01", "q99"):
        np.testing.assert_array_equal(running[name], whole[name], err_msg=name)
    for name in ("mean", "std"):
        np.testing.assert_allclose(running[name], whole[name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("seed,n_episodes,dims", [(0, 1, 1), (1, 2, 3), (2, 37, 5), (3, 120, 2)])
def test_running_stats_equal_the_stats_of_the_whole_column_after_every_episode(seed, n_episodes, dims):
    running = RunningColumnStats()
    seen = []
    for values in episodes(seed, n_episodes, dims):
        running.add(values)
        seen.append(values)
        assert_equal_stats(running.stats(), column_stats(np.concatenate(seen)))


def test_a_single_row_and_one_dimensional_columns_are_handled():
    running = RunningColumnStats()
    running.add(np.array([4.0]))
    assert_equal_stats(running.stats(), column_stats(np.array([4.0])))
    running.add(np.array([1.0, 9.0, 2.0]))
    assert_equal_stats(running.stats(), column_stats(np.array([4.0, 1.0, 9.0, 2.0])))


def test_a_nan_makes_its_dimension_nan_as_numpy_does():
    values = np.array([[1.0, 2.0], [np.nan, 3.0], [5.0, 4.0]])
    running = RunningColumnStats()
    running.add(values[:2])
    running.add(values[2:])
    stats, whole = running.stats(), column_stats(values)
    for name in stats:
        assert np.isnan(stats[name][0]) and np.isnan(whole[name][0]), name
        assert stats[name][1] == pytest.approx(whole[name][1]), name


def test_rows_of_another_width_and_an_empty_column_are_refused():
    running = RunningColumnStats()
    with pytest.raises(ValueError, match="empty column"):
        running.stats()
    running.add(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="rows of 3 values added to a column of 2"):
        running.add(np.zeros((1, 3)))
