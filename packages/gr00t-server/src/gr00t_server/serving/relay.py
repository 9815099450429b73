"""A relay (gateway): a PolicyServer whose policy chain ends in a PolicyClient of another server, the upstream. What
it reports is the upstream's, and the upstream's errors reach the robot with their words and the upstream's address."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional

from gr00t_client import PolicyClient
from gr00t_client.client_errors import (BUSY_REFUSALS, NOT_RUN_FOR_DEADLINE, SHUTTING_DOWN, UPSTREAM_FAILED,
                                        PolicyServerError, ServerStoppingError, UpstreamFailedError)

from .messages import RequestError
from .wrappers import policy_chain

logger = logging.getLogger("gr00t_server.serving.server")

# Of a robot's remaining budget, kept for the relay's own reply when it passes the rest upstream: 200 ms at most, and
# at most a fifth of it, so that a robot with a short budget (100 ms) still gives the upstream most of it
UPSTREAM_MARGIN_MS = 200
UPSTREAM_MARGIN_SHARE = 0.2

# how a stopping server's answer ends for a request it never started (RequestLoop writes it; upstream_did_not_run reads it)
NOT_RUN_AT_STOP = "was not run"
# ... and a stopping relay's for a request it never passed upstream (not_passed_at_stop writes it, the address after it)
NOT_PASSED_AT_STOP = "was not passed to the upstream at"

# what a relay puts before its upstream's words (relayed_text, upstream_failed_text write them; upstream_words strips
# them): "upstream ADDR: " before a refusal or error, "upstream policy server failed at ADDR: KIND: Server error: "
# before a stopping or failed upstream relay's answer
_RELAYED_PREFIX = re.compile(rf"upstream \S+: |{re.escape(UPSTREAM_FAILED)} at \S+: "
                             rf"(?:{ServerStoppingError.__name__}|{UpstreamFailedError.__name__}): Server error: ")
# a stopping relay's answer for a request it never passed upstream, read back (the address it names ends it)
_NOT_PASSED_AT_STOP_END = re.compile(rf"' {re.escape(NOT_PASSED_AT_STOP)} \S+$")


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
    # the upstream's get_server_info limits: its policy's (max_denoising_steps, rtc, ...) are reported as the relay's
    limits: Any = None


# a relay's info before its upstream answers
NOTHING_LEARNT = UpstreamFacts(None, -1, None, None, None, None, None, None)


def relayed_limits(facts: UpstreamFacts, own: Dict[str, Any]) -> Dict[str, Any]:
    """The upstream's limits that the relay does not set itself (`own`: its server's): those of the policy behind it
    (max_denoising_steps, max_vision_tokens, rtc, ...), reported as the relay's, since a robot's client and gr00t-eval
    take denoising_steps and rtc as applied only by a server whose limits say so."""
    limits = facts.limits if isinstance(facts.limits, dict) else {}
    return {name: value for name, value in limits.items() if name not in own}


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


def relayed_text(address: str, message: str) -> str:
    """How a relay answers with its upstream's (at `address`) refusal or error `message`: 'upstream ADDR: message'."""
    return f"upstream {address}: {message}"


def upstream_failed_text(address: str, why: str) -> str:
    """How a relay answers when its upstream at `address` did not answer or failed (`why`): UPSTREAM_FAILED's words."""
    return f"{UPSTREAM_FAILED} at {address}: {why}"


def not_passed_at_stop(endpoint: str, address: str) -> str:
    """A stopping relay's answer to a request it never passed to its upstream at `address`: it ran nothing."""
    return f"{SHUTTING_DOWN}; '{endpoint}' {NOT_PASSED_AT_STOP} {address}"


def upstream_words(message: str) -> str:
    """The words of the server that answered first in a relay's `message`: what each relay of a chain put before them
    (relayed_text, upstream_failed_text for a stopping or failed upstream relay) taken off."""
    while (prefix := _RELAYED_PREFIX.match(message)) is not None:
        message = message[prefix.end():]
    return message


def upstream_error(upstream: PolicyClient, exc: BaseException) -> Optional[Exception]:
    """The error a robot is answered for the upstream's `exc`, its text prefixed with the upstream's address: a refusal
    of the request or an upstream's internal error as a RequestError (as the robot would be told directly: the upstream
    answered, so it is not gone); no answer, a lost connection, a stopping upstream or a refused token as
    UpstreamFailure (the robot's client raises gr00t_client's UpstreamFailedError, a ConnectionError, for it), an
    upstream relay's UpstreamFailedError too (its own upstream failed). None for another exception (the relay's own)."""
    if isinstance(exc, PolicyServerError) and not isinstance(exc, (ServerStoppingError, UpstreamFailedError)):
        message = exc.server_message
        if "Unauthorized" not in message:
            return RequestError(relayed_text(upstream.address, message))
    elif not isinstance(exc, (TimeoutError, ConnectionError)):
        return None
    return UpstreamFailure(upstream_failed_text(upstream.address, f"{type(exc).__name__}: {exc}"))


def upstream_outcome(exc: BaseException) -> Optional[str]:
    """The outcome the upstream counted its refusal `exc` under, for the relay to count it the same: 'expired' for a
    request not run for want of time, 'refused' for one over its queue's budgets; None for any other error. An
    upstream relay's answer counts as the server's it passes on (upstream_words)."""
    if not isinstance(exc, PolicyServerError) or isinstance(exc, (ServerStoppingError, UpstreamFailedError)):
        return None
    message = upstream_words(exc.server_message)
    if NOT_RUN_FOR_DEADLINE in message:  # not "could not run again in time": that call ran (an error)
        return "expired"
    return "refused" if message.startswith(BUSY_REFUSALS) else None


def upstream_did_not_run(exc: BaseException) -> bool:
    """True when the upstream's answer `exc` says it ran nothing for the request: a refusal it counted under an outcome
    (upstream_outcome: expired, refused), or its stop's answer to a request whose turn never came ("server is shutting
    down; 'get_action' was not run", RequestLoop), or a stopping relay's that never passed it on (not_passed_at_stop),
    passed on by the relays between (upstream_words). A timeout or a lost connection is not: the upstream may have
    run it."""
    if upstream_outcome(exc) is not None:
        return True
    if not isinstance(exc, (ServerStoppingError, UpstreamFailedError)):
        return False
    words = upstream_words(exc.server_message)
    return words.startswith(SHUTTING_DOWN) and (
        words.endswith(NOT_RUN_AT_STOP) or _NOT_PASSED_AT_STOP_END.search(words) is not None)


class UpstreamFailure(RequestError):
    """The relay's upstream did not answer, or failed: the robot is told so by name (not a relay's internal error)."""
