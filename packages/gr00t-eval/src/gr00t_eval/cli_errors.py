"""How gr00t-eval commands report a user's mistake: one line on stderr and exit status 2 (tracebacks only at DEBUG)."""

from __future__ import annotations

import argparse

USAGE_EXIT_CODE = 2


class UsageError(ValueError):
    """A mistake in the command line or its inputs; the message says what was wrong and what was expected."""


def _unknown_tag(given: str, exc: ValueError) -> UsageError:
    """One line for a tag EmbodimentTag.resolve refused: its first line (not its table) and the known tags."""
    from gr00t_client import EmbodimentTag

    known = ", ".join(member.value for member in EmbodimentTag)
    return UsageError(f"{given}: {str(exc).splitlines()[0]}; known tags: {known}")


def path_flag(value: str) -> str:
    """The argparse type of gr00t-eval's path flags: user_path's, and a blank value refused (exit 2, argparse naming the
    flag): `--flag "$VAR"` with VAR unset meant something else (a new run for --resume, the working directory)."""
    from gr00t_client.cli_flags import user_path

    if not value.strip():
        raise argparse.ArgumentTypeError(f"is empty ({value!r}): an unset variable? Name a path, or leave the flag out")
    return user_path(value)
