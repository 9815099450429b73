"""An env that returns a NaN or inf reward: its episode is errored naming the step, never scored. The reward was
written as null and read back as 0.0, so one plan gave three answers: avg_sum_reward null for the uninterrupted run,
1.0 for its merged shards and for its resume."""

from __future__ import annotations

import json
import math

import numpy as np

from eval.scale_fixtures import ConstantPolicy, WalkToEnv, policy_server
from gr00t_client import EmbodimentTag
from gr00t_eval import cli
from gr00t_eval.metrics import EpisodeOutcome
from gr00t_eval.rollout.envs import register_env_prefix


class OddSeedWalk(WalkToEnv):
    """walkto that knows whether its seed is odd (`_odd`) and counts its steps (`_t`)."""

    def reset(self, *, seed=None, options=None):
        self._odd, self._t = seed is not None and seed % 2 == 1, 0
        return super().reset(seed=seed, options=options)


class NanWalk(OddSeedWalk):
    """walkto whose odd seeds get a NaN reward on their first step."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self._t += 1
        return obs, (math.nan if self._odd and self._t == 1 else reward), terminated, truncated, info


def make_nan_walk(task, **kwargs):
    return NanWalk(2.0)


ROLLOUT = ["rollout", "--env-name", "nanwalk/fast", "--n-episodes", "4", "--n-envs", "1", "--vectorization", "sync",
           "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0", "--no-video", "--allow-errors"]


def test_a_non_finite_reward_errors_its_episode_and_a_resume_scores_the_same(tmp_path):
    register_env_prefix("nanwalk", EmbodimentTag.NEW_EMBODIMENT, make_nan_walk)
    out = tmp_path / "run"
    with policy_server(ConstantPolicy()) as server:
        assert cli.main([*ROLLOUT, "--policy-client-port", str(server.port), "--output-dir", str(out)]) == 0
        whole = json.loads((out / "results.json").read_text())
        errored = {e["episode_index"]: e["error"] for e in whole["per_episode"] if e["error"]}
        assert sorted(errored) == [1, 3]
        assert "step 0: the env returned the reward nan, which is not a finite number" in errored[1]
        assert whole["overall"]["avg_sum_reward"] is not None and whole["overall"]["n_errors"] == 2
        (out / "results.json").unlink()  # as a killed run leaves it: the resume reads the episode log
        assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", str(server.port), "--allow-errors"]) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["overall"]["avg_sum_reward"] == whole["overall"]["avg_sum_reward"]


def test_a_null_reward_is_read_back_as_unknown_not_zero():
    outcome = EpisodeOutcome.from_json_dict({"episode_index": 0, "success": True, "sum_reward": None, "max_reward": None,
                                             "length": 3})
    assert math.isnan(outcome.sum_reward) and math.isnan(outcome.max_reward)
    assert EpisodeOutcome.from_json_dict({"episode_index": 0, "length": 3}).sum_reward == 0.0  # absent: an older log


class OddRewardWalk(WalkToEnv):
    """walkto whose seeds 0-2 return a reward that is not a number on their first step: None, an array, a string."""

    ODD = {0: None, 1: "1.0x"}

    def reset(self, *, seed=None, options=None):
        self._seed, self._t = seed, 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self._t += 1
        if self._t == 1 and self._seed == 2:
            reward = np.array([0.5, 0.5])
        elif self._t == 1 and self._seed in self.ODD:
            reward = self.ODD[self._seed]
        return obs, reward, terminated, truncated, info


def test_a_reward_that_is_not_a_number_is_named_with_its_type_not_reported_as_nan(tmp_path):
    """None, an array and a string were each reported as "the env returned the reward nan"."""
    register_env_prefix("oddreward", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: OddRewardWalk(2.0))
    out = tmp_path / "run"
    args = [a if a != "nanwalk/fast" else "oddreward/fast" for a in ROLLOUT]
    with policy_server(ConstantPolicy()) as server:
        assert cli.main([*args, "--policy-client-port", str(server.port), "--output-dir", str(out)]) == 0
    errors = {e["episode_index"]: e["error"] for e in json.loads((out / "results.json").read_text())["per_episode"]}
    assert "step 0: the env returned the reward None (NoneType), which is not a number" in errors[0]
    assert "the reward '1.0x' (str), which is not a number" in errors[1]
    assert "the reward array of shape (2,) (float64), which is not a number" in errors[2]
    assert errors[3] is None and not any("nan" in (e or "") for e in errors.values())
    assert np.isfinite(json.loads((out / "results.json").read_text())["overall"]["avg_sum_reward"])


class HugeRewardWalk(OddSeedWalk):
    """walkto (never at its goal in 6 steps) rewarding 1e308: every step for odd seeds (their sum overflows float64),
    the first step only for even seeds (their sum is finite, and so is its mean over episodes)."""

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        self._t += 1
        return obs, (1e308 if self._odd or self._t == 1 else 0.0), terminated, truncated, info


def test_finite_rewards_whose_sum_overflows_error_their_episode_and_finite_sums_average_finitely(tmp_path):
    """sum_reward, avg_sum_reward and avg_max_reward were inf, written as null (unknown) in a run reported complete."""
    register_env_prefix("hugewalk", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: HugeRewardWalk(0.01))
    out = tmp_path / "run"
    args = [a if a != "nanwalk/fast" else "hugewalk/fast" for a in ROLLOUT]
    with policy_server(ConstantPolicy()) as server:
        assert cli.main([*args, "--policy-client-port", str(server.port), "--output-dir", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    errors = {e["episode_index"]: e["error"] for e in data["per_episode"]}
    assert errors[0] is None and errors[2] is None
    assert ("step 1: the env's rewards add up to inf (each is finite, their sum is past float64's range); the episode "
            "cannot be scored") in errors[1] and errors[3] is not None
    assert data["overall"]["avg_sum_reward"] == 1e308 and data["overall"]["avg_max_reward"] == 1e308
    assert data["overall"]["n_episodes"] == 2 and data["overall"]["n_errors"] == 2
