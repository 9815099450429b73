"""Parquet files whose path pyarrow cannot open by name, handed to it as files Python opened.

pyarrow takes a str path as UTF-8 text: a folder whose name on disk is not UTF-8 (a Latin-1 byte from an old tool, or
any non-ASCII name under a Latin-1 locale) was another path to it, and a file that is there failed with a bare codec
error or 'No such file or directory'. Such a path is opened by Python (the file it listed, by the bytes of its name);
any other is given to pyarrow as before (its own file reads, which a Python file would route through the GIL).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Union

import pyarrow as pa
import pyarrow.parquet as pq

from gr00t_client.file_names import utf8_on_disk

PathLike = Union[str, Path]


@contextlib.contextmanager
def _source(path: PathLike, mode: str) -> Iterator[Any]:
    if utf8_on_disk(path):
        yield str(path)
    else:
        with open(path, mode) as opened:
            yield opened


def read_table(path: PathLike, **options: Any) -> pa.Table:
    """pq.read_table of the file at `path` (`options` as pq.read_table takes them: columns, filters)."""
    with _source(path, "rb") as source:
        return pq.read_table(source, **options)


def read_schema(path: PathLike) -> pa.Schema:
    """The arrow schema of the parquet file at `path`."""
    with _source(path, "rb") as source:
        return pq.read_schema(source)


def read_metadata(path: PathLike) -> pq.FileMetaData:
    """The footer (rows, row groups, schema) of the parquet file at `path`."""
    with _source(path, "rb") as source:
        return pq.read_metadata(source)


@contextlib.contextmanager
def parquet_file(path: PathLike) -> Iterator[pq.ParquetFile]:
    """pq.ParquetFile of the file at `path`, open for the `with` block."""
    with _source(path, "rb") as source, pq.ParquetFile(source) as parquet:
        yield parquet


def write_table(table: pa.Table, path: PathLike, **options: Any) -> None:
    """pq.write_table of `table` to a file at `path` (`options` as pq.write_table takes them: row_group_size)."""
    with _source(path, "wb") as sink:
        pq.write_table(table, sink, **options)
