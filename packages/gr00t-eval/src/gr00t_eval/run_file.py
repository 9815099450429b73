"""A rollout's run file (run.json, or a shard's run_shard{i}of{N}.json): its settings and the claim of the process
running it, written before the first episode, read back by --resume, and the locks that make claiming it one step."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

from .output_files import OutputDirError, refuse_path_too_long, run_file_name, started_shards


def write_run_file(directory: Union[str, Path], settings: Mapping[str, Any], shard: Any = None) -> Path:
    """Save the run's settings (run.json) so `--resume` continues with the same plan and seeds.

    The file also records this process as the run's holder (run_claim's "claim" record), so a later
    --overwrite of the run is refused while it still runs; held_run_claims marks it finished.
    """
    from .results import _jsonable
    from .run_claim import CLAIM_KEY, _create_exclusively, holding_claim

    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = Path(directory) / run_file_name(shard)
    try:  # created exclusively: of two runs started together into one directory, the second is refused here
        with holding_claim(path) as holder:
            _create_exclusively(path, json.dumps(_jsonable({"created": created, CLAIM_KEY: holder, **settings}),
                                                  indent=2) + "\n")
    except FileExistsError:
        raise OutputDirError(f"--output-dir {directory} is taken by another run started meanwhile (it holds {path.name}); "
                             "wait for that run or name another directory") from None
    _CLAIMS_HELD.append(path)
    return path


def record_run_policy(directory: Union[str, Path], shard: Any, policy: Mapping[str, Any]) -> None:
    """Add the policy the run evaluates (policy_identity.policy_record) to its run file, for a resume to check."""
    _record_in_run_file(directory, shard, "policy", dict(policy))


def record_settings_not_applied(directory: Union[str, Path], shard: Any, not_applied: Mapping[str, Any]) -> None:
    """Add the settings the run's server ignores (applied_settings.settings_not_applied) to its run file."""
    _record_in_run_file(directory, shard, "settings_not_applied", dict(not_applied))


def _record_in_run_file(directory: Union[str, Path], shard: Any, field: str, value: Any) -> None:
    from .results import write_results

    path = Path(directory) / run_file_name(shard)
    saved = json.loads(path.read_text()) if path.is_file() else None
    if isinstance(saved, dict):
        write_results(path, {**saved, field: value})


def claim_resumed_run(directory: Union[str, Path], shard: Any = None) -> None:
    """Record this process as the holder of the run being resumed in DIRECTORY (its run file), so that run is
    not overwritten, nor resumed twice at once, while it runs; OutputDirError while its holder still runs.
    A directory without a run file is left to the resume's own check."""
    from .results import write_results
    from .run_claim import CLAIM_KEY, holding_claim, locked_file, refuse_live_claim

    path = Path(directory) / run_file_name(shard)
    if not path.is_file():
        return
    # a run folder moved deeper since (an archive): its episodes would run and its results.json then fail
    refuse_path_too_long(directory, "--resume", below="videos/")
    with locked_file(path):  # the check and the new claim as one step: two resumes started together, one runs
        try:
            refuse_live_claim(directory, path.name)
        except OutputDirError as exc:
            raise OutputDirError(str(exc).replace(f"--output-dir {directory}", f"--resume {directory}", 1)) from None
        saved = _read_rollout_run_json(path, directory)
        with holding_claim(path) as holder:
            write_results(path, {**saved, CLAIM_KEY: holder})
        _CLAIMS_HELD.append(path)


ROLLOUT_LOCK_FILENAME = ".gr00t_rollout.lock"  # locked while a rollout takes its output directory (kept there)


@contextlib.contextmanager
def directory_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock of `lock_path` (created if missing, never deleted: deleting it would let a later run
    lock another file of the same name). Where there is no flock (Windows) the block runs unlocked."""
    if not lock_path.exists():
        try:
            lock_path.touch(exist_ok=True)
        except PermissionError:  # not ours to create here: the run's own checks say what is wrong with the folder
            yield
            return
    from .run_claim import locked_file

    with locked_file(lock_path):
        yield


@contextlib.contextmanager
def held_run_claims() -> Iterator[Any]:
    """Mark the run files this block claims (write_run_file, claim_resumed_run) finished however it ends, so a
    later --overwrite or --resume may take them; a run killed first (kill -9) leaves the claim of a gone process.
    Yields a run_claim.RunEnding, for a block that catches its own Ctrl-C to say it was interrupted."""
    from .run_claim import finish_claim, finished_however_it_ends, read_holder

    start = len(_CLAIMS_HELD)

    def finish(outcome: str) -> None:
        taken, _CLAIMS_HELD[start:] = _CLAIMS_HELD[start:], []
        for path in taken:
            holder = read_holder(path)
            if holder is not None and holder.pid == os.getpid() and not holder.finished:  # not replaced meanwhile
                finish_claim(path, outcome)

    with finished_however_it_ends(finish) as ending:
        yield ending


_CLAIMS_HELD: List[Path] = []  # run files this process claimed and has not yet marked finished


def hold_claim(path: Path) -> None:
    """Have the enclosing held_run_claims block mark another claim file of the run finished (its --video-dir's)."""
    _CLAIMS_HELD.append(path)


def read_run_file(directory: Union[str, Path], shard: Any = None) -> Dict[str, Any]:
    """run.json (or a shard's run file) of a directory to resume (OutputDirError when there is none)."""
    path = Path(directory) / run_file_name(shard)
    if Path(directory).exists() and not Path(directory).is_dir():
        raise OutputDirError(f"--resume {directory}: a file, not a folder (expected the --output-dir of a gr00t-eval "
                             "rollout)")
    if not path.is_file():
        shards = [f"{index}/{count}" for index, count in started_shards(directory)]
        hint = f"; it holds the shards {', '.join(shards)}: resume one with --shard I/N" if shards else ""
        raise OutputDirError(f"--resume {directory}: no {path.name} there (is it the --output-dir of a gr00t-eval rollout"
                             f"{'' if shard is None else ' with this --shard'}?){hint}")
    return _read_rollout_run_json(path, directory)


def read_run_json(path: Path, directory: Optional[Union[str, Path]],
                   next_step: str = "Start a new run") -> Dict[str, Any]:
    """A run file's settings; OutputDirError naming the file and `next_step` when it is not one (cut short, not
    JSON, not a map). `directory`: the folder given to --resume, named first (None: a batch job's run file)."""
    where = "" if directory is None else f"--resume {directory}: "
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise OutputDirError(f"{where}{path} is not a readable run file ({type(exc).__name__}: {exc}); "
                             f"was it cut short (a full disk, a copy interrupted)? {next_step}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise OutputDirError(f"{where}{path} is not a run file (it holds no settings map 'config'). {next_step}")
    return saved


def _read_rollout_run_json(path: Path, directory: Union[str, Path]) -> Dict[str, Any]:
    """read_run_json of a rollout's run file; OutputDirError for a batch job's folder (its run.json has no
    env_name: `batch --resume` continues it) or another file without the envs the run evaluates."""
    saved = read_run_json(path, directory)
    if not isinstance(saved.get("env_name"), str) or not saved["env_name"]:
        if "job_config" in saved:
            batch_dir = Path(directory).absolute().parent.parent
            batch = batch_dir if (batch_dir / "jobs.json").is_file() else "<the batch's output folder>"
            raise OutputDirError(f"--resume {directory}: this is a batch job's folder ({path} holds a job's settings, "
                                 f"not a rollout's); continue it with `gr00t-eval batch --resume {batch}`")
        raise OutputDirError(f"--resume {directory}: {path} holds no 'env_name' (the envs the run evaluates), so it is "
                             "not the run file of a gr00t-eval rollout; resume a rollout's --output-dir, or start a new run")
    return saved
