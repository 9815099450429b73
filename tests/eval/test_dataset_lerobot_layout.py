"""The writer's files in LeRobot's own layout, which the real `lerobot` library needs to load them.

Checked by hand with lerobot 0.3.3 (v2.1) and 0.4.4 (v3.0, its v2.1 -> v3.0 converter, and appending an episode):
before, lerobot 0.4 refused every `gr00t-eval record` dataset (step columns not declared in info.json), lerobot 0.3
could not open any v2.1 one (no meta/episodes_stats.jsonl: it went looking for the dataset on the Hub), v3.0 frames
had the row number as their task (tasks.parquet not indexed by the task strings), and appending failed (no `count`).
lerobot is not a dependency, so these tests pin the layout itself.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from eval.dataset_factory import TASKS, episode_frames, expected_actions, expected_states, make_dataset
from gr00t_eval.dataset import STAT_NAMES, DatasetWriter, LeRobotDataset
from gr00t_eval.dataset.stats import episode_stats, image_stats, merge_episode_stats

LEROBOT_STATS = {"mean", "std", "min", "max", "q01", "q10", "q50", "q90", "q99", "count"}
LENGTHS = (5, 3)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _data_tables(root):
    return [pq.read_table(path) for path in sorted((root / "data").rglob("*.parquet"))]


def _v3_episode_rows(root):
    return pq.read_table(next((root / "meta" / "episodes").rglob("*.parquet"))).to_pylist()


@pytest.fixture(scope="module", params=["v2.1", "v3.0"])
def layout_root(request, tmp_path_factory):
    """Two episodes with a camera, a float and a bool step column, a (T, 2) step column and a language column."""
    root = tmp_path_factory.mktemp(request.param.replace(".", "")) / "ds"
    with DatasetWriter(root, 10, layout=request.param, language_column="lang") as writer:
        for episode, length in enumerate(LENGTHS):
            writer.add_episode(
                frames={"cam": episode_frames(episode, 0, length, (16, 16))},
                states=expected_states(episode, length), actions=expected_actions(episode, length),
                task=TASKS[episode],
                step_columns={"next.reward": np.arange(length, dtype=np.float32) / 10,
                              "next.success": np.arange(length) == length - 1,
                              "next.contact": np.ones((length, 2), np.float64) * episode,
                              "next.gap": np.zeros((length, 1), np.float32)},
                metadata={"seed": 100 + episode},
            )
    return request.param, root


def test_info_json_declares_every_column_of_the_data_files(layout_root):
    _, root = layout_root
    features = json.loads((root / "meta" / "info.json").read_text())["features"]
    for table in _data_tables(root):
        assert set(table.column_names) <= set(features), set(table.column_names) - set(features)
    assert features["next.reward"] == {"dtype": "float32", "shape": [1], "names": None}
    assert features["next.success"] == {"dtype": "bool", "shape": [1], "names": None}
    assert features["next.contact"] == {"dtype": "float64", "shape": [2], "names": None}
    assert features["lang"] == {"dtype": "int64", "shape": [1], "names": None}
    # a (T, 1) column is stored as LeRobot stores a one-value feature, a scalar (as a list of one, lerobot 0.4
    # refused to load the dataset: shape [1] is a scalar to it)
    assert features["next.gap"] == {"dtype": "float32", "shape": [1], "names": None}
    assert all(str(table.schema.field("next.gap").type) == "float" for table in _data_tables(root))
    assert features["observation.images.cam"]["dtype"] == "video"


def _expected_episode_stats(layout_root):
    """Each episode's stats as the writer keeps them: v2.1's episodes_stats.jsonl, v3.0's stats/ columns."""
    layout, root = layout_root
    if layout == "v2.1":
        rows = _jsonl(root / "meta" / "episodes_stats.jsonl")
        assert [row["episode_index"] for row in rows] == [0, 1]
        return [row["stats"] for row in rows]
    out = []
    for row in _v3_episode_rows(root):
        stats = {}
        for name, value in row.items():
            if name.startswith("stats/"):
                feature, stat = name[len("stats/"):].rsplit("/", 1)
                stats.setdefault(feature, {})[stat] = value
        out.append(stats)
    return out


def test_each_episode_has_lerobots_statistics_of_every_feature(layout_root):
    per_episode = _expected_episode_stats(layout_root)
    for episode, (length, stats) in enumerate(zip(LENGTHS, per_episode)):
        assert {"observation.state", "action", "timestamp", "frame_index", "episode_index", "index", "task_index",
                "next.reward", "next.success", "next.contact", "lang", "observation.images.cam"} <= set(stats)
        assert all(set(values) == LEROBOT_STATS for values in stats.values())
        state = np.concatenate(list(expected_states(episode, length).values()), axis=1).astype(np.float64)
        np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(stats["observation.state"]["q10"], np.quantile(state, 0.1, axis=0), rtol=1e-12)
        assert stats["observation.state"]["count"] == [length]
        assert stats["next.success"]["max"] == [1.0] and stats["next.success"]["mean"] == [1 / length]
        # a camera's statistics are per channel, (3, 1, 1), in [0, 1], over its frames (solid colours here)
        pixels = episode_frames(episode, 0, length, (16, 16)).reshape(-1, 3) / 255.0
        camera = stats["observation.images.cam"]
        assert np.asarray(camera["mean"]).shape == (3, 1, 1) and camera["count"] == [length]
        np.testing.assert_allclose(np.asarray(camera["mean"]).ravel(), pixels.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(camera["std"]).ravel(), pixels.std(axis=0), atol=1e-12)
        np.testing.assert_allclose(np.asarray(camera["q90"]).ravel(), np.quantile(pixels, 0.9, axis=0), rtol=1e-12)


def test_stats_json_counts_rows_and_merges_the_cameras_in_v3(layout_root):
    """lerobot 0.4 reads a v3.0 dataset's statistics from stats.json and merges by count when it appends."""
    layout, root = layout_root
    stats = json.loads((root / "meta" / "stats.json").read_text())
    if layout == "v2.1":  # GR00T's own form: Isaac-GR00T N1.5's loader failed on a one-element count in every column
        assert all(set(values) == set(STAT_NAMES) for values in stats.values())
        assert "observation.images.cam" not in stats
        return
    assert stats["action"]["count"] == [sum(LENGTHS)] and set(stats["action"]) == LEROBOT_STATS
    pixels = np.concatenate([episode_frames(e, 0, n, (16, 16)).reshape(-1, 3) for e, n in enumerate(LENGTHS)]) / 255.0
    camera = stats["observation.images.cam"]
    np.testing.assert_allclose(np.asarray(camera["mean"]).ravel(), pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(camera["std"]).ravel(), pixels.std(axis=0), rtol=1e-9, atol=1e-12)
    assert camera["count"] == [sum(LENGTHS)]


def test_v3_tasks_parquet_is_indexed_by_the_task_strings_as_pandas_writes_it(tmp_path):
    root = make_dataset(tmp_path / "v3", lengths=(2, 3), layout="v3.0", cameras=())
    table = pq.read_table(root / "meta" / "tasks.parquet")
    assert table.column("__index_level_0__").to_pylist() == list(TASKS)
    assert table.column("task_index").to_pylist() == [0, 1]
    pandas_meta = json.loads(table.schema.metadata[b"pandas"])
    assert pandas_meta["index_columns"] == ["__index_level_0__"]  # pandas (LeRobot) reads the strings as the index
    assert LeRobotDataset(root).tasks == {0: TASKS[0], 1: TASKS[1]}
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["data_files_size_in_mb"] > 0 and info["video_files_size_in_mb"] > 0


def test_a_v21_episode_that_fails_leaves_no_statistics_row(tmp_path):
    root = tmp_path / "ds"
    writer = DatasetWriter(root, 10)
    frames = {"cam": np.zeros((3, 16, 16, 3), np.uint8)}
    writer.add_episode(frames, expected_states(0, 3), expected_actions(0, 3), "t")
    with pytest.raises(ValueError, match="frames"):
        writer.add_episode({"cam": np.zeros((2, 16, 16, 3), np.uint8)}, expected_states(1, 3), expected_actions(1, 3), "t")
    writer.add_episode(frames, expected_states(1, 3), expected_actions(1, 3), "t")
    writer.finalize()
    assert [row["episode_index"] for row in _jsonl(root / "meta" / "episodes_stats.jsonl")] == [0, 1]


def test_write_meta_after_each_episode_appends_the_new_statistics_lines(tmp_path):
    """Rewriting episodes_stats.jsonl whole after every episode wrote ~10 GB over a 2,000-episode recording."""
    root = tmp_path / "ds"
    writer = DatasetWriter(root, 10)
    path = root / "meta" / "episodes_stats.jsonl"
    frames = {"cam": np.zeros((3, 16, 16, 3), np.uint8)}
    inodes = []
    for episode in range(3):
        writer.add_episode(frames, expected_states(episode, 3), expected_actions(episode, 3), "t")
        writer.write_meta()
        inodes.append(path.stat().st_ino)
    assert inodes[1] == inodes[0] == inodes[2]  # appended in place, not replaced
    assert [row["episode_index"] for row in _jsonl(path)] == [0, 1, 2]
    path.write_text(path.read_text().splitlines(keepends=True)[0])  # changed behind the writer's back: rewritten whole
    writer.add_episode(frames, expected_states(3, 3), expected_actions(3, 3), "t")
    writer.finalize()
    rows = _jsonl(path)
    assert [row["episode_index"] for row in rows] == [0, 1, 2, 3]
    assert rows[2]["stats"]["observation.state"]["count"] == [3]


def test_image_stats_quantiles_equal_numpys_on_the_pixels_sampled():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (7, 20, 30, 3), dtype=np.uint8)
    stats = image_stats(frames)
    pixels = frames.reshape(-1, 3) / 255.0
    for name, q in (("q01", 0.01), ("q10", 0.1), ("q50", 0.5), ("q90", 0.9), ("q99", 0.99)):
        np.testing.assert_allclose(np.asarray(stats[name]).ravel(), np.quantile(pixels, q, axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(stats["min"]).ravel(), pixels.min(axis=0))
    np.testing.assert_allclose(np.asarray(stats["max"]).ravel(), pixels.max(axis=0))
    assert stats["count"] == [7]


def test_image_stats_of_a_long_large_episode_look_at_a_bounded_sample():
    frames = np.zeros((1000, 480, 640, 3), np.uint8)
    frames[:, :, :, 0] = 255
    stats = image_stats(frames)
    assert stats["count"][0] <= 100
    assert np.asarray(stats["mean"]).ravel().tolist() == [1.0, 0.0, 0.0]


def test_merged_episode_statistics_equal_those_of_all_rows():
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(n, 3)) * (i + 1) + i for i, n in enumerate((4, 9, 2))]
    merged = merge_episode_stats([episode_stats(part) for part in parts])
    everything = np.concatenate(parts)
    np.testing.assert_allclose(merged["mean"], everything.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged["std"], everything.std(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged["min"], everything.min(axis=0))
    np.testing.assert_allclose(merged["max"], everything.max(axis=0))
    assert merged["count"] == [15] and set(merged) == LEROBOT_STATS
