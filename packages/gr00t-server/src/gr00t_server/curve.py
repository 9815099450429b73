"""CURVE encryption for the server: key generation, the ROUTER socket's server keys, and ZAP client authorisation.

Certificates are the files `zmq.auth` reads: NAME.key (public key; give it to peers) and NAME.key_secret
(public and secret key, mode 0600; never leaves its machine). An authorized-keys directory holds the clients'
NAME.key files, one key each; it is re-read when its contents change, so adding or removing a client needs no restart
(a removed client's open connection is refused within about a second: AuthorizedKeys.watch).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import secrets
import stat as stat_mode
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, Optional, Tuple, Union

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from gr00t_client.cli_flags import HomeFolderUnknownError, home_expanded_path
from gr00t_client.cli_signals import stop_signals_held
from gr00t_client.curve import (ZAP_CANNOT_CHECK, KeySource, _is_z85_key, _unwrapped, key_fingerprint,
                                load_key_pair)

logger = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
# One directory entry as the authorized keys last saw it: its name, and the stat of a NAME.key file (mtime, size,
# ctime, inode: chmod and chown change only the ctime), why a NAME.key entry is not read (a dangling link, a FIFO), or
# None for an entry read as a mistake (see _current_signature).
_Entry = Tuple[str, Union[None, str, Tuple[int, int, int, int]]]
# How often a thread of its own reads the authorized-keys folder again for the open connections (a key removed is
# refused at its robot's next request after that); the socket thread never reads it for an allowed key.
RECHECK_S = 1.0
# How long open connections keep the keys of the last read while the folder cannot be read (a non-atomic swap, a mount
# blip), and new handshakes too while it is there but its read fails (out of descriptors, an I/O error): past it, a
# folder that still cannot be read refuses every robot, connected or not.
UNREADABLE_GRACE_S = 5.0
# The ZAP status of a handshake refused because the authorized keys could not be read (the client tells it apart):
# pyzmq's 400 says the key is not allowed, which the robot's client turns into "add its .key file"; a 300 (temporary)
# is not sent to the client at all (libzmq drops the connection without a word, as the CURVE RFC asks).
_ZAP_CANNOT_CHECK = str(ZAP_CANNOT_CHECK).encode("ascii")
# A zmq.auth key file is about 300 bytes; a bigger NAME.key is not one, and is not read whole into the ZAP thread.
MAX_KEY_FILE_BYTES = 64 * 1024
_BANNER = """#   ****  Generated on {now} by gr00t-server keygen  ****
#   ZeroMQ CURVE {kind} Certificate
#   {advice}

"""


def _write_certificate(path: Path, public_key: bytes, secret_key: Optional[bytes], named: Path) -> None:
    """Write one zmq.auth certificate file; a secret one is created with mode 0600 from the start (no readable window).
    `named`: the file an error names (the certificate a temporary `path` is written for)."""
    kind, advice = ("**Secret**", "DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.") if secret_key \
        else ("Public", "Exchange securely, or use a secure mechanism to verify the contents of this file after exchange.")
    text = _BANNER.format(now=datetime.datetime.now().isoformat(timespec="seconds"), kind=kind, advice=advice)
    text += "metadata\ncurve\n"
    text += f'    public-key = "{public_key.decode("ascii")}"\n'
    if secret_key:
        text += f'    secret-key = "{secret_key.decode("ascii")}"\n'
    mode = 0o600 if secret_key else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may only have narrowed it; make it exactly this
            data = text.encode("ascii")
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)  # on disk before it is renamed over a working key file
        finally:
            os.close(fd)
    except BaseException as exc:  # a full disk: no empty key file left, which a retry would refuse as existing
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(named)) from exc  # the key file, not its temporary
        raise


def _rename_into_place(temporary: Path, path: Path, note: str = "") -> None:
    """os.replace, whose error names `path` (not the hidden temporary) and adds `note` (what the folder holds now)."""
    try:
        os.replace(temporary, path)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror or exc}{note}", str(path)) from exc


def generate_certificates(directory: Union[str, os.PathLike], name: str = "server", overwrite: bool = False) -> Tuple[Path, Path]:
    """Write a new CURVE key pair as DIR/NAME.key and DIR/NAME.key_secret (0600); returns (public, secret) paths.

    Refuses to replace existing files unless `overwrite`: a replaced server key locks every client out. A failed write
    (a full disk) leaves existing files as they were.
    """
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"key name must be a plain file name without '{os.sep}' or a leading dot, got {name!r}")
    directory = Path(home_expanded_path(directory))  # a quoted '~/keys' (an exec-form CMD's) no shell expanded
    _make_key_folder(directory)
    public_path, secret_path = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    # Two keygens of one NAME at once each renamed its own pair in, interleaved: NAME.key of one beside the other's
    # NAME.key_secret, both exit 0, and every client handed NAME.key was refused. The second now waits for the first,
    # then finds its pair (refused without --force, replaced whole with it). The folder itself is locked: no lock
    # file is left among the keys.
    with _folder_lock(directory):
        return _generate_locked(directory, public_path, secret_path, overwrite)


def _make_key_folder(directory: Path) -> None:
    """Create `directory` and its missing parents with mode 0700, whatever the umask (as ssh-keygen makes ~/.ssh):
    under umask 000 they were 0777, and any local user could swap a pair of their own in. An existing folder is left as
    it is, with a warning when others may write to it."""
    missing: List[Path] = []
    folder = directory
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:  # made meanwhile (another keygen): not ours to change
            continue
        os.chmod(folder, 0o700)  # the umask may only have narrowed it (0o500 could not be written into)
    if not missing:
        directory.mkdir(exist_ok=True)  # FileExistsError for a file or a dangling link there, as before
        mode = stat_mode.S_IMODE(directory.stat().st_mode)
        if mode & 0o022:
            logger.warning("keygen: %s is writable by %s (mode %o): they can replace the key files in it; "
                           "chmod go-w it, or keep keys in a folder only you may write", directory,
                           "all users" if mode & 0o002 else "its group", mode)


@contextlib.contextmanager
def _folder_lock(directory: Path) -> Iterator[None]:
    """An exclusive flock on `directory` while held; none where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:  # a folder this user may write but not list (mode 0333): written as before, unlocked
        logger.debug("keygen: %s cannot be opened to lock it (%s); writing without the lock", directory, exc)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # a file system without locks (NFS without lockd, some FUSE/SMB mounts)
            logger.warning("keygen: %s cannot be locked (%s); two keygens into it at once could mix their pairs",
                           directory, exc.strerror or exc)
        yield
    finally:
        os.close(fd)  # releases the lock


def _generate_locked(directory: Path, public_path: Path, secret_path: Path, overwrite: bool) -> Tuple[Path, Path]:
    """generate_certificates, under its lock."""
    existing = [str(p) for p in (public_path, secret_path) if os.path.lexists(p)]  # a dangling link too
    if existing and not overwrite:
        dangling = [p for p in existing if not os.path.exists(p)]
        what = f" ({', '.join(dangling)}: a symbolic link to nothing)" if dangling else ""
        raise FileExistsError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}{what}; choose "
                              "another --name or pass --force to replace it")
    for path in existing:
        if os.path.isdir(path) and not os.path.islink(path):  # checked first: os.replace would fail between the two
            raise IsADirectoryError(errno.EISDIR, "it is a folder, not a key file", path)
    public, secret = zmq.curve_keypair()
    # Both files are written to hidden temporaries in the same folder, then renamed over their names; nothing is
    # deleted before: a failed write (a full disk) leaves an existing pair as it was, and no temporary. The secret is
    # renamed first: should the public rename fail after it, NAME.key_secret is the new certificate, which holds the new
    # public key too, beside a stale NAME.key; the other order would leave a new NAME.key to be handed out to clients
    # with the only secret that matches it deleted.
    stem = f".keygen-{secrets.token_hex(6)}"  # short: a NAME that fits its file names fits these
    public_temp, secret_temp = directory / f"{stem}{PUBLIC_SUFFIX}.tmp", directory / f"{stem}{SECRET_SUFFIX}.tmp"
    renamed = False
    try:
        _write_certificate(public_temp, public, None, named=public_path)
        _write_certificate(secret_temp, public, secret, named=secret_path)
        # A stop between the renames left the new secret beside the old public key (or alone, blocking a rerun)
        with stop_signals_held():  # Ctrl-C, SIGTERM or SIGHUP acts once both are renamed
            _rename_into_place(secret_temp, secret_path)
            _rename_into_place(public_temp, public_path,
                               note=f" (the new {secret_path} is in place and holds the new public key too; run keygen "
                                    "--force again for a pair)")
            renamed = True
    except BaseException as exc:  # a pair or nothing: a public key whose secret was never written would be handed out
        for temporary in (public_temp, secret_temp):
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
        if renamed and isinstance(exc, KeyboardInterrupt):  # what the command's "interrupted" line says is there
            exc.outcome = f"the new key pair {public_path} and {secret_path} is in place"  # type: ignore[attr-defined]
        raise
    return public_path, secret_path


@dataclass(frozen=True)
class CurveServerConfig:
    """The server's CURVE key pair and, optionally, the directory of client public keys allowed to connect."""

    public_key: bytes
    secret_key: bytes
    authorized_keys: Optional[Path] = None

    @classmethod
    def load(cls, secret_key: KeySource, authorized_keys: Optional[Union[str, os.PathLike]] = None, *,
             names: Tuple[str, str] = ("curve_secret_key", "authorized_keys")) -> "CurveServerConfig":
        """From a secret certificate (NAME.key_secret) or z85 secret key, and an authorized-keys directory. `names`:
        what errors call the two (a command line passes its flags)."""
        if not zmq.has("curve"):  # pragma: no cover - the pyzmq wheels have CURVE
            raise RuntimeError("this libzmq was built without CURVE support (zmq.has('curve') is False)")
        public, secret = load_key_pair(secret_key, names[0])
        directory = None
        if authorized_keys is not None:
            # A CRLF env file's '\r' or the quotes an env file keeps, as for keys: no folder name has them at its ends
            folder = _unwrapped(os.fspath(authorized_keys))
            if not folder:  # Path("") is ".": any *.key in the working directory
                raise ValueError(f"{names[1]} is empty; pass the directory of client .key files (or None, to admit "
                                 "any client that has the server's public key)")
            if not isinstance(authorized_keys, str) and os.fspath(authorized_keys) == ".":
                # Path(os.environ.get(VAR, "")) with VAR unset is Path('.'): the empty value, no longer told apart
                raise ValueError(f"{names[1]} is Path('.'), which is what Path('') becomes; pass the directory of "
                                 "client .key files (write the str '.' or an absolute folder if the working directory "
                                 "is meant, or None to admit any client that has the server's public key)")
            try:
                directory = Path(home_expanded_path(folder))  # --flag=~/x, $GR00T_AUTHORIZED_KEYS
            except HomeFolderUnknownError as exc:  # the path alone named no flag or variable
                raise HomeFolderUnknownError(f"{names[1]}: {exc}") from None
            if not directory.is_dir():  # repr: a control character in the name is shown, not sent to the terminal
                raise NotADirectoryError(f"{names[1]}: {str(directory)!r} is not a directory of client .key files")
        return cls(public, secret, directory)

    @property
    def fingerprint(self) -> str:
        """SHA256 fingerprint of the server's public key, as the ready banner prints it."""
        return key_fingerprint(self.public_key)

    def __repr__(self) -> str:  # never print the secret key
        return f"CurveServerConfig(public={self.fingerprint}, authorized_keys={self.authorized_keys})"


def _listing(directory: Path) -> List[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


def _read_client_key(path: Path) -> Tuple[Optional[bytes], Optional[bytes]]:
    """(public, secret) z85 keys of one authorized NAME.key file, or (None, None) with a warning naming the file when
    it cannot be read or holds no valid public key."""
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except PermissionError as exc:
        logger.warning("authorized keys: skipping %s: this server cannot read it (%s); it is read again at the next "
                       "handshake after a chmod or chown", path, exc)
        return None, None
    except Exception as exc:  # noqa: BLE001 - any bad file (zmq.auth raises IndexError too) is skipped alone
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE, errno.EIO):
            raise  # this read failed, not the file: reload_if_changed keeps the keys read last
        logger.warning("authorized keys: skipping %s, not a zmq.auth certificate (%s: %s)", path, type(exc).__name__, exc)
        return None, None
    if not _is_z85_key(public):
        logger.warning("authorized keys: skipping %s: it holds no valid 40-character z85 public-key (a key cut short, "
                       "or text after the closing quote on its line?); copy the robot's NAME.key file again", path)
        return None, None
    count = _public_key_lines(path)
    if count > 1:  # `cat a.key b.key > fleet.key`, as for ssh's authorized_keys: zmq.auth reads one of them
        logger.warning("authorized keys: %s holds %d public keys, and only one of them (%s) is admitted: a .key file "
                       "holds one client's key; put each client's key in a file of its own", path, count,
                       key_fingerprint(public))
    return public, secret


def _is_gone(exc: OSError) -> bool:
    """Whether a failed read of the keys folder means it is not there (deleted, moved away, its mount gone), rather than
    that this read failed (EMFILE or ENFILE: the server is out of descriptors; EIO; EACCES), which is no news of the
    keys: the keys read last stay allowed for UNREADABLE_GRACE_S."""
    return exc.errno in (errno.ENOENT, errno.ENOTDIR)


def _folder_stamp(directory: Path) -> Tuple[int, int, int, int]:
    """(device, inode, mtime, ctime) of a folder: adding, removing or renaming an entry changes its mtime. A stat
    needs no file descriptor."""
    found = os.stat(directory)
    return (found.st_dev, found.st_ino, found.st_mtime_ns, found.st_ctime_ns)


def _is_folder(path: Path) -> bool:
    """Whether `path` is a folder (or a link to one); False for anything that cannot be examined (Path.is_dir raised
    for a link into a folder this server may not enter, or a name too long: every read of the keys then failed)."""
    try:
        return stat_mode.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _public_key_lines(path: Path) -> int:
    """How many public-key lines a key file holds, counted as zmq.auth finds them (0 when it cannot be read again)."""
    try:
        with open(path, "rb") as file:
            return sum(1 for line in file if line.strip().startswith(b"public-key"))
    except OSError:
        return 0


class AuthorizedKeys:
    """ZAP credentials provider: allows the client public keys in a directory of NAME.key files.

    The directory is re-read at the next handshake after any file in it is added, removed or changed (its contents,
    mode or owner).
    """

    def __init__(self, directory: Union[str, os.PathLike]) -> None:
        from .serving.endpoints import RateLimitedLog  # here: the serving package imports this module

        self.directory = Path(directory)
        self._refusals = RateLimitedLog(logger)  # a peer retrying a refused key must not flood the log
        self._lock = threading.Lock()
        self._signature: Optional[Tuple[_Entry, ...]] = None
        self._keys: FrozenSet[bytes] = frozenset()
        self._skipped: Tuple[str, ...] = ()  # NAME.key files that could not be used at the last read
        self._unreadable: Optional[str] = None  # why the directory could not be listed at the last read
        # The keys the open connections are held to: those of the last read of a readable folder (a folder swapped
        # non-atomically or an NFS blip refuses new handshakes, not the robots already connected)
        self._open_keys: FrozenSet[bytes] = frozenset()
        self.peer_address: Optional[str] = None  # of the handshake being checked (_AddressingAuthenticator sets it)
        # Whether the last handshake refused was refused because the folder cannot be read (ZAP_CANNOT_CHECK)
        self.refused_unchecked = False
        self._unreadable_since: Optional[float] = None  # since when the folder could not be read (UNREADABLE_GRACE_S)
        # The folder's _folder_stamp and entries at its last listing (_entries)
        self._listed: Optional[Tuple[Tuple[int, int, int, int], Tuple[Path, ...]]] = None
        # The file each key was read from, at this read and the one before: a refused key's own file is read again
        # (one file, not the folder) before its robot is refused, in case the watcher caught it half-written
        self._key_files: Dict[bytes, str] = {}
        self._read_key_files: Dict[bytes, str] = {}  # the last read's alone
        self.reload_if_changed()
        self._watching = threading.Event()  # set: the watcher stops
        self._wake = threading.Event()  # set: the watcher reads the folder now
        self._watcher: Optional[threading.Thread] = None

    def watch(self) -> None:
        """Re-read the folder every RECHECK_S on a thread of its own, so that a key removed while its robot stays
        connected is refused at that robot's next request (removed_key_problem), without the socket thread ever
        reading the folder for an allowed key. stop_watching() ends it."""
        if self._watcher is not None:
            return

        def run() -> None:
            while True:
                self._wake.wait(RECHECK_S)
                if self._watching.is_set():
                    return
                self._wake.clear()
                try:
                    self.reload_if_changed()
                except Exception:  # noqa: BLE001 - the keys read last stay in force; the watcher goes on
                    logger.exception("authorized keys: reading %s again failed; the keys read before are used",
                                     self.directory)

        self._watcher = threading.Thread(target=run, name="gr00t-authorized-keys", daemon=True)
        self._watcher.start()

    def stop_watching(self) -> None:
        self._watching.set()
        self._wake.set()
        if self._watcher is not None:
            self._watcher.join(5)
            self._watcher = None

    @property
    def keys(self) -> FrozenSet[bytes]:
        """The z85 public keys allowed now."""
        return self._keys

    def _current_signature(self) -> Tuple[_Entry, ...]:
        """(name, stat) of each NAME.key file, (name, why) of a NAME.key entry not to be opened (a dangling link, a
        FIFO or device, which would block this thread in open(), an oversized file), and (name, None) of each entry
        read as a mistake (a secret certificate, a subfolder): adding one is told at the next handshake, as adding a
        key is. Hidden entries are
        skipped, as zmq.auth skips them: a Kubernetes Secret volume keeps its files in `..data` and `..2026_...`
        and links each NAME.key to them, so a key rotated by swapping `..data` shows as its NAME.key changing."""
        entries = self._entries()  # an OSError: reload_if_changed takes the folder as unreadable
        if entries and not os.access(self.directory, os.X_OK):  # listed but not entered (chmod -R 644): every key
            # file's stat fails, which read as removed; the folder is unreadable, not empty
            raise PermissionError(errno.EACCES, "it can be listed but not entered (no x permission)",
                                  str(self.directory))
        signature: List[_Entry] = []
        for path in entries:
            if path.name.startswith("."):
                continue
            if path.name.endswith(SECRET_SUFFIX) or (not path.name.endswith(PUBLIC_SUFFIX) and _is_folder(path)):
                signature.append((path.name, None))
                continue
            if not path.name.endswith(PUBLIC_SUFFIX):
                continue
            try:
                stat = path.stat()  # a link to a regular file is read as that file
            except OSError as exc:
                if exc.errno == errno.ENOENT and not os.path.lexists(path):  # removed between listing and stat
                    continue
                if not path.is_symlink():
                    why = f"it cannot be examined ({exc})"
                elif exc.errno == errno.ENOENT:
                    why = f"a symbolic link to {os.readlink(path)}, which does not exist"
                else:  # a link loop (ELOOP), a target in a folder this server may not enter (EACCES)
                    why = f"a symbolic link to {os.readlink(path)} that cannot be followed ({exc.strerror})"
                signature.append((path.name, why))
                continue
            if not stat_mode.S_ISREG(stat.st_mode):  # a FIFO or a device would block the ZAP thread in open()
                signature.append((path.name, "it is not a regular file (a folder, FIFO, socket or device)"))
            elif stat.st_size > MAX_KEY_FILE_BYTES:
                signature.append((path.name, f"it holds {stat.st_size} bytes; a key file holds well under 1 KB"))
            else:
                signature.append((path.name, (stat.st_mtime_ns, stat.st_size, stat.st_ctime_ns, stat.st_ino)))
        if self._unreadable is not None:  # only once the whole folder was read
            logger.info("authorized keys: %s is readable again", self.directory)
            self._unreadable = None
        self._unreadable_since = None
        return tuple(signature)

    def _entries(self) -> List[Path]:
        """The folder's entries, sorted. Out of descriptors (EMFILE, ENFILE: listing needs one, a stat does not), those
        of the last listing while the folder's own stat says no entry was added, removed or renamed since: at the
        open-file limit every watcher's listing failed, and each connected robot was refused once the grace ran out."""
        stamp = _folder_stamp(self.directory)  # before the listing: a change while it runs differs at the next read
        try:
            entries = sorted(self.directory.iterdir())
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE) and self._listed is not None and self._listed[0] == stamp:
                return list(self._listed[1])
            raise
        self._listed = (stamp, tuple(entries))
        return entries

    def _read_signature(self) -> Optional[Tuple[_Entry, ...]]:
        """_current_signature, with the folder marked unreadable when any part of reading it fails: () when it is gone
        (the keys read last then hold open connections for UNREADABLE_GRACE_S, and new handshakes are refused naming
        the folder), None when only this read failed (out of descriptors: the keys read last stay, new handshakes'
        too, for UNREADABLE_GRACE_S)."""
        try:
            return self._current_signature()
        except OSError as exc:
            self._mark_unreadable(exc)
            return () if _is_gone(exc) else None

    def _mark_unreadable(self, exc: OSError) -> None:
        """Record that the folder cannot be read, and since when (the grace counts from the first failed read)."""
        if str(exc) != self._unreadable:  # told when it changes, not at each handshake: any peer can make those
            admitted = ("no new client is admitted until it is readable" if _is_gone(exc) else
                        "the keys read last are used meanwhile")
            logger.warning("authorized keys: cannot read %s (%s); %s, and every client is refused after %.0f s",
                           self.directory, exc, admitted, UNREADABLE_GRACE_S)
        self._unreadable = str(exc)
        if self._unreadable_since is None:
            self._unreadable_since = time.monotonic()

    def _unreadable_too_long(self) -> bool:
        """Whether the folder has been unreadable for over UNREADABLE_GRACE_S: the keys read last no longer hold."""
        since = self._unreadable_since
        return since is not None and time.monotonic() - since > UNREADABLE_GRACE_S

    def _warn_of_mistakes(self, signature: Tuple[_Entry, ...], secrets: List[str]) -> None:
        """Files a server should not hold, and keys it does not read, named: a silent folder hid both."""
        for name in secrets:
            logger.warning("authorized keys: %s holds a secret key; only its public key is used. Give servers the "
                           "public NAME.key file and keep the secret on the robot (and replace this key pair: its secret "
                           "has been copied)", self.directory / name)
        for name, stamp in signature:
            path = self.directory / name
            if isinstance(stamp, str):
                logger.warning("authorized keys: skipping %s: %s; it is read again when it changes", path, stamp)
            if stamp is not None:
                continue
            if name.endswith(SECRET_SUFFIX):
                logger.warning("authorized keys: %s is ignored: servers read client public keys (NAME.key); a "
                               "NAME.key_secret file belongs on its robot", path)
            elif any(p.name.endswith(PUBLIC_SUFFIX) for p in _listing(path)):
                logger.warning("authorized keys: %s is ignored: only the .key files directly in %s are read, not "
                               "those in subfolders", path, self.directory)

    def reload_if_changed(self) -> bool:
        """Re-read the directory when its files changed since the last read; True when it was re-read."""
        with self._lock:
            was_unreadable = self._unreadable is not None
            signature = self._read_signature()
            if signature is None:  # this read failed, not the folder: the keys read last stay
                return False
            # An unreadable folder's signature is (), as an empty one's: a folder re-created empty (or a bare mount
            # point) after it could not be read is read, so that the connected robots' keys are replaced too
            if signature == self._signature and not (was_unreadable and self._unreadable is None):
                return False
            keys: Dict[bytes, str] = {}
            secrets: List[str] = []
            skipped: List[str] = []
            for name, stamp in signature:
                if isinstance(stamp, str):
                    skipped.append(name)
                if not isinstance(stamp, tuple):
                    continue
                try:
                    public, secret = _read_client_key(self.directory / name)
                except OSError as exc:  # out of descriptors: as a failed listing, the keys read last stay
                    self._mark_unreadable(exc)
                    return False
                if public is None:
                    skipped.append(name)
                    continue
                keys[public] = name
                if secret:
                    secrets.append(name)
            self._keys = frozenset(keys)
            if self._unreadable is None:  # listed: what open connections are held to too
                self._open_keys = self._keys
                self._key_files = {**self._read_key_files, **keys}  # this read's, and the one's before
                self._read_key_files = dict(keys)
            self._skipped = tuple(skipped)
            first = self._signature is None
            self._signature = signature
        self._warn_of_mistakes(signature, secrets)
        if not keys and self._unreadable is None:  # an unreadable folder was told as such (_read_signature)
            usable = " usable" if skipped else ""
            logger.warning("authorized keys: %s holds no%s client .key files; every CURVE client is refused",
                           self.directory, usable)
        elif not first:
            logger.info("authorized keys: reloaded %s: %d client key(s)", self.directory, len(keys))
        return True

    def _skipped_note(self) -> str:
        """What a refusal adds when some NAME.key files were present but could not be used: the client's may be one."""
        if not self._skipped:
            return ""
        return (f" (present there but unreadable or malformed, so not used: {', '.join(self._skipped)}; see the "
                "warning that names each)")

    def removed_key_problem(self, client_key: Optional[str]) -> Optional[str]:
        """Why a request on an open connection is refused: its key (the connection's ZAP User-Id, z85) was removed from
        the folder since the handshake; None while it is allowed. Socket thread: it never reads the folder (the watcher
        thread does); an allowed key costs a set lookup, a refused one a read of its own file (a file rewritten in
        place, caught half-written by the watcher, is whole again: the robot is served and the watcher woken). Open
        connections keep the last read's keys while the folder cannot be read, for UNREADABLE_GRACE_S."""
        if client_key is None:  # no ZAP User-Id (not a CURVE connection): nothing to check against
            return None
        key = client_key.encode("ascii", "replace")
        unreadable_too_long = self._unreadable_too_long()
        if key in self._open_keys and not unreadable_too_long:
            return None
        if not unreadable_too_long and self._file_holds_key(self._key_files.get(key), key):
            self._wake.set()
            return None
        fingerprint = key_fingerprint(key) if _is_z85_key(key) else repr(client_key)
        if unreadable_too_long:
            self._refusals.warning("refused a request from CURVE client %s on its open connection: %s cannot be read "
                                   "(%s) for %.0f s", fingerprint, self.directory, self._unreadable,
                                   UNREADABLE_GRACE_S)
            return (f"Unauthorized: the server cannot read its authorized keys folder (for over "
                    f"{UNREADABLE_GRACE_S:.0f} s), so this client's CURVE key {fingerprint} is refused until it can")
        self._refusals.warning("refused a request from CURVE client %s on its open connection: its key was removed "
                               "from %s since it connected%s", fingerprint, self.directory, self._skipped_note())
        return (f"Unauthorized: this client's CURVE key {fingerprint} was removed from the server's authorized keys; "
                "its requests are refused until the server's admin adds its .key file back")

    def _file_holds_key(self, name: Optional[str], key: bytes) -> bool:
        """Whether the file `key` was last read from holds it now (read quietly: a refusal's check, not a load)."""
        if name is None:
            return False
        path = self.directory / name
        try:
            found = path.stat()
            if not stat_mode.S_ISREG(found.st_mode) or found.st_size > MAX_KEY_FILE_BYTES:
                return False
            public, _ = zmq.auth.load_certificate(str(path))
        except Exception:  # noqa: BLE001 - gone, unreadable or still half-written: refused
            return False
        return public == key

    def callback(self, domain: str, client_key: bytes) -> bool:
        """pyzmq's credentials-provider hook: is this z85 client key allowed? (runs in the authenticator thread,
        which must never die: every later handshake would stall, authorized clients' too)"""
        try:
            self.reload_if_changed()
            allowed = client_key in self._keys and not self._unreadable_too_long()
            # the address finds the machine (a throwaway key's fingerprint names none); one kind per address, so a
            # known robot whose key was removed is not hidden in a scanner's flood
            peer, address = self.peer_address, f" at {self.peer_address}" if self.peer_address else ""
            self.refused_unchecked = not allowed and self._unreadable is not None
            if self.refused_unchecked:
                self._refusals.warning("refused a CURVE client%s with key %s: %s cannot be read (%s)", address,
                                       key_fingerprint(client_key), self.directory, self._unreadable, kind=peer)
            elif not allowed:
                self._refusals.warning("refused a CURVE client%s with key %s: not in %s%s", address,
                                       key_fingerprint(client_key), self.directory, self._skipped_note(), kind=peer)
            return allowed
        except Exception:  # noqa: BLE001 - refuse this handshake, keep checking the next ones
            logger.exception("authorized keys: checking a client key failed; the client is refused")
            self.refused_unchecked = True
            return False


class _AddressingAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, telling `authorized` the peer address of the handshake it checks: pyzmq's
    credentials-provider hook gets only the domain and the key."""

    def __init__(self, context: zmq.Context, authorized: AuthorizedKeys) -> None:
        super().__init__(context, log=logging.getLogger(__name__ + ".zap"))
        self._authorized = authorized

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        # pyzmq answers every refusal 400 (the key is not allowed): a key that could not be checked is answered
        # _ZAP_CANNOT_CHECK, so that its robot is not told to add a key the server may hold
        if status_code == b"400" and self._authorized.refused_unchecked:
            status_code, status_text = _ZAP_CANNOT_CHECK, b"the authorized keys cannot be read"
        super()._send_zap_reply(request_id, status_code, status_text, user_id)

    async def handle_zap_message(self, msg: List[bytes]) -> None:
        # A ZAP request (RFC 27): version, request id, domain, address, identity, mechanism, credentials. The thread
        # awaits one request at a time, and the key check does not await: the address is this request's.
        self._authorized.peer_address = msg[3].decode("utf-8", "replace") if len(msg) >= 6 else None
        self._authorized.refused_unchecked = False
        try:
            await super().handle_zap_message(msg)
        finally:
            self._authorized.peer_address = None


class ServerCurve:
    """CURVE on one ROUTER socket, plus the ZAP authenticator thread when client keys are checked.

    Create it after the context and before bind; stop() it before the context is terminated.
    """

    def __init__(self, config: CurveServerConfig, context: zmq.Context, sock: zmq.Socket) -> None:
        self.config = config
        self.authorized: Optional[AuthorizedKeys] = None
        self._authenticator: Optional[ThreadAuthenticator] = None
        if config.authorized_keys is not None:
            self.authorized = AuthorizedKeys(config.authorized_keys)
            self._authenticator = _AddressingAuthenticator(context, self.authorized)
            self._authenticator.start()
            self._authenticator.configure_curve_callback(domain="*", credentials_provider=self.authorized)
            self.authorized.watch()
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, config.secret_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, config.public_key)

    def banner(self) -> str:
        """What the ready line adds: encryption on, the key fingerprint, and who may connect."""
        who = (f"clients in {self.config.authorized_keys}" if self.authorized is not None
               else "any client with the server's public key")
        return f"CURVE encryption on, server key {self.config.fingerprint}, {who}"

    def stop(self) -> None:
        """Stop the ZAP thread (idempotent); the context cannot terminate while it runs."""
        if self.authorized is not None:
            self.authorized.stop_watching()
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
