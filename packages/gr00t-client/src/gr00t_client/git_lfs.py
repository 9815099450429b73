"""Recognise git-lfs pointer files: what a `git clone` without git-lfs leaves in place of a repository's large files
(a checkpoint's weights, a dataset's videos and parquet files)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

GIT_LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
_MAX_POINTER_BYTES = 1024


def git_lfs_pointer_problem(path: Union[str, Path], repository: str = "checkpoint") -> Optional[str]:
    """A sentence saying `path` is a git-lfs pointer and how to get the real file from the `repository` it belongs to
    ("checkpoint" or "dataset"); None when it is not one."""
    path = Path(path)
    try:
        if path.stat().st_size >= _MAX_POINTER_BYTES:
            return None
        with open(path, "rb") as fh:
            head = fh.read(len(GIT_LFS_POINTER_PREFIX))
    except OSError:
        return None
    if head != GIT_LFS_POINTER_PREFIX:
        return None
    download = "hf download <repo id>" + (" --repo-type dataset" if repository == "dataset" else "")
    return (f"{path} is a git-lfs pointer, not the file itself (the {repository} was cloned without git-lfs); run "
            f"`git lfs pull` in the {repository}'s repository, or download it with the hub's client (`{download}`)")
