"""A relay (gateway): a PolicyServer whose policy chain ends in a PolicyClient of another server, the upstream. What
it reports is the upstream's, and the upstream's errors reach the robot with their words and the upstream's address."""

from __future__ import annotations

import logging
from typing import Any, Optional

from gr00t_client import PolicyClient
from gr00t_client.client_errors import UPSTREAM_FAILED, PolicyServerError, ServerStoppingError

from .messages import RequestError
from .wrappers import policy_chain

logger = logging.getLogger("gr00t_server.serving.server")

UPSTREAM_MARGIN_MS = 200  # of a robot's remaining budget kept for the relay's own reply, when it passes it upstream


def upstream_client(policy: Any) -> Optional[PolicyClient]:
    """The PolicyClient in the policy's wrapper chain (the relay's link to its upstream), or None."""
    return next((link for link in policy_chain(policy) if isinstance(link, PolicyClient)), None)


def relayed_class(policy: Any, upstream: PolicyClient) -> str:
    """'PolicyClient -> Gr00tPolicy': the chain's classes down to the client, then the class its upstream reports."""
    names = []
    for link in policy_chain(policy):
        names.append(type(link).__name__)
        if link is upstream:
            break
    return " -> ".join(names + [upstream.server_policy_class or "?"])


def upstream_error(upstream: PolicyClient, exc: BaseException) -> Optional[Exception]:
    """The error a robot is answered for the upstream's `exc`, its text prefixed with the upstream's address: a refusal
    of the request as a RequestError (the robot's mistake, as it would be told directly); no answer, a lost
    connection, a refused token or an upstream's internal error as UpstreamFailure (the robot's client raises
    gr00t_client's UpstreamFailedError, a ConnectionError, for it). None for another exception (the relay's own)."""
    if isinstance(exc, PolicyServerError) and not isinstance(exc, ServerStoppingError):
        message = exc.server_message
        if "Unauthorized" not in message and not message.startswith("internal error"):
            return RequestError(f"upstream {upstream.address}: {message}")
    elif not isinstance(exc, (TimeoutError, ConnectionError)):
        return None
    return UpstreamFailure(f"{UPSTREAM_FAILED} at {upstream.address}: {type(exc).__name__}: {exc}")


class UpstreamFailure(RequestError):
    """The relay's upstream did not answer, or failed: the robot is told so by name (not a relay's internal error)."""
