"""Run settings that reach the policy as get_action options (--denoising-steps, --rtc-frozen-steps), and whether its
server applies them: a reference server's policy ignores them, and so does a gr00t-server replaying a dataset (its
get_server_info names the policy_identity kind "replay"), so a run against either warns and records them under
`settings_not_applied` (results.json, run.json) rather than as settings its scores were measured with."""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional

logger = logging.getLogger(__name__)

# policy_identity kinds of gr00t-server policies that send recorded actions, which no get_action option changes
REPLAY_KINDS = frozenset({"replay"})


def settings_not_applied(policy: Any, settings: Mapping[str, Any]) -> Dict[str, Any]:
    """{name: value} of the `settings` given (not None) that `policy` cannot apply: all of them for a PolicyClient whose
    server is not a gr00t-server (as far as its get_server_info said) or replays a dataset; none for another
    gr00t-server or an in-process policy."""
    given = {name: value for name, value in settings.items() if value is not None}
    if not given or not (_served_by_reference(policy) or _served_policy_kind(policy) in REPLAY_KINDS):
        return {}
    return given


def warn_not_applied(policy: Any, not_applied: Mapping[str, Any]) -> None:
    """One warning naming each setting (as its flag) that `policy`'s server does not apply."""
    if not not_applied:
        return
    flags = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in not_applied.items())
    address = getattr(policy, "address", "the policy server")
    if not _served_by_reference(policy):
        logger.warning("not applied: %s; the server at %s replays a recorded dataset (policy_identity kind 'replay'), "
                       "whose actions no get_action option changes. The run's results list this under "
                       "settings_not_applied; serve a model (--model-path) to apply it", flags, address)
        return
    logger.warning("not applied: %s; the server at %s did not answer get_server_info as a gr00t-server does, and "
                   "a reference server's policy ignores get_action options. The run's results list this under "
                   "settings_not_applied; serve the model with gr00t-server to apply it", flags, address)


def _served_by_reference(policy: Any) -> bool:
    return getattr(policy, "server_is_gr00t_server", None) is False


def _served_policy_kind(policy: Any) -> Optional[str]:
    """The policy_identity kind ("gr00t", "replay") `policy`'s gr00t-server reports; None for an in-process policy or
    a server that does not say."""
    if getattr(policy, "server_is_gr00t_server", None) is not True:
        return None
    try:
        identity = policy.get_server_info().get("policy_identity")
    except Exception as exc:  # noqa: BLE001 - a server that cannot say is taken to apply them
        logger.debug("get_server_info to learn the served policy's kind failed: %s", exc)
        return None
    return identity.get("kind") if isinstance(identity, Mapping) else None
