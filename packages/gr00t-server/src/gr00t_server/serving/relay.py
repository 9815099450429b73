"""A relay (gateway): a PolicyServer whose policy chain ends in a PolicyClient of another server, the upstream. What
it reports is the upstream's, and the upstream's errors reach the robot with their words and the upstream's address."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional

from gr00t_client import PolicyClient
from gr00t_client.client_errors import (BUSY_REFUSALS, NOT_RUN_FOR_DEADLINE, UPSTREAM_FAILED, PolicyServerError,
                                        ServerStoppingError, UpstreamFailedError)

from .messages import RequestError
from .wrappers import policy_chain

logger = logging.getLogger("gr00t_server.serving.server")

# Of a robot's remaining budget, kept for the relay's own reply when it passes the rest upstream: 200 ms at most, and
# at most a fifth of it, so that a robot with a short budget (100 ms) still gives the upstream most of it
UPSTREAM_MARGIN_MS = 200
UPSTREAM_MARGIN_SHARE = 0.2

# how a stopping server's answer ends for a request it never started (RequestLoop writes it; upstream_did_not_run reads it)
NOT_RUN_AT_STOP = "was not run"


@dataclass(frozen=True)
class UpstreamFacts:
    """What a relay last learnt of its upstream, through `policy` (its served chain) at its client's `server_changes`:
    reported while the client has forgotten them (a timeout, an outage), replaced only when it learns them anew."""

    policy: Any
    server_changes: int
    policy_class: Optional[str]
    identity: Optional[Dict[str, Any]]
    runtime: Optional[Dict[str, Any]]  # what computes its actions: the same weights in fp32 and bf16 are two policies
    embodiment_tag: Optional[str]
    observation_format: Optional[str]
    modality_configs: Any


# a relay's info before its upstream answers
NOTHING_LEARNT = UpstreamFacts(None, -1, None, None, None, None, None, None)


def upstream_deadline(deadline: Optional[float], now: float) -> Optional[float]:
    """The deadline (time.monotonic()) a relay passes upstream for a robot's `deadline`: its margin taken off (the
    smaller of UPSTREAM_MARGIN_MS and UPSTREAM_MARGIN_SHARE of what remains); None for a robot without one."""
    if deadline is None:
        return None
    return deadline - min(UPSTREAM_MARGIN_MS / 1000.0, UPSTREAM_MARGIN_SHARE * max(deadline - now, 0.0))


def upstream_client(policy: Any) -> Optional[PolicyClient]:
    """The PolicyClient in the policy's wrapper chain (the relay's link to its upstream), or None."""
    return next((link for link in policy_chain(policy) if isinstance(link, PolicyClient)), None)


def relayed_class(policy: Any, upstream: PolicyClient, upstream_class: Optional[str]) -> str:
    """'PolicyClient -> Gr00tPolicy': the chain's classes down to the client, then the class its upstream reported."""
    names = []
    for link in policy_chain(policy):
        names.append(type(link).__name__)
        if link is upstream:
            break
    return " -> ".join(names + [upstream_class or "?"])


def upstream_error(upstream: PolicyClient, exc: BaseException) -> Optional[Exception]:
    """The error a robot is answered for the upstream's `exc`, its text prefixed with the upstream's address: a refusal
    of the request or an upstream's internal error as a RequestError (as the robot would be told directly: the upstream
    answered, so it is not gone); no answer, a lost connection, a stopping upstream or a refused token as
    UpstreamFailure (the robot's client raises gr00t_client's UpstreamFailedError, a ConnectionError, for it), an
    upstream relay's UpstreamFailedError too (its own upstream failed). None for another exception (the relay's own)."""
    if isinstance(exc, PolicyServerError) and not isinstance(exc, (ServerStoppingError, UpstreamFailedError)):
        message = exc.server_message
        if "Unauthorized" not in message:
            return RequestError(f"upstream {upstream.address}: {message}")
    elif not isinstance(exc, (TimeoutError, ConnectionError)):
        return None
    return UpstreamFailure(f"{UPSTREAM_FAILED} at {upstream.address}: {type(exc).__name__}: {exc}")


def upstream_outcome(exc: BaseException) -> Optional[str]:
    """The outcome the upstream counted its refusal `exc` under, for the relay to count it the same: 'expired' for a
    request not run for want of time, 'refused' for one over its queue's budgets; None for any other error."""
    if not isinstance(exc, PolicyServerError) or isinstance(exc, (ServerStoppingError, UpstreamFailedError)):
        return None
    if NOT_RUN_FOR_DEADLINE in exc.server_message:  # not "could not run again in time": that call ran (an error)
        return "expired"
    return "refused" if exc.server_message.startswith(BUSY_REFUSALS) else None


def upstream_did_not_run(exc: BaseException) -> bool:
    """True when the upstream's answer `exc` says it ran nothing for the request: a refusal it counted under an outcome
    (upstream_outcome: expired, refused), or its stop's answer to a request whose turn never came ("server is shutting
    down; 'get_action' was not run", RequestLoop). A timeout or a lost connection is not: the upstream may have run it."""
    if upstream_outcome(exc) is not None:
        return True
    return isinstance(exc, ServerStoppingError) and exc.server_message.endswith(NOT_RUN_AT_STOP)


class UpstreamFailure(RequestError):
    """The relay's upstream did not answer, or failed: the robot is told so by name (not a relay's internal error)."""
