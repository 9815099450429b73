"""`gr00t-server keygen` and `make-test-checkpoint`: write a CURVE key pair or a random-weight checkpoint and exit."""

from __future__ import annotations

import argparse
import errno
import json
import os
from pathlib import Path
from typing import Callable, Optional, Tuple

from gr00t_client.cli_flags import home_expanded_path
from gr00t_client.cli_signals import stop_signals_ignored_until_exit

from .cli_errors import CliError, refuse_blank_paths


def keygen(args: argparse.Namespace) -> int:
    from gr00t_client.cli_flags import broken_link_problem
    from gr00t_client.curve import key_fingerprint, load_public_key

    from .curve import generate_certificates

    if not str(args.directory).strip():  # '' is not the current folder by accident
        raise CliError(f"DIRECTORY must name a folder (use . for the current one), got {args.directory!r}")
    folder = home_expanded_path(str(args.directory))
    problem = broken_link_problem("DIRECTORY", folder)  # mkdir said only "[Errno 17] File exists"
    if problem is not None:
        raise CliError(problem)
    if os.path.exists(folder) and not os.path.isdir(folder):  # it said "[Errno 17] File exists"
        raise CliError(f"DIRECTORY {args.directory} is a file, not a folder: name a folder for the key pair")
    try:
        public_path, secret_path = generate_certificates(args.directory, args.name, overwrite=args.force)
    except OSError as exc:
        if exc.errno is None:  # its own refusal (files exist), already worded
            raise
        raise CliError(_key_storage_problem(exc)) from None  # one traceback at --log-level DEBUG: this line's
    stop_signals_ignored_until_exit()  # the pair is in place: a stop while it is reported must not say "interrupted"
    public_use, secret_use = _key_pair_uses(args.name)
    print(f"Public key:  {public_path}  ({public_use})")
    print(f"Secret key:  {secret_path}  (mode 0600; keep it on this machine, {secret_use})")
    print(f"Fingerprint: {key_fingerprint(load_public_key(str(public_path)))}")
    return 0


SERVER_KEY_NAME = "server"  # keygen's default --name: the server's own pair; any other name is a client's (a robot's)


def _key_pair_uses(name: str) -> Tuple[str, str]:
    """What each half of the pair named `name` is for, by its role: a robot's public key given to clients as the
    server's is the mix-up PolicyClient refuses ("one key pair")."""
    if name == SERVER_KEY_NAME:
        return ("the server's: clients pass it as --server-public-key, or PolicyClient(server_public_key=...)",
                "for serve --curve-secret-key")
    return ("a client's: copy it into the server's --authorized-keys folder",
            "for this client's --client-key, or PolicyClient(client_secret_key=...)")


def _key_storage_problem(exc: OSError) -> str:
    """One line for a key pair that could not be written: the file, what the system said, and what to do (an existing
    pair is replaced only once both new files are written, so a failed write leaves it as it was)."""
    if exc.errno == errno.ENAMETOOLONG:
        advice = "choose a shorter --name (or DIR)"
    elif exc.errno == errno.ENOTDIR:
        blocker = next((parent for parent in reversed(Path(exc.filename or "").parents)
                        if parent.exists() and not parent.is_dir()), None)
        advice = (f"{blocker} is a file, not a folder: move it away, or choose another DIR" if blocker is not None
                  else "a file is in the way of that folder: choose another DIR")
    elif exc.errno == errno.EISDIR:
        advice = "move that folder away, or choose another --name"
    elif exc.errno == errno.EFBIG:
        advice = "raise the file size limit (ulimit -f), then run the same command again"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space (or have the disk quota raised), then run the same command again"
    elif exc.errno == errno.EROFS:
        advice = "remount its file system read-write, or choose another DIR"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        advice = "give this user write access to the folder, or choose another DIR"
    else:
        advice = "check that folder, then run the same command again"
    return f"cannot write {exc.filename}: {exc.strerror or exc}; {advice}"


def make_test_checkpoint(args: argparse.Namespace) -> int:
    from gr00t_client import EmbodimentTag

    from .test_checkpoint import make_test_checkpoint as write_checkpoint

    # a blank one ("$CKPT", CKPT unset) is the current folder to Path(): --overwrite emptied it for the checkpoint
    if not str(args.output).strip():
        raise CliError(f"OUTPUT is empty: an unset variable? Expected the folder to write the checkpoint into (use . "
                       f"for the current one), got {args.output!r}")
    refuse_blank_paths(args, {"dataset_path": "a recorded LeRobot dataset directory (leave the flag out for "
                                              "--embodiment's keys or the default key sets)"})
    # './' or "$PWD" (through a symlink too): typed, so meant as '.'
    if os.path.realpath(home_expanded_path(args.output)) == os.path.realpath(os.getcwd()):
        args.output = "."  # (make_test_checkpoint refuses any other spelling of it, for a Path('') from Python)
    if not 0 <= args.seed < 2**32:  # checked before any file is written; torch keeps only 32 bits of a weight seed
        raise CliError(f"--seed must be a whole number from 0 to 2**32 - 1, got {args.seed}")
    if args.embodiment_tag is not None and not args.embodiment_tag.strip():
        raise CliError("--embodiment-tag must not be empty (leave it out for new_embodiment)")

    if args.embodiment is None and args.dataset_path is None:
        if args.embodiment_tag is not None:  # the default checkpoint's two tags would silently replace it
            raise CliError(f"--embodiment-tag {args.embodiment_tag} needs --embodiment or --dataset-path (the key set "
                           f"to write under that tag), e.g. --embodiment new_embodiment --embodiment-tag "
                           f"{args.embodiment_tag}; without them the checkpoint holds new_embodiment and libero_sim")
        path = _completed_checkpoint(args.output, lambda: write_checkpoint(args.output, size=args.size, seed=args.seed,
                                                                           overwrite=args.overwrite))
        print(f"Wrote {args.size} test checkpoint to {path or args.output}")
        return 0
    tag = (args.embodiment_tag or "new_embodiment").strip()
    try:  # a built-in tag by any spelling ('LIBERO_SIM', 'Libero_Sim') is written as its value, with its projector
        tag = EmbodimentTag.resolve(tag).value
    except ValueError:
        pass  # a tag of the user's own robot stays as written
    path = _completed_checkpoint(args.output, lambda: write_checkpoint(
        args.output, size=args.size, seed=args.seed, embodiment_tags=[tag], embodiment=args.embodiment,
        dataset_path=args.dataset_path, overwrite=args.overwrite))
    source = f"dataset {args.dataset_path}" if args.dataset_path else f"the {args.embodiment} env"
    print(f"Wrote {args.size} test checkpoint to {path} (tag {tag}, keys of {source})")
    return 0


def _completed_checkpoint(output: str, write: Callable[[], Path]) -> Path:
    """`write()` the checkpoint into `output`, then ignore stops: complete, a stop while it is reported must not say
    "interrupted". One that came once this run's marker said complete (as the writer logged it) is ignored as well:
    it ended a whole, usable checkpoint with "interrupted" and 130."""
    from .test_checkpoint import TEST_CHECKPOINT_MARKER

    marker = Path(home_expanded_path(output)) / TEST_CHECKPOINT_MARKER
    earlier = _modified(marker)  # an earlier checkpoint's marker says complete too, until this run replaces it
    try:
        path = write()
    except KeyboardInterrupt:
        if _modified(marker) == earlier or not _says_complete(marker):
            raise
        path = marker.parent
    stop_signals_ignored_until_exit()
    return path


def _modified(path: Path) -> Optional[int]:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _says_complete(marker: Path) -> bool:
    try:
        return json.loads(marker.read_text()).get("complete") is True
    except (OSError, ValueError, AttributeError):
        return False
