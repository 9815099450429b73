"""Option names a policy does not take: refused when strict, else warned about once per set of names."""

from __future__ import annotations

import difflib
import logging
import time
from typing import AbstractSet, Any, Mapping

from gr00t_client.client_messages import TIMING_OPTION

# The options PolicyServer takes itself (and removes before the policy sees them), listed in every refusal: a
# "return_sever_timing" was refused as if no timing option existed
SERVER_OPTIONS = frozenset({TIMING_OPTION})
MAX_WARNED_SETS = 64  # sets of names warned about once each; past them, one warning a minute
SHOWN_NAMES = 8  # names an error lists (a client's text: each cut at SHOWN_NAME_CHARS)
SHOWN_NAME_CHARS = 60


class OptionNames:
    """Checks a call's option names against those a policy takes. A typo ("Seed", {"episode": 2}) otherwise ran the
    defaults without a word. Names starting with "_" are the server's (the session id) and always pass."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._warned: set = set()  # the sets of unknown names warned about (strict=False), up to MAX_WARNED_SETS
        self._capped_warning_at = -60.0  # past them: when the last such warning was given

    def check(self, options: Mapping[Any, Any], known: AbstractSet[str], strict: bool, what: str, taker: str,
              server_options: AbstractSet[str] = SERVER_OPTIONS) -> None:
        """ValueError "unknown {what} [...]; {taker} takes [...] and the server takes [...]" for names outside `known`
        (and the `server_options`, which a server removes first) when `strict`, else a warning (once per set of
        names); a near miss of a server option adds "did you mean '...'?"."""
        unknown = sorted(str(name) for name in options if not str(name).startswith("_") and name not in known)
        if not unknown:
            return
        shown = [name if len(name) <= SHOWN_NAME_CHARS else name[:SHOWN_NAME_CHARS] + "..."
                 for name in unknown[:SHOWN_NAMES]]
        more = f" and {len(unknown) - SHOWN_NAMES} more" if len(unknown) > SHOWN_NAMES else ""
        message = f"unknown {what} {shown}{more}; {taker} takes {sorted(known)}"
        if server_options:
            message += f" and the server takes {sorted(server_options)}"
            meant = sorted({close for name in shown for close in difflib.get_close_matches(name, server_options, n=1)})
            if meant:
                message += "; did you mean " + " or ".join(map(repr, meant)) + "?"
        if strict:
            raise ValueError(message)
        key = tuple(shown)
        if key in self._warned:  # once per set, not per call
            return
        if len(self._warned) < MAX_WARNED_SETS:
            self._warned.add(key)
        elif time.monotonic() - self._capped_warning_at >= 60.0:  # a peer sending fresh names: once a minute
            self._capped_warning_at = time.monotonic()
        else:
            return
        self._log.warning("%s (ignored: strict=False; said once per set of names)", message)
