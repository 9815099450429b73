"""How a run stops early: Ctrl-C, SIGTERM or SIGHUP (exit code 130; more of them wait while it saves its results),
or storage it can no longer write (a full disk), which every later episode would fail on too."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import signal
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Tuple

from gr00t_client.cli_signals import interrupting_signals, signals_handled_by, write_note
from gr00t_client.cli_signals import sigterm_as_interrupt  # noqa: F401 - the gr00t_eval modules import it from here
from gr00t_client.cli_signals import stop_signals_ignored_until_exit  # noqa: F401 - likewise

__all__ = ["INTERRUPTED_EXIT_CODE", "STORAGE_ERRNOS", "WRITE_REFUSED_ERRNOS", "OutputFolderGone", "check_folder_kept",
           "check_output_folders", "folder_identity", "interrupts_deferred", "is_storage_error", "is_storage_line",
           "output_folder_checked", "permission_line", "sigterm_as_interrupt", "storage_advice", "storage_error_text",
           "stop_signals_ignored_until_exit", "storage_stop_line", "note_stop_while_closing", "take_stop_while_closing"]

# A full disk (or quota, or file size limit) and a folder turned read-only: the run cannot write, but what it logged stays.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
INTERRUPTED_EXIT_CODE = 130
# Stop signals that cut an env teardown short after every episode of a run was scored (vector_envs._close_envs): that
# run is complete, but whatever the process runs next (a suite's next task, a batch's next job, a Python script's next
# run_rollout) stops before it starts, as the Ctrl-C meant: it stays noted until then.
_stops_while_closing: list = []
# A file or folder this user may not write: worded as a storage error (storage_stop_line), though not one that stops a
# rollout's later episodes (is_storage_error): a video folder of its own may be writable.
WRITE_REFUSED_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


SAVING_NOTE = "already stopping: saving the results of the finished episodes (Ctrl-C again to stop waiting)"
SAVED_NOTE = "the results are saved: printing their summary (Ctrl-C again to stop it)"


@contextlib.contextmanager
def interrupts_deferred(note: str = SAVING_NOTE) -> Iterator[None]:
    """While a stopping run saves its results (or a run whose results are saved prints them): a Ctrl-C/SIGTERM/SIGHUP
    is noted (`note` is printed), a second one stops waiting."""
    extra = []

    def handler(signum: int, frame: Any) -> None:
        extra.append(signum)
        if len(extra) >= 2:
            raise KeyboardInterrupt(f"signal {signum}")
        write_note(note)

    with signals_handled_by(handler, (signal.SIGINT, *interrupting_signals())):
        yield


class OutputFolderGone(OSError):
    """The folder a run claimed is gone (a share unmounted, a /tmp cleaner): what it wrote now would land elsewhere."""

    what = "output folder"  # which of the run's folders: its output folder, or a video or plot folder outside it


def folder_identity(folder: Path) -> Tuple[int, int]:
    """(device, inode) of `folder`: another folder at the same path (a share unmounted, a folder re-made) differs."""
    status = os.stat(folder)
    return status.st_dev, status.st_ino


def check_folder_kept(folder: Path, identity: Optional[Tuple[int, int]], claim: Optional[str],
                      what: str = "output folder") -> None:
    """OutputFolderGone unless `folder` is still the one the run claimed: the same `identity`, its `claim` in it (None:
    a folder that holds no claim, such as a plot folder, is told apart by its identity alone). `what` names it."""
    try:
        kept = folder_identity(folder) == identity and (claim is None or (folder / claim).is_file())
    except OSError:
        kept = False
    if not kept:
        gone = OutputFolderGone(errno.ENOENT, f"the {what} disappeared (unmounted or deleted)", str(folder))
        gone.what = what
        raise gone


# The checks (check_folder_kept) of the output folders the running code writes into, for a writer that does not know
# the folder (an episode's video, written by the runner): a run whose folder was deleted and re-made by another run
# wrote its video among that run's.
_FOLDER_CHECKS: contextvars.ContextVar[Tuple[Callable[[], None], ...]] = contextvars.ContextVar("folder_checks",
                                                                                              default=())


@contextlib.contextmanager
def output_folder_checked(check: Callable[[], None]) -> Iterator[None]:
    """Within the block, check_output_folders calls `check` (OutputFolderGone when the run's folder is gone)."""
    token = _FOLDER_CHECKS.set((*_FOLDER_CHECKS.get(), check))
    try:
        yield
    finally:
        _FOLDER_CHECKS.reset(token)


def check_output_folders() -> None:
    """OutputFolderGone when a folder an enclosing output_folder_checked watches is no longer the run's."""
    for check in _FOLDER_CHECKS.get():
        check()


def storage_advice(exc: OSError) -> str:
    """What frees the storage `exc` (a storage error) says is wanting, as a sentence's start: 'Free some space' for a
    full disk, the quota, the file size limit, or a folder made writable again."""
    if exc.errno == errno.EROFS:
        return "Make the folder writable again (remount its file system read-write)"
    if exc.errno == errno.EDQUOT:
        return "Free some space within your disk quota (or have the quota raised)"
    if exc.errno == errno.EFBIG:
        return "Raise the file size limit (ulimit -f)"
    if exc.errno in WRITE_REFUSED_ERRNOS:
        return "Give this user write access to the folder"  # then a --resume, or --overwrite, takes the same folder
    return "Free some space"


def is_storage_error(exc: BaseException) -> bool:
    """Whether `exc` says the run's files cannot be written (STORAGE_ERRNOS, or its folder gone): every later episode
    would be lost too."""
    return isinstance(exc, OutputFolderGone) or (isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS)


def is_storage_line(exc: BaseException, *output_folders: Any) -> bool:
    """Whether a command that stops on `exc` says so as a storage line (storage_stop_line): its folder gone, or a
    storage error (is_storage_error) or a file or folder this user may not write (WRITE_REFUSED_ERRNOS) whose file lies
    in one of the command's `output_folders` (its output folder, its video folder; entries that are no path, None,
    ignored; a command that names none: any storage error). An error naming no file, or a file elsewhere, is not the
    output folder's: a full or read-only /dev/shm (the env workers' semaphores), a permission error on a file the
    command reads (a dataset's, a --jobs file)."""
    if isinstance(exc, OutputFolderGone):
        return True
    if not (isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS | WRITE_REFUSED_ERRNOS):
        return False
    folders = [Path(folder) for folder in output_folders if isinstance(folder, (str, os.PathLike))]
    if not folders:
        return exc.errno in STORAGE_ERRNOS
    if not exc.filename:
        return False
    failed = Path(os.fsdecode(exc.filename)).resolve()
    for folder in folders:
        folder = folder.resolve()
        if failed == folder or folder in failed.parents:
            return True
    return False


def permission_line(exc: OSError) -> str:
    """A permission error on a file that is not a command's output (is_storage_line): the file, and what it lacks."""
    return f"cannot open {exc.filename}: {exc.strerror or exc} (give this user access to it, or run as one who has it)"


def storage_error_text(exc: OSError) -> str:
    """A storage error as '<what the system said> writing <file>' (No space left on device writing .../results.json),
    not Python's '[Errno 28] ...' form."""
    where = f" writing {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def storage_stop_line(exc: OSError, command: str) -> str:
    """The one line for a command (`command`: 'batch', 'open-loop', ...) stopped by a storage error (is_storage_line)
    that no nearer handler worded: the file or folder, and what to do."""
    if isinstance(exc, OutputFolderGone):
        return (f"the {exc.what} {exc.filename} disappeared (unmounted or deleted): {command} stopped, and wrote "
                "nothing more there")
    return f"{storage_error_text(exc)}: {command} stopped. {storage_advice(exc)}, then run the same command again"


def note_stop_while_closing(signum: int) -> None:
    """A stop signal came while a complete run's envs closed: the command's next run (task, job) is not started."""
    _stops_while_closing.append(signum)


def take_stop_while_closing() -> bool:
    """Whether a stop signal cut an env teardown short since the last call (the record is cleared)."""
    came = bool(_stops_while_closing)
    _stops_while_closing.clear()
    return came
