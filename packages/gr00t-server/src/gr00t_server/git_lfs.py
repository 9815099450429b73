"""Recognise git-lfs pointer files in place of a checkpoint's files; the check lives in gr00t_client.git_lfs, which
the dataset reader (gr00t-eval) shares."""

from gr00t_client.git_lfs import GIT_LFS_POINTER_PREFIX, git_lfs_pointer_problem

__all__ = ["GIT_LFS_POINTER_PREFIX", "git_lfs_pointer_problem"]
