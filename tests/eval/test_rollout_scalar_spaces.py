"""A rollout of an env whose action or state is a scalar Box (shape ()): D = 1 of the policy's arrays is that value."""

from __future__ import annotations

import string

import gymnasium as gym
import numpy as np
import pytest

from gr00t_client import BasePolicy, ModalityConfig
from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout


class ScalarGripperEnv(gym.Env):
    """A scalar gripper action and a scalar opening state; the state is the last action executed."""

    def __init__(self):
        self.observation_space = gym.spaces.Dict({
            "video.cam": gym.spaces.Box(0, 255, (2, 2, 3), np.uint8),
            "state.opening": gym.spaces.Box(-1.0, 1.0, (), np.float32),
            "annotation.task": gym.spaces.Text(64, charset=string.printable),
        })
        self.action_space = gym.spaces.Dict({"action.gripper": gym.spaces.Box(-1.0, 1.0, (), np.float32)})
        self.actions = []

    def _obs(self):
        opening = self.actions[-1] if self.actions else 0.0
        return {"video.cam": np.zeros((2, 2, 3), np.uint8), "state.opening": np.float32(opening),
                "annotation.task": "open the gripper"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.actions = []
        return self._obs(), {}

    def step(self, action):
        self.actions.append(float(action["action.gripper"]))
        return self._obs(), 0.0, False, False, {"success": False}


class CountingPolicy(BasePolicy):
    """Predicts steps 0.1, 0.2, ... as (B, H, 1) chunks and keeps the state arrays it was sent."""

    def __init__(self):
        super().__init__(strict=False)
        self.states = []

    def get_modality_config(self):
        return {"video": ModalityConfig([0], ["cam"]), "state": ModalityConfig([-1, 0], ["opening"]),
                "action": ModalityConfig([0, 1], ["gripper"]), "language": ModalityConfig([0], ["annotation.task"])}

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        self.states.append(np.array(observation["state.opening"]))
        return {"action.gripper": np.array([[[0.1], [0.2]]], np.float32)}, {}


@pytest.fixture
def scalar_env():
    envs = []

    def build(task, **kwargs):
        envs.append(ScalarGripperEnv())
        return envs[-1]

    register_env_prefix("scalargripper", "new_embodiment", build)
    return envs


@pytest.mark.parametrize("client_chunking", ["off", "sync"])
def test_a_policys_one_value_steps_drive_a_scalar_action_space(scalar_env, client_chunking):
    """Every episode errored as 'policy get_action failed': steps of shape (1,) against the space's ()."""
    config = RolloutConfig("scalargripper/open", n_episodes=1, n_envs=1, seed=0, max_episode_steps=4, n_action_steps=2,
                           client_chunking=client_chunking)
    result = run_rollout(CountingPolicy(), config, progress=False)
    assert [outcome.error for outcome in result.outcomes] == [None]
    assert scalar_env[-1].actions == pytest.approx([0.1, 0.2, 0.1, 0.2])


def test_a_scalar_state_is_sent_to_the_policy_as_one_value_per_history_step(scalar_env):
    policy = CountingPolicy()
    config = RolloutConfig("scalargripper/open", n_episodes=1, n_envs=1, seed=0, max_episode_steps=4, n_action_steps=2)
    run_rollout(policy, config, progress=False)
    assert [state.shape for state in policy.states] == [(1, 2, 1), (1, 2, 1)]
    assert policy.states[1][0, :, 0] == pytest.approx([0.1, 0.2])
