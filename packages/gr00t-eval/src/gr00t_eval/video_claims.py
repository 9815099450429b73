"""Claims of a --video-dir outside a run's output directory: each run writing its episode videos there keeps a claim
file in it while it runs, so a second run into the folder is refused (a shard of the same plan aside)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from gr00t_client.input_folders import VIDEO_FILES_PREFIX

from .output_files import OutputDirError
from .run_claim import (CLAIM_KEY, HOLDER_GONE, HOLDER_UNKNOWN, holder_state, holder_unchecked, holding_claim,
                        read_holder, release_alive_lock)
from .run_file import directory_lock

# A --video-dir outside a run's output directory is checked for earlier videos when the run starts; two runs started
# together into one both passed and then overwrote each other's episode_0000_*.mp4. Each run writing there keeps a
# claim file in it (VIDEO_CLAIM_PREFIX + a hash of who writes: the output directory and shard, or a batch job's
# folder) while it runs; the shards of one plan share the folder.
VIDEO_CLAIM_PREFIX = f"{VIDEO_FILES_PREFIX}_"
VIDEO_LOCK_FILENAME = f"{VIDEO_FILES_PREFIX}.lock"
# The number of claims made in the folder, counted under the lock: each claim keeps its number (CLAIM_NUMBER_KEY), which
# orders the claims of one folder without a clock (hosts sharing it may disagree on the time, a clock be stepped back).
VIDEO_CLAIM_COUNTER_FILENAME = f"{VIDEO_FILES_PREFIX}.claims_made"
CLAIM_NUMBER_KEY = "claim_number"


def video_claim_writer(output_dir: Union[str, Path], shard: Any = None) -> str:
    """Who writes into a --video-dir, as its claim names it: the run's output directory (absolute), with its shard."""
    return f"{Path(output_dir).absolute()}{'' if shard is None else f' (shard {shard})'}"


def batch_video_claim_writer(output_dir: Union[str, Path]) -> str:
    """Who writes into a job's video_dir outside its batch's folder, as its claim names it: the batch's folder."""
    return f"batch {Path(output_dir).absolute()}"


def video_dir_check(video_dir: Union[str, Path], writer: str, what: str = "video folder") -> Callable[[], None]:
    """The check (run_stop.check_folder_kept) of a video folder outside the run's output folder that `writer` claimed
    (claim_video_dir): OutputFolderGone naming it once it is gone (a share unmounted, deleted, made again), so a video
    is never written into a folder made again beneath the mount point. Held to the folder as it is now; `what` names
    it."""
    from .run_stop import check_folder_kept, folder_identity

    folder = Path(video_dir)
    try:
        identity: Optional[Tuple[int, int]] = folder_identity(folder)
    except OSError:  # gone already: the first check says so
        identity = None
    return functools.partial(check_folder_kept, folder, identity, _video_claim_file(folder, writer).name,
                             what=what)


def claim_video_dir(video_dir: Union[str, Path], writer: str, plan: Optional[str] = None,
                    flag: str = "--video-dir", shard_index: Optional[int] = None, resume: bool = False,
                    shard_of: Optional[Tuple[int, str, int]] = None) -> Path:
    """Claim `video_dir` for the run `writer` names (the folder its results go to; with its shard); OutputDirError
    when another run that may still be running holds a claim there, unless both are shards of one `plan` (a key of
    their tasks, episodes, seed and settings) with another `shard_index` each, and when it is (or lies inside) the
    output folder of a run still running (run_claim.refuse_live_runs_around). A `resume` is refused, too, when
    another run has claimed the folder since (video_dir_taken_over). Returns the claim file, which finish_claim
    marks finished."""
    from .results import write_results
    from .run_claim import refuse_live_runs_around

    video_dir = Path(video_dir)
    video_dir.mkdir(parents=True, exist_ok=True)
    mine = _video_claim_file(video_dir, writer)
    record: Dict[str, Any] = {"writer": writer, "plan": plan, "shard_index": shard_index}
    with directory_lock(video_dir / VIDEO_LOCK_FILENAME):
        refuse_live_runs_around(video_dir, flag, include_self=True,  # a run's own videos/ holds no video claim
                                shard=None if shard_index is None or shard_of is None else (shard_index, *shard_of))
        if resume:
            _refuse_taken_over(video_dir, writer, flag)
        for claim in sorted(video_dir.glob(f"{VIDEO_CLAIM_PREFIX}*.json")):
            if claim == mine:
                continue
            holder = read_holder(claim)
            if holder is None or holder.finished:
                continue
            state = holder_state(holder, claim)
            if state == HOLDER_GONE:
                continue  # killed: its claim is stale
            # another host's or pid namespace's without an alive lock (an older version's): cannot be checked
            elsewhere = holder_unchecked(holder) if state == HOLDER_UNKNOWN else None
            other = _claim_record(claim)
            if _sibling_shards(record, other):
                continue  # another shard of this plan: each writes the videos of its own episodes
            writing = other.get("writer")
            raise OutputDirError(
                f"{flag} {video_dir} is in use: a run that has not finished writes its episode videos there "
                f"({holder.describe()}{f', for {writing}' if writing else ''}); the videos of two runs would overwrite "
                f"each other. Wait for it to end or name another folder"
                + (f" ({elsewhere} cannot check whether it still runs: once it has ended, delete {claim})"
                   if elsewhere is not None else ""))
        record[CLAIM_NUMBER_KEY] = _count_claim(video_dir)
        with holding_claim(mine) as holder:
            write_results(mine, {**record, CLAIM_KEY: holder})
    return mine


def _count_claim(video_dir: Path) -> int:
    """The number of a new claim on `video_dir`, one past every claim made there before, saved as the folder's count;
    the caller holds the folder's lock. Past the claims there too, so a deleted or damaged count loses no order."""
    from .results import write_results

    counter = video_dir / VIDEO_CLAIM_COUNTER_FILENAME
    made = [_claim_number(_claim_record(counter))]
    made.extend(_claim_number(_claim_record(claim)) for claim in video_dir.glob(f"{VIDEO_CLAIM_PREFIX}*.json"))
    number = max((n for n in made if n is not None), default=0) + 1
    write_results(counter, {CLAIM_NUMBER_KEY: number})  # the last claim's
    return number


def _claim_number(record: Mapping[str, Any]) -> Optional[int]:
    """A claim's number (or the folder count's); None for a claim of an older version, which kept no count."""
    number = record.get(CLAIM_NUMBER_KEY)
    return number if isinstance(number, int) and not isinstance(number, bool) else None


def holds_video_claim(video_dir: Path, writer: str) -> bool:
    """Whether the run `writer` names (video_claim_writer) has claimed `video_dir` (a finished run's claim stays)."""
    return _video_claim_file(video_dir, writer).is_file()


def video_dir_taken_over(video_dir: Union[str, Path], writer: str) -> Optional[Path]:
    """The claim of another run that took `video_dir` for its videos after `writer` last claimed it (any other run's
    when `writer` holds no claim there), a shard of its plan aside: that run may have replaced `writer`'s videos
    there, which are then no longer `writer`'s to write over or delete. None when no other run has.
    Claims are ordered by their numbers (_count_claim); one of an older version, without a number, by the wall-clock
    starts of both (wrong when the clocks of the hosts that wrote them disagreed)."""
    video_dir = Path(video_dir)
    mine = _video_claim_file(video_dir, writer)
    own, own_holder = _claim_record(mine), read_holder(mine)
    since = own_holder.started_unix if own_holder is not None else None
    own_number = _claim_number(own) if own_holder is not None else None
    for claim in sorted(video_dir.glob(f"{VIDEO_CLAIM_PREFIX}*.json")):
        holder, other = read_holder(claim), _claim_record(claim)
        if claim == mine or holder is None or _sibling_shards(own, other) or _same_run(other, writer):
            continue
        number = _claim_number(other)
        if own_number is not None and number is not None:
            if number > own_number:
                return claim
        elif since is None or holder.started_unix is None or holder.started_unix > since:
            return claim
    return None


def _same_run(other: Mapping[str, Any], writer: str) -> bool:
    """Whether another claim's writer is this run's output (or batch) folder reached through another path (a link)."""
    theirs, ours = _writer_parts(str(other.get("writer") or "")), _writer_parts(writer)
    if theirs[0] != ours[0] or theirs[2] != ours[2] or not os.path.isabs(theirs[1]) or not os.path.exists(theirs[1]):
        return False
    return os.path.realpath(theirs[1]) == os.path.realpath(ours[1])


def _writer_parts(writer: str) -> Tuple[str, str, str]:
    """("batch " or "", its folder, its " (shard I/N)" or "") of a claim's writer (video_claim_writer, or a batch's)."""
    kind = "batch " if writer.startswith("batch ") else ""
    folder, _, shard = writer[len(kind):].partition(" (shard ")
    return kind, folder, shard


def release_video_claim(video_dir: Path, output_dir: Union[str, Path], shard: Any = None) -> None:
    """Delete the claim the run writing to `output_dir` (with its shard) holds on `video_dir`, if any (a folder without
    one is left as it was: no lock file is made there)."""
    claim = _video_claim_file(video_dir, video_claim_writer(output_dir, shard))
    if not claim.is_file():
        return
    with directory_lock(video_dir / VIDEO_LOCK_FILENAME):
        release_alive_lock(claim, remove=True)
        claim.unlink(missing_ok=True)


def _refuse_taken_over(video_dir: Path, writer: str, flag: str) -> None:
    """OutputDirError naming the run that claimed `video_dir` after `writer` did (video_dir_taken_over), if one has."""
    claim = video_dir_taken_over(video_dir, writer)
    if claim is None:
        return
    holder, other = read_holder(claim), _claim_record(claim)
    who = holder.describe() if holder is not None else "no readable holder"
    if not _video_claim_file(video_dir, writer).is_file():
        raise OutputDirError(
            f"{flag} {video_dir} holds no claim of this run (was its output folder moved or renamed since it wrote "
            f"its videos there?), and another run has claimed it ({who}, for {other.get('writer') or 'an unnamed run'}): "
            "resuming could overwrite or delete that run's episode videos. If that claim is this run's under its old "
            f"name, delete {claim} and resume again; else start this run anew with another --video-dir")
    raise OutputDirError(
        f"{flag} {video_dir} was used by another run after this one wrote its videos there ({who}, for "
        f"{other.get('writer') or 'an unnamed run'}); resuming would overwrite or delete that run's episode videos. "
        f"Start this run anew with another --video-dir, or, if that run's videos may go, delete {claim} and resume "
        "again")


def _video_claim_file(video_dir: Path, writer: str) -> Path:
    """The claim file `writer` keeps in `video_dir` (a hash of it, so every writer has its own). Hashed as UTF-8 with
    surrogate escapes kept as their bytes: a folder name that is not UTF-8 holds escapes str.encode() refused, and
    os.fsencode refuses any non-ASCII name under an ASCII locale."""
    import hashlib

    named = writer.encode("utf-8", "surrogateescape")
    return video_dir / f"{VIDEO_CLAIM_PREFIX}{hashlib.sha1(named).hexdigest()[:16]}.json"


def _claim_record(claim: Path) -> Dict[str, Any]:
    """A video claim file's content; empty when it cannot be read."""
    try:
        record = json.loads(claim.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _sibling_shards(record: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether two video claims are of different shards of one plan, which write the videos of different episodes."""
    plan = record.get("plan")
    return plan is not None and other.get("plan") == plan and other.get("shard_index") != record.get("shard_index")
