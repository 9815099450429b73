"""Audit 13 (mutation testing): a batch job whose episodes errored is not reported as done."""

from __future__ import annotations

import json

from eval.scale_fixtures import HangsOnCall
from test_rollout_action_checks import NaNPolicy
from gr00t_eval.batch import Job, PolicyServerAddress, run_batch

WALK = dict(n_episodes=2, n_envs=1, n_action_steps=2, max_episode_steps=4, seed=3, vectorization="sync")


def test_a_job_whose_episodes_all_errored_is_failed_with_the_reason_not_done(tmp_path):
    """Every episode errored (NaN actions): the job is "failed", naming how many errored and why, in the saved file."""
    job = Job("nan", "walkto/fast", PolicyServerAddress("127.0.0.1", 1), dict(WALK))
    path = tmp_path / "batch_results.json"
    batch = run_batch([job], path, policy_factory=lambda server: NaNPolicy())
    record = json.loads(path.read_text())["jobs"][0]
    assert batch["n_failed"] == 1 and batch["n_done"] == 0
    assert record["status"] == "failed" and record["n_errors"] == 2
    assert "2 of 2 episodes errored" in record["reason"] and "non-finite" in record["reason"]



def test_a_job_whose_server_stopped_part_way_is_failed_naming_why_not_done(tmp_path):
    """The run was aborted (the server shut down mid-job) with no episode errored: still "failed", with the stop
    reason, not "done" over the episodes that ran before it."""
    from serving import stopped_while_it_hangs

    with stopped_while_it_hangs(HangsOnCall(call=4)) as server:
        job = Job("stopped", "walkto/slow", PolicyServerAddress("127.0.0.1", server.port, timeout_ms=20000),
                  dict(WALK, n_episodes=6))
        batch = run_batch([job], tmp_path / "batch_results.json")
    record = batch["jobs"][0]
    assert record["results"]["status"] == "aborted", record["results"]["status"]
    assert batch["n_failed"] == 1 and record["status"] == "failed"
    assert "is shutting down" in record["reason"], record["reason"]
