"""A v3.0 episode's rows of the data file it shares, read from the row groups holding them, as the whole file filtered
by the episode's `index` range reads them; and the episode list's lengths and indices, built once at load."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from eval.dataset_factory import make_dataset
from gr00t_eval.dataset import LeRobotDataset
from gr00t_eval.dataset.tables import _scalar_columns

LENGTHS = (5, 9, 3, 7, 4, 6, 2, 8)


def _data_files(root: Path):
    return sorted((root / "data").rglob("*.parquet"))


def _rewrite_in_row_groups(root: Path, rows_per_group: int, statistics: bool = True) -> None:
    for path in _data_files(root):
        pq.write_table(pq.read_table(path), path, row_group_size=rows_per_group, write_statistics=statistics)


def _whole_file_filtered(path: Path, start: int, stop: int):
    table = _scalar_columns(pq.read_table(path), path)
    index = table.column("index")
    return table.filter(pc.and_(pc.greater_equal(index, start), pc.less(index, stop)))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("shared") / "ds", lengths=LENGTHS, cameras=(), layout="v3.0",
                        episodes_per_file=5)


# 4 and 7 rows a group: episodes that span two or three row groups; 1000: the whole file in one
@pytest.mark.parametrize("rows_per_group", [1, 4, 7, 1000])
def test_every_episode_of_a_shared_file_reads_as_the_whole_file_filtered_by_its_index_range(written, tmp_path,
                                                                                          rows_per_group):
    root = tmp_path / "ds"
    shutil.copytree(written, root)
    _rewrite_in_row_groups(root, rows_per_group)
    dataset = LeRobotDataset(root)
    assert len(_data_files(root)) == 2
    for position, record in enumerate(dataset._records):
        table = dataset.episode(position).table
        assert table.equals(_whole_file_filtered(record.data_path, *record.row_range), check_metadata=True), position
        assert table.column("episode_index").to_pylist() == [position] * LENGTHS[position]


def test_an_episode_is_read_from_the_row_groups_holding_its_rows_alone(written, tmp_path):
    """By the episode list's row offsets and the row groups' row counts, not by the file's statistics: a file written
    without them was decoded whole for every episode. Here the first row group is damaged: the episodes past it read."""
    root = tmp_path / "ds"
    shutil.copytree(written, root)
    _rewrite_in_row_groups(root, 4, statistics=False)
    path = _data_files(root)[0]
    group = pq.read_metadata(path).row_group(0)
    data = bytearray(path.read_bytes())
    for column in range(group.num_columns):
        chunk = group.column(column)
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        data[start:start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(data))
    dataset = LeRobotDataset(root)
    assert dataset.episode(2).table.column("index").to_pylist() == list(range(14, 17))  # rows 14..16: groups 3 and 4
    with pytest.raises(Exception, match="cannot read parquet"):  # the damage is real: episode 0's rows lie in it
        dataset.episode(0)


def test_an_episodes_table_holds_its_own_rows_not_the_row_groups_read_for_them(written, tmp_path):
    """A replay keeps the arrays of the episodes it serves: a slice of the row groups kept them all in memory."""
    root = tmp_path / "ds"
    shutil.copytree(written, root)
    _rewrite_in_row_groups(root, 1000)
    dataset = LeRobotDataset(root)
    record = dataset._records[2]
    own_rows = _whole_file_filtered(record.data_path, *record.row_range)
    assert dataset.episode(2).table.get_total_buffer_size() <= own_rows.get_total_buffer_size()


def test_the_episodes_of_a_one_row_group_file_decode_it_once_and_a_rewritten_file_afresh(written, tmp_path,
                                                                                          monkeypatch):
    """LeRobot writes a v3.0 file's episodes in one row group: each episode decoded the whole file again (a 1000-episode
    file: 130 ms per episode). The row groups read last are kept for the next episode, until the file changes."""
    root = tmp_path / "ds"
    shutil.copytree(written, root)
    _rewrite_in_row_groups(root, 1000)
    reads = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", lambda self, *a, **k: reads.append(a) or real(self, *a, **k))
    dataset = LeRobotDataset(root)
    first_file = [p for p, record in enumerate(dataset._records) if record.data_path == _data_files(root)[0]]
    assert len(first_file) == 5
    for position in first_file:
        record = dataset._records[position]
        assert dataset.episode(position).table.equals(_whole_file_filtered(record.data_path, *record.row_range))
    assert len(reads) == 1
    path = _data_files(root)[0]
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                                    pc.add(table.column("timestamp"), 1.0)), path)
    rewritten = LeRobotDataset(root).episode(first_file[0]).table.column("timestamp").to_pylist()
    assert rewritten == [t + 1.0 for t in table.column("timestamp").to_pylist()[:len(rewritten)]]
    assert len(reads) == 2


def test_an_episode_list_that_skips_rows_of_a_file_still_reads_each_episodes_own_rows(written, tmp_path):
    """Offsets counted from the first episode listed in a file do not find the rows of one after a gap (an episode
    the list leaves out): its rows are found by their `index` values, as before."""
    root = tmp_path / "ds"
    shutil.copytree(written, root)
    _rewrite_in_row_groups(root, 4)
    episodes = sorted((root / "meta" / "episodes").rglob("*.parquet"))[0]
    table = pq.read_table(episodes)
    pq.write_table(table.filter(pc.not_equal(table.column("episode_index"), 1)), episodes)
    dataset = LeRobotDataset(root)
    assert dataset.episode_indices[:2] == [0, 2]
    assert dataset.episode(1).table.column("episode_index").to_pylist() == [2] * LENGTHS[2]


def test_the_writers_v3_data_files_hold_bounded_row_groups(tmp_path):
    """One row group a file was decoded whole to read any of its episodes."""
    from gr00t_eval.dataset.writer_files import V3_ROW_GROUP_ROWS

    root = make_dataset(tmp_path / "ds", lengths=(V3_ROW_GROUP_ROWS // 2 + 1,) * 3, cameras=(), layout="v3.0",
                        state_dims={"arm": 1}, action_dims={"arm": 1})
    metadata = pq.read_metadata(_data_files(root)[0])
    groups = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
    assert max(groups) <= V3_ROW_GROUP_ROWS and sum(groups) == 3 * (V3_ROW_GROUP_ROWS // 2 + 1)
    assert len(groups) > 1
    dataset = LeRobotDataset(root)
    assert [dataset.episode(p).table.num_rows for p in range(3)] == dataset.episode_lengths


def test_episode_lengths_and_indices_are_built_once_at_load(written):
    """The episode list does not change after load: each read gave a new list of every episode (O(episodes) a read,
    a replay reads it per row of every request)."""
    dataset = LeRobotDataset(written)
    assert dataset.episode_lengths == list(LENGTHS) and dataset.episode_indices == list(range(len(LENGTHS)))
    assert dataset.episode_lengths is dataset.episode_lengths
    assert dataset.episode_indices is dataset.episode_indices


def test_a_data_file_replaced_by_one_of_its_size_with_its_old_mtime_reads_afresh(written, tmp_path):
    """The kept row groups were keyed by path, size and mtime: a same-size file restored with its old mtime (tar, cp -p,
    rsync -t, a 2 s file system) gave the old rows."""
    root = tmp_path / "ds"
    shutil.copytree(written, root)
    _rewrite_in_row_groups(root, 1000)
    path = _data_files(root)[0]
    first = next(p for p, record in enumerate(LeRobotDataset(root)._records) if record.data_path == path)
    before = LeRobotDataset(root).episode(first).table.column("action").to_pylist()
    stat = path.stat()
    table = pq.read_table(path)
    action = table.column("action").combine_chunks()
    negated = pa.ListArray.from_arrays(action.offsets, pc.negate(action.flatten()))  # the same size written
    pq.write_table(table.set_column(table.schema.get_field_index("action"), "action", negated), path, row_group_size=1000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    assert LeRobotDataset(root).episode(first).table.column("action").to_pylist() == [[-a for a in row] for row in before]
