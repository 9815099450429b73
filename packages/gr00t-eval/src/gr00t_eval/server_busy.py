"""Asking a policy server again while it refuses a request busy (ServerBusyError: its queue was at its cap, so the
request was not run): after a short wait, doubled each time, within a bound on the waits; past it the refusal is
raised."""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from gr00t_client import ServerBusyError

logger = logging.getLogger(__name__)

# A request refused busy is asked again after this wait, doubled each time, while the waits come to at most
# BUSY_RETRY_TOTAL_S (a peer's large request running on the server, a burst of other peers' requests)
BUSY_RETRY_FIRST_S = 0.1
BUSY_RETRY_TOTAL_S = 30.0

T = TypeVar("T")


def asked_while_busy(call: Callable[[], T], first_wait_s: float, total_s: float, what: str) -> T:
    """`call()`, called again while it raises ServerBusyError, after `first_wait_s`, doubled each time, while the waits
    come to at most `total_s`; then the refusal is raised. `what` ("a get_action") names the request in the log line
    of each retry. Only for a request the server did not run (no state moved): the refusal says so."""
    wait_s, waited_s = first_wait_s, 0.0
    while True:
        try:
            return call()
        except ServerBusyError as exc:
            if waited_s + wait_s > total_s:
                raise
            logger.warning("the policy server was busy and did not run %s (%s); asking again in %.1f s",
                           what, exc, wait_s)
            time.sleep(wait_s)
            waited_s += wait_s
            wait_s *= 2
