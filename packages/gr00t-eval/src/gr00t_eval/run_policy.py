"""The policy a rollout evaluates: recorded in its run file and held to on a resume, checked against the plan before
any episode, and, for a Ray run, asked of every server from the driver."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

logger = logging.getLogger(__name__)


def _record_settings_not_applied(client: Any, config: Any, output_dir: Path, shard: Any) -> Dict[str, Any]:
    """The run's settings that its server ignores (--rtc-frozen-steps against a reference server), warned of and
    added to its run file."""
    from .applied_settings import settings_not_applied, warn_not_applied
    from .run_file import record_settings_not_applied

    not_applied = settings_not_applied(client, {"rtc_frozen_steps": config.rtc_frozen_steps})
    if not_applied:
        warn_not_applied(client, not_applied)
        record_settings_not_applied(output_dir, shard, not_applied)
    return not_applied


def _adopt_run_policy(output_dir: Path, shard: Any, first_policy: Optional[Mapping[str, Any]],
                      policy: Optional[Mapping[str, Any]], who: str, resumed_episodes: int = 0) -> None:
    """Record the policy a run evaluates in its run file, or, for a resume, refuse one whose fingerprint differs
    from the first attempt's (its finished episodes would be reported with another policy's), or that cannot be
    learned when the first attempt's was; `who` serves it: "the server at HOST:PORT" or "the servers"."""
    from .cli_errors import UsageError
    from .policy_identity import describe, identifies_more, runtime_difference, same_policy
    from .run_file import record_run_policy

    plural = who == "the servers"
    serving = f"{who} {'serve' if plural else 'serves'}"

    computed = runtime_difference(policy, first_policy, f"on {'them' if plural else 'it'}", "in this run")
    if computed is not None:  # the same checkpoint: "serve the same checkpoint" would not tell what to change
        raise UsageError(f"--resume {output_dir}: {who} {'compute' if plural else 'computes'} this run's policy "
                         f"otherwise: {computed[0]}; {serving} {describe(policy)}, and this run started against "
                         f"{describe(first_policy)}; restart {'them' if plural else 'it'} with {computed[1]} to "
                         "continue the run, or start a new run")
    if not same_policy(first_policy, policy):
        raise UsageError(f"--resume {output_dir}: {serving} {describe(policy)}, and this run started against "
                         f"{describe(first_policy)}; serve the same checkpoint (or dataset) to continue it, or start "
                         "a new run")
    if policy is None and first_policy is not None and resumed_episodes:
        # Nothing to compare with (a reference server, or get_server_info went unanswered): its episodes would be
        # pooled with the first attempt's under the first attempt's policy, whatever it serves.
        raise UsageError(f"--resume {output_dir}: {who} did not say which policy {'they serve' if plural else 'it serves'} "
                         f"(no get_server_info answer: a reference server, or one too busy to answer), and this run's "
                         f"{resumed_episodes} earlier episodes were scored against {describe(first_policy)}; resume "
                         "against a gr00t-server serving it, or start a new run")
    if policy is not None and first_policy is not None and identifies_more(policy, first_policy):
        record_run_policy(output_dir, shard, policy)  # the fuller identity from now on: a later resume is held to it
    if policy is not None and first_policy is None:
        if resumed_episodes:  # a run file of an older gr00t-eval (or a server that gave no info then)
            logger.warning("--resume %s: this run recorded no policy for its %d earlier episodes (an older gr00t-eval, or "
                           "a server that did not say), so nothing checks that %s the same checkpoint as then; its "
                           "results will pool both. Recording %s from now on", output_dir, resumed_episodes, serving,
                           describe(policy))
        record_run_policy(output_dir, shard, policy)


def _check_policy_runs_settings(client: Any, env_spec: str, config: Any, resumed: Optional[Path],
                                policy: Optional[Mapping[str, Any]] = None) -> None:
    """UsageError, before any episode, when the policy cannot run the plan: a gr00t-server policy served without the
    sim wrapper (`policy` is its record; every episode errored on the flat observations a rollout sends), one served
    for another embodiment than a task's env, a replay whose execution horizon is not --n-action-steps, or
    --n-action-steps or --rtc-frozen-steps beyond its chunk (a failed task, a NaN success rate and advice to --resume
    the same settings)."""
    from .cli_errors import UsageError
    from .policy_identity import check_serves_env_embodiments, check_takes_flat_observations
    from .rollout.policy_io import HorizonSpec
    from .rollout.replay_plan import check_replay_horizon
    from .suites import resolve_tasks

    try:
        check_takes_flat_observations(policy)
        check_serves_env_embodiments(policy, [task.env_name for task in resolve_tasks(env_spec)[0]])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        check_replay_horizon(policy, config)
    except ValueError as exc:
        raise UsageError(f"the policy server cannot run this rollout: {exc}{_started_with(resumed)}") from None
    try:
        spec = HorizonSpec.from_modality_config(client.get_modality_config())
    except Exception as exc:  # noqa: BLE001 - the run itself reports a policy whose config cannot be read
        logger.debug("could not check the plan against the policy's modality config: %s", exc)
        return
    for flag, check, value in (("--n-action-steps", spec.check_n_action_steps, config.n_action_steps),
                               ("--rtc-frozen-steps", lambda k: spec.check_rtc_frozen_steps(k, config.n_action_steps),
                                config.rtc_frozen_steps)):
        try:
            check(value)
        except ValueError as exc:
            fix = (f"the run in {resumed} was started with it; start a new run (a new --output-dir) with another "
                   f"{flag}" if resumed is not None else f"pass a smaller {flag}" if value >= 1 else f"pass {flag} >= 1")
            raise UsageError(f"the policy server cannot run this rollout: {exc}; {fix}") from None


def _started_with(resumed: Optional[Path]) -> str:
    """For a refused --resume: the saved settings are the run's, so its fix is a new run."""
    return "" if resumed is None else (f" (the run in {resumed} was started with these settings: start a new run, in a "
                                       "new --output-dir, with the corrected ones)")


RAY_POLICY_PROBE_MS = 5000


def _ray_probe_client(server: Any, args: argparse.Namespace) -> Any:
    """A PolicyClient the driver asks a Ray run's server questions with (the run's flags, a short timeout: a server
    reachable from the workers only must not hold the start for a whole --timeout-ms)."""
    from gr00t_client import PolicyClient

    from . import connection

    options = {**connection.client_options(args), "timeout_ms": min(args.timeout_ms, RAY_POLICY_PROBE_MS)}
    return PolicyClient(host=server.host, port=server.port, **options)


def _ray_run_policy(servers: Any, args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """The policy every server of a Ray run serves, asked from the driver before any shard runs (as a plain run asks
    its one server); UsageError when two serve different ones (`merge` refuses such shards too). None, with a
    warning, when a server cannot be asked from here (reachable from the workers only): the run then records none."""
    from .cli_errors import UsageError
    from .policy_identity import describe, policy_record

    records = {}
    for server in servers:
        with _ray_probe_client(server, args) as client:
            records[str(server)] = policy_record(client)
    unknown = [name for name, record in records.items() if record is None]
    known = {name: record for name, record in records.items() if record is not None}
    fingerprints = {record.get("fingerprint") for record in known.values()}
    if len(fingerprints) > 1:
        tags = {record.get("embodiment_tag") for record in known.values()}
        fix = ("serve the same --embodiment-tag on every server" if len(tags) > 1 else
               "serve the same checkpoint (or dataset) on every server")
        raise UsageError("the policy servers of this Ray run serve different policies ("
                         + "; ".join(f"{name}: {describe(record)}" for name, record in known.items())
                         + f"); one run evaluates one policy: {fix}")
    if unknown:  # its episodes may be another policy's: naming the others' would claim too much
        logger.warning("could not ask %s from this machine which policy it serves; the run records no policy",
                       ", ".join(unknown))
        return None
    return next(iter(known.values()), None)
