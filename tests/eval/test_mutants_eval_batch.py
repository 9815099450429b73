"""Audit 13 (mutation testing): a batch job whose episodes errored is not reported as done."""

from __future__ import annotations

import json

import numpy as np

from eval.scale_fixtures import ACTION_HORIZON, ConstantPolicy
from gr00t_eval.batch import Job, PolicyServerAddress, run_batch

WALK = dict(n_episodes=2, n_envs=1, n_action_steps=2, max_episode_steps=4, seed=3, vectorization="sync")


class NaNPolicy(ConstantPolicy):
    def _get_action(self, observation, options=None):
        batch = np.asarray(observation["state.position"]).shape[0]
        return {"action.push": np.full((batch, ACTION_HORIZON, 1), np.nan, np.float32)}, {}


def test_a_job_whose_episodes_all_errored_is_failed_with_the_reason_not_done(tmp_path):
    """Every episode errored (NaN actions): the job is "failed", naming how many errored and why, in the saved file."""
    job = Job("nan", "walkto/fast", PolicyServerAddress("127.0.0.1", 1), dict(WALK))
    path = tmp_path / "batch_results.json"
    batch = run_batch([job], path, policy_factory=lambda server: NaNPolicy())
    record = json.loads(path.read_text())["jobs"][0]
    assert batch["n_failed"] == 1 and batch["n_done"] == 0
    assert record["status"] == "failed" and record["n_errors"] == 2
    assert "2 of 2 episodes errored" in record["reason"] and "non-finite" in record["reason"]

