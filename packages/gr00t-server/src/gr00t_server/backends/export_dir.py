"""The export folder's life cycle: stage beside the old export, swap it in whole, delete only our own files."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from gr00t_client.input_folders import EXPORT_LOCK_NAME
from gr00t_server.backends.common import (
    EXPORT_METADATA,
    WORK_PREFIX,
    BackendError,
    export_files,
    read_export_metadata,
)
from gr00t_server.backends.names import left_as_it_was
from gr00t_server.threads import interrupting_signals, signals_handled_by

logger = logging.getLogger(__name__)

# Hidden work folders inside the export folder: on its filesystem, so every move is a rename (no EXDEV).


def own_files(folder: Path) -> list[str]:
    """Names of the files the export in `folder` wrote (its metadata last), or [] when it holds no export."""
    if not (folder / EXPORT_METADATA).exists():
        return []
    try:
        metadata = read_export_metadata(folder)
    except BackendError as exc:
        raise BackendError(f"{exc}; move it away or delete it to export into {folder}") from exc
    return [*export_files(metadata), EXPORT_METADATA]


def check_collisions(folder: Path, new_names: list[str], own: list[str]) -> None:
    """Refuse to overwrite a file in `folder` that an earlier export did not write (it is the user's)."""
    foreign = sorted(name for name in new_names if name not in own and os.path.lexists(folder / name))
    if foreign:
        raise BackendError(
            f"{folder / foreign[0]} was not written by an earlier export (not listed in its {EXPORT_METADATA}); "
            f"move it away or choose another --output"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


LOCK_NAME = EXPORT_LOCK_NAME


@contextlib.contextmanager
def export_lock(folder: Path, work: str = "export", flag: str = "--output") -> Iterator[None]:
    """Hold `folder`'s export lock (an flock on LOCK_NAME inside it) while the block runs; BackendError at once when
    another export (or TensorRT engine build: `work`, whose folder flag is `flag`) into it holds it. Two exports into
    one folder swapped their files in over each other (the later one with the file list it read at its start,
    leaving the folder blocked for every later export), and one in another container (another pid namespace, where
    the first's pid looks dead) deleted the first's staging folder."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    path = folder / LOCK_NAME
    for _ in range(5):
        handle = open(path, "a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise BackendError(
                f"another {work} into {folder} is running; wait for it to finish, or choose another {flag}"
            ) from None
        try:  # the file is removed when an export ends: a lock on a file already unlinked is no lock
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    else:
        raise BackendError(f"could not take the export lock {path}; is another export starting and ending there?")
    try:
        yield
    finally:
        try:
            os.unlink(path)  # while still held: whoever opened this file before sees it unlinked and tries again
        except OSError:
            pass
        handle.close()  # releases the lock


def remove_stale_work_dirs(folder: Path) -> None:
    """Delete the work folders left in `folder` by exports that were killed (SIGKILL, power loss); call it holding
    export_lock, so every work folder this process did not make is a dead export's (its pid proves nothing: in
    another container, or in this one as PID 1 again, it may be alive). One killed in the middle of its swap first
    has the earlier export it had moved aside put back (_restore_earlier)."""
    stale: list[Path] = []
    by_export: dict[str, dict[str, Path]] = {}  # <pid>-<token> -> {kind: folder}: a killed export's work folders
    for path in sorted(folder.glob(WORK_PREFIX + "*")):
        parts = path.name[len(WORK_PREFIX):].split("-")  # <kind>-<pid>-<token>-<random> (before: no <token>)
        named_as_work_dir = len(parts) in (3, 4) and parts[1].isdigit()
        if named_as_work_dir and path.is_dir() and not path.is_symlink() and not _made_here(path):
            stale.append(path)
            by_export.setdefault("-".join(parts[1:-1]), {})[parts[0]] = path
    for work in by_export.values():
        if (folder / EXPORT_METADATA).exists():
            continue  # the folder holds a whole export: no swap was left half-way
        if "previous" in work and (work["previous"] / EXPORT_METADATA).is_file():
            _restore_earlier(folder, work["previous"], work.get("staging"))
        elif "staging" in work:
            _remove_moved_in(folder, work["staging"])
    for path in stale:
        logger.info("removing %s, left by an interrupted export", path)
        shutil.rmtree(path, ignore_errors=True)


def _restore_earlier(folder: Path, backup: Path, staging: Optional[Path]) -> None:
    """Undo the swap of an export killed half-way: its new files out of `folder` (named by the metadata still in
    its staging folder: the metadata moves last), the earlier export's files back from `backup` (metadata last)."""
    if not (backup / EXPORT_METADATA).is_file():
        return  # killed before the earlier export's metadata moved aside: nothing of it is out of place
    old = set(own_files(backup))
    if staging is not None and (staging / EXPORT_METADATA).is_file():
        for name in export_files(read_export_metadata(staging)):
            if name not in old and os.path.lexists(folder / name):
                os.unlink(folder / name)
    names = sorted((p.name for p in backup.iterdir()), key=lambda name: name == EXPORT_METADATA)
    for name in names:
        os.replace(backup / name, folder / name)
    logger.warning("restored the earlier export in %s from %s: the export that replaced it was killed mid-swap",
                   folder, backup)


def _remove_moved_in(folder: Path, staging: Path) -> None:
    """Undo the swap of a first export (nothing earlier to put back) killed half-way: the files it had moved into
    `folder`, named by the metadata still in its staging folder. They blocked every later export as files "not
    written by an earlier export" until deleted by hand."""
    if not (staging / EXPORT_METADATA).is_file():
        return
    removed = [name for name in export_files(read_export_metadata(staging)) if os.path.lexists(folder / name)]
    for name in removed:
        os.unlink(folder / name)
    if removed:
        logger.warning("removed %s from %s: the export that moved them in was killed mid-swap", ", ".join(removed), folder)


# Names this process's work folders beyond its pid, which a killed export in a container shared (PID 1 in each).
_PROCESS_TOKEN = secrets.token_hex(8)


def _work_dir_tag() -> str:
    return f"{os.getpid()}-{_PROCESS_TOKEN}"


def work_dir_prefix(prefix: str) -> str:
    """`prefix` followed by this process's tag (`<pid>-<token>-`): a mkdtemp prefix that _made_here recognizes."""
    return f"{prefix}{_work_dir_tag()}-"


def _made_here(path: Path) -> bool:
    """Whether `path` is a work folder this process made (and may still be using)."""
    return f"-{_work_dir_tag()}-" in path.name


def make_work_dir(folder: Path, kind: str) -> Path:
    """A fresh hidden folder `.gr00t-export-<kind>-<pid>-<token>-<random>` inside `folder`."""
    return Path(tempfile.mkdtemp(prefix=work_dir_prefix(f"{WORK_PREFIX}{kind}-"), dir=folder))


@contextlib.contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Hold Ctrl-C, SIGTERM and SIGHUP (see interrupting_signals) during a short critical section (the signals that
    came are in the yielded list); a block that fails re-raises its error, one that completes leaves the caller to say
    what the signals found. A SIGHUP (a closed terminal) not held raised in the middle of the swap's end."""
    received: list[int] = []
    stop_signals = (signal.SIGINT, *interrupting_signals())
    with signals_handled_by(lambda signum, frame: received.append(signum), stop_signals):
        yield received


def _disk_error(exc: OSError, folder: Path, own: Optional[list[str]]) -> BackendError:
    where = exc.filename or folder
    if exc.errno == errno.EXDEV:
        return BackendError(f"cannot move files within {folder} ({exc.strerror}); {left_as_it_was(folder, own)}")
    return BackendError(f"{where}: {exc.strerror or exc}; {left_as_it_was(folder, own)}")


def swap_in(folder: Path, staging: Path, own: list[str]) -> None:
    """Replace the earlier export's files (`own`) in `folder` by the staged ones, all or nothing.

    The old files go aside into a backup folder first (metadata first), the new ones come in (metadata last),
    and any failure moves the old ones back; signals wait until the swap is over.
    """
    new_names = sorted(p.name for p in staging.iterdir())
    new_names.sort(key=lambda name: name == EXPORT_METADATA)  # metadata last: it makes the folder an export
    check_collisions(folder, new_names, own)
    backup = make_work_dir(folder, "previous")
    moved_aside: list[str] = []
    moved_in: list[str] = []
    with signals_deferred() as received:
        try:
            for name in sorted(own, key=lambda n: n != EXPORT_METADATA):  # metadata first: no half folder looks whole
                if os.path.lexists(folder / name):
                    os.replace(folder / name, backup / name)
                    moved_aside.append(name)
            for name in new_names:
                os.replace(staging / name, folder / name)
                moved_in.append(name)
        except BaseException as exc:
            _roll_back(folder, staging, backup, moved_in, moved_aside)
            if isinstance(exc, OSError):
                raise _disk_error(exc, folder, own) from exc
            raise
        shutil.rmtree(backup, ignore_errors=True)
    if received:  # the swap was done when the signal could act: the new export is in place, the export finishes
        logger.warning("%s came during the swap, which it waited for: %s holds the new export",
                       signal.Signals(received[0]).name, folder)


def holds_staged_export(folder: Path, staged: Optional[os.stat_result]) -> bool:
    """Whether `folder`'s export metadata is the staged one (`staged`: its stat before swap_in; None: not staged yet):
    the swap's last rename is done, whatever instant a stop came at (one as swap_in returned left a flag unset)."""
    if staged is None:
        return False
    try:
        return os.path.samestat(os.stat(folder / EXPORT_METADATA), staged)
    except OSError:
        return False


def _roll_back(folder: Path, staging: Path, backup: Path, moved_in: list[str], moved_aside: list[str]) -> None:
    """Undo a partial swap: new files back to staging, old files back into `folder` (metadata last)."""
    failed: Optional[str] = None
    for name in reversed(moved_in):
        with contextlib.suppress(OSError):
            os.replace(folder / name, staging / name)
    for name in sorted(moved_aside, key=lambda n: n == EXPORT_METADATA):
        try:
            os.replace(backup / name, folder / name)
        except OSError:
            failed = failed or name
    if failed:
        logger.error("could not restore %s; the earlier export's files are in %s", folder / failed, backup)
    else:
        shutil.rmtree(backup, ignore_errors=True)
