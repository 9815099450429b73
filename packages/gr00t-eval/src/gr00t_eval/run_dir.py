"""A run's output directory: dated by default, never silently reused; the checks (and emptying) before a run takes it.

Layout of a rollout directory (its file names: output_files; run.json: run_file; episodes.jsonl: episode_log):
    run.json         the run's settings (base seed included), written before the first episode, and the process
                     running it ("claim"), so --overwrite or a second --resume never takes a run still running
    episodes.jsonl   one line per episode, appended (and flushed to disk) the moment it is scored
    results.json     the full results, written at the end or on Ctrl-C/SIGTERM ("status": "interrupted")
    eval_info.json   the same numbers in lerobot-eval's field names
    videos/          episode videos
`--resume DIR` reads run.json and episodes.jsonl and runs only the episodes still missing (or errored), with
run.json's settings (a command line giving others is refused); its eval_s adds up every attempt's.
A shard (`--shard I/N`) has its own run_, episodes_ and results_shard{i}of{N} files, so the shards of one split may
share a directory; --overwrite then replaces one shard's files only. A shard run again there (--overwrite or --resume)
removes a merge of the split written there (`merge DIR --output DIR`) that holds its earlier results once the server
answered (remove_merges_of, called by scale_cli._run), and again when it writes its results (rollout_report): a merge
written while it ran holds its earlier ones.
--overwrite empties only a folder whose top holds an earlier run's own file (_earlier_run_file): never a project folder,
nor a folder holding other runs' folders.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import List, Optional, Sequence, Set, Tuple, Union

from .episode_log import EpisodeLog
from .eval_info import EVAL_INFO_FILENAME
from .output_files import (EPISODE_LOG_FILENAME, RUN_FILENAME, SHARD_FILE_NAME, OutputDirError, episode_log_name,
                           not_a_directory_above, refuse_path_too_long, results_file_name, run_file_name,
                           shard_files)
from .run_file import ROLLOUT_LOCK_FILENAME, directory_lock, held_run_claims, write_run_file
from .run_resume import add_earlier_eval_s, resume_command
from .trash import OVERWRITE_TRASH, delete_trash, move_to_trash

__all__ = ["RESUMABLE_FILENAMES", "ROLLOUT_LOCK_FILENAME", "RUN_FILENAME", "EpisodeLog", "OutputDirError",
           "add_earlier_eval_s", "check_output_dir", "dated_output_dir", "directory_lock", "episode_log_name",
           "held_run_claims", "make_fresh_dated_output_dir", "make_fresh_dated_output_dir_noting_made",
           "prepare_output_dir", "refuse_unwritable_default_dir", "remove_merges_of", "remove_quietly",
           "results_file_name", "resume_command", "run_file_name", "write_run_file"]

logger = logging.getLogger(__name__)

# What `rollout --resume` and `batch --resume` (its batch_results.json) continue from: without one, a folder that is
# not empty is not advised to be resumed.
RESUMABLE_FILENAMES = (RUN_FILENAME, "batch_results.json")
# Files only a run writes at the top of its --output-dir, besides any command's claim file, a shard's files and a run's
# own results.json (_earlier_run_file): --overwrite empties a folder holding one, an earlier run's, whatever else it
# holds. Not eval_info.json nor a merge's results.json: `merge ... --output DIR` writes them beside other runs' folders.
EARLIER_RUN_FILENAMES = (EPISODE_LOG_FILENAME, "batch_results.json")


def remove_quietly(path: Union[str, Path]) -> None:
    """Delete `path` if it is there, as cleanup while another error is on its way: a delete that fails too (a folder
    gone read-only, EROFS) is logged at debug and never replaces the error the user should see."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as exc:
        logger.debug("could not remove %s: %s", path, exc)


def dated_output_dir(base: Union[str, Path], label: str, now: Optional[float] = None) -> Path:
    """BASE/YYYY-MM-DD/HH-MM-SS_<label> (like lerobot-eval's outputs/eval/<date>/<time>_<env>)."""
    stamp = time.localtime(now if now is not None else time.time())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-")[:80] or "run"
    return Path(base) / time.strftime("%Y-%m-%d", stamp) / f"{time.strftime('%H-%M-%S', stamp)}_{slug}"


def make_fresh_dated_output_dir(base: Union[str, Path], label: str, now: Optional[float] = None) -> Path:
    """Create and return a new dated directory: dated_output_dir, or the first free name with -2, -3, ...

    Creating it is the test (mkdir fails on an existing name), so two runs started in the same second never
    get one directory, and a name the user never gave is never refused as "not empty".
    """
    return make_fresh_dated_output_dir_noting_made(base, label, now)[0]


def make_fresh_dated_output_dir_noting_made(base: Union[str, Path], label: str,
                                            now: Optional[float] = None) -> Tuple[Path, List[Path]]:
    """make_fresh_dated_output_dir, returning also the folders this call created, deepest first: the new directory,
    then each of its parents that was missing (the date's folder, the base), for a run that never started to remove
    again when they are empty (rollout_output._release_unstarted_run)."""
    path = dated_output_dir(base, label, now)
    made_parents = [folder for folder in (path.parent, *path.parent.parents)
                    if not folder.exists() and not folder.is_symlink()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for number in range(1, 10000):
            candidate = path if number == 1 else path.with_name(f"{path.name}-{number}")
            try:
                candidate.mkdir()
                return candidate, [candidate, *made_parents]
            except FileExistsError:
                continue
    except PermissionError:  # made unwritable since refuse_unwritable_default_dir checked it
        raise OutputDirError(_unwritable_default_dir(path)) from None
    raise OutputDirError(f"no free output directory {path}-N under {path.parent}; pass --output-dir")


def refuse_unwritable_default_dir(base: Union[str, Path], label: str, now: Optional[float] = None) -> None:
    """OutputDirError, before a run connects, when this user cannot make the dated folder a run without --output-dir
    gets under `base` (dated_output_dir): the base or date folder another user's earlier run made (0755 under their
    umask) refused the mkdir only once the server had answered and the dataset been hashed, and said nothing of
    --output-dir."""
    path = dated_output_dir(base, label, now)
    existing = next((folder for folder in (path.parent, *path.parent.parents) if os.path.lexists(folder)), None)
    if existing is None:
        return
    if not existing.is_dir():  # a file, or a link to nowhere, where a folder of the path belongs
        raise OutputDirError(_unwritable_default_dir(path, existing, "is not a folder"))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputDirError(_unwritable_default_dir(path, existing))


def _unwritable_default_dir(path: Path, folder: Optional[Path] = None,
                            problem: str = "is not writable by this user (another user's earlier run may have made it)"
                            ) -> str:
    """The refusal of a default output folder `path` this user cannot make (`folder`, where known, and its `problem`)."""
    where = f": {folder} {problem}" if folder else ": permission denied"
    return f"cannot make the default output folder {path}{where}; pass --output-dir DIR"


def check_output_dir(path: Union[str, Path], overwrite: bool = False, own_files: Optional[List[str]] = None,
                     keep: Sequence[str] = (), videos_below: str = "videos/") -> None:
    """OutputDirError when prepare_output_dir would refuse `path` (see there), or when its path is too long for the
    files a run writes there (output_files.refuse_path_too_long; its videos go to `videos_below`); changes nothing, so
    every check of a run can pass before anything is emptied."""
    from gr00t_client.cli_flags import broken_link_problem

    from .run_claim import dead_partial_files, is_alive_file, refuse_live_claims, refuse_live_runs_around

    path = Path(path)
    problem = broken_link_problem("--output-dir", path)
    if problem is not None:
        raise OutputDirError(problem)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--output-dir {path} exists and is not a directory")
    refuse_path_too_long(path, below=videos_below)
    blocker = not_a_directory_above(path)
    if blocker is not None:  # mkdir said only "[Errno 20] Not a directory"
        raise OutputDirError(f"--output-dir {path}: {blocker} exists and is not a directory; expected a folder there, "
                             "or name another --output-dir")
    refuse_live_runs_around(path)  # inside a folder a run still writes to (its videos/): --overwrite or not
    if not path.is_dir():
        return
    if own_files is None:
        _refuse_foreign_runs(path, shard_files(path), "the files of sharded runs", "a whole run needs a directory "
                             "without them")
        # Before "not empty": neither --overwrite nor --resume may be suggested for a run that is still running
        # (both would then be refused, and the user sent round in a circle). Any command's live claim, not only a
        # rollout's; those in `keep` are the caller's own, taken (or checked) by it.
        refuse_live_claims(path, skip=keep)
        if overwrite:
            refuse_what_overwrite_keeps(path, keep, overwrite=True)
            return
        # A half-written file of a process killed mid-write (its run file, say) is not content: prepare_output_dir
        # deletes it. It made the folder "not empty", and the --resume suggested then found no run.json.
        leftovers = {file.name for file in dead_partial_files(path)}
        if any(entry.name not in {*keep, *leftovers, OVERWRITE_TRASH} and not is_alive_file(entry.name)
               for entry in path.iterdir()):  # an alive file left by a claim never written is no content
            refuse_what_overwrite_keeps(path, keep)  # not "pass --overwrite" where it would be refused: a circle
            if any((path / name).is_file() for name in RESUMABLE_FILENAMES):
                advice = f"pass --overwrite to empty it or --resume {path} to continue that run"
            else:
                advice = (f"pass --overwrite to empty it or name another directory (it holds no {RUN_FILENAME}: "
                          "there is no run to --resume)")
            raise OutputDirError(f"--output-dir {path} is not empty; {advice}")
        return
    whole_run = [name for name in (RUN_FILENAME, EPISODE_LOG_FILENAME) if (path / name).exists()]
    _refuse_foreign_runs(path, whole_run, "a whole (unsharded) run", "shards share a directory only with the other "
                         "shards of their --shard I/N split")
    split = _split_of(own_files)
    other_splits = [name for name in shard_files(path) if split is not None and _split_of([name]) != split]
    _refuse_foreign_runs(path, other_splits, "shards of another split", f"shards share a directory only with the "
                         f"other shards of their split (--shard I/{split} here)")
    # This shard's own earlier run (its run file) must have ended, and any other command's run there; the other
    # shards of its split may run beside it.
    refuse_live_claims(path, skip=[*keep, *(name for name in shard_files(path) if name != own_files[0])])
    foreign = _not_of_the_split(path, split, keep)
    if foreign:  # --overwrite too: a shard's replaces its own files only, so the others would stay mixed in
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise OutputDirError(f"--output-dir {path} is not empty (it holds {shown}); a shard shares a directory only "
                             f"with the other shards of its --shard I/{split} split and their merge, and its --overwrite "
                             "replaces only that shard's files: name another directory (or move those away first)")
    if overwrite:
        return
    taken = [name for name in own_files if (path / name).exists()]
    if taken:
        raise OutputDirError(f"--output-dir {path} already holds {', '.join(taken)}; pass --resume {path} (with the "
                             "same --shard) to continue that shard, --overwrite to replace this shard's files (and only "
                             "those), or another directory")


def prepare_output_dir(path: Union[str, Path], overwrite: bool = False, own_files: Optional[List[str]] = None,
                       keep: Sequence[str] = ()) -> Path:
    """Create `path`; an existing non-empty directory is refused unless `overwrite` (which empties it, as a whole:
    _remove_earlier_run). The names in `keep` (a claim taken before emptying, and its lock) neither count nor are
    deleted; the half-written files of a process that is gone (run_claim.dead_partial_files: killed while it created
    its run file, say) do not count and are deleted, as is what an overwrite stopped part-way left in OVERWRITE_TRASH.

    With `own_files` (a shard's file names, its run file first) the directory may hold the other shards of its
    split: only those names must not exist yet, and `overwrite` deletes those files and the episode videos their
    episode log lists in the shard's own videos folders (_own_videos; not in a --video-dir another run has claimed
    since: _still_this_shards), never another shard's, nor a file elsewhere that a copied or edited log names.
    A directory holding another run (sharded, for a whole run; a whole run or another split, for a shard), or that a
    run still running has claimed (any command's claim file, run_claim.CLAIM_FILENAMES, but those in `keep`), is
    refused even with `overwrite`, as is a non-empty one whose top holds no file an earlier run wrote (_earlier_run_file).
    """
    from .run_claim import dead_partial_files

    check_output_dir(path, overwrite, own_files, keep)
    path = Path(path)
    for leftover in dead_partial_files(path):  # a killed process's half-written files (run_claim.PARTIAL_FILE_NAME)
        logger.info("deleting %s, left half-written by a process that is gone", leftover)
        leftover.unlink(missing_ok=True)
    delete_trash(path / OVERWRITE_TRASH)  # what an overwrite stopped while it deleted left behind
    if overwrite and own_files is not None and path.is_dir():
        replaced = [path / name for name in own_files if (path / name).exists()]
        if replaced:
            videos = _still_this_shards(path / own_files[0], _own_videos(path, path / own_files[0], replaced))
            logger.warning("replacing %s and %d episode videos of this shard (--overwrite); other shards' files are kept",
                           ", ".join(p.name for p in replaced), len(videos))
            device = path.stat().st_dev  # a rename cannot take a video on another file system into the trash
            here = [video for video in videos if video.lstat().st_dev == device]
            elsewhere = [video for video in videos if video.lstat().st_dev != device]
            _remove_earlier_run(path, replaced + here, elsewhere)
    elif overwrite and path.is_dir():
        earlier = [entry for entry in path.iterdir() if entry.name not in keep and entry.name != OVERWRITE_TRASH]
        if earlier:
            logger.warning("emptying %s (--overwrite)", path)
            _remove_earlier_run(path, sorted(earlier, key=lambda entry: entry.name not in RESUMABLE_FILENAMES))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _remove_earlier_run(path: Path, entries: Sequence[Path], elsewhere: Sequence[Path] = ()) -> None:
    """Delete an earlier run's `entries` (--overwrite) as a whole: each is first moved into path/OVERWRITE_TRASH (its
    run file first), then the trash and the files `elsewhere` (videos on another file system) are deleted. A stop
    leaves the earlier run whole or entirely gone, and the log says which; an OSError while moving deletes nothing."""
    trash = path / OVERWRITE_TRASH
    try:
        move_to_trash(entries, trash)
    except KeyboardInterrupt:
        logger.warning("stopped before --overwrite deleted anything: the earlier run in %s is kept as it was", path)
        raise
    except OSError as exc:
        raise OutputDirError(f"--overwrite could not move {exc.filename} into {trash} to delete it ({exc.strerror}); "
                             f"nothing was deleted: the earlier run in {path} is as it was") from exc
    try:
        for file in elsewhere:
            file.unlink(missing_ok=True)
        delete_trash(trash)
    except KeyboardInterrupt:
        logger.warning("stopped while --overwrite deleted the earlier run in %s: it is removed (what is left of it in %s "
                       "is deleted by the next run there)", path, trash)
        raise


def remove_merges_of(path: Union[str, Path], results_name: str) -> None:
    """Delete a merge in the shards' directory `path` (`merge DIR --output DIR`: a results file with merged_from, and its
    eval_info.json) that merged this folder's `results_name` (_merges_this_file), the shard's results file a new run or
    a --resume replaces: left, it would go on saying "complete" with numbers no file on disk backs. Says so in one
    line. A merge that is a symbolic link (merge writes through one) is left, with its target: a warning names both."""
    from .run_resume import command_path

    path = Path(path)
    for merge in sorted(path.glob("*.json")):
        try:
            results = json.loads(merge.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(results, dict) or "merged_from" not in results or not _merges_this_file(results, path,
                                                                                                   results_name):
            continue
        again = f"gr00t-eval merge {command_path(path)} --output {command_path(path / merge.name)}"
        if merge.is_symlink():  # deleting the link would leave its target, the merge, saying "complete"
            logger.warning("%s, a symbolic link to %s, is the merge of this split's shards: it holds the earlier "
                           "results of %s, which this run replaces; both are kept: merge again once the shards are "
                           "done: %s",
                           merge, os.path.realpath(merge), results_name, again)
            continue
        removed = [merge]
        eval_info = path / EVAL_INFO_FILENAME
        try:
            paired = json.loads(eval_info.read_text()).get("merged_results", merge.name)
        except (OSError, ValueError, AttributeError):
            paired = None
        if paired == merge.name and not eval_info.is_symlink():
            removed.append(eval_info)
        for file in removed:
            file.unlink(missing_ok=True)
        logger.warning("removed %s, the merge of this split's shards in %s: it holds the earlier results of %s, "
                       "which this run replaces; merge again once the shards are done: %s",
                       " and ".join(file.name for file in removed), path, results_name, again)


def _merges_this_file(results: dict, path: Path, results_name: str) -> bool:
    """Whether a merge's `results` merged path/`results_name`, not a file of that name in another folder: by the
    absolute paths it records (merged_paths), or for a merge of an earlier version by merged_files: an absolute entry
    that is that file, a relative one of that name in no folder or in a folder of `path`'s name (`merge DIR`)."""
    own = (path / results_name).resolve()
    recorded = [Path(entry) for entry in results.get("merged_paths") or () if isinstance(entry, str)]
    if any(entry.resolve() == own for entry in recorded):
        return True
    into = results.get("merged_into")
    if isinstance(into, str) and any(entry.name == results_name and entry.parent == Path(into) for entry in recorded):
        return True  # written beside the shard file of this name: the folder moved or was copied, shards and merge
    if any(entry.exists() for entry in recorded):  # the files it merged are elsewhere, still there: another split's
        return False
    # none recorded, or none where recorded (the split's folder moved or copied since): by merged_files, as before
    merged = results.get("merged_files")
    for entry in (Path(entry) for entry in merged if isinstance(entry, str)) if isinstance(merged, list) else ():
        if entry.is_absolute():
            if entry.resolve() == own:
                return True
        elif entry.name == results_name and entry.parent.name in ("", path.resolve().name):
            return True
    return False


def _earlier_run_file(path: Path) -> Optional[str]:
    """The first entry at the top of `path` that only a run writes there (any command's claim file, a shard's files,
    EARLIER_RUN_FILENAMES, a half-written one of these, the overwrite trash), or None: a folder without one is no
    earlier run's (a project folder, or a folder of other runs' dated folders), which --overwrite must not empty."""
    from .run_claim import PARTIAL_FILE_NAME, claim_files

    names = {*claim_files(path), *EARLIER_RUN_FILENAMES, OVERWRITE_TRASH}
    for entry in sorted(path.iterdir()):
        partial = PARTIAL_FILE_NAME.fullmatch(entry.name)
        name = partial.group("name") if partial else entry.name
        if name in names or SHARD_FILE_NAME.fullmatch(name) or (name == "results.json" and _run_results(entry)):
            return entry.name
    return None


def _run_results(path: Path) -> bool:
    """Whether `path` is a run's own results.json (a `kind` it wrote, and no merge's `merged_from`): a merge's, written
    beside other runs' folders (`merge ... --output .`), or a user's, does not make the folder an earlier run's."""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(results, dict) and isinstance(results.get("kind"), str) and "merged_from" not in results


def _split_of(names: Sequence[str]) -> Optional[int]:
    """The N of the first shard file name in `names` (a shard of a --shard I/N split), None without one."""
    for name in names:
        match = SHARD_FILE_NAME.fullmatch(name)
        if match:
            return int(match.group("count"))
    return None


def _not_of_the_split(path: Path, split: Optional[int], keep: Sequence[str]) -> List[str]:
    """The entries of a shard's directory that neither a shard of its split (its files, videos/, a lock, a claim's
    alive file, a half-written file) nor a merge of those shards (a results file with merged_from, eval_info.json) wrote."""
    from .run_claim import PARTIAL_FILE_NAME, dead_partial_files, is_alive_file

    leftovers = {file.name for file in dead_partial_files(path)}
    foreign = []
    for entry in sorted(path.iterdir()):
        partial = PARTIAL_FILE_NAME.fullmatch(entry.name)
        name = partial.group("name") if partial else entry.name
        match = SHARD_FILE_NAME.fullmatch(name)
        if (entry.name in leftovers or name in {*keep, "videos", OVERWRITE_TRASH, EVAL_INFO_FILENAME}
                or is_alive_file(entry.name)  # a claim's alive lock
                or (match is not None and int(match.group("count")) == split)
                or (not partial and entry.suffix == ".json" and _is_merge_output(entry))):
            continue
        foreign.append(entry.name)
    return foreign


def _is_merge_output(file: Path) -> bool:
    """Whether `file` is the results file of a `gr00t-eval merge` (it records merged_from)."""
    try:
        results = json.loads(file.read_text()) if file.is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(results, dict) and "merged_from" in results


def refuse_what_overwrite_keeps(path: Path, keep: Sequence[str] = (), overwrite: bool = False) -> None:
    """OutputDirError for a non-empty --output-dir `path` that --overwrite never empties (_refuse_inputs: a dataset, a
    checkpoint; or a folder without an earlier run's own file at its top, `keep` aside), naming what works instead;
    `overwrite`: it was given (nothing was deleted), else the refusal does not suggest it."""
    from .run_claim import dead_partial_files

    _refuse_inputs(path)
    leftovers = {file.name for file in dead_partial_files(path)}
    # a claim's lock (any command's) and the trash are this tool's own, never a user's content
    entries = sorted(entry.name for entry in path.iterdir()
                     if entry.name not in {*keep, *leftovers} and not entry.name.startswith(".gr00t"))
    if not entries or _earlier_run_file(path) is not None:
        return
    shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
    merge = " (its results.json is no run's own: a merge's, or not a gr00t-eval run's)" \
        if (path / "results.json").is_file() else ""
    advice = ("--overwrite empties only an earlier run's folder, so nothing was deleted: name that run's own folder "
              "or another directory" if overwrite else "--overwrite would not empty it either (it empties only an "
              "earlier run's folder): name another directory")
    raise OutputDirError(f"--output-dir {path} holds {shown} but no earlier run's own file at its top (a run or claim "
                         f"file, a run's results.json, {', '.join(EARLIER_RUN_FILENAMES)}){merge}; {advice}, or move "
                         "those away first")


def _refuse_inputs(path: Path) -> None:
    """OutputDirError for a directory --overwrite must never empty: one that is, holds (at any depth) or lies
    inside a LeRobot dataset or a checkpoint (a mistyped --output-dir, the dataset's own folder or its meta/), or
    that holds, below its top (checked by the caller), the folder of a run still running: one walk of both."""
    from gr00t_client.input_folders import input_around

    found = input_around(path, also=lambda folder, names: _refuse_live_runs_below(path, folder, names))
    if found is not None:
        where, what = found
        raise OutputDirError(f"--output-dir {path} {where} {what}; --overwrite never deletes one: name another "
                             "directory for the run's output")


def _refuse_live_runs_below(path: Path, folder: Path, names: Sequence[str]) -> None:
    """refuse_live_runs_in `folder`, inside the --output-dir `path` that --overwrite would empty, saying so; nothing for
    `path` itself, whose claims the caller checks."""
    if folder == path:
        return
    try:
        refuse_live_runs_in(folder, names)
    except OutputDirError as exc:
        raise OutputDirError(f"--output-dir {path} holds the output of another run, which --overwrite would delete: "
                             f"{exc}") from None


def refuse_live_runs_in(folder: Path, names: Sequence[str]) -> None:
    """OutputDirError ("the folder F is in use: ...") when `folder` holds, among its file `names`, the claim of a run
    still running: any command's claim file, a shard's run file, or a run's claim on its --video-dir. Also what
    make-test-checkpoint's --overwrite checks below its output folder."""
    from .run_claim import CLAIM_FILENAMES, refuse_live_claim
    from .video_claims import VIDEO_CLAIM_PREFIX

    for name in sorted(names):
        shard = SHARD_FILE_NAME.fullmatch(name)
        if (name in CLAIM_FILENAMES or (shard is not None and name.startswith("run_"))
                or (name.startswith(VIDEO_CLAIM_PREFIX) and name.endswith(".json"))):
            refuse_live_claim(folder, name, flag="the folder")


def _refuse_foreign_runs(path: Path, names: Sequence[str], what: str, why: str) -> None:
    if names:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise OutputDirError(f"--output-dir {path} holds {what} ({shown}); {why}, and --overwrite never deletes "
                             "another run's results: name another --output-dir (or move those files away first)")


def _own_videos(path: Path, run_file: Path, files: Sequence[Path]) -> List[Path]:
    """The episode videos these episode logs and results `files` of a shard in `path` list (_listed_videos) that lie,
    links resolved, in its own videos folder: path/videos, or the --video-dir its run file names where the shard's run
    claimed it (video_claims) or it is in `path`. A copied or moved run's listed paths are taken where --resume takes
    them (rollout_args.moved_video_path). Any other file listed is kept, with a warning: a log copied with its folder
    names the videos of the run it was copied from, and a log edited by hand any file at all."""
    from .rollout_args import moved_video_path, runs_default_video_dir
    from .shard import ShardSpec
    from .video_claims import holds_video_claim, video_claim_writer
    from .video_dirs import within

    listed = _listed_videos(files)
    folders = [path / "videos"]
    try:
        saved = json.loads(run_file.read_text())
        video_dir, shard = saved["config"]["video_dir"], saved["shard"]
        if isinstance(video_dir, str) and runs_default_video_dir(saved, path, ShardSpec.parse(shard)):
            listed = [moved_video_path(str(video), video_dir, str(path / "videos")) or video for video in listed]
        elif isinstance(video_dir, str) and (within(Path(video_dir), path) or
                                             holds_video_claim(Path(video_dir), video_claim_writer(path, shard))):
            folders.append(Path(video_dir))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no run file of this version: videos/ alone
        pass
    # where each is now (a moved run's recorded paths are gone), once: a log and results may list it by either path
    listed = [video for video in dict.fromkeys(listed) if video.is_file()]
    own = [video for video in listed if any(within(video, folder) for folder in folders)]
    others = [video for video in listed if video not in own]
    if others:
        logger.warning("keeping %d episode videos the earlier run's files in %s list outside its own videos folder "
                       "(%s, ...): another run's, as in a copied or moved run folder, or named by hand",
                       len(others), path, others[0])
    return own


def _still_this_shards(run_file: Path, videos: List[Path]) -> List[Path]:
    """Those of `videos` (listed by a shard's earlier log) that are still its own: not in a --video-dir another run
    has claimed since (video_claims.video_dir_taken_over), whose videos they may now be; those are kept, with a warning."""
    from .video_claims import video_claim_writer, video_dir_taken_over
    from .video_dirs import within

    try:
        saved = json.loads(run_file.read_text())
        video_dir = Path(saved["config"]["video_dir"])
        writer = video_claim_writer(run_file.parent, saved["shard"])
    except (OSError, ValueError, KeyError, TypeError):  # no run file of this version: its videos, as it listed them
        return videos
    in_folder = [video for video in videos if within(video, video_dir)]
    claim = video_dir_taken_over(video_dir, writer) if in_folder and video_dir.is_dir() else None
    if claim is None:
        return videos
    logger.warning("keeping %d episode videos of this shard's earlier run in %s: another run has written there since "
                   "(its claim %s), so they may be that run's now", len(in_folder), video_dir, claim.name)
    return [video for video in videos if video not in in_folder]


def _listed_videos(files: Sequence[Path]) -> List[Path]:
    """The episode videos (episode_*_success/failure/error.mp4 only) that these episode logs and results files list."""
    from .video import EPISODE_VIDEO_NAME  # here: importing it loads PyAV, which only this (--overwrite) needs

    paths: Set[Path] = set()
    for file in files:
        try:
            if file.suffix == ".jsonl":
                entries = EpisodeLog(file).read()
            else:
                data = json.loads(file.read_text())
                entries = data.get("per_episode", []) if isinstance(data, dict) else []
        except (OSError, ValueError):
            continue
        paths.update(Path(e["video_path"]) for e in entries if isinstance(e, dict) and isinstance(e.get("video_path"), str))
    return [p for p in sorted(paths) if EPISODE_VIDEO_NAME.fullmatch(p.name)]
