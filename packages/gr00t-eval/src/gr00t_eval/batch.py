"""`gr00t-eval batch --jobs jobs.json`: run rollout jobs in sequence, isolate failures, write one combined file.

The job file format is documented in docs/batch-jobs.md. A job that cannot run (bad env, unknown field,
policy server gone) or whose episodes errored is marked failed with its reason and the next job runs. Every
job has a status, pending, done or failed, in batch_results.json, rewritten after each job; `--resume DIR`
runs the jobs that are not done, and done jobs whose settings changed since. The job file is read and checked
by batch_jobs (IsaacLab-Arena's field names accepted as aliases).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union

from gr00t_client import BasePolicy, PolicyClient
from gr00t_client.peer_text import shown_text

from .applied_settings import settings_not_applied, warn_not_applied
from .batch_jobs import (VIDEO_ONLY_SETTINGS, Job, JobError, PolicyServerAddress, check_unique_job_names,
                         job_dir_name, job_video_dirs, load_jobs, parse_job, same_server_text)
from .episode_log import EpisodeLog, latest_entries
from .metrics import ERROR_REASON_CHARS, EpisodeOutcome
from .output_files import EPISODE_LOG_FILENAME, RUN_FILENAME
from .policy_identity import (check_takes_flat_observations, describe, identifies_more, pinned_policy,
                              policy_record, same_policy)
from .results import RESULTS_FILENAME, results_text, write_results, write_results_text
from .rollout.config import RolloutConfig, draw_base_seed, env_timeout_applies, without_unkept_env_timeout
from .run_file import read_run_json
from .run_resume import (ATTEMPTS_KEY, TASKS_KEY, add_earlier_task_eval_s, covered_attempts, earlier_eval_s,
                         earlier_results, recorded_tasks, tasks_difference)
from .run_stop import is_storage_error, output_folder_checked, take_stop_while_closing
from .run_summary import percent_text
from .shard import outside_plan, planned_task_pairs, run_suite

__all__ = ["BATCH_RESULTS_FILENAME", "JOBS_DIRNAME", "Job", "JobError", "PolicyServerAddress", "connect", "format_table",
           "job_dir_name", "job_video_dirs", "load_jobs", "parse_job", "run_batch", "run_job"]

logger = logging.getLogger(__name__)

BATCH_RESULTS_FILENAME = "batch_results.json"
JOBS_DIRNAME = "jobs"  # OUTPUT_DIR/jobs/<job>/: each job's run.json and episodes.jsonl
PENDING, DONE, FAILED = "pending", "done", "failed"


def connect(server: PolicyServerAddress) -> PolicyClient:
    """A PolicyClient for `server` that has answered a ping (ConnectionError otherwise)."""
    client = PolicyClient(server.host, server.port, timeout_ms=server.timeout_ms, api_token=server.api_token,
                          server_public_key=server.server_public_key, client_secret_key=server.client_key)
    try:
        client.call_endpoint("ping", requires_input=False)
    except (TimeoutError, ConnectionError) as exc:  # the client's words name the server and why (no such host, ...)
        client.close()
        raise ConnectionError(str(exc)) from None
    except BaseException:
        client.close()
        raise
    return client


def _unregistered_prefix(task: str) -> Optional[str]:
    """A failed task's reason when its env prefix is not registered, in words for a batch: the rollout flags that
    register one are no batch's; None for a task whose prefix is known (it failed for another reason)."""
    from .rollout.envs import unknown_prefix_problem

    try:
        problem = unknown_prefix_problem(task)
    except ValueError:  # no env name (a malformed one fails the task, saying so)
        return None
    if problem is None:
        return None
    return (f"ValueError: {problem}; gr00t-eval batch cannot register env prefixes (nor import an env's module): run "
            "this task with gr00t-eval rollout, registering its env there, or call gr00t_eval.batch.run_batch from "
            "Python after gr00t_eval.rollout.register_env_prefix")


def _episode_errors(results: Mapping[str, Any]) -> Optional[str]:
    errored = [e for e in results["per_episode"] if e.get("error")]
    if not errored:
        return None
    return f"{len(errored)} of {len(results['per_episode'])} episodes errored, e.g. {errored[0]['error']}"


def prepare_job_dir(job_dir: Path, config: RolloutConfig, policy: Optional[Mapping[str, Any]] = None,
                    logged: Optional[List[Dict[str, Any]]] = None,
                    moved_from: Optional[str] = None) -> Tuple[RolloutConfig, List[EpisodeOutcome]]:
    """A job's run.json and episodes.jsonl, like a rollout's: resume what they hold when the job is unchanged.

    Returns the config to run (with the base seed saved at the job's first start) and the episodes logged
    by an earlier, unfinished attempt. A job whose settings changed since, or whose server now serves another
    policy (`policy`, policy_identity.policy_record), starts over; its old log is kept as episodes.replaced.jsonl.
    `logged`, when given, gets every entry of a resumed log (EpisodeLog.entries: earlier_eval_s's input), from the
    one read that gives the episodes (a cut-short line is warned of once). `moved_from`: the server the job ran
    against before (a done job whose policy_server changed): its episodes are kept only when both servers said which
    policy they serve and it is the same one.
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    planned = planned_config(config)
    run_file, log = job_dir / RUN_FILENAME, job_dir / EPISODE_LOG_FILENAME
    saved = read_job_run_file(job_dir) if run_file.is_file() else None
    tasks = planned_task_pairs(config.env_name)
    # an older gr00t-eval's run.json recorded no tasks: its logged episodes are checked against the plan instead
    entries = None if saved is None or recorded_tasks(saved) is not None else list(EpisodeLog(log).entries())
    changes = [] if saved is None else [*setting_changes(saved.get("job_config"), planned, job_dir.name),
                                        *task_changes(saved, tasks, entries)]
    same = saved is not None and not changes
    if same and not same_policy(saved.get("policy"), policy):
        logger.warning("job %s: its server now serves %s, and its earlier attempt ran against %s; running the job from "
                       "the start", job_dir.name, describe(policy), describe(saved.get("policy")))
        same = False
    elif same and policy is None and saved.get("policy") is not None:  # nothing checks the episodes kept are its
        logger.warning("job %s: its server did not say which policy it serves (no get_server_info answer), and its "
                       "earlier attempt ran against %s; running the job from the start", job_dir.name,
                       describe(saved.get("policy")))
        same = False
    elif same and moved_from is not None and (policy is None or saved.get("policy") is None):
        logger.warning("job %s: its policy server changed (%s), and which policy one of them serves is unknown (no "
                       "get_server_info answer), so nothing shows its earlier episodes are this server's; running the "
                       "job from the start", job_dir.name, moved_from)
        same = False
    elif same and moved_from is not None:
        logger.warning("job %s: its policy server changed (%s) and serves the same policy (%s): its earlier episodes "
                       "are kept", job_dir.name, moved_from, describe(policy))
    if same:
        assert saved is not None
        earlier = saved.get("policy")
        if earlier is None and policy is not None and log.is_file() and log.stat().st_size:
            logger.warning("job %s: its earlier attempt recorded no policy (an older gr00t-eval, or a server that did not "
                           "say), so nothing checks that its logged episodes are %s's, which serves it now; its results "
                           "will pool both. Recording %s from now on", job_dir.name, describe(policy), describe(policy))
        record = dict(saved)
        if policy is not None and (earlier is None or identifies_more(policy, earlier)):
            record["policy"] = dict(policy)  # the fuller record: later attempts held to it
        if recorded_tasks(saved) is None:  # the plan its logged episodes were checked against: later ones held to it
            record[TASKS_KEY] = tasks
        if record != saved:
            write_results(run_file, record)
        resumed = without_unkept_env_timeout(RolloutConfig(**saved["config"]))
        entries = list(EpisodeLog(log).entries()) if entries is None else entries
        if logged is not None:
            logged.extend(entries)
        return resumed, [EpisodeOutcome.from_json_dict(e) for e in latest_entries(entries)]
    if saved is not None and log.is_file():
        what = f"settings changed ({'; '.join(changes)})" if changes else "policy changed"
        logger.warning("job %s: its %s since %s was written; running the job from the start", job_dir.name, what, log)
        log.replace(job_dir / "episodes.replaced.jsonl")
    if (job_dir / RESULTS_FILENAME).is_file():  # an earlier attempt's, of other settings: its time is not this run's
        (job_dir / RESULTS_FILENAME).replace(job_dir / "results.replaced.json")
    if config.seed is None:  # drawn once and saved, so a resumed job keeps every episode's seed
        config = dataclasses.replace(config, seed=draw_base_seed())
    write_results(run_file, {"job_config": planned, TASKS_KEY: tasks, "config": dataclasses.asdict(config),
                             "policy": None if policy is None else dict(policy)})
    return config, []


def task_changes(saved: Mapping[str, Any], tasks: List[List[str]],
                 logged: Optional[List[Dict[str, Any]]] = None) -> List[str]:
    """['tasks: <difference>'] when a job's run.json recorded other tasks than its env_name resolves to now
    (run_resume.tasks_difference: a suite redefined since). For a run.json from before they were recorded, when one of
    the `logged` episode entries (EpisodeLog.entries) is of a task or group outside them (shard.outside_plan, which
    run_suite would refuse); none for the same, or nothing logged to check."""
    started = recorded_tasks(saved)
    if started is not None:
        difference = tasks_difference(started, tasks)
        return [] if difference is None else [f"tasks: {difference}"]
    groups = dict(map(tuple, tasks))
    for entry in latest_entries(logged or []):
        outside = outside_plan(EpisodeOutcome.from_json_dict(entry), groups)
        if outside is not None:
            return [f"tasks: its earlier attempt logged {outside}, and its run.json (an older gr00t-eval's) did not "
                    "record the tasks it started with"]
    return []


def read_job_run_file(job_dir: Path) -> Dict[str, Any]:
    """A job's run.json; OutputDirError naming the file, and what to do, when it is damaged (cut short, not JSON)."""
    return read_run_json(job_dir / RUN_FILENAME, None,
                          f"Delete the job's folder {job_dir} (its episodes cannot be resumed without it) and resume the "
                          "batch: the job runs again from the start")


def setting_changes(saved: Any, planned: Mapping[str, Any], job_folder: str) -> List[str]:
    """'key saved -> planned' for each setting a job's recorded `job_config` differs from its planned one in.

    A video_dir that is the other plus the job's folder name is no change: separate_shared_video_dirs moves a job
    to <video_dir>/<job folder> only while another job shares its folder, so adding or removing another job to
    the job file moved it, and re-ran jobs nobody changed. The job keeps the folder it recorded. Folders are compared
    as the OS resolves them (links followed): an older batch recorded a relative video_dir, which load_jobs now makes
    absolute. A video-only setting (VIDEO_ONLY_SETTINGS) is no change when neither names a video_dir: no video was
    written, so leaving out the video_fps of a job without videos reran it from the start for nothing.
    """
    if not isinstance(saved, Mapping):
        return [f"job_config {saved!r} -> {dict(planned)!r}"]
    saved = as_resumed(with_setting_defaults(saved))
    diffs = [f"{key} {saved.get(key)!r} -> {planned.get(key)!r}" for key in sorted(set(saved) | set(planned))
             if saved.get(key) != planned.get(key)]
    recorded, wanted = saved.get("video_dir"), planned.get("video_dir")
    if isinstance(recorded, str) and isinstance(wanted, str) and (
            os.path.realpath(recorded) == os.path.realpath(wanted)
            or job_folder in (os.path.relpath(recorded, wanted), os.path.relpath(wanted, recorded))):
        diffs = [diff for diff in diffs if not diff.startswith("video_dir ")]
    if not recorded and not wanted:  # no video written, before or now: what shapes videos changed nothing measured
        diffs = [diff for diff in diffs if diff.split(" ", 1)[0] not in VIDEO_ONLY_SETTINGS]
    return diffs


def with_setting_defaults(saved: Any) -> Any:
    """Saved job settings with the settings an older gr00t-eval did not write (env_timeout_s, say) at their
    defaults: a batch resumed after an upgrade reran every finished job, warning of a setting nobody changed."""
    if not isinstance(saved, Mapping):
        return saved
    defaults = {f.name: f.default for f in dataclasses.fields(RolloutConfig) if f.default is not dataclasses.MISSING}
    defaults.update({f.name: f.default_factory() for f in dataclasses.fields(RolloutConfig)  # type: ignore[misc]
                     if f.default_factory is not dataclasses.MISSING})
    return json.loads(json.dumps({**{k: v for k, v in defaults.items() if k not in saved}, **saved}))


def as_resumed(saved: Dict[str, Any]) -> Dict[str, Any]:
    """Saved job settings as a resume runs them: an env_timeout_s an earlier version took with its envs in this process
    (vectorization "sync", or "auto" with n_envs 1; not kept) is None, as load_jobs makes it
    (batch_jobs.resumed_job_env_timeout)."""
    timeout = saved.get("env_timeout_s")
    if not isinstance(timeout, (int, float)) or env_timeout_applies(saved.get("vectorization"), timeout,
                                                                    n_envs=saved.get("n_envs")):
        return saved
    return {**saved, "env_timeout_s": None}


def planned_config(config: RolloutConfig) -> Dict[str, Any]:
    """A job's RolloutConfig as JSON values (before a base seed is drawn): what its record and run.json save, and
    what a later attempt's settings are compared with."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def changed_settings(job: Job, record: Mapping[str, Any], job_dir: Optional[Path] = None) -> Optional[str]:
    """How a done job in the job file differs from the one its record describes ('' or None: unchanged): its policy
    server ('host:port') and its settings.

    The record's `job_config`, else the job folder's run.json; a record with neither (an older batch) is kept unless
    its server differs. The server is compared too: an unnamed job is `job-<index>`, so a job inserted above it took
    its name, and was reported done with the other's results without running.
    """
    recorded = record.get("policy_server")
    server = ([f"policy_server {recorded!r} -> {str(job.server)!r}"]
              if recorded is not None and not same_server_text(recorded, job.server) else [])
    saved = record.get("job_config")
    run: Mapping[str, Any] = {}
    if job_dir is not None and (job_dir / RUN_FILENAME).is_file():
        try:
            run = read_job_run_file(job_dir)
        except ValueError as exc:  # nothing to compare with: run again, where the job fails naming the file
            if saved is None:
                return f"the settings (unknown: {exc})"
            # the record's own settings decide; a done job is not rerun (and its result lost) for a damaged run.json
    saved = run.get("job_config") if saved is None else saved
    # the tasks its env_name resolves to now, against those its run.json recorded (none recorded: an older batch's)
    tasks = task_changes(run, planned_task_pairs(job.env_name)) if run else []
    if saved is None:
        return ", ".join([*server, *tasks]) or None
    try:
        planned = planned_config(job.rollout_config())
    except (TypeError, ValueError) as exc:
        return f"the settings ({exc})"
    return ", ".join([*server, *setting_changes(saved, planned, job_dir_name(job.name)), *tasks])


def run_job(job: Job, policy_factory: Callable[[PolicyServerAddress], BasePolicy] = connect, progress: bool = False,
            job_dir: Optional[Path] = None, moved_from: Optional[str] = None) -> Dict[str, Any]:
    """Run one job; returns its record {name, status done|failed, reason, n_errors, wall_s, results}.

    With `job_dir` every episode is logged there the moment it ends, and a job run again (batch --resume)
    keeps the episodes that finished and runs only the missing and errored ones (after a change of server,
    `moved_from`, only when both servers are known to serve the same policy: prepare_job_dir). KeyboardInterrupt
    propagates (the batch marks the job pending again).
    """
    start = time.perf_counter()
    record: Dict[str, Any] = {"name": job.name, "env_name": job.env_name, "policy_server": str(job.server),
                              "status": DONE, "reason": None, "n_errors": 0, "results": None}
    policy = None
    try:
        config, done = job.rollout_config(), []
        record["job_config"] = planned_config(config)
        on_episode = None
        earlier = None
        policy = policy_factory(job.server_with_token())
        served = policy_record(policy)  # which checkpoint or dataset the server serves
        check_takes_flat_observations(served)  # before any episode: each would error on the flat observations
        # Asked and warned of before the run, as rollout does (a server gone by the run's end reads as applying them)
        not_applied = settings_not_applied(policy, {"rtc_frozen_steps": config.rtc_frozen_steps})
        warn_not_applied(policy, not_applied)
        if job_dir is not None:
            logged: List[Dict[str, Any]] = []
            config, done = prepare_job_dir(job_dir, config, served, logged, moved_from)
            record["job_config"]["video_dir"] = config.video_dir  # the folder it recorded (setting_changes)
            log = EpisodeLog(job_dir / EPISODE_LOG_FILENAME, claim=RUN_FILENAME)
            on_episode = lambda outcome: log.append(outcome.to_json_dict())  # noqa: E731
            record["episode_log"] = str(log.path)
            record["resumed_episodes"] = sum(1 for outcome in done if outcome.error is None)
            earlier = earlier_eval_s(logged, earlier_results(job_dir, None)) if done else None
        # a server restarted with another checkpoint mid-job stops the job, and so does its folder gone before a video
        folder_checked = output_folder_checked(log.check_folder) if job_dir is not None else contextlib.nullcontext()
        with pinned_policy(policy, served), folder_checked:
            results = run_suite(policy, job.env_name, config, progress=progress, on_episode=on_episode, done=done)
        results["settings_not_applied"] = not_applied
        if earlier:  # the episodes kept from earlier attempts took their time too, as in rollout --resume
            add_earlier_task_eval_s(results, earlier)
        if job_dir is not None:  # what a later attempt adds its time to
            log.check_folder()
            results[ATTEMPTS_KEY] = covered_attempts(logged, log.attempt)
            write_results(job_dir / RESULTS_FILENAME, results)
        record["results"] = results
        record["n_errors"] = results["overall"].get("n_errors", 0)
        if results.get("status") == "interrupted":
            raise KeyboardInterrupt
        reasons = [f"{shown_text(task)}: {_unregistered_prefix(task) or error}"
                   for task, error in results["failed_tasks"].items()]
        if results.get("status") == "aborted":
            reasons.append(str(results.get("stop_reason")))
        episode_errors = _episode_errors(results)
        if episode_errors:
            reasons.append(episode_errors)
        if reasons:
            record["status"], record["reason"] = FAILED, "; ".join(reasons)
    except Exception as exc:  # noqa: BLE001 - one broken job must not stop the batch
        if is_storage_error(exc):  # a full disk: every later job's episodes would be lost too; the batch stops
            raise
        # bounded and escaped: the error may quote a server's or a simulator's words (a newline forged a log line)
        reason = shown_text(f"{type(exc).__name__}: {exc}", ERROR_REASON_CHARS)
        logger.error("job %s failed: %s", shown_text(job.name), reason)
        logger.debug("job %s failed", shown_text(job.name), exc_info=exc)
        record["status"], record["reason"] = FAILED, reason
    finally:
        close = getattr(policy, "close", None)
        if close is not None:
            close()
    record["wall_s"] = time.perf_counter() - start
    return record


def _invalid_record(job: JobError, index: int) -> Dict[str, Any]:
    return {"name": job.job_name or f"job-{index}", "env_name": None, "policy_server": None, "status": FAILED,
            "reason": f"invalid job: {job}", "n_errors": 0, "results": None, "wall_s": 0.0}


def _pending_record(job: Union[Job, JobError], index: int) -> Dict[str, Any]:
    if isinstance(job, JobError):
        return _invalid_record(job, index)
    return {"name": job.name, "env_name": job.env_name, "policy_server": str(job.server), "status": PENDING,
            "reason": None, "n_errors": 0, "results": None, "wall_s": 0.0}


def _done_name_of(job: JobError, kept: Mapping[str, Any], valid: Set[str]) -> Optional[str]:
    """The name of the done record (in `kept`) of the job an invalid entry describes: its own name, or for a name
    load_jobs refused as repeated (NAME#INDEX: a folder name taken by another job, 'job-a' beside 'Job-A') that name,
    unless a valid job of the batch has it (a true duplicate, whose record that job keeps); None when none was done."""
    name = job.job_name
    repeated = re.fullmatch(r"(.+)#[0-9]+", name or "")
    for candidate in (name, repeated.group(1) if repeated else None):
        if candidate is not None and candidate in kept and candidate not in valid:
            return candidate
    return None


def _count(batch: Dict[str, Any]) -> None:
    batch["n_failed"] = sum(1 for r in batch["jobs"] if r["status"] == FAILED)
    batch["n_pending"] = sum(1 for r in batch["jobs"] if r["status"] == PENDING)
    batch["n_done"] = sum(1 for r in batch["jobs"] if r["status"] == DONE)


def run_batch(jobs: Iterable[Union[Job, JobError]], output_path: Optional[Union[str, Path]] = None,
              policy_factory: Callable[[PolicyServerAddress], BasePolicy] = connect, progress: bool = False,
              previous: Optional[Mapping[str, Any]] = None,
              job_folder_checks: Optional[Mapping[str, Callable[[], None]]] = None) -> Dict[str, Any]:
    """Run jobs in order; the combined file is rewritten after each job so a crash keeps the finished ones.

    `previous` (an earlier batch_results.json of the same jobs) resumes: jobs it marks done are kept, not rerun,
    unless their settings changed since (changed_settings; they run again, with `rerun_reason`), and the others
    keep the episodes logged in their run folder (OUTPUT_DIR/jobs/<name>/, with `output_path`).
    On Ctrl-C/SIGTERM the running job goes back to pending, the file says "status": "interrupted", and
    KeyboardInterrupt propagates. Jobs must have distinct names (JobError before any runs), as in a job file.
    Without `previous`, an `output_path` holding an earlier batch's results, or job folders holding its episodes, is
    refused (ValueError) before any job runs. `job_folder_checks` (by job name: run_stop.check_folder_kept of a folder
    outside the batch's that the job writes into, its video_dir) are made only while that job runs: a finished job's
    folder archived, or a later job's not mounted yet, stops no other job.
    """
    jobs = list(jobs)  # read once: a generator was used up by the name check, and the batch then ran no job
    if not jobs:  # as load_jobs refuses an empty job file: a batch that ran nothing must not say "complete"
        raise ValueError("jobs lists no jobs; a batch needs at least one Job")
    check_unique_job_names(jobs)
    if previous is None and output_path is not None:
        _refuse_earlier_batch(Path(output_path), jobs)
    batch: Dict[str, Any] = {"kind": "batch", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "status": "running", "jobs": [_pending_record(job, i) for i, job in enumerate(jobs)]}
    jobs_dir = None if output_path is None else Path(output_path).parent / JOBS_DIRNAME
    kept = {r["name"]: r for r in (previous or {}).get("jobs", []) if r.get("status") == DONE}
    valid = {job.name for job in jobs if isinstance(job, Job)}
    for index, job in enumerate(jobs):
        done_as = _done_name_of(job, kept, valid) if isinstance(job, JobError) else None
        if done_as is not None:  # done before a newer check refused its entry: its results are kept (once)
            valid.add(done_as)
            logger.warning("job %s: done earlier, and its entry in the job file is now refused (%s); its results are "
                           "kept, and it runs again only once its entry is fixed", shown_text(done_as), job)
            batch["jobs"][index] = kept[done_as]
            continue
        if isinstance(job, Job) and job.name in kept:
            changed = changed_settings(job, kept[job.name], None if jobs_dir is None else jobs_dir / job_dir_name(job.name))
            if changed:  # its result no longer describes the job in the job file: run it again
                logger.warning("job %s: %s changed since it was done; running it again", shown_text(job.name), changed)
                batch["jobs"][index]["rerun_reason"] = f"settings changed since it was done: {changed}"
            else:
                batch["jobs"][index] = kept[job.name]
    _count(batch)
    combined = None if output_path is None else _CombinedFile(Path(output_path))

    def save() -> None:
        if combined is not None:
            combined.write(batch)

    save()
    for index, job in enumerate(jobs):
        if isinstance(job, JobError) or batch["jobs"][index]["status"] == DONE:
            continue
        logger.info("job %d/%d: %s (%s on %s)", index + 1, len(jobs), shown_text(job.name), shown_text(job.env_name),
                    job.server)
        try:
            if take_stop_while_closing():  # a Ctrl-C at the last job's teardown (its episodes were all scored)
                raise KeyboardInterrupt("a stop signal while the envs of the job before closed")
            rerun_reason = batch["jobs"][index].get("rerun_reason")
            recorded = kept.get(job.name, {}).get("policy_server") if rerun_reason else None
            folder_check = (job_folder_checks or {}).get(job.name)
            with output_folder_checked(folder_check) if folder_check is not None else contextlib.nullcontext():
                batch["jobs"][index] = run_job(job, policy_factory, progress,
                                               None if jobs_dir is None else jobs_dir / job_dir_name(job.name),
                                               moved_from=f"{recorded} -> {job.server}"
                                               if recorded is not None and not same_server_text(recorded, job.server)
                                               else None)
            if rerun_reason:
                batch["jobs"][index]["rerun_reason"] = rerun_reason
        except KeyboardInterrupt:
            batch["status"] = "interrupted"
            _count(batch)
            save()
            raise
        except OSError as exc:
            if not is_storage_error(exc):
                raise
            stop_reason = f"job {shown_text(job.name)} could not write its files: {exc}"
            batch["status"], batch["stop_reason"] = "aborted", stop_reason
            _count(batch)
            try:  # the disk may have room for this small file yet (or again)
                save()
            except OSError:
                pass
            raise
        _count(batch)
        save()
    batch["status"] = "complete"
    save()
    return batch


class _CombinedFile:
    """batch_results.json, rewritten after each job as write_results writes the batch, byte for byte; each finished
    job's record (done or failed: not changed after) is encoded once and its text reused, so a save costs the earlier
    jobs' bytes, not encoding their per-episode results again (O(jobs^2) over a batch)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._finished: Dict[int, Tuple[Mapping[str, Any], str]] = {}  # by index: the record, and its text

    def write(self, batch: Mapping[str, Any]) -> None:
        """Write `batch` (its "jobs" a list of records) to the file."""
        jobs = [self._record_text(index, record) for index, record in enumerate(batch["jobs"])]
        jobs_text = "[\n    " + ",\n    ".join(jobs) + "\n  ]" if jobs else "[]"
        fields = [f"  {json.dumps(str(key))}: "
                  + (jobs_text if key == "jobs" else results_text(value).replace("\n", "\n  "))
                  for key, value in batch.items()]
        write_results_text(self.path, "{\n" + ",\n".join(fields) + "\n}\n")

    def _record_text(self, index: int, record: Mapping[str, Any]) -> str:
        held = self._finished.get(index)
        if held is not None and held[0] is record:  # the same record object: kept, so its id is not another's
            return held[1]
        text = results_text(record).replace("\n", "\n    ")  # as nested two levels down (JSON strings hold no newline)
        if record.get("status") in (DONE, FAILED):
            self._finished[index] = (record, text)
        return text


def _refuse_earlier_batch(output_path: Path, jobs: List[Union[Job, JobError]]) -> None:
    """ValueError when a new batch (no `previous`) would take the place of an earlier one: its jobs would keep the
    episodes logged in their folders and report them as new, and its batch_results.json would be replaced (the CLI
    refuses such a folder too, unless --overwrite or --resume)."""
    jobs_dir, earlier = output_path.parent / JOBS_DIRNAME, []
    if output_path.is_file():
        try:
            held = json.loads(output_path.read_text())
        except (OSError, ValueError):  # no batch's results (a job file, say): written over, as before
            held = None
        if isinstance(held, dict) and held.get("kind") == "batch":
            earlier.append(f"{output_path} (its results)")
    for job in jobs:
        job_dir = jobs_dir / job_dir_name(job.name) if isinstance(job, Job) else None
        if job_dir is not None and job_dir.is_dir() and any(job_dir.iterdir()):
            earlier.append(f"{job_dir} (the episodes of job {job.name!r})")
    if earlier:
        raise ValueError(f"output_path {output_path}: an earlier batch is there ({'; '.join(earlier)}); to resume it "
                         f"pass previous= its results (json.loads of {output_path}, or {{'jobs': []}} when there are "
                         f"none), or to run a new batch delete {output_path} and {jobs_dir} (or name another "
                         "output_path)")


def format_table(batch: Mapping[str, Any]) -> str:
    """A plain-text table: one row per job with status, episodes, errors, success and the full reason."""
    header = ("job", "status", "tasks", "episodes", "errors", "success %", "avg_sum_reward", "eval_s", "reason")
    rows = [header]
    for record in batch["jobs"]:
        overall = (record.get("results") or {}).get("overall") or {}
        n_tasks = len((record.get("results") or {}).get("tasks") or [])

        def number(key: str, fmt: str) -> str:
            value = overall.get(key)
            return fmt.format(value) if isinstance(value, (int, float)) and value == value else "-"

        rows.append((shown_text(str(record["name"])), record["status"], str(n_tasks or "-"),
                     number("n_episodes", "{:d}"), number("n_errors", "{:d}"), percent_text(overall.get("pc_success")),
                     number("avg_sum_reward", "{:.3f}"), number("eval_s", "{:.1f}"), record.get("reason") or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths) + "  ------")
    return "\n".join(lines)
