"""Audit 13 (mutation testing): rollout action checks and accounting that no earlier test pinned down."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from eval.scale_fixtures import ACTION_HORIZON, ConstantPolicy
from gr00t_client import ActionError
from gr00t_eval.rollout import RolloutConfig
from gr00t_eval.rollout.policy_io import policy_actions
from gr00t_eval.shard import run_suite

WALK = dict(n_episodes=4, n_envs=2, n_action_steps=3, max_episode_steps=6, seed=100, vectorization="sync")
PUSH_SPACE = gym.spaces.Dict({"action.push": gym.spaces.Box(-1, 1, (3, 1), np.float32)})  # (n_action_steps, D)


class LateNaNPolicy(ConstantPolicy):
    """Finite first step of each chunk, NaN in its second: an executed step, not the first, is not a number."""

    def _get_action(self, observation, options=None):
        batch = np.asarray(observation["state.position"]).shape[0]
        chunk = np.ones((batch, ACTION_HORIZON, 1), np.float32)
        chunk[:, 1] = np.nan
        return {"action.push": chunk}, {}


def test_a_nan_in_a_later_executed_step_of_the_chunk_errors_the_episodes():
    """A NaN anywhere in the n_action_steps executed (not only the first) errors the episode, none is scored."""
    results = run_suite(LateNaNPolicy(), "walkto/fast", RolloutConfig(env_name="walkto/fast", **WALK))
    assert results["overall"]["n_errors"] == 4 and results["overall"]["n_episodes"] == 0
    assert all("non-finite values (NaN or inf)" in e["error"] for e in results["per_episode"])


def test_policy_actions_checks_every_executed_step_and_ignores_the_unexecuted_tail():
    """policy_actions refuses a NaN in step 2 of 3 executed, and passes a NaN only past n_action_steps."""
    chunk = np.zeros((2, ACTION_HORIZON, 1), np.float32)
    chunk[1, 2] = np.inf
    with pytest.raises(ActionError, match=r"rows \[1\]"):
        policy_actions({"action.push": chunk}, PUSH_SPACE, 3, 2)
    chunk[1, 2] = 0.0
    chunk[0, 3] = np.nan  # step 4: never executed with n_action_steps=3
    assert policy_actions({"action.push": chunk}, PUSH_SPACE, 3, 2)["action.push"].shape == (2, 3, 1)


def test_a_chunk_shorter_than_n_action_steps_is_refused_before_the_env_steps():
    """A policy returning fewer steps than the rollout executes is refused with the shapes named, not an IndexError."""
    with pytest.raises(ValueError, match="H >= n_action_steps=3"):
        policy_actions({"action.push": np.zeros((2, 2, 1), np.float32)}, PUSH_SPACE, 3, 2)


def test_position_errors_are_handed_over_only_for_the_rows_asked_about():
    """A lost position on a row not running an episode (idle at the end of a run) is not handed to the runner, which
    would score an errored episode that does not exist."""
    from gr00t_eval.rollout.policy_io import PolicyRowCursor

    cursor = PolicyRowCursor(2, 2)
    cursor.commit({0: 5, 1: 6})
    cursor.check_reply({"episode_index": [5, 9], "current_step": [0, 0], "execution_horizon": 2})
    assert cursor.take_position_errors([0]) == {}
    cursor.check_reply({"episode_index": [5, 9], "current_step": [2, 2], "execution_horizon": 2})
    assert list(cursor.take_position_errors([0, 1])) == [1]  # a row asked about gets its own


def test_env_state_reaches_the_policy_as_float32_whatever_the_envs_dtype():
    """A float64 (or int) env state is handed to the policy as float32, the dtype GR00T policies take."""
    from gr00t_client import ModalityConfig
    from gr00t_eval.rollout.policy_io import HorizonSpec, ObservationMapper

    spec = HorizonSpec.from_modality_config({"state": ModalityConfig([0], ["pos", "count"]),
                                             "action": ModalityConfig([0, 1], ["push"])})
    mapper = ObservationMapper(spec, ["state.pos", "state.count"])
    out = mapper({"state.pos": np.zeros((2, 1, 3), np.float64), "state.count": np.ones((2, 1, 1), np.int64)})
    assert out["state.pos"].dtype == np.float32 and out["state.count"].dtype == np.float32
