"""A run's output directory: dated by default, never silently reused, with a per-episode log that survives a crash.

Layout of a rollout directory:
    run.json         the run's settings (base seed included), written before the first episode, and the process
                     running it ("claim"), so --overwrite or a second --resume never takes a run still running
    episodes.jsonl   one line per episode, appended (and flushed to disk) the moment it is scored
    results.json     the full results, written at the end or on Ctrl-C/SIGTERM ("status": "interrupted")
    eval_info.json   the same numbers in lerobot-eval's field names
    videos/          episode videos
`--resume DIR` reads run.json and episodes.jsonl and runs only the episodes still missing (or errored), with
run.json's settings (a command line giving others is refused); its eval_s adds up every attempt's.
A shard (`--shard I/N`) has its own run_, episodes_ and results_shard{i}of{N} files, so the shards of one split may
share a directory; --overwrite then replaces one shard's files only.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import shlex
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

from gr00t_client.cli_signals import interrupting_signals, signals_handled_by
from gr00t_client.cli_signals import sigterm_as_interrupt  # noqa: F401 - the gr00t_eval modules import it from here

logger = logging.getLogger(__name__)

RUN_FILENAME = "run.json"
# What `rollout --resume` and `batch --resume` (its batch_results.json) continue from: without one, a folder that is
# not empty is not advised to be resumed.
RESUMABLE_FILENAMES = (RUN_FILENAME, "batch_results.json")
# A full disk (or quota, or file size limit) and a folder turned read-only: the run cannot write, but what it logged stays.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
EPISODE_LOG_FILENAME = "episodes.jsonl"
INTERRUPTED_EXIT_CODE = 130
# The files of one shard of a `rollout --shard I/N` split (run_dir.shard_suffix).
SHARD_FILE_NAME = re.compile(r"(run|episodes|results)_shard(?P<index>[0-9]+)of(?P<count>[0-9]+)\.jsonl?")


class OutputDirError(ValueError):
    """An output directory that cannot be used as asked (not empty, nothing to resume, ...)."""


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
    path = dated_output_dir(base, label, now)
    path.parent.mkdir(parents=True, exist_ok=True)
    for number in range(1, 10000):
        candidate = path if number == 1 else path.with_name(f"{path.name}-{number}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise OutputDirError(f"no free output directory {path}-N under {path.parent}; pass --output-dir")


def shard_suffix(shard: Any) -> str:
    """'' for a whole run, '_shard{i}of{N}' for one shard (shards of a plan may share one directory)."""
    return "" if shard is None else f"_shard{shard.index}of{shard.count}"


def check_output_dir(path: Union[str, Path], overwrite: bool = False, own_files: Optional[List[str]] = None,
                     keep: Sequence[str] = ()) -> None:
    """OutputDirError when prepare_output_dir would refuse `path` (see there); changes nothing, so every check of a
    run can pass before anything is emptied."""
    from .run_claim import dead_partial_files, refuse_live_claims

    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise OutputDirError(f"--output-dir {path} is a symbolic link to {os.readlink(path)}, which does not exist: "
                             "create that directory or name another")
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--output-dir {path} exists and is not a directory")
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
            _refuse_inputs(path)
            return
        # A half-written file of a process killed mid-write (its run file, say) is not content: prepare_output_dir
        # deletes it. It made the folder "not empty", and the --resume suggested then found no run.json.
        leftovers = {file.name for file in dead_partial_files(path)}
        if any(entry.name not in keep and entry.name not in leftovers for entry in path.iterdir()):
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
    if overwrite:
        return
    taken = [name for name in own_files if (path / name).exists()]
    if taken:
        raise OutputDirError(f"--output-dir {path} already holds {', '.join(taken)}; pass --resume {path} (with the "
                             "same --shard) to continue that shard, --overwrite to replace this shard's files (and only "
                             "those), or another directory")


def prepare_output_dir(path: Union[str, Path], overwrite: bool = False, own_files: Optional[List[str]] = None,
                       keep: Sequence[str] = ()) -> Path:
    """Create `path`; an existing non-empty directory is refused unless `overwrite` (which empties it). The names in
    `keep` (a claim taken before emptying, and its lock) neither count nor are deleted; the half-written files of a
    process that is gone (run_claim.dead_partial_files: killed while it created its run file, say) do not count and
    are deleted.

    With `own_files` (a shard's file names, its run file first) the directory may hold the other shards of its
    split: only those names must not exist yet, and `overwrite` deletes those files and the episode videos their
    episode log lists, never another shard's. A directory holding another run (sharded, for a whole run; a whole
    run or another split, for a shard), or that a run still running has claimed (any command's claim file,
    run_claim.CLAIM_FILENAMES, but those in `keep`), is refused even with `overwrite`.
    """
    from .run_claim import dead_partial_files

    check_output_dir(path, overwrite, own_files, keep)
    path = Path(path)
    for leftover in dead_partial_files(path):  # a killed process's half-written files (run_claim.PARTIAL_FILE_NAME)
        logger.info("deleting %s, left half-written by a process that is gone", leftover)
        leftover.unlink(missing_ok=True)
    if overwrite and own_files is not None and path.is_dir():
        replaced = [path / name for name in own_files if (path / name).exists()]
        if replaced:
            videos = _listed_videos(replaced)
            logger.warning("replacing %s and %d episode videos of this shard (--overwrite); other shards' files are kept",
                           ", ".join(p.name for p in replaced), len(videos))
            for file in videos + replaced:
                file.unlink(missing_ok=True)
    elif overwrite and path.is_dir() and any(entry.name not in keep for entry in path.iterdir()):
        logger.warning("emptying %s (--overwrite)", path)
        for child in path.iterdir():
            if child.name not in keep:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def shard_files(directory: Union[str, Path]) -> List[str]:
    """The names of the `rollout --shard` files (run_, episodes_, results_shard{i}of{N}) in `directory`."""
    directory = Path(directory)
    return sorted(p.name for p in directory.iterdir() if SHARD_FILE_NAME.fullmatch(p.name)) if directory.is_dir() else []


def started_shards(directory: Union[str, Path]) -> List[Tuple[int, int]]:
    """(index, count) of each `rollout --shard I/N` that started in `directory` (its run file is there), in order."""
    found = (SHARD_FILE_NAME.fullmatch(name) for name in shard_files(directory))
    return sorted({(int(m.group("index")), int(m.group("count"))) for m in found if m is not None and m.group(1) == "run"})


def _split_of(names: Sequence[str]) -> Optional[int]:
    """The N of the first shard file name in `names` (a shard of a --shard I/N split), None without one."""
    for name in names:
        match = SHARD_FILE_NAME.fullmatch(name)
        if match:
            return int(match.group("count"))
    return None


def _input_kind(folder: Path) -> Optional[str]:
    """What input `folder` is: a LeRobot dataset, a model checkpoint, or None."""
    if (folder / "meta" / "info.json").is_file():
        return "a LeRobot dataset (meta/info.json)"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors*")):
        return "a model checkpoint (config.json and safetensors weights)"
    return None


def _refuse_inputs(path: Path) -> None:
    """OutputDirError for a directory --overwrite must never empty: one that is, holds (at any depth) or lies
    inside a LeRobot dataset or a checkpoint (a mistyped --output-dir, the dataset's own folder or its meta/)."""
    def refuse(what: str, where: str) -> None:
        raise OutputDirError(f"--output-dir {path} {where} {what}; --overwrite never deletes one: name another "
                             "directory for the run's output")

    resolved = path.resolve()
    for ancestor in resolved.parents:
        what = _input_kind(ancestor)
        if what is not None:
            refuse(what, f"lies inside {ancestor},")
    for folder, subfolders, _files in os.walk(path, followlinks=False):
        what = _input_kind(Path(folder))
        if what is not None:
            relative = Path(folder).relative_to(path)
            refuse(what, "is" if str(relative) == "." else f"holds, in {relative}/,")
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]


def _refuse_foreign_runs(path: Path, names: Sequence[str], what: str, why: str) -> None:
    if names:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise OutputDirError(f"--output-dir {path} holds {what} ({shown}); {why}, and --overwrite never deletes "
                             "another run's results: name another --output-dir (or move those files away first)")


def _listed_videos(files: Sequence[Path]) -> List[Path]:
    """The episode videos (episode_*_success/failure.mp4 only) that these episode logs and results files list."""
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
    return [p for p in sorted(paths) if EPISODE_VIDEO_NAME.fullmatch(p.name) and p.is_file()]


def run_file_name(shard: Any = None) -> str:
    """run.json, or run_shard{i}of{N}.json for a shard."""
    return f"run{shard_suffix(shard)}.json"


def episode_log_name(shard: Any = None) -> str:
    """episodes.jsonl, or episodes_shard{i}of{N}.jsonl for a shard."""
    return f"episodes{shard_suffix(shard)}.jsonl"


def results_file_name(shard: Any = None) -> str:
    """results.json (RESULTS_FILENAME), or results_shard{i}of{N}.json for a shard."""
    return f"results{shard_suffix(shard)}.json"


def write_run_file(directory: Union[str, Path], settings: Mapping[str, Any], shard: Any = None) -> Path:
    """Save the run's settings (run.json) so `--resume` continues with the same plan and seeds.

    The file also records this process as the run's holder (run_claim's "claim" record), so a later
    --overwrite of the run is refused while it still runs; held_run_claims marks it finished.
    """
    from .results import _jsonable
    from .run_claim import CLAIM_KEY, _create_exclusively, holder_record

    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = Path(directory) / run_file_name(shard)
    try:  # created exclusively: of two runs started together into one directory, the second is refused here
        _create_exclusively(path, json.dumps(_jsonable({"created": created, CLAIM_KEY: holder_record(), **settings}),
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
    from .run_claim import CLAIM_KEY, holder_record, refuse_live_claim

    path = Path(directory) / run_file_name(shard)
    if not path.is_file():
        return
    with _locked_file(path):  # the check and the new claim as one step: two resumes started together, one runs
        try:
            refuse_live_claim(directory, path.name)
        except OutputDirError as exc:
            raise OutputDirError(str(exc).replace(f"--output-dir {directory}", f"--resume {directory}", 1)) from None
        saved = _read_rollout_run_json(path, directory)
        write_results(path, {**saved, CLAIM_KEY: holder_record()})
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
    with _locked_file(lock_path):  # opened for reading: another user's lock file (mode 0644) locks as well
        yield


@contextlib.contextmanager
def _locked_file(path: Path) -> Iterator[None]:
    """Hold an exclusive flock of `path` (the inode it names now; a rewrite replaces the name, and the next
    holder reads the new file by name). Where there is no flock (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
    if not path.is_file():
        shards = [f"{index}/{count}" for index, count in started_shards(directory)]
        hint = f"; it holds the shards {', '.join(shards)}: resume one with --shard I/N" if shards and shard is None else ""
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
            batch_dir = Path(os.path.abspath(directory)).parent.parent
            batch = batch_dir if (batch_dir / "jobs.json").is_file() else "<the batch's output folder>"
            raise OutputDirError(f"--resume {directory}: this is a batch job's folder ({path} holds a job's settings, "
                                 f"not a rollout's); continue it with `gr00t-eval batch --resume {batch}`")
        raise OutputDirError(f"--resume {directory}: {path} holds no 'env_name' (the envs the run evaluates), so it is "
                             "not the run file of a gr00t-eval rollout; resume a rollout's --output-dir, or start a new run")
    return saved


class EpisodeLog:
    """episodes.jsonl: one JSON object per scored episode, appended and flushed at once so a crash keeps it."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append one episode entry (numpy values converted) and flush it to disk."""
        from .results import _jsonable

        line = json.dumps(_jsonable(entry)) + "\n"
        try:
            with open(self.path, "a+b") as handle:
                if handle.tell():  # a line cut short (a full disk) must not swallow this entry: start a line of its own
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        line = "\n" + line
                handle.write(line.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            if exc.filename is None:  # a write's error names no file: a full disk's message should
                raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
            raise

    def read(self) -> List[Dict[str, Any]]:
        """Every complete entry, later entries of the same (task, episode) replacing earlier ones (resumed runs)."""
        if not self.path.is_file():
            return []
        latest: Dict[Any, Dict[str, Any]] = {}
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash: everything before it is intact
                logger.warning("%s:%d is not complete JSON; ignoring it", self.path, number)
                continue
            latest[(entry.get("task"), entry.get("episode_index"))] = entry
        return list(latest.values())


# --- rollout --resume ----------------------------------------------------------------------------


def resume_command(directory: Union[str, Path], shard: Any = None) -> str:
    """'gr00t-eval rollout --resume DIR [--shard I/N]': what the messages about an unfinished run tell the user to
    type, pasteable into a shell (`shard`: a ShardSpec, or anything whose str() is I/N; None for a whole run)."""
    return f"gr00t-eval rollout --resume {shlex.quote(str(directory))}{'' if shard is None else f' --shard {shard}'}"


# rollout flag (dest) -> the run.json config field it sets; --env-name is run.json's env_name.
RESUMED_SETTINGS = {
    "n_episodes": "n_episodes", "n_envs": "n_envs", "n_action_steps": "n_action_steps",
    "max_episode_steps": "max_episode_steps", "seed": "seed", "env_kwargs": "env_kwargs", "video_dir": "video_dir",
    "vectorization": "vectorization", "client_chunking": "client_chunking", "chunk_merge": "chunk_merge",
    "rtc_frozen_steps": "rtc_frozen_steps", "max_episodes_rendered": "max_episodes_rendered",
}
FLAG_NAMES = {"env_kwargs": "--env-kwarg", "no_video": "--no-video"}


def _flag_name(dest: str) -> str:
    return FLAG_NAMES.get(dest, "--" + dest.replace("_", "-"))


def given_settings(args: argparse.Namespace) -> Set[str]:
    """The rollout flags this command line set: `args.given_flags` (cli.main records them), else those that
    differ from the parser's defaults."""
    given = getattr(args, "given_flags", None)
    if given is not None:
        return set(given)
    from .cli import build_parser, subcommand_parsers

    rollout = subcommand_parsers(build_parser())["rollout"]
    return {dest for dest in [*RESUMED_SETTINGS, "env_name", "no_video", "output_dir", "overwrite"]
            if getattr(args, dest, None) != rollout.get_default(dest)}


def refuse_changed_settings(args: argparse.Namespace, saved: Mapping[str, Any]) -> None:
    """UsageError when a `--resume DIR` command line sets a run setting other than the one saved in DIR's run.json.

    A resumed run continues with its saved settings (they decide every episode's outcome and seed); flags that
    would change them were silently dropped before. Connection, --ray-* and --env-import/prefix/adapter flags
    come from the resuming command line.
    """
    from .cli_errors import UsageError

    given = given_settings(args)
    config = saved.get("config", {})
    conflicts = []
    if "env_name" in given and args.env_name != saved.get("env_name"):
        conflicts.append(f"--env-name {args.env_name} (saved: {saved.get('env_name')})")
    for dest, field_name in RESUMED_SETTINGS.items():
        if dest not in given:
            continue
        value = dict(args.env_kwargs) if dest == "env_kwargs" else getattr(args, dest)
        if value != config.get(field_name):
            conflicts.append(f"{_flag_name(dest)} {value} (saved: {config.get(field_name)})")
    if "no_video" in given and args.no_video and config.get("video_dir") is not None:
        conflicts.append(f"--no-video (saved: videos in {config.get('video_dir')})")
    if "output_dir" in given and args.output_dir and Path(args.output_dir).resolve() != Path(args.resume).resolve():
        conflicts.append(f"--output-dir {args.output_dir} (a resumed run writes into {args.resume})")
    if "overwrite" in given and args.overwrite:
        conflicts.append("--overwrite (it would empty the run being resumed)")
    if conflicts:
        raise UsageError(f"--resume {args.resume} continues the run with the settings saved in its run file, but this "
                         f"command line also gives {'; '.join(conflicts)}. Drop those flags to resume, or start a new "
                         "run (a new --output-dir) with the new settings")


def earlier_results(output_dir: Path, shard: Any) -> Optional[Dict[str, Any]]:
    """The results file an earlier attempt of the run wrote (interrupted or aborted), if any."""
    path = output_dir / results_file_name(shard)
    if not path.is_file():
        return None
    try:
        earlier = json.loads(path.read_text())
    except json.JSONDecodeError:
        logger.warning("%s is not valid JSON; the resumed run's eval_s covers this attempt only", path)
        return None
    return earlier if isinstance(earlier, dict) and earlier.get("kind") == "rollout" else None


def add_earlier_eval_s(results: Dict[str, Any], earlier: Mapping[str, Any]) -> None:
    """Add the eval_s of earlier attempts (their results file) to a resumed run's, per task, group and overall.

    The episodes they finished are kept in the resumed results, so their time must be too: eval_s and
    eval_ep_s then cover every attempt, as for an uninterrupted run. (An attempt killed before it wrote
    its results file is not counted.)
    """
    earlier_tasks = earlier.get("per_task") or {}
    groups: Dict[str, float] = {}
    total = 0.0
    for task, entry in results["per_task"].items():
        entry["eval_s"] = float(entry.get("eval_s") or 0.0) + float((earlier_tasks.get(task) or {}).get("eval_s") or 0.0)
        _set_eval_ep_s(entry)
        groups[entry.get("group")] = groups.get(entry.get("group"), 0.0) + entry["eval_s"]
        total += entry["eval_s"]
    for group, entry in results.get("per_group", {}).items():
        if group in groups:
            entry["eval_s"] = groups[group]
            _set_eval_ep_s(entry)
    results["overall"]["eval_s"] = total
    _set_eval_ep_s(results["overall"])
    results["aggregated"] = results["overall"]


def _set_eval_ep_s(entry: Dict[str, Any]) -> None:
    n_run = int(entry.get("n_episodes") or 0) + int(entry.get("n_errors") or 0)
    entry["eval_ep_s"] = entry["eval_s"] / n_run if n_run else float("nan")


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """While a stopping run saves its results: a second Ctrl-C/SIGTERM/SIGHUP is noted, a third one stops waiting."""
    extra = []

    def handler(signum: int, frame: Any) -> None:
        extra.append(signum)
        if len(extra) >= 2:
            raise KeyboardInterrupt(f"signal {signum}")
        # os.write, not print: a handler that prints while the main thread prints raises a reentrant-call error
        os.write(2, b"already stopping: saving the results of the finished episodes (Ctrl-C again to stop waiting)\n")

    with signals_handled_by(handler, (signal.SIGINT, *interrupting_signals())):
        yield


def is_storage_error(exc: BaseException) -> bool:
    """Whether `exc` says the run's files cannot be written (STORAGE_ERRNOS): every later episode would be lost too."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS
