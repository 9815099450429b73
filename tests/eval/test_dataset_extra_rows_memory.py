"""An episode's data file with millions of rows past its declared length costs what the declared rows cost to read:
the reader decodes only the rows covering the episode, and warns naming the file and both row counts."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eval.dataset_factory import make_dataset
from gr00t_eval.dataset import LeRobotDataset

EXTRA_ROWS = 2_000_000  # decoded, every column of them is over 100 MB; the declared rows are a few hundred bytes
LIMIT_BYTES = 32 << 20
_COUNTING_POOLS = []  # kept for the process's life: buffers allocated through a pool are freed through it later


def _with_extra_rows(path: Path, extra: int, before: bool = False, row_group_size: int = EXTRA_ROWS * 2) -> None:
    """Rewrite `path` with `extra` zero rows after its own (or `before` them; episode_index kept, index -1), by
    default as one row group: a 1 MB file."""
    table = pq.read_table(path)
    columns = {}
    for name in table.column_names:
        column, kind = table.column(name).combine_chunks(), table.schema.field(name).type
        if name == "episode_index":
            more = pa.array(np.full(extra, column[0].as_py())).cast(kind)
        elif name == "index" and not pa.types.is_integer(kind):
            more = pa.ListArray.from_arrays(pa.array(np.arange(extra + 1, dtype=np.int32)),
                                            pa.array(np.full(extra, -1))).cast(kind)
        elif name == "index":
            more = pa.array(np.full(extra, -1)).cast(kind)
        elif pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind):
            width = len(column[0].as_py())
            values = pa.array(np.zeros(extra * width, np.float32))
            offsets = pa.array(np.arange(0, extra * width + 1, width, dtype=np.int32))
            more = (pa.FixedSizeListArray.from_arrays(values, width) if pa.types.is_fixed_size_list(kind)
                    else pa.ListArray.from_arrays(offsets, values)).cast(kind)
        else:
            more = pa.array(np.zeros(extra)).cast(kind)
        columns[name] = pa.concat_arrays([more, column] if before else [column, more])
    pq.write_table(pa.table(columns, schema=table.schema), path, compression="zstd", row_group_size=row_group_size)


def _peak_bytes_reading(dataset: LeRobotDataset, position: int) -> tuple:
    """The episode at `position` and the peak of pyarrow's allocations while it was read (a pool of its own: the
    default pool's peak never goes down)."""
    default = pa.default_memory_pool()
    counted = pa.proxy_memory_pool(default)
    _COUNTING_POOLS.append(counted)
    pa.set_memory_pool(counted)
    try:
        episode = dataset.episode(position)
    finally:
        pa.set_memory_pool(default)
    return episode, counted.max_memory()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("extra_rows") / "ds", lengths=(6, 9), cameras=())


def test_an_episode_file_with_millions_of_extra_rows_is_read_within_the_declared_rows_memory(written, tmp_path, caplog):
    root = tmp_path / "ds"
    shutil.copytree(written, root)
    expected = LeRobotDataset(root).episode(0).table
    data = root / "data" / "chunk-000" / "episode_000000.parquet"
    _with_extra_rows(data, EXTRA_ROWS)
    dataset = LeRobotDataset(root)
    with caplog.at_level(logging.WARNING, logger="gr00t_eval.dataset"):
        episode, grown = _peak_bytes_reading(dataset, 0)
    assert grown < LIMIT_BYTES, f"reading a 6-row episode grew pyarrow's peak by {grown} bytes"
    assert episode.table.equals(expected)
    assert f"{data}: {EXTRA_ROWS + 6} rows, episode length 6; using the first 6" in caplog.text


def test_a_shared_v3_file_with_list_index_and_millions_of_extra_rows_is_read_within_the_declared_rows_memory(
        tmp_path_factory, tmp_path):
    written = make_dataset(tmp_path_factory.mktemp("shared_extra") / "ds", lengths=(6, 9), cameras=(), layout="v3.0",
                           episodes_per_file=2)
    root = tmp_path / "ds"
    shutil.copytree(written, root)
    expected = [LeRobotDataset(root).episode(position).table for position in (0, 1)]
    (data,) = sorted((root / "data").rglob("*.parquet"))
    table = pq.read_table(data)
    # `index` stored as one-element lists, as some converters write it: parquet filters cannot compare those
    index = table.column("index").combine_chunks()
    listed = pa.ListArray.from_arrays(pa.array(np.arange(len(index) + 1, dtype=np.int32)), index)
    table = table.set_column(table.column_names.index("index"), "index", listed)
    pq.write_table(table, data)
    # before the episodes' rows, in row groups of 64Ki: the rows at the episodes' offsets are not theirs, so their
    # `index` range is looked for in the whole file
    _with_extra_rows(data, EXTRA_ROWS, before=True, row_group_size=1 << 16)
    dataset = LeRobotDataset(root)
    for position in (0, 1):
        episode, grown = _peak_bytes_reading(dataset, position)
        assert grown < LIMIT_BYTES, f"reading episode {position} grew pyarrow's peak by {grown} bytes"
        assert episode.table.column("index").to_pylist() == expected[position].column("index").to_pylist()
        assert episode.table.column("observation.state").equals(expected[position].column("observation.state"))
