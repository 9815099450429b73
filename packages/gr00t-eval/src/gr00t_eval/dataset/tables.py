"""Reading one episode's rows from a LeRobot parquet data file into pyarrow, and its columns into numpy arrays."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import parquet_files
from .errors import DatasetError, require_file
from .meta import EpisodeRecord

logger = logging.getLogger(__name__)

# LeRobot's per-row bookkeeping columns: one number per row (info.json declares them with shape [1])
SCALAR_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def _read_episode_table(record: EpisodeRecord) -> pa.Table:
    path = record.data_path
    require_file(path, f"data file of episode {record.episode_index}")
    try:
        if record.row_range is None:
            with parquet_files.parquet_file(path) as parquet:
                rows = parquet.metadata.num_rows
                table = _scalar_columns(_rows_where(parquet, path, record.length), path)
        else:
            table = _shared_file_rows(record)
            rows = table.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"{path}: cannot read parquet ({exc})") from exc
    if "episode_index" in table.column_names and table.num_rows:
        found = pc.unique(table.column("episode_index")).to_pylist()
        if found != [record.episode_index]:
            raise DatasetError(f"{path}: rows for episode {record.episode_index} carry episode_index values {found}")
    if rows < record.length:
        raise DatasetError(
            f"{path}: {rows} rows but the episode list says episode {record.episode_index} has length {record.length}"
        )
    if rows > record.length:
        logger.warning("%s: %d rows, episode length %d; using the first %d", path, rows, record.length, record.length)
    return table


_BATCH_ROWS = 1 << 16  # rows decoded at a time where a file is searched for an episode's rows


def _rows_where(parquet: pq.ParquetFile, path: Path, count: int, column: Optional[str] = None, low: int = 0,
                high: int = 0) -> pa.Table:
    """The first `count` rows of `parquet` (those whose `column` lies in [low, high) where given), decoded a batch at a
    time and no further: a 1 MB file of 20 million extra zero rows, read whole and then cut, took 1.8 GB for 6 rows.
    Row groups whose statistics rule the range out are skipped."""
    metadata, batches, found = parquet.metadata, [], 0
    groups = [group for group in range(metadata.num_row_groups)
              if column is None or _may_hold(metadata.row_group(group), column, low, high)]
    size = _BATCH_ROWS if column else max(1, min(count, _BATCH_ROWS))  # a search reads on past rows it does not keep
    for batch in parquet.iter_batches(batch_size=size, row_groups=groups, use_threads=False):
        if column is not None:
            # one chunk: pyarrow 16 aborts the process (std::bad_variant_access) on a chunked mask in RecordBatch.filter
            values = _scalar_columns(pa.Table.from_batches([batch]), path).column(column).combine_chunks()
            batch = batch.filter(pc.and_(pc.greater_equal(values, low), pc.less(values, high)))
        # copied out (take), not sliced: a slice kept the batch's whole buffers alive with every array read from it
        batches.append(batch.take(pa.array(np.arange(min(batch.num_rows, count - found)))))
        found += batches[-1].num_rows
        if found >= count:
            break
    return pa.Table.from_batches(batches, schema=parquet.schema_arrow)


def _may_hold(group: pq.RowGroupMetaData, column: str, low: int, high: int) -> bool:
    """False where the row group's statistics of scalar `column` show no value in [low, high)."""
    for index in range(group.num_columns):
        chunk = group.column(index)
        if chunk.path_in_schema == column:
            stats = chunk.statistics
            if stats is not None and stats.has_min_max and isinstance(stats.min, int) and isinstance(stats.max, int):
                return stats.max >= low and stats.min < high
    return True


def _shared_file_rows(record: EpisodeRecord) -> pa.Table:
    """A v3.0 episode's rows of a data file it shares: those at its offset in the file, read from the row groups holding
    them alone; else (not found there) those of its `index` range, else of its `episode_index`, read from the file."""
    path = record.data_path
    with parquet_files.parquet_file(path) as parquet:
        schema = parquet.schema_arrow
        if "index" in schema.names:
            start, stop = record.row_range
            at_offset = _rows_at_offset(parquet, record)
            if at_offset is not None:
                table = _scalar_columns(at_offset, path)
                if np.array_equal(table.column("index").to_numpy(), np.arange(start, stop)):
                    return table
            return _scalar_columns(_rows_where(parquet, path, record.length, "index", start, stop), path)
        if "episode_index" in schema.names:
            episode = record.episode_index
            rows = _rows_where(parquet, path, record.length, "episode_index", episode, episode + 1)
            return _scalar_columns(rows, path)
        raise DatasetError(f"{path}: a multi-episode data file needs an 'index' or 'episode_index' column")


def _rows_at_offset(parquet: pq.ParquetFile, record: EpisodeRecord) -> Optional[pa.Table]:
    """The rows of `parquet` the episode list puts the episode at (its dataset_from_index less its file's first),
    decoding only the row groups that hold them (a filter decoded every row group its statistics could not rule out:
    the whole file, written as one row group, for each episode); None where they are not known to be in the file."""
    start, stop = record.row_range
    if record.file_row_start is None or not record.file_row_start <= start < stop:
        return None
    first, end = start - record.file_row_start, stop - record.file_row_start  # rows of the file
    metadata = parquet.metadata
    groups: List[int] = []
    group_start = skip = 0
    for group in range(metadata.num_row_groups):
        if group_start >= end:
            break
        rows = metadata.row_group(group).num_rows
        if first < group_start + rows:
            skip = skip if groups else first - group_start
            groups.append(group)
        group_start += rows
    if group_start < end:  # the file ends before the episode does
        return None
    # Its rows copied out (take), not sliced: a slice kept the row groups' whole buffers alive for as long as any array
    # read from it, as a replay keeps the actions of the episodes it serves
    return _row_groups(parquet, record.data_path, groups).take(np.arange(skip, skip + stop - start))


_KEPT_GROUPS_BYTES = 256 << 20  # the last row groups read are kept for the next episode up to this size decoded
_kept_groups: Dict[str, Any] = {}
_kept_groups_lock = threading.Lock()


def _row_groups(parquet: pq.ParquetFile, path: Path, groups: Sequence[int]) -> pa.Table:
    """Row groups `groups` of the data file at `path`; the last ones read are kept (up to _KEPT_GROUPS_BYTES) for the
    next episode: LeRobot writes a v3.0 file's episodes in one row group, which each of them decoded whole again (a
    1000-episode file: 130 ms per episode). Keyed by the file's identity and change time too: a file rewritten or
    replaced reads afresh (size and mtime alone matched a same-size file restored with its old mtime, or written within
    a coarse file system's 2 s)."""
    stat = path.stat()
    key = (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, tuple(groups))
    with _kept_groups_lock:
        if _kept_groups.get("key") == key:
            return _kept_groups["table"]
    table = parquet.read_row_groups(list(groups))
    with _kept_groups_lock:
        _kept_groups.clear()
        if table.nbytes <= _KEPT_GROUPS_BYTES:
            _kept_groups.update(key=key, table=table)
    return table


def forget_row_groups() -> None:
    """Drop the row groups kept for the next episode (LeRobotDataset.close)."""
    with _kept_groups_lock:
        _kept_groups.clear()


def _scalar_columns(table: pa.Table, path: Path) -> pa.Table:
    """`table` with LeRobot's scalar columns stored as 1-element lists (info.json's shape [1], as some converters
    write them) read as the scalars they are; DatasetError naming the file and column for lists of other lengths."""
    for name in SCALAR_COLUMNS:
        if name not in table.column_names or not _is_list(table.schema.field(name).type):
            continue
        column = table.column(name).combine_chunks()
        if pc.any(pc.not_equal(pc.fill_null(pc.list_value_length(column), 0), 1)).as_py():
            raise DatasetError(f"{path}: column '{name}' holds lists ({column.type}) not all one value long; it "
                               "must hold one number per row (a scalar, or a list of one)")
        table = table.set_column(table.column_names.index(name), name, pc.list_flatten(column))
    return table


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _column_to_numpy(column: pa.ChunkedArray, name: str, path: Path) -> np.ndarray:
    array = column.combine_chunks()
    if array.null_count:
        raise DatasetError(f"{path}: column '{name}' has {array.null_count} null cells")
    kind = array.type
    if _is_list(kind):
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        if lengths.size and (lengths != lengths[0]).any():
            raise DatasetError(f"{path}: column '{name}' has rows of different lengths {sorted(set(lengths.tolist()))[:5]}")
        flat = pc.list_flatten(array)
        if flat.null_count:  # numpy would make them NaN: a state or action with a hole, scored or replayed silently
            first = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0]) // max(int(lengths[0]), 1)
            raise DatasetError(f"{path}: column '{name}' has {flat.null_count} null values inside its rows "
                               f"(the first in row {first})")
        values = flat.to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if lengths.size else 0
        return values.reshape(len(array), width)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.asarray(array.to_pylist(), dtype=object)
    return array.to_numpy(zero_copy_only=False)
