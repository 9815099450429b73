"""Run settings that reach the policy as get_action options (--denoising-steps, --rtc-frozen-steps), and whether its
server applies them: a reference server's policy ignores them, so a run against one warns and records them under
`settings_not_applied` (results.json, run.json) rather than as settings its scores were measured with."""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping

logger = logging.getLogger(__name__)


def settings_not_applied(policy: Any, settings: Mapping[str, Any]) -> Dict[str, Any]:
    """{name: value} of the `settings` given (not None) that `policy` cannot apply: all of them for a PolicyClient whose
    server is not a gr00t-server (as far as its get_server_info said); none for a gr00t-server or an in-process policy."""
    if getattr(policy, "server_is_gr00t_server", None) is not False:
        return {}
    return {name: value for name, value in settings.items() if value is not None}


def warn_not_applied(policy: Any, not_applied: Mapping[str, Any]) -> None:
    """One warning naming each setting (as its flag) that `policy`'s server does not apply."""
    if not not_applied:
        return
    flags = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in not_applied.items())
    logger.warning("not applied: %s; the server at %s did not answer get_server_info as a gr00t-server does, and "
                   "a reference server's policy ignores get_action options. The run's results list this under "
                   "settings_not_applied; serve the model with gr00t-server to apply it", flags,
                   getattr(policy, "address", "the policy server"))
