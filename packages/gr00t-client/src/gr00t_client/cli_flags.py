"""For the command lines of gr00t-server and gr00t-eval: the spellings of a flag, and a parser that refuses
abbreviated flags and whose refusal of an unknown argument names the sub-command it was given to."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union


WORKING_FOLDER_GONE = ("the current working directory no longer exists (deleted while this shell was in it); cd to an "
                       "existing folder")
_ANSWERED_ANYWHERE = frozenset({"-h", "--help", "--version"})  # what a command line answers without a folder


def refuse_gone_working_folder(program: str, argv: Optional[Sequence[str]] = None) -> bool:
    """Whether this process's working folder no longer exists, said in one line on stderr ('PROGRAM: error: ...'):
    checked once, first thing in a command line's main (`argv`: its arguments, sys.argv[1:] when None; --help and
    --version are answered anyway). Every relative path failed then with a bare '[Errno 2] No such file or
    directory', and importing torch aborted the process inside oneMKL, as a broken install would."""
    try:
        os.getcwd()
    except FileNotFoundError:
        args = list(sys.argv[1:] if argv is None else argv)
        options = args[:args.index("--")] if "--" in args else args  # after '--', '--help' is a file's name
        if _ANSWERED_ANYWHERE.intersection(options):
            return False
        print(f"{program}: error: {WORKING_FOLDER_GONE}", file=sys.stderr)
        return True
    return False


def flag(name: str) -> List[str]:
    """Both spellings the reference's scripts accept for a flag, --kebab-case first, then --snake_case (one when the
    name has neither '-' nor '_'); `name` may be given in either."""
    kebab = "--" + name.replace("_", "-")
    snake = "--" + name.replace("-", "_")
    return [kebab] if kebab == snake else [kebab, snake]


def user_path(value: str) -> str:
    """A path flag's value with a leading '~' (or '~user') made that home folder: the shell leaves it for the program
    in `--flag=~/x`, a quoted '~/x' or an exec-form Docker CMD. './~/x' stays a folder named '~'. The argparse type
    of every path flag of gr00t-server and gr00t-eval; a '~' with no home folder to stand for is refused (exit 2)."""
    try:
        return home_expanded_path(value)
    except HomeFolderUnknownError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class HomeFolderUnknownError(ValueError):
    """A path's leading '~' stands for no folder: $HOME is unset and this user has no passwd entry."""


def home_expanded_path(path: Union[str, "os.PathLike[str]"]) -> str:
    """`path` with a leading '~' (or '~user') made that home folder, as os.path.expanduser does; a bare '~' (alone or
    before a '/') with $HOME unset and no passwd entry for this user raises HomeFolderUnknownError: expanduser kept it
    as a folder named '~' in the working folder, and pathlib's raised a bare RuntimeError."""
    text = os.fspath(path)
    expanded = os.path.expanduser(text)
    if expanded == text and (text == "~" or text.startswith(("~/", "~" + os.sep))):
        uid = os.getuid() if hasattr(os, "getuid") else None
        who = "this user" if uid is None else f"uid {uid}"
        raise HomeFolderUnknownError(f"cannot expand '~' in {text!r}: $HOME is unset and {who} has no passwd entry; "
                                     "set HOME or give an absolute path")
    return expanded


def ascii_digits(text: str) -> bool:
    """Whether `text` is written in the digits 0-9 only (str.isdigit() also takes '²' and '٥', which int() fails on
    or reads as other numbers)."""
    return text.isascii() and text.isdigit()


def port_number(flag_name: str) -> Callable[[str], int]:
    """The argparse type of a port flag named `flag_name` (--port, --policy-client-port, --metrics-port): ASCII digits
    only, as in a HOST:PORT entry or a job file. int() took Arabic-Indic digits ('٥٥٥٦' served port 5556) and refused a
    superscript with argparse's bare "invalid int value". Each command checks the number's range itself."""

    def parse(value: str) -> int:
        digits = value.strip()
        if not ascii_digits(digits):
            raise argparse.ArgumentTypeError(f"{flag_name} must be a port number written in the digits 0-9 (such as "
                                             f"5555), got {value!r}")
        return int(digits)

    parse.__name__ = "port number"  # argparse names the type so in its own refusals
    return parse


def subcommand_parsers(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    """The sub-command parsers of `parser` by name ({} when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def blank_value_problem(flag_name: str, variable: str, value: Optional[str], without: str) -> Optional[str]:
    """Why a flag given blank (`--flag "$VAR"` with VAR unset, or VARIABLE= in a container's environment) is refused,
    or None when it was left out or has a value: blank must not quietly mean something else (no token, no key, no
    encryption, the working directory). `without` says what leaving it out does."""
    if value is None or value.strip():
        return None
    return f"{flag_name} (or ${variable}) is empty: an unset variable? Leave it out (and unset {variable}) to {without}"


_EDGE_CHARACTERS = {"\n": "a newline", "\r": "a carriage return"}


def token_shape(api_token: str) -> Optional[str]:
    """What makes an API token none a client would type ('ends with a newline', 'holds a control character (U+0007)'),
    or None: gr00t-server refuses such a token at start-up, so no server accepts it. Never holds the token."""
    import unicodedata

    if api_token[-1:].isspace() or api_token[:1].isspace():
        end, character = ("ends", api_token[-1]) if api_token[-1].isspace() else ("starts", api_token[0])
        return f"{end} with {_EDGE_CHARACTERS.get(character, 'whitespace')}"
    control = next((character for character in api_token if unicodedata.category(character) == "Cc"), None)
    return None if control is None else f"holds a control character (U+{ord(control):04X})"


def secret_on_command_line_warning(flag_name: str, variable: str, value: Optional[str]) -> Optional[str]:
    """The warning for a z85 secret key given as `flag_name` on the command line, where every user of the machine can
    read it (ps, /proc/PID/cmdline) while the program runs; None for a file's path or the value of $`variable`."""
    from .curve import is_z85_key

    if value is None or value == os.environ.get(variable) or not is_z85_key(value):
        return None
    if os.path.isfile(os.path.expanduser(value.strip())):  # a file's name that happens to look like a key: read first
        return None
    return (f"{flag_name} holds a z85 secret key, which other users of this machine can read in ps while this runs; "
            f"pass a .key_secret file instead, or the key in ${variable}")


def broken_link_problem(label: str, path: Union[str, Path]) -> Optional[str]:
    """Why `path` (given as `label`) cannot be used because it, or a folder above it, is a symbolic link to nothing
    or a symlink loop; None otherwise (of a dangling link mkdir says only "File exists"; resolve() raises at a loop)."""
    path = Path(path)
    for link in (path, *path.parents):
        if os.path.islink(link) and not os.path.exists(link):
            where = f"{label} {path} is" if link == path else f"{label} {path} lies under {link},"
            if _is_symlink_loop(link):
                return f"{where} a symlink loop (its links point at each other); name another"
            first, target = os.readlink(link), _missing_target(link)
            # a link to a link: the one it names exists, so it is said to be passed through, not missing
            through = f" (through {first})" if os.path.islink(os.path.join(os.path.dirname(link), first)) else ""
            return (f"{where} a symbolic link{through} to {target}, which does not exist: create {target} or name "
                    "another")
    return None


def _missing_target(link: Path) -> str:
    """Where the chain of links from the dangling `link` ends (a link to a link: the last one's target, the file
    missing), as a path usable from the working folder: relative there when `link` was given relative and it lies
    below, else absolute."""
    target = os.path.realpath(link)
    if not link.is_absolute():
        below = os.path.relpath(target, os.path.realpath(os.getcwd()))
        if not below.startswith(os.pardir):
            return below
    return target


def _is_symlink_loop(link: Path) -> bool:
    try:
        os.stat(link)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_log_level(parser: argparse.ArgumentParser, help_text: str) -> None:
    """--log-level (any case, default INFO) on a program's parser and on each of its sub-commands' (call it once they
    are all added), so that it may come before or after the command; the later one wins."""
    parser.add_argument(*flag("log-level"), default="INFO", type=str.upper, choices=LOG_LEVELS, help=help_text)
    for each in subcommand_parsers(parser).values():
        each.add_argument(*flag("log-level"), default=argparse.SUPPRESS, type=str.upper, choices=LOG_LEVELS,
                          help=help_text + "; may also come before the command")


class CommandParser(argparse.ArgumentParser):
    """A program's top-level parser (its sub-command in `args.command`).

    argparse hands an argument no sub-command knows back to the top level, which refused it with the program's usage
    ("gr00t-eval: error: unrecognized arguments: --bogus"), not saying which command's flags to read. Here the
    sub-command's parser refuses it: "gr00t-eval rollout: error: unrecognized arguments: --bogus" under that command's
    usage, exit status 2 as before.

    Abbreviated flags are refused, here and in every sub-command (whose parsers are of this class too): `--n-ep 3` is
    an error, not --n-episodes, and a flag added later cannot change what an abbreviation in a user's script means.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Optional[Sequence[str]] = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = subcommand_parsers(self).get(getattr(parsed, "command", None) or "")
            (command or self).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed
