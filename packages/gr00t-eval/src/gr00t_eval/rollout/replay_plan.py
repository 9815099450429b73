"""What a replay server (a policy that replays recorded steps by its own count) needs of a rollout's plan, checked
without a simulator: `gr00t-eval merge`, shard plans and batch jobs import it where gymnasium may be missing."""

from __future__ import annotations

from typing import Any, Mapping, Optional


def replay_drift_error(horizon: int, n_action_steps: int) -> str:
    """Why a replay that advances `horizon` recorded steps per call cannot be rolled out with `n_action_steps`."""
    return (f"the policy serves recorded steps by its own count and advances {horizon} steps per call, but the envs "
            f"execute n_action_steps={n_action_steps} of each chunk, so the replay would drift (a wrong success rate); "
            f"serve it with --execution-horizon {n_action_steps}, or run with --n-action-steps {horizon}")


ASYNC_REPLAY_ERROR = (
    "the policy reports its step (current_step: it replays recorded steps by its own count, as a replay server does), "
    "so it cannot serve --client-chunking async, which asks for the next chunk in the middle of a chunk; use "
    "--client-chunking off or sync"
)


def check_replay_horizon(policy: Optional[Mapping[str, Any]], config: Any) -> None:
    """ValueError when `policy` (a served policy's record) replays recorded steps by its own count and the plan cannot
    follow it: --n-action-steps other than the replay's execution horizon, or --client-chunking async. Checked per
    call too (PolicyIO), where it errored every episode: the run scored nothing and advised a --resume that repeats
    the settings. The CLI, run_suite (batch jobs, shards) and run_rollout check it before any episode."""
    from ..policy_identity import serves_replay

    if not serves_replay(policy):
        return
    if config.client_chunking == "async":
        raise ValueError(ASYNC_REPLAY_ERROR)
    horizon = policy["identity"].get("execution_horizon")
    if isinstance(horizon, int) and not isinstance(horizon, bool) and horizon != config.n_action_steps:
        raise ValueError(replay_drift_error(horizon, config.n_action_steps))
