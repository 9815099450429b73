"""`gr00t-eval batch`: claim the batch's folder (a new one, or --resume's), claim its jobs' video folders, run the jobs
(batch.run_batch) and print the table; exit 1 when a job failed, 130 when interrupted."""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from gr00t_client.peer_text import shown_text

from .batch import (BATCH_RESULTS_FILENAME, DONE, FAILED, JOBS_DIRNAME, PENDING, Job, JobError, format_table,
                    job_dir_name, job_video_dirs, load_jobs, read_job_run_file, run_batch)
from .cli_errors import UsageError
from .output_files import OutputDirError, refuse_path_too_long
from .run_claim import (claim_alive_name, claim_lock_name, claim_output_dir, finish_claim, refuse_live_claim,
                        refuse_live_claims, take_claim)
from .run_resume import command_path
from . import run_dir  # its folder helpers looked up when called (tests stand in for them there)
from .run_stop import (INTERRUPTED_EXIT_CODE, OutputFolderGone, is_storage_line, sigterm_as_interrupt,
                       storage_advice, stop_signals_ignored_until_exit, storage_error_text)
from .video_claims import batch_video_claim_writer, claim_video_dir, video_dir_check
from .video_dirs import check_video_dir, delete_episode_videos, within

logger = logging.getLogger(__name__)

DEFAULT_BATCH_DIR = "/tmp/gr00t_batch_eval"
BATCH_CLAIM_FILENAME = "batch.json"  # who runs the batch in a folder (run_claim), so no second batch empties or joins it
START_DIR_KEY = "start_dir"  # batch.json: the working directory the batch started in
JOBS_FILE_KEY = "jobs_file"  # batch.json: the --jobs FILE the batch started with, as given
HOME_DIR_KEY = "home_dir"  # batch.json: the home folder a job's video_dir '~' named when the batch started

# (jobs, output_dir, the batch claim, the earlier batch_results.json when resumed, the earlier run's videos in each
# job's video_dir that --overwrite deletes once the batch holds that folder)
_Batch = Tuple[List[Any], Path, Path, Optional[Any], Dict[Path, List[Path]]]


def cmd_batch(args: argparse.Namespace) -> int:
    """`gr00t-eval batch`: run the jobs, print the table; exit 1 when a job failed, 130 when interrupted."""
    try:
        jobs, output_dir, claim, previous, earlier_videos = _resumed_batch(args) if args.resume else _new_batch(args)
    except (JobError, OutputDirError) as exc:
        raise UsageError(str(exc)) from None
    video_claims = _claim_job_videos(jobs, output_dir, claim, resume=bool(args.resume))
    for video_dir, videos in earlier_videos.items():  # a run still writing there refused the claim: its videos stay
        if videos:
            logger.warning("deleting %d episode videos of an earlier run from %s (--overwrite)", len(videos), video_dir)
            delete_episode_videos(video_dir, videos)
    path = output_dir / BATCH_RESULTS_FILENAME
    outcome = "error"
    try:
        # a job's video_dir outside the batch's folder gone (a share unmounted) while that job runs stops the batch
        # before its next video, as the job's own folder gone does: never made again beneath the mount point
        with sigterm_as_interrupt():
            batch = run_batch(jobs, path, previous=previous, job_folder_checks=_job_video_checks(jobs, output_dir))
            stop_signals_ignored_until_exit()  # batch_results.json is final: exit status and claims agree with it
        outcome = "complete"
    except OSError as exc:  # a folder of the batch's turned read-only for this user too: the line says --resume
        if not is_storage_line(exc, output_dir, *job_video_dirs(jobs)):
            raise
        raise SystemExit(_storage_stop_message(exc, path, output_dir)) from None
    except KeyboardInterrupt:
        outcome = "interrupted"
        stop_signals_ignored_until_exit()
        if not path.is_file():  # before run_batch's first write of it: no job ran; --resume runs them from jobs.json
            print(f"INTERRUPTED: before any job ran (continue with: gr00t-eval batch --resume "
                  f"{command_path(output_dir)})")
            return INTERRUPTED_EXIT_CODE
        batch = json.loads(path.read_text())
        if batch.get("status") != "complete":  # else it came after the last write, as run_batch returned: all done
            print(format_table(batch))
            print(f"INTERRUPTED: {batch['n_pending']} jobs pending (continue with: "
                  f"gr00t-eval batch --resume {command_path(output_dir)})")
            print(f"Results: {path}")
            return INTERRUPTED_EXIT_CODE
        outcome = "complete"
    finally:  # a later --overwrite or --resume may take the folder (and the video folders) now
        for held in [*video_claims, claim]:
            finish_claim(held, outcome)
    print(format_table(batch))
    print(f"Results: {path}")
    return 1 if batch["n_failed"] else 0


def _job_video_checks(jobs: List[Any], output_dir: Path) -> Dict[str, Callable[[], None]]:
    """By job name, the check of each job's video folder outside the batch's (claimed by _claim_job_videos, held to
    its state now): OutputFolderGone naming the job once that folder is gone."""
    return {job.name: video_dir_check(job.config["video_dir"], batch_video_claim_writer(output_dir),
                                      what=f"video folder of job '{shown_text(job.name)}'")
            for job in jobs if isinstance(job, Job) and job.config.get("video_dir")
            and not within(Path(job.config["video_dir"]), output_dir)}


def _storage_stop_message(exc: OSError, path: Path, output_dir: Path) -> str:
    """The one line for a batch stopped by a storage error (is_storage_line) before or while a job ran: what is kept,
    and the command that continues."""
    resume = f"gr00t-eval batch --resume {command_path(output_dir)}"
    if not path.is_file():  # its first write failed: no job started, and jobs.json is all a resume needs
        return (f"{storage_error_text(exc)}: the batch stopped before any job started; {storage_advice(exc).lower()}, "
                f"then continue with: {resume} (it runs the jobs of {output_dir / 'jobs.json'})")
    if isinstance(exc, OutputFolderGone):
        what = "job folder" if exc.what == OutputFolderGone.what else exc.what  # or a job's video_dir outside it
        return (f"the {what} {exc.filename} disappeared (unmounted or deleted) while its job wrote to it: the batch "
                f"stopped there, and wrote nothing more; the jobs done before it are kept in {path}. Continue with: "
                f"{resume} (it runs that job again)")
    return (f"{storage_error_text(exc)}: the batch stopped there; the jobs done before it are kept in {path} and the "
            f"running job's finished episodes in its folder under {output_dir / 'jobs'}; "
            f"{storage_advice(exc).lower()}, then continue with: {resume}")


def _resumed_batch(args: argparse.Namespace) -> _Batch:
    """--resume DIR: its own jobs.json and batch_results.json, read before the claim is taken (a damaged file leaves
    no claim behind)."""
    given = [flag for flag, value in (("--jobs", args.jobs), ("--output-dir", args.output_dir),
                                      ("--overwrite", args.overwrite)) if value]
    if given:
        raise UsageError(f"--resume DIR continues the batch in DIR with its own jobs.json; {' and '.join(given)} "
                         f"cannot be given with it (to change a job, edit {Path(args.resume) / 'jobs.json'})")
    output_dir = Path(args.resume)
    jobs_path = output_dir / "jobs.json"
    results_path = output_dir / BATCH_RESULTS_FILENAME
    # No batch_results.json beside jobs.json and the batch's claim: the batch stopped before its first write of it (a
    # full disk, a kill), before any job started, and resumes from jobs.json alone.
    started = results_path.is_file() or (output_dir / BATCH_CLAIM_FILENAME).is_file()
    # First: a batch still running before its jobs.json copy (a long --overwrite) has not stopped
    refuse_live_claim(output_dir, BATCH_CLAIM_FILENAME, flag="--resume")
    if started and not results_path.is_file() and not jobs_path.is_file():  # stopped before copying its job file
        raise UsageError(_stopped_before_copy(output_dir))
    if results_path.is_file() and not jobs_path.is_file():  # a batch from before `batch --resume` kept no job file
        raise UsageError(f"--resume {output_dir}: {BATCH_RESULTS_FILENAME} is there but jobs.json is not (a gr00t-eval "
                         "older than `batch --resume` saved none); nothing can be resumed: start a new batch with "
                         f"--jobs FILE --output-dir DIR (its records stay in {results_path})")
    if not started or not jobs_path.is_file():
        raise UsageError(f"--resume {output_dir}: no {BATCH_RESULTS_FILENAME} and jobs.json there (is it a batch --output-dir?)")
    start_dir, home_dir = _recorded(output_dir, START_DIR_KEY), _recorded(output_dir, HOME_DIR_KEY)
    if not results_path.is_file():
        previous: Any = {"jobs": []}
    else:
        try:
            previous = json.loads(results_path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"--resume {output_dir}: {results_path} cannot be read ({type(exc).__name__}: {exc}); "
                             "each job's own results and episodes are in jobs/<name>/ (start a new batch, or "
                             f"restore {BATCH_RESULTS_FILENAME})") from None
    jobs_done = previous.get("jobs", []) if isinstance(previous, dict) else None
    if not isinstance(jobs_done, list) or not all(isinstance(job, dict) for job in jobs_done):
        raise UsageError(f"--resume {output_dir}: {results_path} holds no batch results (an object whose "
                         "'jobs' is a list of job records)")
    unnamed = next((index for index, job in enumerate(jobs_done) if not isinstance(job.get("name"), str)), None)
    if unnamed is not None:
        raise UsageError(f"--resume {output_dir}: {results_path} job record #{unnamed} has no 'name' (got "
                         f"{jobs_done[unnamed].get('name')!r}); expected each record to name its job as in jobs.json "
                         f"(restore {BATCH_RESULTS_FILENAME}, or delete the record to run its job again)")
    odd = next((job for job in jobs_done if job.get("status") not in (PENDING, DONE, FAILED)), None)
    if odd is not None:  # an older gr00t-eval's word ('ok' for done): read as not done, its job would run again
        raise UsageError(f"--resume {output_dir}: {results_path} job {shown_text(odd['name'])!r} has status "
                         f"{odd.get('status')!r}, expected {PENDING}, {DONE} or {FAILED} (a batch from an older "
                         "gr00t-eval); start a new batch, or set the status to done for a job to keep or pending for "
                         "one to run again")
    # The settings an earlier attempt recorded for each job it reached: a job keeps a setting a newer check refuses
    # only where it began with that very setting; one added since (or a job never reached) is checked as in a new batch.
    recorded = {job["name"]: job["job_config"] for job in jobs_done if isinstance(job.get("job_config"), dict)}

    def started_with(name: str) -> Any:  # its record's settings, else (stopped mid-run) its folder's run.json's
        if name in recorded:
            return recorded[name]
        try:
            saved = read_job_run_file(output_dir / JOBS_DIRNAME / job_dir_name(name)).get("job_config")
        except (OSError, ValueError):  # none, or damaged: the job is checked as in a new batch (its run says why)
            return None
        return saved if isinstance(saved, dict) else None

    jobs = load_jobs(jobs_path, start_dir, home_dir, resumed=True, started=started_with)
    try:  # a batch folder moved deeper since (an archive): its jobs' files would fail after their episodes ran
        refuse_path_too_long(output_dir, "--resume", below=_deepest_job_videos(jobs))
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None
    # Under the claim's lock: of two resumes started at once, one runs and the other is refused.
    settings = {"resumed": True, **{key: value for key, value in ((START_DIR_KEY, start_dir), (HOME_DIR_KEY, home_dir))
                                    if value}}
    claim = take_claim(output_dir, BATCH_CLAIM_FILENAME, settings, flag="--resume")
    return jobs, output_dir, claim, previous, {}


def _stopped_before_copy(output_dir: Path) -> str:
    """The refusal of a --resume DIR whose batch stopped after its claim (batch.json) and before its jobs.json copy: no
    job ran, so the command that works is the batch's own, naming the job file it recorded."""
    jobs_file, start_dir = _recorded(output_dir, JOBS_FILE_KEY), _recorded(output_dir, START_DIR_KEY)
    if jobs_file is None:
        given = "FILE"
    else:  # as given at the start, relative to the directory the batch started in
        given = command_path(os.path.join(start_dir, jobs_file) if start_dir else jobs_file)
    return (f"--resume {output_dir}: the batch there stopped before it copied its job file to "
            f"{output_dir / 'jobs.json'}, before any job ran: nothing to resume; run it again with: gr00t-eval batch "
            f"--jobs {given} --output-dir {command_path(output_dir)}")


def _recorded(output_dir: Path, key: str) -> Optional[str]:
    """What the batch in `output_dir` recorded at its start under `key` in its claim: START_DIR_KEY, the working
    directory its job file's relative paths are resolved against, or HOME_DIR_KEY, the folder a '~' names; None for a
    batch that did not record it (its resumes use their own)."""
    try:
        value = json.loads((output_dir / BATCH_CLAIM_FILENAME).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _home_folder() -> Optional[str]:
    """The folder '~' names now (HOME_DIR_KEY), or None where it names none ($HOME unset, no passwd entry): a job's
    '~' is then refused, naming the job, rather than read as a folder named '~'."""
    from gr00t_client.cli_flags import HomeFolderUnknownError, home_expanded_path

    try:
        return home_expanded_path("~")
    except HomeFolderUnknownError:
        return None


def _deepest_job_videos(jobs: List[Any]) -> str:
    """The videos folder of the job with the longest folder name, below the batch's folder (jobs/JOB/videos/)."""
    names = [job_dir_name(job.name) for job in jobs if isinstance(job, Job)]
    return f"{JOBS_DIRNAME}/{max(names, key=lambda name: len(os.fsencode(name)), default='')}/videos/"


def _new_batch(args: argparse.Namespace) -> _Batch:
    """--jobs FILE into --output-dir (or a new dated folder): refused before any folder is made or emptied when the
    job file, the folder or a job's video folder cannot be used."""
    if not args.jobs:
        raise UsageError("batch needs --jobs FILE (or --resume DIR to continue a batch)")
    if not Path(args.jobs).is_file():
        what = "a folder, not a file" if Path(args.jobs).is_dir() else "no such file"
        raise UsageError(f"--jobs {args.jobs}: {what} (expected the JSON job file)")
    # Read before --overwrite empties the folder, which may be the one holding the job file.
    job_file, job_file_mode = Path(args.jobs).read_bytes(), stat.S_IMODE(os.stat(args.jobs).st_mode)
    start_dir = os.getcwd()
    jobs = load_jobs(args.jobs, start_dir)
    settings = {JOBS_FILE_KEY: str(args.jobs), START_DIR_KEY: start_dir, HOME_DIR_KEY: _home_folder()}
    if args.output_dir:
        refuse_live_claims(args.output_dir)  # never empty a folder a batch (or any other run) still runs in
    # As rollout: videos of two runs never sit under the same names (refused, or deleted with --overwrite once the
    # batch holds the folder: cmd_batch).
    earlier_videos = {video_dir: check_video_dir(video_dir, Path(args.output_dir) if args.output_dir else None,
                                                  args.overwrite, label="a job's video_dir")
                      for video_dir in job_video_dirs(jobs)}
    if args.output_dir:
        # Claimed before anything is emptied, and the claim is kept while the folder is emptied: of two batches
        # racing into one folder (--overwrite), one runs and the other is refused, whatever the timing.
        output_dir = Path(args.output_dir)
        keep = (BATCH_CLAIM_FILENAME, claim_lock_name(BATCH_CLAIM_FILENAME), claim_alive_name(BATCH_CLAIM_FILENAME))
        if Path(os.path.abspath(args.jobs)).parent == Path(os.path.abspath(output_dir)):  # its job file, kept there
            keep = (*keep, Path(args.jobs).name)
        run_dir.check_output_dir(output_dir, args.overwrite, keep=keep,  # the usual refusals, before any claim
                                 videos_below=_deepest_job_videos(jobs))
        output_dir.mkdir(parents=True, exist_ok=True)
        claim = take_claim(output_dir, BATCH_CLAIM_FILENAME, settings)
        try:
            run_dir.prepare_output_dir(output_dir, overwrite=args.overwrite, keep=keep)
        except BaseException:
            finish_claim(claim, "error")
            raise
    else:
        output_dir = run_dir.make_fresh_dated_output_dir(DEFAULT_BATCH_DIR, "batch")
        claim = claim_output_dir(output_dir, BATCH_CLAIM_FILENAME, settings)
    copy = output_dir / "jobs.json"
    try:
        if not (copy.exists() and os.path.samefile(args.jobs, copy)):  # --jobs DIR/jobs.json: it is the copy already
            _write_with_mode(copy, job_file, job_file_mode)
    except BaseException:  # a full disk: no job started, and no jobs.json for a --resume; the same command runs again
        finish_claim(claim, "error")
        raise
    return jobs, output_dir, claim, None, earlier_videos


def _write_with_mode(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path`, which has `mode` before a byte is written: a job file kept 0600 for its inline token or
    key is never readable by others, not even for a moment or after a write that failed part-way. Written aside and
    renamed: a write that fails part-way (a full disk, OSError naming `path`) or is killed leaves no copy cut short."""
    from .run_claim import partial_path
    from .run_dir import remove_quietly

    partial = partial_path(path)
    try:
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as copy:
            os.fchmod(copy.fileno(), mode)  # the umask narrows a new file's mode
            copy.write(data)
            copy.flush()
            os.fsync(copy.fileno())
        os.replace(partial, path)
    except OSError as exc:
        remove_quietly(partial)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    except BaseException:
        remove_quietly(partial)
        raise


def _claim_job_videos(jobs: List[Any], output_dir: Path, claim: Path, resume: bool = False) -> List[Path]:
    """Claim each job's video folder outside the batch's while the batch runs (as rollout's own; a `resume` is refused
    when another run has claimed one since); on a refusal the claims taken, the batch's included, are let go."""
    video_claims: List[Path] = []
    try:
        for video_dir in job_video_dirs(jobs):
            if not within(video_dir, output_dir):
                video_claims.append(claim_video_dir(video_dir, batch_video_claim_writer(output_dir),
                                                    flag="a job's video_dir", resume=resume))
    except OutputDirError as exc:
        for held in [*video_claims, claim]:
            finish_claim(held, "error")
        raise UsageError(str(exc)) from None
    return video_claims
