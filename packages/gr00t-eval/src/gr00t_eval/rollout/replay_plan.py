"""What a replay server (a policy that replays recorded steps by its own count) needs of a rollout's plan, checked
without a simulator: `gr00t-eval merge`, shard plans and batch jobs import it where gymnasium may be missing."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence


def replay_drift_error(horizon: int, n_action_steps: int, chunk: Optional[int] = None) -> str:
    """Why a replay that advances `horizon` recorded steps per call cannot be rolled out with `n_action_steps`; a
    replay served with --execution-horizon n_action_steps is advised only where it can be (its `chunk` holds as many
    actions; unknown before the first reply)."""
    serve = ""
    if chunk is None:
        serve = f"serve it with --execution-horizon {n_action_steps} (if its action chunks hold that many), or "
    elif n_action_steps <= chunk:
        serve = f"serve it with --execution-horizon {n_action_steps}, or "
    return (f"the policy serves recorded steps by its own count and advances {horizon} steps per call, but the envs "
            f"execute n_action_steps={n_action_steps} of each chunk, so the replay would drift (a wrong success rate); "
            f"{serve}run with --n-action-steps {horizon}")


ASYNC_REPLAY_ERROR = (
    "the policy reports its step (current_step: it replays recorded steps by its own count, as a replay server does), "
    "so it cannot serve --client-chunking async, which asks for the next chunk in the middle of a chunk; use "
    "--client-chunking off or sync"
)


def check_replay_horizon(policy: Optional[Mapping[str, Any]], config: Any,
                         episodes: Optional[Sequence[int]] = None) -> None:
    """ValueError when `policy` (a served policy's record) replays recorded steps by its own count and the plan cannot
    follow it: --n-action-steps other than the replay's execution horizon, --client-chunking async, or episodes
    beyond its recording (episode i replays recorded episode i: each extra one errored at its reset, after the others
    ran): `episodes` where run_rollout lists them, else first_episode .. first_episode + n_episodes - 1. Checked per
    call too (PolicyIO), where it errored every episode: the run scored nothing and advised a --resume that repeats the
    settings. The CLI, run_suite (batch jobs, shards) and run_rollout check it before any
    episode."""
    from ..policy_identity import replay_count, serves_replay

    if not serves_replay(policy):
        return
    if config.client_chunking == "async":
        raise ValueError(ASYNC_REPLAY_ERROR)
    horizon = replay_count(policy, "execution_horizon")
    if horizon is not None and horizon != config.n_action_steps:
        raise ValueError(replay_drift_error(horizon, config.n_action_steps))
    recorded = replay_count(policy, "episodes")
    if recorded is None:
        return
    if episodes is not None:  # the listed ones run, whatever n_episodes says
        past = sorted(episode for episode in episodes if episode >= recorded)
        if past:
            raise ValueError(f"the policy replays a recording of {recorded} episodes (0 .. {recorded - 1}), and "
                             f"episode i of a task replays recorded episode i, but episodes= lists {past}, past the "
                             f"recording, so each would error at its reset; list episodes below {recorded}, or record "
                             "more episodes")
    elif config.first_episode + config.n_episodes > recorded:
        raise ValueError(replay_episodes_error(recorded, config.first_episode, config.n_episodes))


def replay_episodes_error(recorded: int, first_episode: int, n_episodes: int) -> str:
    """Why a plan of episodes first_episode .. first_episode + n_episodes - 1 cannot run against a replay of
    `recorded` episodes (episode i replays recorded episode i)."""
    fix = (f"pass --n-episodes {recorded - first_episode} (or fewer)" if first_episode < recorded
           else f"start at an episode below {recorded}")
    return (f"the policy replays a recording of {recorded} episodes (0 .. {recorded - 1}), and episode i of a task "
            f"replays recorded episode i, but the plan runs episodes {first_episode} .. "
            f"{first_episode + n_episodes - 1} (n_episodes={n_episodes}), so each one past the recording would error "
            f"at its reset; {fix}, or record more episodes")
