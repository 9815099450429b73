"""How gr00t-server commands report a user's mistake: one line on stderr and exit status 2, without a traceback."""

from __future__ import annotations

from typing import Any, Dict


class CliError(Exception):
    """A user error reported as one line and a non-zero exit, without a traceback."""


def refuse_blank_paths(args: Any, expected: Dict[str, str]) -> None:
    """CliError for a path flag given blank (`--flag "$VAR"` with VAR unset), which would otherwise mean something
    else: no model (so a replay of --dataset-path), no config, the current folder. `expected`: each flag's dest and
    what it takes."""
    for name, what in expected.items():
        value = getattr(args, name, None)
        if value is not None and not str(value).strip():
            raise CliError(f"--{name.replace('_', '-')} is empty: an unset variable? Expected {what}")
