"""How gr00t-server commands report a user's mistake: one line on stderr and exit status 2, without a traceback."""

from __future__ import annotations


class CliError(Exception):
    """A user error reported as one line and a non-zero exit, without a traceback."""
