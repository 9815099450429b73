"""An output directory claimed by the run writing into it (CLAIM_FILENAMES: each gr00t-eval command's claim file).

The claim file is created atomically (a second claim is refused) and records who holds it: the process id,
the host, the pid namespace and the start time, and, once the run ends, that it finished. While it holds the claim,
the process keeps a file beside it locked (holding_claim): a holder whose pid cannot be checked here (another
container's, another host's) is judged by that lock. A later run may then empty the directory (--overwrite) only when
that run finished or its process is gone (killed with -9, a crashed machine); never while the claiming process is
alive, which would delete its files and mix both runs' output.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

from .output_files import RUN_FILENAME, SHARD_FILE_NAME, OutputDirError, shard_files
from .run_dir import remove_quietly

logger = logging.getLogger(__name__)

CLAIM_KEY = "claim"  # the claim file's holder record; the run's settings sit beside it
_UNCHANGED_WHEN_WATCHED: Set[Tuple[str, int, int]] = set()  # (file, size, mtime) _changes_while_watched saw unchanged
_STALE_CLAIMS_TOLD: Set[Tuple[str, str]] = set()  # (claim file, holder) a stale-claim warning was given for
# The claim file of each gr00t-eval command: rollout's run file (a shard's run_shardIofN.json too), open-loop's
# (open_loop_cli.OPEN_LOOP_RUN_FILENAME), batch's (batch_cli.BATCH_CLAIM_FILENAME) and record's (record.RECORD_CLAIM). Every
# command refuses a folder holding a live claim of any of them (refuse_live_claims), not only its own kind's: a
# rollout --overwrite emptied the folder of an open-loop run, or a batch, still writing there.
CLAIM_FILENAMES = (RUN_FILENAME, "open_loop_run.json", "batch.json", ".gr00t_record.json")
# A process that started this long after the claim cannot be its holder: the pid was reused. (Linux gives start
# times to 1/100 s from a boot time in whole seconds, so a margin is needed.)
PID_REUSE_MARGIN_S = 2.0
# A run file without a claim (a gr00t-eval older than claims) whose episode log or results changed this recently may be
# of a run still running (its log grows by an episode at a time; one longer than this goes unseen): it is not taken over.
UNCLAIMED_RUN_ACTIVE_S = 120.0
# How long such a run's log is watched for a change when its time cannot tell (dated ahead of this host's clock, or
# longer ago than UNCLAIMED_RUN_ACTIVE_S by a writer's clock that may run behind): a change shows the run still writes.
UNCLAIMED_RUN_WATCH_S = 2.0
# The kernel's first pid namespace (PROC_PID_INIT_INO): a host's own processes', outside any container.
INIT_PID_NAMESPACE = "pid:[4026531836]"


@dataclass(frozen=True)
class ClaimHolder:
    """Who claimed a directory: pid and hostname of the run's process, when it started, and whether it finished."""

    pid: int
    hostname: Optional[str]
    started: str
    started_unix: Optional[float]
    finished: bool
    # The process's start in clock ticks since boot, and the boot's id (Linux): unlike started_unix, unchanged when
    # the wall clock is stepped (NTP on a robot that booted with an old clock), so a live holder is never taken
    # for a reused pid. None in claims written elsewhere or by older versions (started_unix is compared then).
    start_ticks: Optional[int] = None
    boot_id: Optional[str] = None
    # The process's pid namespace ('pid:[4026531836]', Linux): a container's processes have pids of their own, so a
    # pid says nothing of a holder in another namespace, even on a host of the same name (`docker run --network host`
    # gives the node's). None in claims written without /proc or by older versions (their pid is checked here).
    pid_namespace: Optional[str] = None
    # Whether the holder keeps its claim's alive file locked while it holds the claim (holding_claim): where its pid
    # cannot be checked (holder_unchecked), that lock tells a live holder from a gone one. False in older claims.
    alive_lock: bool = False

    def describe(self) -> str:
        """'pid 123 on host h, started 2026-01-01T10:00:00Z', for messages; a pid of another pid namespace than this
        process's says so ('pid 1 in another container's pid namespace, pid:[4026532000], on host h'): it is not the
        process of that pid here (pid 1 is this host's init)."""
        namespace = ""
        if self.pid_namespace is not None and self.pid_namespace != _pid_namespace():
            whose = "the host's" if self.pid_namespace == INIT_PID_NAMESPACE else "another container's"
            namespace = f" in {whose} pid namespace, {self.pid_namespace},"
        return (f"pid {self.pid}{namespace}{'' if self.hostname is None else f' on host {self.hostname}'}, "
                f"started {self.started}")


def claim_output_dir(path: Union[str, Path], filename: str, settings: Mapping[str, Any], flag: str = "--output-dir") -> Path:
    """Create PATH/FILENAME, holding `settings` and this process's claim, atomically: a second claim is refused.

    The emptiness check and a run's first file are otherwise a window in which two runs both find the
    directory empty; OutputDirError when the file exists already. The file appears complete (written
    aside, then hard-linked), so a reader never sees a claim without its holder.
    """
    from .results import _jsonable

    claim = Path(path) / filename
    try:
        with holding_claim(claim) as holder:
            _create_exclusively(claim, json.dumps(_jsonable({CLAIM_KEY: holder, **settings}), indent=2) + "\n")
    except FileExistsError:
        raise OutputDirError(f"{flag} {path} is taken by another run (it holds {filename}); wait for that run "
                             "or name a new directory") from None
    return claim


def claim_lock_name(filename: str) -> str:
    """The file take_claim locks beside a claim file (kept, like the claim, when the directory is emptied)."""
    return f"{filename}.lock"


def claim_alive_name(filename: str) -> str:
    """The file a claim's holder keeps locked while it holds the claim (holding_claim), beside the claim file: a hidden
    .gr00t name, this tool's own to folder checks (kept, like the claim's lock, when the directory is emptied)."""
    return f"{filename if filename.startswith('.gr00t') else f'.gr00t_{filename}'}.alive"


_ALIVE_LOCKS: Dict[str, int] = {}  # claim file (absolute) -> descriptor of its alive file, flock'ed by this process


def is_alive_file(name: str) -> bool:
    """Whether a file name is a claim's alive file (claim_alive_name): this tool's own, never a folder's content."""
    return name.startswith(".gr00t") and name.endswith(".alive")


def _forget_alive_locks_in_forked_child() -> None:
    """In a forked child: close the inherited descriptors of the alive files, unlocked (an unlock would free the
    parent's lock too): a child outliving its killed parent kept the claim "alive" for ever."""
    for descriptor in _ALIVE_LOCKS.values():
        try:
            os.close(descriptor)
        except OSError:
            pass
    _ALIVE_LOCKS.clear()


if hasattr(os, "register_at_fork"):  # Windows has no fork
    os.register_at_fork(after_in_child=_forget_alive_locks_in_forked_child)


@contextlib.contextmanager
def holding_claim(claim: Union[str, Path]) -> Iterator[Dict[str, Any]]:
    """holder_record() for the block to write into the claim file `claim`, this process holding an exclusive flock of
    the claim's alive file (claim_alive_name) from before the write until finish_claim or this process's end, however
    it ends (kill -9, a container killed): a checker that cannot check the holder's pid (holder_unchecked: another pid
    namespace or host) takes a free lock for a gone holder (alive_lock_free). The record says whether the lock is held
    (alive_lock: none where there is no flock, say); a block that fails (no claim written) releases it again."""
    claim = Path(claim)
    held_before = str(claim.absolute()) in _ALIVE_LOCKS  # a claim this process holds already, written again
    record = holder_record()
    if _lock_alive_file(claim):
        record["alive_lock"] = True
    try:
        yield record
    except BaseException:
        if not held_before:  # not written; where no claim is there, its alive file is no run's (a 'not empty' folder)
            release_alive_lock(claim, remove=not claim.exists())
        raise


def _lock_alive_file(claim: Path) -> bool:
    """Take (or keep) this process's flock of the alive file of `claim`; False where it cannot be had."""
    key, alive = str(claim.absolute()), claim.with_name(claim_alive_name(claim.name))
    if key in _ALIVE_LOCKS:
        try:
            if os.path.samestat(os.fstat(_ALIVE_LOCKS[key]), alive.stat()):
                return True
        except OSError:
            pass
        release_alive_lock(claim)  # its file was deleted meanwhile (the folder emptied): lock the one there now
    try:
        import fcntl
    except ImportError:  # Windows
        return False
    try:
        descriptor = open_to_lock(alive, create=True)
    except OSError as exc:
        logger.debug("no alive lock for %s: %s", claim, exc)
        return False
    for _attempt in range(10):  # a checker holds it for an instant only (alive_lock_free)
        try:
            descriptor = flock_or_reopen(descriptor, alive, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _ALIVE_LOCKS[key] = descriptor
            return True
        except BlockingIOError:  # else a live holder's (refused next), or its forked children's: not claimed as held
            time.sleep(0.01)
        except OSError as exc:  # a file system without flock: a run elsewhere cannot tell whether this one runs
            logger.warning("could not lock %s (%s), so a run in another container or on another host cannot tell "
                           "whether this run still runs: its claim records no alive lock", alive, os_error_cause(exc))
            break
    os.close(descriptor)
    return False


def open_to_lock(path: Union[str, Path], create: bool = False) -> int:
    """A read-only descriptor of `path` to flock (flock_or_reopen; O_CLOEXEC: a program this process starts does not
    hold the lock on); `create`: made (mode 0644) if missing. OSError as os.open raises it."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o644)


def flock_or_reopen(descriptor: int, path: Union[str, Path], operation: int) -> int:
    """flock `operation` on `descriptor`, a read-only one of `path` (a file held open for writing for a whole run kept
    its file system from being remounted read-only); where the file system grants an exclusive lock only to a file
    open for writing (NFS: EBADF, flock(2) "NFS details"), on `path` opened again for writing instead, and the first
    descriptor closed. Returns the descriptor that holds the lock; OSError from flock (BlockingIOError under
    LOCK_NB) or the second open as raised, `descriptor` then still open."""
    import fcntl

    try:
        fcntl.flock(descriptor, operation)
        return descriptor
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
    writable = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(writable, operation)
    except BaseException:
        os.close(writable)
        raise
    os.close(descriptor)
    return writable


def os_error_cause(exc: OSError) -> str:
    """'No locks available (ENOLCK)': an OSError's reason, with its errno's name, for messages."""
    name = errno.errorcode.get(exc.errno or 0)
    return f"{exc.strerror or exc}{f' ({name})' if name else ''}"


@contextlib.contextmanager
def locked_file(path: Union[str, Path], create: bool = False) -> Iterator[None]:
    """Hold an exclusive flock of `path` (the inode it names now; a rewrite replaces the name, and the next
    holder reads the new file by name), through a read-only descriptor, or one open for writing where the file
    system locks no other (flock_or_reopen: NFS); `create`: made if missing. OutputDirError naming the file and why when it cannot be locked. Where there
    is no flock (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    descriptor = open_to_lock(path, create=create)
    try:
        try:
            descriptor = flock_or_reopen(descriptor, path, fcntl.LOCK_EX)
        except OSError as exc:
            raise OutputDirError(f"cannot lock {path}: {os_error_cause(exc)}; expected an exclusive flock of it, which keeps "
                                 f"two runs from taking {path.parent} at once (is it on a file system mounted without "
                                 "file locks?)") from exc
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _holds_alive_lock(claim: Path) -> bool:
    """Whether this process itself holds the flock of the alive file of `claim` (holding_claim)."""
    descriptor = _ALIVE_LOCKS.get(str(claim.absolute()))
    try:
        return descriptor is not None and os.path.samestat(os.fstat(descriptor),
                                                           claim.with_name(claim_alive_name(claim.name)).stat())
    except OSError:
        return False


def release_alive_lock(claim: Union[str, Path], remove: bool = False) -> None:
    """Let go of this process's flock of the alive file of `claim` (if it holds one); `remove`: delete that file too
    (the claim file itself is being deleted). Otherwise the file stays, like a claim's lock: deleting it would let a
    later holder lock another file of the same name."""
    claim = Path(claim)
    descriptor = _ALIVE_LOCKS.pop(str(claim.absolute()), None)
    if descriptor is None:
        if remove and alive_lock_free(claim):  # released earlier (a claim held to the end, then deleted): no one's
            remove_quietly(claim.with_name(claim_alive_name(claim.name)))
        return
    import fcntl

    if remove:  # before the unlock: no one locks a file about to go
        remove_quietly(claim.with_name(claim_alive_name(claim.name)))
    fcntl.flock(descriptor, fcntl.LOCK_UN)  # also for a forked child that shares the descriptor
    os.close(descriptor)


def alive_lock_free(claim: Union[str, Path]) -> Optional[bool]:
    """Whether no process holds the flock of the alive file of `claim` (holding_claim): True when this process could
    take it (released at once: the holder is gone, however it ended), False while a process holds it (the holder
    runs), None where that cannot be told (no alive file, no flock here). The file is never made here."""
    claim = Path(claim)
    try:
        import fcntl
    except ImportError:
        return None
    try:
        descriptor = open_to_lock(claim.with_name(claim_alive_name(claim.name)))
    except OSError:
        return None
    try:
        descriptor = flock_or_reopen(descriptor, claim.with_name(claim_alive_name(claim.name)),
                                     fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    else:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return True
    finally:
        os.close(descriptor)


def release_advice(claim: Union[str, Path]) -> str:
    """How to free the claim file `claim` of a run that has ended without finishing, keeping the file: every claim file
    holds its run's settings too (a rollout's run.json is the run, which --resume continues)."""
    return (f'mark its claim finished: set "finished": true in the "{CLAIM_KEY}" record of {claim} (keep that file: '
            "it holds the run's settings)")


def take_claim(path: Union[str, Path], filename: str, settings: Mapping[str, Any], flag: str = "--output-dir") -> Path:
    """claim_output_dir, taking over a claim whose run finished or whose process is gone. The check and the
    take-over happen under an exclusive lock of a file beside the claim (claim_lock_name), so of several runs
    racing for the directory exactly one holds the claim; the others are refused as by a live claim.
    OutputDirError while the holder still runs, or for a claim file without a readable holder."""
    directory = Path(path)
    # Windows: no flock; the exclusive create still lets only one run claim a free directory
    with locked_file(directory / claim_lock_name(filename), create=True):
        try:
            return claim_output_dir(directory, filename, settings, flag)
        except OutputDirError:
            if refuse_live_claim(directory, filename, flag) is None and (directory / filename).exists():
                raise  # a claim file without a readable holder: not ours to take
        (directory / filename).unlink(missing_ok=True)  # finished, or its process is gone
        return claim_output_dir(directory, filename, settings, flag)


def holder_record() -> Dict[str, Any]:
    """This process as a claim's holder: the record a claim file keeps under CLAIM_KEY."""
    now = time.time()
    record: Dict[str, Any] = {"pid": os.getpid(), "hostname": socket.gethostname(), "started": _iso(now),
                              "started_unix": now, "finished": False}
    ticks, boot = _start_ticks(os.getpid()), _boot_id()
    if ticks is not None and boot is not None:
        record.update(start_ticks=ticks, boot_id=boot)
    namespace = _pid_namespace()
    if namespace is not None:
        record.update(pid_namespace=namespace)
    return record


class RunEnding:
    """How a run ended, for a block that handles its own Ctrl-C and returns normally: set `outcome` to
    "interrupted" (None: "complete" on a normal return)."""

    outcome: Optional[str] = None


@contextlib.contextmanager
def finished_however_it_ends(finish: Callable[[str], None]) -> Iterator[RunEnding]:
    """Run the block, then call finish(outcome) however it ended: "complete" (or what the block set in the RunEnding
    it is given), "interrupted" (Ctrl-C, SIGTERM made KeyboardInterrupt) or "error"."""
    outcome = "error"
    ending = RunEnding()
    try:
        yield ending
        outcome = ending.outcome or "complete"
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    finally:
        finish(outcome)


def finish_claim(claim: Union[str, Path], outcome: str) -> None:
    """Record in the claim file that its run ended (`outcome`: complete, interrupted, error), so the directory
    may be overwritten while this process still lives (a later run of the same Python process, say). The claim's alive
    lock (holding_claim) is released then."""
    claim = Path(claim)
    try:
        _finish_claim(claim, outcome)
    finally:
        release_alive_lock(claim)


def _finish_claim(claim: Path, outcome: str) -> None:
    try:
        data = json.loads(claim.read_text())
    except (OSError, ValueError) as exc:  # deleted or broken meanwhile: there is nothing left to release
        logger.warning("could not mark %s finished: %s", claim, exc)
        return
    record = data.get(CLAIM_KEY) if isinstance(data, dict) else None
    if not isinstance(record, dict) or not _is_this_process(record):
        # taken over meanwhile (this run was judged gone): the claim is another run's, and its 'finished' not ours
        holder = read_holder(claim)
        logger.warning("did not mark %s finished: it is now claimed by another run (%s)", claim,
                       holder.describe() if holder is not None else "no readable holder")
        return
    record.update(finished=True, ended=_iso(time.time()), outcome=outcome)
    from .results import write_results

    try:
        write_results(claim, data)
    except OSError as exc:  # a full disk (no leftover): the claim stays unfinished, and its process will be gone;
        logger.warning("could not mark %s finished: %s", claim, exc)  # the run's own error is the one to show


def holds_claim(claim: Union[str, Path]) -> bool:
    """Whether the claim file `claim` is held by this process (its pid, start and host: _is_this_process)."""
    try:
        data = json.loads(Path(claim).read_text())
    except (OSError, ValueError):
        return False
    record = data.get(CLAIM_KEY) if isinstance(data, dict) else None
    return isinstance(record, dict) and _is_this_process(record)


def _is_this_process(record: Mapping[str, Any]) -> bool:
    """True when a claim's holder record is this process: its pid and pid namespace, and its start ticks and boot where
    recorded (else its host name; a host renamed mid-run keeps its ticks and boot, and its claim)."""
    if record.get("pid") != os.getpid():
        return False
    if record.get("pid_namespace") not in (None, _pid_namespace()):  # the PID 1 of another container, say
        return False
    ticks, boot = record.get("start_ticks"), record.get("boot_id")
    if ticks is not None and boot is not None:
        return ticks == _start_ticks(os.getpid()) and boot == _boot_id()
    return record.get("hostname") == socket.gethostname()


def read_holder(claim: Union[str, Path]) -> Optional[ClaimHolder]:
    """The holder recorded in a claim file; None when there is no readable claim."""
    try:
        data = json.loads(Path(claim).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    record = data.get(CLAIM_KEY)
    if not isinstance(record, dict):  # written before the holder was recorded: pid and created at the top
        record = {"pid": data.get("pid"), "started": data.get("created"), "finished": False}
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    started_unix, ticks, boot = record.get("started_unix"), record.get("start_ticks"), record.get("boot_id")
    namespace = record.get("pid_namespace")
    return ClaimHolder(pid=pid, hostname=record.get("hostname"), started=str(record.get("started") or "at an unknown time"),
                       started_unix=float(started_unix) if isinstance(started_unix, (int, float)) else None,
                       finished=bool(record.get("finished")),
                       start_ticks=ticks if isinstance(ticks, int) and not isinstance(ticks, bool) else None,
                       boot_id=boot if isinstance(boot, str) and boot else None,
                       pid_namespace=namespace if isinstance(namespace, str) and namespace else None,
                       alive_lock=record.get("alive_lock") is True)


def refuse_live_claim(directory: Union[str, Path], filename: str, flag: str = "--output-dir",
                      quiet: bool = False) -> Optional[ClaimHolder]:
    """OutputDirError when DIRECTORY/FILENAME is held by a run that has not finished and may still be running.

    Checked before --overwrite may empty the directory (holder_state): a live claimant on this host (its process
    exists) is refused, naming it, and so is one that still holds its alive lock, wherever it runs, and one on another
    host or in another pid namespace (holder_unchecked) whose claim has no lock (an older version's: this process
    cannot tell whether it still runs), saying how to free the claim, keeping the file, once it has ended
    (release_advice).
    Returns the holder of a claim that may go: finished, or its process gone (a stale claim, warned of unless
    `quiet`); None without one.
    """
    claim = Path(directory) / filename
    holder = read_holder(claim)
    if holder is None:
        _refuse_recent_unclaimed_run(Path(directory), filename, flag)
    if holder is None or holder.finished:
        return holder
    state = holder_state(holder, claim)
    if state == HOLDER_LOCKED:
        raise OutputDirError(f"{flag} {directory} is in use: the run that claimed it is still running "
                             f"({holder.describe()}, in {filename}; it holds {claim_alive_name(filename)} locked). "
                             "Wait for it to end or name another directory")
    if state == HOLDER_UNKNOWN:
        raise OutputDirError(f"{flag} {directory} is claimed by a run that has not finished ({holder.describe()}, "
                             f"in {filename}); {holder_unchecked(holder)} cannot check whether it still runs. Wait for "
                             f"it, or once it has ended {release_advice(claim)}, or name another directory")
    if state == HOLDER_ALIVE:
        raise OutputDirError(f"{flag} {directory} is in use: the run that claimed it is still running "
                             f"({holder.describe()}, in {filename}). Wait for it to end or name another directory"
                             + (f" (this host cannot check a process safely: once it has ended, "
                                f"{release_advice(claim)})"
                                if os.name == "nt" else ""))
    said = (str(claim), holder.describe())
    if not quiet and said not in _STALE_CLAIMS_TOLD:  # a command's checks meet the same stale claim two or three times
        _STALE_CLAIMS_TOLD.add(said)
        logger.warning("%s was claimed by a run that ended without finishing (%s; that process is gone)", directory,
                       holder.describe())
    return holder


def _refuse_recent_unclaimed_run(directory: Path, filename: str, flag: str) -> None:
    """OutputDirError when DIRECTORY/FILENAME is the run file of a rollout by a gr00t-eval older than claims (no holder
    to check) whose episode log changed within UNCLAIMED_RUN_ACTIVE_S with no results written since (a run writes them
    at its end and on Ctrl-C): that run may still be running, and a resume or --overwrite beside it ran its episodes
    twice. A batch job's run file (job_config) is not one: its batch's claim covers it. A log changed longer ago, or
    dated ahead of this host's clock (another host's clock wrote its time), is watched for UNCLAIMED_RUN_WATCH_S: one
    that changes is refused; one dated ahead is refused, too, naming the clocks and how to go on once that run ended.
    A log dated before its results is watched as well, and refused if it changes: a clock stepped back dates a live
    run's appends before its earlier attempt's results."""
    shard = SHARD_FILE_NAME.fullmatch(filename)
    if filename != RUN_FILENAME and (shard is None or shard.group(1) != "run"):
        return
    suffix = filename[len("run"):-len(".json")]
    try:
        saved = json.loads((directory / filename).read_text())
    except (OSError, ValueError):
        return
    if not isinstance(saved, dict) or CLAIM_KEY in saved or "job_config" in saved:
        return
    log, results = directory / f"episodes{suffix}.jsonl", directory / f"results{suffix}.json"
    try:
        logged_at = log.stat().st_mtime
    except OSError:
        return  # no episode yet: nothing of it would run twice
    older_run = (f"{flag} {directory} holds the run of an older gr00t-eval ({filename} records no claim, so whether "
                 "that run still runs cannot be checked), and its")
    try:
        results_dated_after = results.stat().st_mtime >= logged_at
    except OSError:
        results_dated_after = False
    if results_dated_after:
        # Its results (written at its end, or on Ctrl-C) are dated after its last episode: it ended, unless a clock
        # stepped back since an earlier attempt's results dates a live run's appends before them. Watching tells.
        _refuse_log_changing_while_watched(older_run, log, f" (its {results.name} is dated after it, by a clock that "
                                           "may have been stepped back since)")
        return
    age = time.time() - logged_at
    ahead = -age if age < -1.0 else None  # a second's slack: file times and clocks round
    if ahead is None and age < UNCLAIMED_RUN_ACTIVE_S:
        raise OutputDirError(f"{older_run} {log.name} changed {max(age, 0):.0f} s ago with no results written since "
                             f"(expected none within {UNCLAIMED_RUN_ACTIVE_S:.0f} s of a run that has ended): it may "
                             "still be running. Wait for it to end, or stop it first, then run this again")
    dated = None if ahead is None else (f"dated {ahead:.0f} s ahead of this host's clock (the clock of the host or "
                                        "file server that wrote it and this host's differ by about that much)")
    _refuse_log_changing_while_watched(older_run, log, ", with no results written since" + (
        "" if dated is None else f"; it is {dated}"))
    if dated is not None:
        raise OutputDirError(
            f"{older_run} {log.name} is {dated}, so when it last changed cannot be told; "
            f"it did not change in the {UNCLAIMED_RUN_WATCH_S:.0f} s it was watched, which a run between two episodes "
            "may not either. If that run has ended (stop it first if it has not), date its log by this host's clock: "
            f"touch -d '{2 * UNCLAIMED_RUN_ACTIVE_S:.0f} seconds ago' {log}; then run this again")


def _refuse_log_changing_while_watched(older_run: str, log: Path, why: str) -> None:
    """OutputDirError when the episode log `log` of an unclaimed run (`older_run` opens the message) changes while
    watched for UNCLAIMED_RUN_WATCH_S: that run is still running. `why` says why its file times could not tell."""
    if _changes_while_watched(log, UNCLAIMED_RUN_WATCH_S):
        raise OutputDirError(f"{older_run} {log.name} changed while it was watched for {UNCLAIMED_RUN_WATCH_S:.0f} s"
                             f"{why}: it is still running. Wait for it to end, or stop it first, then run this again")


def _changes_while_watched(path: Path, seconds: float) -> bool:
    """Whether `path`'s size or modification time changes within `seconds` (it is looked at every quarter second):
    a file still being written, judged without comparing its time with this host's clock. A file this process watched
    and saw unchanged is not watched again while it stays so (a command's checks meet one run file two or three
    times)."""
    def looks() -> Optional[Tuple[str, int, int]]:
        try:
            stat = path.stat()
        except OSError:  # gone while watched: a change too
            return None
        return str(path.absolute()), stat.st_size, stat.st_mtime_ns

    before = looks()
    if before is not None and before in _UNCHANGED_WHEN_WATCHED:
        return False
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.25, max(deadline - time.monotonic(), 0.0)))
        if looks() != before:
            return True
    if before is not None:
        _UNCHANGED_WHEN_WATCHED.add(before)
    return False


def claim_files(directory: Union[str, Path]) -> List[str]:
    """The claim files any gr00t-eval command may leave in `directory`: CLAIM_FILENAMES and the shards' run files."""
    return [*CLAIM_FILENAMES, *(name for name in shard_files(directory) if name.startswith("run_"))]


def refuse_live_claims(directory: Union[str, Path], flag: str = "--output-dir", skip: Sequence[str] = ()) -> None:
    """refuse_live_claim for every claim file in DIRECTORY (claim_files) but those in `skip`: a run still running
    there is refused whichever command claimed the folder; a finished or stale claim of any kind is no obstacle."""
    for name in claim_files(directory):
        if name not in skip:
            refuse_live_claim(directory, name, flag)


def refuse_live_runs_around(path: Union[str, Path], flag: str = "--output-dir", include_self: bool = False,
                            shard: Optional[Tuple[int, int, str, int]] = None) -> None:
    """OutputDirError when a folder above `path` (links resolved; `path` itself with `include_self`) is claimed by a
    run still running (refuse_live_claim): `path` lies inside that run's output, whose files a run there would write
    over or delete. Only files holding a claim record count (a run.json of another tool, or of a gr00t-eval older than
    claims, whose pid may be any process's now, made every folder below it refused), and claims of this process (a
    batch's, over its jobs' folders) are no obstacle, nor, for shard `(index, count, env_name, n_episodes)` of a plan,
    the run files of its other shards of that plan (`run_shard<i>of<count>.json` of the same env and episodes, whose
    episodes, and so video names, are other than its own: the shards of one plan share a --video-dir). A stale claim
    above is passed over without a word: the run never touches that folder."""
    resolved = Path(path).resolve()
    siblings = set() if shard is None else {f"run_shard{i}of{shard[1]}.json" for i in range(shard[1]) if i != shard[0]}
    for folder in [*([resolved] if include_self else []), *resolved.parents]:
        try:
            names = claim_files(folder)
        except OSError:  # a folder above that cannot be listed: its fixed claim names may still be read
            names = list(CLAIM_FILENAMES)
        for name in names:
            if not _claim_record_in(folder / name) or holds_claim(folder / name):
                continue
            if name in siblings and _same_plan(folder / name, shard):  # type: ignore[arg-type]
                continue
            try:
                refuse_live_claim(folder, name, flag="the folder", quiet=True)
            except OutputDirError as exc:
                where = "is" if folder == resolved else "lies inside"
                raise OutputDirError(f"{flag} {path} {where} the output folder of another run: {exc}") from None


def _same_plan(run_file: Path, shard: Tuple[int, int, str, int]) -> bool:
    """Whether the shard run file `run_file` is of the plan `shard` names: the same tasks (resolved: "a, b" is
    "a,b") and episodes (with the shard count of its name, its episodes are other than this shard's)."""
    try:
        data = json.loads(run_file.read_text())
    except (OSError, ValueError):
        return False
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict) or config.get("n_episodes") != shard[3]:
        return False
    tasks = _task_names(shard[2])
    return tasks is not None and _task_names(data.get("env_name")) == tasks


def _task_names(env_spec: Any) -> Optional[List[str]]:
    """The tasks an --env-name spec runs, in order (suites.resolve_tasks); None for one that names none."""
    from .suites import resolve_tasks

    try:
        return [task.env_name for task in resolve_tasks(env_spec)[0]] if isinstance(env_spec, str) else None
    except (ValueError, KeyError):
        return None


def _claim_record_in(claim: Path) -> bool:
    """Whether the file `claim` holds a run's claim record (CLAIM_KEY), not only a pid at its top."""
    try:
        data = json.loads(claim.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get(CLAIM_KEY), dict)


def process_exists(pid: int) -> bool:
    """True while process `pid` exists on this host and is not a zombie; True where that cannot be checked (Windows)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) there sends Ctrl-C (CTRL_C_EVENT is 0): taken as live, and the messages
        return True  # about claims say to delete the file once that run has ended
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    except OSError:
        return False
    state, _started = _linux_process(pid)
    return state != "Z"  # a zombie: killed, not yet reaped by its parent


def holder_unchecked(holder: ClaimHolder) -> Optional[str]:
    """Who cannot check whether a claim's holder still runs, for messages ('host h', 'this process, in pid namespace
    pid:[1] (the run's is pid namespace pid:[2], another container's)'): its pid is not one of this pid namespace,
    being on another host, or in another pid namespace of this one. None when its pid can be checked here (holder_alive); so for a claim
    without a namespace (an older version's) on this host."""
    here, boot = socket.gethostname(), _boot_id()
    same_boot = holder.boot_id is not None and holder.boot_id == boot  # this machine, renamed since
    if holder.hostname is not None and holder.hostname != here and not same_boot:
        return f"host {here}"
    # A namespace's id names it within one boot only: a holder of another boot is gone (holder_alive says so) unless
    # it holds its alive lock (holder_state): another machine of this host's name sharing the folder
    earlier_boot = holder.boot_id is not None and boot is not None and holder.boot_id != boot
    namespace = _pid_namespace()
    if holder.pid_namespace is not None and holder.pid_namespace != namespace and not earlier_boot:
        return (f"this process, in pid namespace {namespace or '(unreadable)'} (the run's is pid namespace "
                f"{holder.pid_namespace}, another container's)")
    return None


HOLDER_ALIVE, HOLDER_LOCKED, HOLDER_GONE, HOLDER_UNKNOWN = "alive", "locked", "gone", "unknown"  # holder_state's


def holder_state(holder: ClaimHolder, claim: Union[str, Path]) -> str:
    """Whether the (unfinished) holder of the claim file `claim` still runs, the one verdict every check of a claim
    goes by: HOLDER_ALIVE while its process runs here (holder_alive), HOLDER_LOCKED while a process holds its alive
    lock (alive_lock_free), HOLDER_GONE when its process is gone and its lock, if it records one, is free, and
    HOLDER_UNKNOWN where neither can be checked (holder_unchecked, without a lock to ask). A held lock vetoes every
    sign of a gone holder (another boot's id, a pid that is no process here): the same claim comes from a live run
    on another machine of this host's name sharing the folder, or in a container of a fixed --hostname elsewhere."""
    unchecked = holder_unchecked(holder)
    if unchecked is None and holder_alive(holder):  # this process's own claims too: never asked of their lock
        return HOLDER_ALIVE
    # a lock this process holds itself tells nothing of the holder recorded (a claim written over ours)
    lock_free = alive_lock_free(claim) if holder.alive_lock and not _holds_alive_lock(Path(claim)) else None
    if lock_free is False:
        return HOLDER_LOCKED
    return HOLDER_UNKNOWN if unchecked is not None and lock_free is None else HOLDER_GONE


def holder_gone(holder: ClaimHolder, claim: Union[str, Path]) -> bool:
    """Whether the holder of the claim file `claim` has ended (holder_state: its process gone, its alive lock free)."""
    return holder_state(holder, claim) == HOLDER_GONE


def holder_alive(holder: ClaimHolder) -> bool:
    """True while the claim's process exists on this host and is the one that claimed (not a reused pid, nor another
    process with this process's pid: a container's PID 1 of before its restart); True for a holder whose pid cannot be
    checked here (holder_unchecked)."""
    if os.name == "nt" or holder_unchecked(holder) is not None:  # Windows: taken as live (process_exists)
        return True
    if not process_exists(holder.pid):
        return False
    _state, started = _linux_process(holder.pid)
    if holder.start_ticks is not None and holder.boot_id is not None:
        boot, ticks = _boot_id(), _start_ticks(holder.pid)
        if boot is not None and ticks is not None:  # exact and clock-free: another boot or start is another process
            return boot == holder.boot_id and ticks == holder.start_ticks
    # A claim without them (an older version's): the wall clock, which a forward step after the claim misleads.
    if started is not None and holder.started_unix is not None and started > holder.started_unix + PID_REUSE_MARGIN_S:
        return False
    return True


def _start_ticks(pid: int) -> Optional[int]:
    """When process `pid` started, in clock ticks since boot (/proc/PID/stat field 22); None where unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_namespace() -> Optional[str]:
    """This process's pid namespace, as 'pid:[4026531836]' (Linux); None where unreadable."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _boot_id() -> Optional[str]:
    """This boot's id (Linux); None where there is none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _linux_process(pid: int) -> Tuple[Optional[str], Optional[float]]:
    """(state letter, start time in Unix seconds) of a process from /proc; (None, None) where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (command) "; the command may hold spaces
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
        return fields[0], boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None, None


# A file written aside and then renamed or linked into place: .NAME.PID.N@HOST.tmp (partial_path: _create_exclusively,
# results.write_results, plots, episode videos; earlier versions wrote .NAME.PID.N.tmp, and claims as .NAME.PID.tmp).
# PID and HOST are the writer's: a kill -9 between the write and the rename leaves it.
PARTIAL_FILE_NAME = re.compile(r"\.(?P<name>.+?)\.(?P<pid>[0-9]+)(?:\.[0-9]+)?(?:@(?P<host>[A-Za-z0-9_-]+))?\.tmp")
_PARTIAL_FILE_COUNTER = itertools.count()
NAME_MAX = 255  # bytes in a file name (ext4, XFS, APFS, NTFS)
_HOST_TAG_MAX = 64  # characters of the host name a half-written file's name keeps (Linux's HOST_NAME_MAX)


def partial_path(path: Path) -> Path:
    """Where `path` is written aside before it is renamed into place: .NAME.PID.N@HOST.tmp (PARTIAL_FILE_NAME), a name
    of this process's own; .gr00t.PID.N@HOST.tmp where that would be longer than a file name may be, so that any legal
    NAME (up to 255 bytes) can be written."""
    tail = f".{os.getpid()}.{next(_PARTIAL_FILE_COUNTER)}@{host_tag()}.tmp"
    name = path.name if len(os.fsencode(f".{path.name}{tail}")) <= NAME_MAX else "gr00t"
    return path.with_name(f".{name}{tail}")


def host_tag() -> str:
    """This host's name as a half-written file's name holds it: letters, digits and '-' kept, anything else '_'."""
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname())[:_HOST_TAG_MAX] or "_"


def dead_partial_files(directory: Union[str, Path]) -> List[Path]:
    """The half-written files (PARTIAL_FILE_NAME) in `directory` whose writer on this host is no longer running (killed
    with -9 mid-write, out of memory, a power loss): never a file's only copy, so safe to delete. A live writer's are
    left, and so are those of a writer on another host (a shard writing to a shared folder), whose pid is not ours to
    judge; a name without a host (an earlier version's) is judged as this host's."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    here = host_tag()
    found = []
    for entry in directory.iterdir():
        match = PARTIAL_FILE_NAME.fullmatch(entry.name)
        if (match and match.group("host") in (None, here) and entry.is_file() and not entry.is_symlink()
                and not process_exists(int(match.group("pid")))):
            found.append(entry)
    return sorted(found)


def _create_exclusively(path: Path, text: str, rename_without_links: bool = False) -> None:
    """Create `path` holding `text`, complete, or raise FileExistsError (link(2), like O_EXCL, fails on an existing name).
    Where the file system has no hard links (exFAT, SMB, some FUSE mounts) the text is written again into a file made
    with O_EXCL (a claim: exclusive, not atomic); with `rename_without_links` (results: atomic, and room for one copy
    only) the copy written aside is renamed into place unless a file is there (exclusive but for that instant)."""
    partial = partial_path(path)
    try:
        partial.write_text(text, encoding="utf-8")
    except OSError as exc:
        remove_quietly(partial)  # never in place of the error that stopped the write (a read-only folder: EROFS)
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc  # a full disk's write names no file
    except BaseException:
        remove_quietly(partial)
        raise
    try:
        os.link(partial, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if rename_without_links:
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
            os.replace(partial, path)
            return
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # O_EXCL, the content written just after
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
    finally:
        remove_quietly(partial)  # one left over is deleted as a dead writer's (dead_partial_files) once we are gone


def _iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))
