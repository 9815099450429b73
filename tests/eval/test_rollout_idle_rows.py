"""A row with no episode left to run sends the policy a running row's observation, not the last one of the episode
it finished: when that episode ended on a NaN state (a diverged simulator, scored a failure), the server refused every
later request and the healthy episode still running on another row was errored. A real server on loopback."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("gymnasium")

from eval.scale_fixtures import ConstantPolicy, WalkToEnv  # noqa: E402
from gr00t_client import PolicyClient  # noqa: E402
from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout  # noqa: E402
from serving import running_server  # noqa: E402


class DivergingWalk(WalkToEnv):
    """walkto whose episode with seed 1 ends after its first step on a NaN state (terminated, no success)."""

    def reset(self, *, seed=None, options=None):
        self.diverges = seed == 1
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self.diverges:
            return {**obs, "state.position": np.array([math.nan], np.float32)}, 0.0, True, False, {"success": False}
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_a_nan_that_ended_an_episode_does_not_error_the_episode_still_running_on_another_row(vectorization):
    register_env_prefix("diverging", "new_embodiment", lambda task, **kwargs: DivergingWalk(0.25))
    config = RolloutConfig("diverging/walk", n_episodes=2, n_envs=2, seed=0, max_episode_steps=16, n_action_steps=2,
                           vectorization=vectorization,
                           env_timeout_s=30 if vectorization == "async" else None)
    with running_server(ConstantPolicy()) as server, PolicyClient("127.0.0.1", server.port) as client:
        result = run_rollout(client, config, progress=False)
    by_episode = {outcome.episode_index: outcome for outcome in result.outcomes}
    assert by_episode[1].error is None and not by_episode[1].success  # the diverged one: a failure, as it stands
    assert by_episode[0].error is None, by_episode[0].error
    assert by_episode[0].success and by_episode[0].length == 8  # 2 units at 0.25 per step, after row 1 went idle
