"""Is the policy server still there? A quick ping after a timeout, and a cap on consecutive timeouts.

A dead server makes every later request wait its full timeout; without this check a long evaluation would
spend hours in timeouts and end with a plausible-looking number. After a request times out (or the
connection fails) the server is pinged with a short timeout (scaled with the client's, for a far link); no answer,
or too many timeouts in a row, stops the run with `PolicyServerUnreachableError`, and so does a server that now
refuses this client's CURVE key or API token (restarted with another one).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

from gr00t_client import ClientClosedError, HandshakeError, PolicyClient, ServerStoppingError
from gr00t_client.client_errors import UPSTREAM_FAILED
from gr00t_client.policy import accepts_keyword

from ..policy_identity import ServedPolicyChanged

logger = logging.getLogger(__name__)

QUICK_PING_MS = 2000  # the least budget of a liveness ping; a quarter of the client's timeout_ms when that is more
QUICK_PING_SHARE_OF_TIMEOUT = 4
MAX_CONSECUTIVE_TIMEOUTS = 3


class PolicyServerUnreachableError(ConnectionError):
    """The policy server stopped answering; the run stops and keeps the episodes that finished."""


def ping_quickly(policy: Any, timeout_ms: Optional[int] = None) -> Optional[bool]:
    """Ping a PolicyClient-like policy with a short timeout; None for policies without `ping` (in-process).

    A `ping` that takes `timeout_ms` (PolicyClient's does) gets a budget of this ping's own (quick_ping_budget_ms
    unless `timeout_ms` is given), never longer than the policy's own `timeout_ms`: the client, maybe shared by
    threads, keeps its timeout for their calls."""
    return ping_with_error(policy, timeout_ms)[0]


def quick_ping_budget_ms(policy: Any, timeout_ms: Optional[int] = None) -> int:
    """The liveness ping's budget: `timeout_ms`, or by default a quarter of the policy's own timeout_ms but at least
    QUICK_PING_MS (after a timeout the ping pays a fresh connection's ~3 round trips: 2 s stopped runs over links of
    0.7 s round trip, whatever --timeout-ms); never more than the policy's own timeout_ms."""
    own = getattr(policy, "timeout_ms", None)
    if not (isinstance(own, int) and own > 0):
        return QUICK_PING_MS if timeout_ms is None else timeout_ms
    if timeout_ms is None:
        timeout_ms = max(QUICK_PING_MS, own // QUICK_PING_SHARE_OF_TIMEOUT)
    return min(own, timeout_ms)


def ping_with_error(policy: Any, timeout_ms: Optional[int] = None) -> Tuple[Optional[bool], Optional[Exception]]:
    """ping_quickly's answer and, for a ping that raised, its exception. A PolicyClient is pinged through
    ping_or_raise: its ping() answers a refused CURVE handshake with a bare False."""
    ping = getattr(policy, "ping", None)
    if ping is None:
        return None, None
    budget = quick_ping_budget_ms(policy, timeout_ms)
    try:
        if isinstance(policy, PolicyClient):
            policy.ping_or_raise(budget)  # a ping lost to a closing connection is sent once more
            return True, None
        if not accepts_keyword(ping, "timeout_ms"):
            return bool(ping()), None
        return bool(ping(timeout_ms=budget)), None
    except Exception as exc:  # noqa: BLE001 - a ping that raises is a ping that failed
        return False, exc


def refuses_this_client(exc: Optional[BaseException]) -> bool:
    """A refused CURVE handshake or an Unauthorized reply: a server answers, but not to this client's key or token.
    Not a connection closed mid-handshake after the same keys worked: a forwarder (kubectl port-forward, ssh -L) whose
    server is restarting closes it too, so it counts as a failed connection (pinged, counted), as a timeout does."""
    if isinstance(exc, HandshakeError):
        return not exc.closed_after_keys_worked
    return "Unauthorized" in str(getattr(exc, "server_message", ""))


def unanswered_ping_reason(policy: Any, before: str) -> Optional[str]:
    """Why the server counts as gone before `before` (a task): no answer to a quick ping, or a refusal of this
    client's key or token; None when it answered (or cannot be pinged)."""
    alive, error = ping_with_error(policy)
    address = getattr(policy, "address", "the policy server")
    if isinstance(error, ClientClosedError):
        return f"{_closed_here(address, error)}, before {before}"
    if refuses_this_client(error):
        return f"{_refusal(address, error)}, before {before}"
    if alive is not False:
        return None
    return f"{address} did not answer a ping before {before}{_why_unanswered(policy, error, '')}"


def _why_unanswered(policy: Any, exc: Optional[BaseException], connection: str) -> str:
    """Why a ping went unanswered: the handshake's own words where it closed after the keys worked, otherwise the
    budget it had over `connection` and the two causes a bare 'did not answer' left to guess."""
    closed = _closed_mid_handshake(exc)
    if closed:
        return closed
    return f" within {quick_ping_budget_ms(policy) / 1000:g} s{connection} (a slow link or a dead server)"


def _closed_mid_handshake(exc: Optional[BaseException]) -> str:
    """For a CURVE handshake the server closed after this client's keys had worked: its text and the two likely causes
    (a server restarted with another key looks so, as does a restarting forwarder's), which a bare 'did not answer'
    hid; '' for any other failure."""
    if not (isinstance(exc, HandshakeError) and exc.closed_after_keys_worked):
        return ""
    return f" ({type(exc).__name__}: {exc}): the server's key changed, or a forwarder's server is restarting"


def _closed_here(address: str, exc: BaseException) -> str:
    return (f"this process closed its PolicyClient for {address} ({type(exc).__name__}: {exc}), so the run cannot go "
            "on; the server may well be up: a with-block was left or a cleanup ran before the run ended")


def _refusal(address: str, exc: BaseException) -> str:
    text = str(exc)
    if UPSTREAM_FAILED in text:  # a relay's own token or key, refused by its upstream: not this client's
        return (f"the relay at {address} answers, but the relay's upstream refuses it ({type(exc).__name__}: {exc}): "
                "fix the relay's own API token or CURVE key for its upstream")
    if isinstance(exc, HandshakeError):  # CURVE's own refusal: no API token is read before it
        if "could not check this client's public key" in text:
            why = ("the server cannot read its authorized keys folder (out of open files, a mount gone?); resume once it "
                   "can")
        elif "refused this client's public key" in text:
            why = ("the server does not admit this client's CURVE key: it is not in (or was removed from) its "
                   "authorized keys")
        else:
            why = "the server's CURVE settings and this client's do not match"
    elif "was removed from the server's authorized keys" in text:
        why = "this client's CURVE key was removed from the server's authorized keys"
    elif "cannot read its authorized keys folder" in text:
        why = "the server cannot read its authorized keys folder (a mount gone?); resume once it can"
    elif "API token" in text:
        why = "the server requires another API token (restarted with a new one?)"
    else:
        why = ("the server restarted with another CURVE key or API token, or this client's key was removed from its "
               "authorized keys")
    return f"the server at {address} now refuses this client ({type(exc).__name__}: {exc}): {why}"


class ServerWatch:
    """Counts consecutive request timeouts and pings after each one; raises when the server is gone."""

    def __init__(self, policy: Any, max_consecutive_timeouts: int = MAX_CONSECUTIVE_TIMEOUTS) -> None:
        self.policy = policy
        self.max_consecutive_timeouts = max_consecutive_timeouts
        self.consecutive_timeouts = 0

    def request_succeeded(self) -> None:
        """A request got its answer: the count of timeouts in a row starts again."""
        self.consecutive_timeouts = 0

    def unreachable_reason(self, exc: BaseException) -> Optional[str]:
        """After a failed request: why the server counts as gone (None when it still answers or `exc` is no timeout);
        a server that refuses this client's key or token is gone for this run too."""
        address = getattr(self.policy, "address", "the policy server")
        if isinstance(exc, ClientClosedError):  # this process's doing, not the server's: no ping, no count
            return _closed_here(address, exc)
        if refuses_this_client(exc):
            return _refusal(address, exc)
        if not isinstance(exc, (TimeoutError, ConnectionError)):
            return None
        if isinstance(exc, ServedPolicyChanged):  # answering, but another policy: nothing more may be scored
            return str(exc)
        if isinstance(exc, ServerStoppingError):  # it said so itself: no ping, no waiting for more timeouts
            return f"{address} is shutting down ({exc})"
        self.consecutive_timeouts += 1
        alive, ping_error = ping_with_error(self.policy)
        if isinstance(ping_error, ClientClosedError):
            return _closed_here(address, ping_error)
        if refuses_this_client(ping_error):
            return _refusal(address, ping_error)
        if alive is False:
            return (f"{address} stopped answering ({type(exc).__name__}: {exc}) and did not answer a ping either"
                    f"{_why_unanswered(self.policy, ping_error, ' over a fresh connection')}")
        if self.consecutive_timeouts >= self.max_consecutive_timeouts:
            return f"{address} answers pings but {self.consecutive_timeouts} requests in a row failed (last: {type(exc).__name__}: {exc})"
        logger.warning("policy request failed (%s) but the server answers pings; going on", exc)
        return None
