"""Audit 13 (mutation testing): dataset writer layout facts that no earlier test pinned down."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval.dataset_factory import add_known_episode, expected_actions, make_dataset
from gr00t_eval.dataset import DatasetError, DatasetWriter, LeRobotDataset


def test_v2_episodes_past_chunks_size_go_to_the_next_chunk_folder_and_info_counts_the_chunks(tmp_path):
    """With chunks_size 2, episode 2 is in data/chunk-001 (as info.json's data_path says), total_chunks is 2, and
    splits covers every episode."""
    writer = DatasetWriter(tmp_path / "ds", 10, chunks_size=2)
    for episode in range(3):
        add_known_episode(writer, episode, cameras=())
    root = writer.finalize()
    assert (root / "data" / "chunk-001" / "episode_000002.parquet").is_file()
    assert not (root / "data" / "chunk-000" / "episode_000002.parquet").exists()
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["total_chunks"] == 2 and info["splits"] == {"train": "0:3"}
    episode = LeRobotDataset(root).episode(2)
    assert np.allclose(episode.actions("arm"), expected_actions(2, 3)["arm"])


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("m") / "ds", lengths=(3, 2), cameras=())


def test_stats_json_too_short_for_an_action_group_is_refused_not_sliced_short(small_dataset, tmp_path):
    """A stats.json column with fewer values than a group's slice needs is a DatasetError, not a shorter mean/std
    that a server would normalise with."""
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(small_dataset, root)
    path = root / "meta" / "stats.json"
    stats = json.loads(path.read_text())
    gripper_end = json.loads((root / "meta" / "modality.json").read_text())["action"]["gripper"]["end"]
    stats["action"]["std"] = stats["action"]["std"][: gripper_end - 1]
    path.write_text(json.dumps(stats))
    with pytest.raises(DatasetError, match=r"'action\.std' has .* values; group 'gripper' needs index"):
        LeRobotDataset(root).group_stats("action", "gripper")


def test_an_episode_list_that_repeats_an_episode_index_is_refused(small_dataset, tmp_path):
    """meta/episodes.jsonl naming one episode_index twice is refused (by index it would serve only one of them)."""
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(small_dataset, root)
    path = root / "meta" / "episodes.jsonl"
    lines = path.read_text().splitlines()
    second = json.loads(lines[1])
    second["episode_index"] = 0
    path.write_text(lines[0] + "\n" + json.dumps(second) + "\n")
    with pytest.raises(DatasetError, match="repeats an episode_index"):
        LeRobotDataset(root)


def _copy(small_dataset, tmp_path):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(small_dataset, root)
    return root


def test_a_data_file_whose_rows_carry_another_episode_index_is_refused(small_dataset, tmp_path):
    """Episode 1's file holding rows marked episode 0 (a copied or misnamed file) is refused, not read as episode 1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = _copy(small_dataset, tmp_path)
    path = root / "data" / "chunk-000" / "episode_000001.parquet"
    table = pq.read_table(path)
    column = table.schema.get_field_index("episode_index")
    table = table.set_column(column, "episode_index", pa.array([0] * table.num_rows, pa.int64()))
    pq.write_table(table, path)
    with pytest.raises(DatasetError, match=r"rows for episode 1 carry episode_index values \[0\]"):
        LeRobotDataset(root).episode(1)


def test_rows_past_the_listed_episode_length_are_not_read_as_steps(small_dataset, tmp_path):
    """A data file with more rows than meta/episodes.jsonl gives the episode yields the listed length of steps."""
    root = _copy(small_dataset, tmp_path)
    path = root / "meta" / "episodes.jsonl"
    episodes = [json.loads(line) for line in path.read_text().splitlines()]
    episodes[0]["length"] = 2  # its file holds 3 rows
    path.write_text("".join(json.dumps(e) + "\n" for e in episodes))
    episode = LeRobotDataset(root).episode(0)
    assert episode.length == 2 and episode.actions("arm").shape[0] == 2
    assert np.allclose(episode.actions("arm"), expected_actions(0, 3)["arm"][:2])


def _replace_column(root, episode, name, array):
    import pyarrow.parquet as pq

    path = root / "data" / "chunk-000" / f"episode_{episode:06d}.parquet"
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index(name), name, array)
    pq.write_table(table, path)


def test_a_null_cell_in_a_scalar_column_is_refused_not_read_as_nan(small_dataset, tmp_path):
    """A null reward cell is a DatasetError naming the column, not a NaN (or object) value read as a step's."""
    import pyarrow as pa

    root = _copy(small_dataset, tmp_path)
    _replace_column(root, 0, "next.reward", pa.array([0.0, None, 0.2], pa.float32()))
    with pytest.raises(DatasetError, match="column 'next.reward' has 1 null cells"):
        LeRobotDataset(root).episode(0).column("next.reward")


def test_list_rows_of_different_lengths_are_refused_even_when_their_values_would_reshape(small_dataset, tmp_path):
    """Rows of 2, 1 and 3 values (6 in all, 3 x 2) are refused rather than re-cut into 3 rows of 2 shifted values."""
    import pyarrow as pa

    root = _copy(small_dataset, tmp_path)
    _replace_column(root, 0, "next.reward", pa.array([[0.0, 1.0], [2.0], [3.0, 4.0, 5.0]], pa.list_(pa.float32())))
    with pytest.raises(DatasetError, match="column 'next.reward' has rows of different lengths"):
        LeRobotDataset(root).episode(0).column("next.reward")
