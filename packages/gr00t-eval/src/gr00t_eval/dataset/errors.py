"""Exceptions raised by the LeRobot dataset reader and writer."""

from __future__ import annotations

from pathlib import Path

from gr00t_client.file_names import unnameable_path_problem
from gr00t_client.git_lfs import git_lfs_pointer_problem


class DatasetError(ValueError):
    """A dataset file is malformed or disagrees with the metadata; the message names the file and field."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A file the dataset layout requires is missing."""


class DatasetColumnNotFoundError(DatasetError, KeyError):
    """An episode's data file lacks a column the metadata reads; a KeyError too, for callers that look columns up."""

    __str__ = BaseException.__str__  # the message as written, not quoted as KeyError quotes its key


def require_file(path: Path, what: str) -> None:
    """Raise DatasetFileNotFoundError naming `what` when `path` is not a file, and DatasetError when it is a git-lfs
    pointer in its place (a hub dataset cloned without git-lfs, or with only some of its files pulled), or naming the
    locale when its file-system encoding cannot name `path` (unnameable_path_problem: is_file() said False, 'not found',
    of a file that is there)."""
    unnameable = unnameable_path_problem(path, what)
    if unnameable is not None:
        raise DatasetError(unnameable)
    if not path.is_file():
        raise DatasetFileNotFoundError(f"{what} not found: {path}")
    pointer = git_lfs_pointer_problem(path, "dataset")
    if pointer is not None:
        raise DatasetError(f"{what} {pointer}")
