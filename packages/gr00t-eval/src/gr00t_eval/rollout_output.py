"""A new rollout's output directory and video folder: checked, emptied (--overwrite) and claimed under a lock before
anything runs, and released again when the run stops before it scored an episode."""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, List, Sequence, Tuple

from .video_dirs import (check_shard_video_dir, check_video_dir, check_writable, delete_episode_videos, refuse_broken_link,
                         within)

logger = logging.getLogger(__name__)

DEFAULT_ROLLOUT_BASE = "/tmp/gr00t_rollout_eval"


def _rollout_output_dir(args: argparse.Namespace, label: str, shard: Any,
                        claim: Callable[[Path], None]) -> Tuple[Path, List[Path], List[Path]]:
    """--output-dir (refused when not empty, unless --overwrite), or a new dated directory under the default base;
    `claim(path)` writes the run's file there. Returns it with the earlier run's videos in an outside --video-dir
    that --overwrite deletes (delete_earlier_videos), once this run holds that folder too (_claim_videos), and the
    folders it made that a run released before it started removes when empty (_release_unstarted_run): a dated
    directory and the parents it created. Never an --output-dir: it keeps its lock file (run_file.directory_lock).

    Shards of one plan may share a directory: a shard only needs its own file names to be free. Both the
    output directory and an outside --video-dir are checked before anything is emptied or created. The last
    check, the emptying and the claim happen under a lock of the directory: of two runs started together into
    it, --overwrite or not, the second finds the first's run file and is refused (it used to empty it away).
    """
    from .cli_errors import UsageError
    from .output_files import OutputDirError, episode_log_name, results_file_name, run_file_name
    from .run_dir import check_output_dir, make_fresh_dated_output_dir_noting_made, prepare_output_dir
    from .run_file import ROLLOUT_LOCK_FILENAME, directory_lock

    own = None if shard is None else [run_file_name(shard), episode_log_name(shard), results_file_name(shard)]
    path = Path(args.output_dir) if args.output_dir else None
    videos = Path(args.video_dir) if args.video_dir and not args.no_video else None
    refuse_broken_link("--output-dir", path)  # before within(), which resolves both
    refuse_broken_link("--video-dir", videos)
    inside = videos is not None and path is not None and within(videos, path)
    # a shard's --video-dir inside its directory holds its split's videos, as videos/ does (run_dir.check_output_dir)
    keep = (ROLLOUT_LOCK_FILENAME, *(_top_entry(videos, path) if inside and shard is not None else ()))
    made: List[Path] = []
    try:
        if path is not None:
            check_output_dir(path, overwrite=args.overwrite, own_files=own, keep=keep)
        earlier_videos = []
        if args.video_dir and not args.no_video:
            earlier_videos = (check_video_dir(Path(args.video_dir), path, args.overwrite) if shard is None else
                              check_shard_video_dir(Path(args.video_dir), path, args.overwrite, args, shard))
        if videos is not None and not inside:  # before the claim: a refused folder leaves no run file behind
            check_writable(videos)
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            with directory_lock(path / ROLLOUT_LOCK_FILENAME):
                prepare_output_dir(path, overwrite=args.overwrite, own_files=own, keep=keep)
                claim(path)
        else:
            path, made = make_fresh_dated_output_dir_noting_made(DEFAULT_ROLLOUT_BASE, label)
            with _released_unless_started(path, shard, made_folders=made):  # a claim refused leaves no folder
                claim(path)
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None
    if videos is not None and inside:  # made after the directory was checked and emptied
        with _released_unless_started(path, shard):
            check_writable(videos)
    return path, earlier_videos, made


def delete_earlier_videos(video_dir: str, earlier_videos: List[Path]) -> None:
    """Delete the earlier run's videos --overwrite replaces in an outside --video-dir: only after this run's claim
    there was granted, as a run still writing there refuses it ("in use") and keeps its videos."""
    if earlier_videos:
        logger.warning("deleting %d episode videos of an earlier run from --video-dir %s (--overwrite); other files "
                       "there are kept", len(earlier_videos), video_dir)
        delete_episode_videos(Path(video_dir), earlier_videos)


def _top_entry(inner: Path, outer: Path) -> Tuple[str, ...]:
    """The name of the entry of `outer` that holds `inner` (which lies inside it); none when they are one folder."""
    parts = inner.resolve().relative_to(outer.resolve()).parts
    return parts[:1]


def _claim_videos(output_dir: Path, shard: Any, env_spec: str, config: Any, resume: bool = False) -> None:
    """Claim the run's video folder when it lies outside the output directory, while the run writes there
    (video_claims.claim_video_dir): of two runs started together into one, both passed the check for earlier videos
    and then overwrote each other's. The other shards of one plan share it; a `resume` is refused when another run
    has used it since. The claim is marked finished with the run's (run_file.held_run_claims)."""
    import hashlib
    import json

    from .cli_errors import UsageError
    from .output_files import OutputDirError
    from .run_file import hold_claim
    from .shard import shard_plan
    from .suites import resolve_tasks
    from .video_claims import claim_video_dir, video_claim_writer

    if not config.video_dir or within(Path(config.video_dir), output_dir):
        return  # none, or the output directory's own (its claim covers it)
    plan = None
    if shard is not None:
        key = {**shard_plan(resolve_tasks(env_spec)[0], config, None), "shards": shard.count}
        plan = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    try:
        hold_claim(claim_video_dir(Path(config.video_dir), video_claim_writer(output_dir, shard), plan,
                                   shard_index=None if shard is None else shard.index, resume=resume,
                                   shard_of=None if shard is None else (shard.count, env_spec, config.n_episodes)))
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None


@contextlib.contextmanager
def _released_unless_started(output_dir: Path, shard: Any, new_run: bool = True,
                             made_folders: Sequence[Path] = ()) -> Iterator[None]:
    """Release a new run (_release_unstarted_run) when the block raises: its videos folder refused, the run stopped
    before scoring, Ctrl-C. A resumed run's files are never released, nor a run's whose folder is gone (another run's
    may stand at its path now)."""
    from .run_stop import OutputFolderGone

    try:
        yield
    except BaseException as exc:
        if new_run and not isinstance(exc, OutputFolderGone):
            _release_unstarted_run(output_dir, shard, made_folders)
        raise


def _release_unstarted_run(output_dir: Path, shard: Any, made_folders: Sequence[Path] = (),
                           errored_kept: bool = True) -> None:
    """A new run that stopped before it scored any episode (no server answered, the policy refused its settings)
    leaves no run file: the corrected command is not refused as 'not empty', nor pointed at a --resume that would
    repeat the mistake. Only while the run file there is this process's claim: never another run's files. Of the
    `made_folders` (deepest first: those the run created, _rollout_output_dir), each left empty is removed too, so
    refused tries leave no empty dated directories behind. A run whose log holds episodes is kept (its --resume
    continues it), unless every one errored and not `errored_kept` (a run that never stepped its envs: a --resume
    would run them again with the same setting)."""
    from .episode_log import EpisodeLog
    from .output_files import episode_log_name, run_file_name
    from .run_claim import holds_claim, release_alive_lock

    log, run_file = output_dir / episode_log_name(shard), output_dir / run_file_name(shard)
    try:
        if run_file.exists() and not holds_claim(run_file):
            logger.warning("not releasing %s: its %s is not this run's claim (another run took the folder since)",
                           output_dir, run_file.name)
            return
        if any(errored_kept or not entry.get("error") for entry in EpisodeLog(log).read()):
            return
        log.unlink(missing_ok=True)
        _release_video_claim(run_file, output_dir, shard)
        release_alive_lock(run_file, remove=True)
        run_file.unlink(missing_ok=True)
        _remove_empty_folders(made_folders)
    except (OSError, ValueError) as exc:  # never hide the reason the run stopped
        logger.debug("could not release %s: %s", output_dir, exc)


def _remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove each of `folders` (deepest first) while it is empty; stop at the first that holds something (another
    run's directory, a file): it and the folders above it are kept."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _release_video_claim(run_file: Path, output_dir: Path, shard: Any) -> None:
    """Delete the claim an unstarted run took on its --video-dir: it wrote nothing there, and a later claim counts
    against an earlier run's --resume into that folder (video_claims.video_dir_taken_over)."""
    import json

    from .video_claims import release_video_claim

    try:
        video_dir = json.loads(run_file.read_text())["config"]["video_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if isinstance(video_dir, str):
        release_video_claim(Path(video_dir), output_dir, shard)
        if within(Path(video_dir), output_dir) and not _sibling_shard_files(output_dir, shard):
            _remove_own_videos(Path(video_dir))


def _sibling_shard_files(output_dir: Path, shard: Any) -> List[str]:
    """The files other shards of a split left in `output_dir`: the videos folder they share holds their videos too."""
    from .output_files import episode_log_name, results_file_name, run_file_name, shard_files

    if shard is None:
        return []
    own = {run_file_name(shard), episode_log_name(shard), results_file_name(shard)}
    return [name for name in shard_files(output_dir) if name not in own]


def _remove_own_videos(video_dir: Path) -> None:
    """Delete the episode videos in an unstarted run's own `video_dir` (of episodes it never logged), then the folders
    left empty: its videos/ made the folder 'not empty' to the same command run again."""
    from .video import episode_videos

    delete_episode_videos(video_dir, episode_videos(video_dir))
    for folder in [*(entry for entry in video_dir.glob("*") if entry.is_dir() and not entry.is_symlink()), video_dir]:
        try:
            folder.rmdir()
        except OSError:  # holds something, or is gone: kept as it is
            pass
