"""Checks of a rollout's --video-dir outside its output directory, made before a run starts: episode videos of an
earlier run there (refused unless --overwrite, which deletes only those), a file in the way, a folder that cannot be
written."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple


def within(inner: Path, outer: Path) -> bool:
    """Whether `inner` is `outer` or lies inside it (links resolved)."""
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents


def check_video_dir(video_dir: Path, output_dir: Optional[Path], overwrite: bool, label: str = "--video-dir") -> List[Path]:
    """Check a --video-dir outside the output directory; return the earlier run's videos --overwrite will delete.

    Only files this tool writes there count: episode videos (episode_0007_success.mp4, also in a task's folder).
    They are refused unless --overwrite, so videos of two runs never sit side by side under the same names;
    other files (a shared videos folder) neither block the run nor are ever deleted. Shards of one plan share
    their videos folder (each writes its own episodes): they are checked by check_shard_video_dir.
    """
    from .cli_errors import UsageError
    from .video import episode_videos

    if not _needs_own_check(video_dir, output_dir, label):
        return []
    earlier = episode_videos(video_dir, skip=output_dir)
    if earlier and not overwrite:
        raise UsageError(f"{label} {video_dir} already holds episode videos of an earlier run "
                         f"({_listing(earlier, video_dir)}); pass "
                         "--overwrite to delete those (only episode_*_success/failure/error.mp4 files; nothing else there is "
                         "touched) or name a new directory, so videos of two runs never mix")
    return earlier


def check_shard_video_dir(video_dir: Path, output_dir: Optional[Path], overwrite: bool, args: argparse.Namespace,
                           shard: Any) -> List[Path]:
    """check_video_dir for a shard: the shards of one plan share a --video-dir, each writing the videos of its own
    slice, so only videos at the names this shard writes count (its episodes of each task): they are another run's (a
    shard of another plan, or of an earlier run), which this shard would overwrite, or delete on the other outcome.
    Refused unless --overwrite; returns those --overwrite deletes."""
    from .cli_errors import UsageError
    from .shard import shard_ranges
    from .suites import resolve_tasks, task_video_dir
    from .video import EPISODE_VIDEO_NAME

    if not _needs_own_check(video_dir, output_dir, "--video-dir",
                            (shard.index, shard.count, args.env_name, args.n_episodes)):
        return []
    tasks = resolve_tasks(args.env_name)[0]
    ranges = shard_ranges(tasks, args.n_episodes, shard)
    clashing: List[Path] = []
    for task in tasks:
        episodes = ranges.get(task.env_name)
        folder = Path(task_video_dir(str(video_dir), task.env_name, len(tasks) > 1))
        if not episodes or not folder.is_dir() or (output_dir is not None and within(folder, output_dir)):
            continue
        for path in sorted(folder.iterdir()):
            name = EPISODE_VIDEO_NAME.fullmatch(path.name)
            if name is not None and int(name.group("index")) in episodes and (path.is_file() or path.is_symlink()):
                clashing.append(path)
    if clashing and not overwrite:
        raise UsageError(f"--video-dir {video_dir} already holds videos of the episodes shard {shard} runs "
                         f"({_listing(clashing, video_dir)}): "
                         "another run's (a shard of another plan, or an earlier run), which this shard would overwrite "
                         "or delete; pass --overwrite to delete those (only this shard's episode videos; nothing else "
                         "there is touched) or name a new directory, so videos of two runs never mix")
    return clashing


def _needs_own_check(video_dir: Path, output_dir: Optional[Path], label: str,
                     shard: Optional[Tuple[int, int, str, int]] = None) -> bool:
    """Whether a videos folder needs a check of its own: not when it lies inside the output directory, whose own check
    covers it. UsageError when it exists and is not a directory, or is (or lies inside) the output folder of a run
    still running (its videos/, whose names this run's would take), the other shards of a `shard`'s plan aside."""
    from .cli_errors import UsageError
    from .output_files import OutputDirError, refuse_path_too_long
    from .run_claim import refuse_live_runs_around

    refuse_broken_link(label, video_dir)
    if output_dir is not None and within(video_dir, output_dir):
        return False
    if video_dir.exists() and not video_dir.is_dir():
        raise UsageError(f"{label} {video_dir} exists and is not a directory")
    try:
        refuse_path_too_long(video_dir, label)
        refuse_live_runs_around(video_dir, label, include_self=True, shard=shard)
        _refuse_live_runs_below(video_dir, output_dir, label)
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None
    return True


def _refuse_live_runs_below(video_dir: Path, output_dir: Optional[Path], label: str) -> None:
    """OutputDirError when a folder one level down in `video_dir` (as deep as its episode videos are looked for, and
    deleted by --overwrite: video.episode_videos) holds the claim of another run still running: any command's claim
    file, or a run's claim on its own --video-dir."""
    from .output_files import OutputDirError
    from .run_claim import claim_files, holds_claim, refuse_live_claim
    from .video_claims import VIDEO_CLAIM_PREFIX

    if not video_dir.is_dir():
        return
    for folder in sorted(p for p in video_dir.iterdir() if p.is_dir() and not p.is_symlink()):
        if output_dir is not None and within(folder, output_dir):
            continue
        for name in [*claim_files(folder), *(p.name for p in folder.glob(f"{VIDEO_CLAIM_PREFIX}*.json"))]:
            if holds_claim(folder / name):  # this process's own (its pid alone is not enough: a run in another
                continue  # container on a shared volume may have it too); no claim at all passes refuse_live_claim
            try:
                refuse_live_claim(folder, name, flag="the folder")
            except OutputDirError as exc:
                raise OutputDirError(f"{label} {video_dir} holds the videos of another run: {exc}") from None


def refuse_broken_link(label: str, folder: Optional[Path]) -> None:
    """UsageError when `folder`, or a folder above it, is a symbolic link to nothing or a symlink loop (see
    gr00t_client.cli_flags.broken_link_problem)."""
    from gr00t_client.cli_flags import broken_link_problem

    from .cli_errors import UsageError

    problem = None if folder is None else broken_link_problem(label, folder)
    if problem is not None:
        raise UsageError(problem)


def _listing(paths: Sequence[Path], root: Path) -> str:
    """The first three of `paths`, relative to `root`, and how many more."""
    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    return ", ".join(str(path.relative_to(root)) for path in paths[:3]) + more


def check_writable(folder: Path) -> None:
    """UsageError when episode videos could not be written to `folder` (read-only, a file in the way): checked before
    any episode runs, with a probe file, instead of a traceback per video and "Video saved to" over nothing."""
    from gr00t_client.input_folders import WRITE_PROBE_PREFIX

    from .cli_errors import UsageError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{WRITE_PROBE_PREFIX}{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--video-dir {folder} is not writable ({exc.strerror or exc}); name another folder or pass "
                         "--no-video") from None


def delete_episode_videos(video_dir: Path, videos: List[Path]) -> None:
    """Delete `videos`, then the task folders under `video_dir` they leave empty."""
    for video in videos:
        video.unlink(missing_ok=True)
    for folder in sorted({video.parent for video in videos} - {video_dir}):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
