"""Run settings that reach the policy as get_action options (--denoising-steps, --rtc-frozen-steps), and whether its
server is known to apply them: a reference server's policy ignores them, and so does a gr00t-server replaying a
dataset (its get_server_info names the policy_identity kind "replay"); a gr00t-server whose get_server_info reports
no `max_denoising_steps` is not known to apply denoising_steps, and one whose policy reports neither the
policy_identity kind "gr00t" nor an `rtc` capability in its limits is not known to apply rtc_frozen_steps (an older
gr00t-server may or may not apply either: one of 2026-12-02 to 12-04 applies denoising_steps without reporting the
cap, and one of 2026-12-01 applies rtc without reporting a policy_identity). A run against any of them warns and
records them under `settings_not_applied` (results.json, run.json): settings not known to be applied, rather than
settings its scores were measured with (open-loop does not send such a --denoising-steps at all). The denoising_steps
rule is gr00t_client's (client_server_facts.applies_denoising_steps), which PolicyClient warns by too."""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional

from gr00t_client.client_server_facts import applies_denoising_steps

logger = logging.getLogger(__name__)

# policy_identity kinds of gr00t-server policies that send recorded actions, which no get_action option changes
REPLAY_KINDS = frozenset({"replay"})


def settings_not_applied(policy: Any, settings: Mapping[str, Any]) -> Dict[str, Any]:
    """{name: value} of the `settings` given (not None) that `policy` is not known to apply: all of them for a
    PolicyClient whose server is not a gr00t-server (as far as its get_server_info said) or replays a dataset;
    denoising_steps for a gr00t-server that does not report max_denoising_steps; rtc_frozen_steps for one whose policy
    reports neither the kind "gr00t" nor `rtc`; none for another gr00t-server or an in-process policy."""
    given = {name: value for name, value in settings.items() if value is not None}
    if not given:
        return {}
    if _served_by_reference(policy):
        return given
    info = _gr00t_server_info(policy)
    if info is None:
        return {}
    if _policy_kind(info) in REPLAY_KINDS:
        return given
    not_applied = {}
    if "denoising_steps" in given and not applies_denoising_steps(info.get("limits")):
        not_applied["denoising_steps"] = given["denoising_steps"]
    if "rtc_frozen_steps" in given and not _reads_rtc(info):
        not_applied["rtc_frozen_steps"] = given["rtc_frozen_steps"]
    return not_applied


def warn_not_applied(policy: Any, not_applied: Mapping[str, Any]) -> None:
    """One warning naming each setting (as its flag) that `policy`'s server is not known to apply."""
    if not not_applied:
        return
    flags = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in not_applied.items())
    address = getattr(policy, "address", "the policy server")
    if _served_by_reference(policy):
        logger.warning("not applied: %s; the server at %s did not answer get_server_info as a gr00t-server does, and "
                       "a reference server's policy ignores get_action options. The run's results list this under "
                       "settings_not_applied; serve the model with gr00t-server to apply it", flags, address)
        return
    if _policy_kind(_gr00t_server_info(policy) or {}) in REPLAY_KINDS:
        logger.warning("not applied: %s; the server at %s replays a recorded dataset (policy_identity kind 'replay'), "
                       "whose actions no get_action option changes. The run's results list this under "
                       "settings_not_applied; serve a model (--model-path) to apply it", flags, address)
        return
    if "rtc_frozen_steps" in not_applied:
        logger.warning("not known to be applied: %s; the server at %s serves a %s that reports no policy_identity "
                       "kind 'gr00t' (a Gr00tPolicy of a current gr00t-server), and its get_server_info limits report "
                       "no 'rtc': true, so its policy is not known to read options['rtc'], which is sent all the same "
                       "(an older gr00t-server that reports no policy_identity may or may not apply it). The run's "
                       "results list this under settings_not_applied; serve a model with a current gr00t-server, or "
                       "have a policy of your own that applies the option report it with work_limits() returning "
                       "{'rtc': True} (docs/serving.md)", flags, address, _policy_class(policy))
        return
    logger.warning("not applied: %s; the server at %s does not report max_denoising_steps in get_server_info's "
                   "limits, as a current gr00t-server serving a model does (an older gr00t-server that reports no "
                   "max_denoising_steps may or may not apply it), so the option is not sent and the scores are at "
                   "the server's default steps. The run's results list this under settings_not_applied; serve the "
                   "model with a current gr00t-server, or have a policy of your own that applies the option report "
                   "it with work_limits() returning {'max_denoising_steps': N} (docs/serving.md)", flags, address)


def _served_by_reference(policy: Any) -> bool:
    return getattr(policy, "server_is_gr00t_server", None) is False


def _gr00t_server_info(policy: Any) -> Optional[Mapping[str, Any]]:
    """The get_server_info answer of `policy`'s gr00t-server; None for an in-process policy or a server that does not
    say."""
    if getattr(policy, "server_is_gr00t_server", None) is not True:
        return None
    try:
        info = policy.get_server_info()
    except Exception as exc:  # noqa: BLE001 - a server that cannot say is taken to apply them
        logger.debug("get_server_info to learn what the served policy applies failed: %s", exc)
        return None
    return info if isinstance(info, Mapping) else None


def _policy_kind(info: Mapping[str, Any]) -> Optional[str]:
    """The policy_identity kind ("gr00t", "replay") a gr00t-server's info reports, or None."""
    identity = info.get("policy_identity")
    return identity.get("kind") if isinstance(identity, Mapping) else None


def _reads_rtc(info: Mapping[str, Any]) -> bool:
    """Whether the info says its policy applies options["rtc"]: a Gr00tPolicy (policy_identity kind "gr00t", whose
    model runs RTC), or a policy whose work_limits() report "rtc": True (the opt-in of a policy of one's own)."""
    limits = info.get("limits")
    return _policy_kind(info) == "gr00t" or (isinstance(limits, Mapping) and limits.get("rtc") is True)


def _policy_class(policy: Any) -> str:
    info = _gr00t_server_info(policy) or {}
    return str(info.get("policy_class") or "policy")

