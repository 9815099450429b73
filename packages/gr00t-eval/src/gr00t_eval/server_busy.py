"""Asking a policy server again while it refuses a request busy (ServerBusyError: its queue was at its cap, so the
request was not run): after a short wait, doubled each time, until the waits come to a bound; then the refusal is
raised."""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from gr00t_client import ServerBusyError

logger = logging.getLogger(__name__)

# A request refused busy is asked again after this wait, doubled each time (the last cut to fit), until the waits come
# to BUSY_RETRY_TOTAL_S (a peer's large request running on the server, a burst of other peers' requests)
BUSY_RETRY_FIRST_S = 0.1
BUSY_RETRY_TOTAL_S = 30.0

T = TypeVar("T")


def asked_while_busy(call: Callable[[], T], first_wait_s: float, total_s: float, what: str) -> T:
    """`call()`, called again while it raises ServerBusyError, after `first_wait_s`, doubled each time (the last cut to
    what is left), until the waits come to `total_s`; then the refusal is raised. `what` ("a get_action") names the
    request in the log line of each retry. Only for a request the server did not run (no state moved): the refusal says
    so."""
    wait_s, waited_s = first_wait_s, 0.0
    while True:
        try:
            return call()
        except ServerBusyError as exc:
            # Cut to what is left: doubling 0.1 s alone stopped at 25.5 s of a 30 s bound
            wait_s = min(wait_s, total_s - waited_s)
            if wait_s <= total_s * 1e-9:  # the bound is spent (a float sum's last bit is not another wait)
                raise
            logger.warning("the policy server was busy and did not run %s (%s); asking again in %.1f s",
                           what, exc, wait_s)
            time.sleep(wait_s)
            waited_s += wait_s
            wait_s *= 2
