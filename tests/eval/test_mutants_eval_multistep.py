"""Audit 13 (mutation testing): MultiStepWrapper episode scoring that no earlier test pinned down."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from gr00t_eval.rollout.multistep import MultiStepWrapper


class ScriptedEnv(gym.Env):
    """Rewards and per-step success flags come from scripts; the state is the step counter (offset per reset)."""

    def __init__(self, rewards, successes, success_key="success", truncate_at=None):
        self.rewards, self.successes, self.success_key = list(rewards), list(successes), success_key
        self.truncate_at = truncate_at
        self.observation_space = gym.spaces.Dict({"state.pos": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)})
        self.action_space = gym.spaces.Dict({"action.move": gym.spaces.Box(-1, 1, (1,), np.float32)})
        self.resets = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.resets = 0, self.resets + 1
        return {"state.pos": np.array([100.0 * self.resets], np.float32)}, {}

    def step(self, action):
        reward, success = self.rewards[self.t], self.successes[self.t]
        self.t += 1
        truncated = self.truncate_at is not None and self.t >= self.truncate_at
        obs = {"state.pos": np.array([100.0 * self.resets + self.t], np.float32)}
        return obs, reward, False, truncated, {self.success_key: success}


def _run_episode(env, steps, **kwargs):
    wrapper = MultiStepWrapper(env, n_action_steps=1, max_episode_steps=steps, **kwargs)
    wrapper.reset(seed=0)
    action = {"action.move": np.zeros((1, 1), np.float32)}
    for _ in range(steps):
        _, _, terminated, truncated, info = wrapper.step(action)
        if terminated or truncated:
            return info["episode"]
    raise AssertionError("the episode did not end at max_episode_steps")


def test_success_reached_once_stays_a_success_without_terminate_on_success():
    """A success the env reported mid-episode scores the episode a success even when later steps report none."""
    env = ScriptedEnv([0.0] * 4, [False, True, False, False])
    summary = _run_episode(env, 4, terminate_on_success=False)
    assert summary.success and summary.length == 4


def test_is_success_alone_counts_as_a_reported_success():
    """An env that reports only 'is_success' has reported success (no 'no success reported' warning path)."""
    env = ScriptedEnv([0.0] * 3, [False, False, False], success_key="is_success")
    assert _run_episode(env, 3).success_reported


def test_max_reward_is_the_largest_step_reward_not_the_last():
    """max_reward is the maximum over the episode's step rewards (lerobot-eval's max_reward)."""
    env = ScriptedEnv([0.5, 3.0, 1.0], [False] * 3)
    summary = _run_episode(env, 3)
    assert summary.max_reward == 3.0 and summary.sum_reward == 4.5


def test_observation_history_does_not_leak_across_episodes():
    """After a reset, the stacked history holds only the new episode's first observation, not the last episode's."""
    env = ScriptedEnv([0.0] * 10, [False] * 10)
    wrapper = MultiStepWrapper(env, n_action_steps=1, max_episode_steps=10, state_delta_indices=[-2, -1, 0])
    wrapper.reset(seed=0, options={"episodes": [0]})
    for _ in range(3):
        wrapper.step({"action.move": np.zeros((1, 1), np.float32)})
    obs, _ = wrapper.reset(seed=1, options={"episodes": [1]})
    assert obs["state.pos"][:, 0].tolist() == [200.0, 200.0, 200.0]


def test_an_episode_that_errored_after_a_success_is_not_summarised_as_a_success():
    """A NaN reward after a reported success errors the episode, and its summary (and video name) say no success."""
    env = ScriptedEnv([0.0, float("nan"), 0.0], [True, False, False])
    summary = _run_episode(env, 3, terminate_on_success=False)
    assert summary.failure_reason is not None and "finite" in summary.failure_reason
    assert not summary.success


def test_a_partly_filled_history_pads_its_start_with_the_first_observation():
    """One step into an episode with deltas [-2, -1, 0], the stack is [first, first, latest], not [first, latest, latest]."""
    env = ScriptedEnv([0.0] * 5, [False] * 5)
    wrapper = MultiStepWrapper(env, n_action_steps=1, max_episode_steps=5, state_delta_indices=[-2, -1, 0])
    wrapper.reset(seed=0)
    obs, *_ = wrapper.step({"action.move": np.zeros((1, 1), np.float32)})
    assert obs["state.pos"][:, 0].tolist() == [100.0, 100.0, 101.0]


class ResetFailsEnv(ScriptedEnv):
    def reset(self, *, seed=None, options=None):
        raise RuntimeError("scene file missing")


def test_a_step_after_a_failed_reset_does_not_score_the_episode_again():
    """An episode whose reset failed is over: a later step neither runs the env nor reports a second summary."""
    env = ResetFailsEnv([1.0] * 3, [True] * 3)
    wrapper = MultiStepWrapper(env, n_action_steps=1, max_episode_steps=3)
    _, info = wrapper.reset(seed=0, options={"episodes": [7]})
    assert "reset failed" in info["episode"].failure_reason
    _, reward, terminated, truncated, info = wrapper.step({"action.move": np.zeros((1, 1), np.float32)})
    assert "episode" not in info and reward == 0.0 and not terminated and not truncated


def test_the_env_truncating_an_episode_ends_it_before_max_episode_steps():
    """An inner env's truncation (its own time limit) ends the episode there, scored with that length."""
    env = ScriptedEnv([1.0] * 10, [False] * 10, truncate_at=2)
    summary = _run_episode(env, 10)
    assert summary.length == 2 and summary.sum_reward == 2.0 and summary.failure_reason is None
