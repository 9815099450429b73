"""How gr00t-eval commands report a user's mistake: one line on stderr and exit status 2 (tracebacks only at DEBUG)."""

from __future__ import annotations

USAGE_EXIT_CODE = 2


class UsageError(ValueError):
    """A mistake in the command line or its inputs; the message says what was wrong and what was expected."""
