"""Audit 13 (mutation testing): shard results built from outcomes keep only the shard's own episodes."""

from __future__ import annotations

from gr00t_eval.metrics import EpisodeOutcome
from gr00t_eval.rollout import RolloutConfig
from gr00t_eval.shard import ShardSpec, merge_results, results_from_outcomes


def _outcomes(indices):
    return [EpisodeOutcome(episode_index=i, seed=i, success=True, sum_reward=1.0, max_reward=1.0, length=2,
                           extras={"task": "walkto/fast"}) for i in indices]


def test_a_shards_results_from_outcomes_leave_out_episodes_of_other_shards_and_merge_cleanly():
    """Outcomes of episodes outside shard 0/2's range are not reported as its own (they would merge twice)."""
    config = RolloutConfig(env_name="walkto/fast", n_episodes=4, seed=0)
    first = results_from_outcomes("walkto/fast", config, ShardSpec(0, 2), _outcomes(range(4)))
    assert [e["episode_index"] for e in first["per_episode"]] == [0, 1] and first["n_not_run"] == 0
    second = results_from_outcomes("walkto/fast", config, ShardSpec(1, 2), _outcomes([2, 3]))
    merged = merge_results([first, second])
    assert merged["status"] == "complete" and merged["overall"]["n_episodes"] == 4


def test_results_with_planned_episodes_not_run_are_incomplete_not_complete():
    """A shard's results holding fewer episodes than it planned say "incomplete" and how many did not run."""
    config = RolloutConfig(env_name="walkto/fast", n_episodes=4, seed=0)
    results = results_from_outcomes("walkto/fast", config, ShardSpec(0, 2), _outcomes([0]))
    assert results["status"] == "incomplete" and results["n_not_run"] == 1
    assert "1 episodes did not run" in results["stop_reason"]


def test_the_mean_task_success_leaves_out_a_task_whose_episodes_all_errored():
    """avg_task_pc_success averages the tasks that scored episodes; a task with only errored ones does not make it NaN."""
    config = RolloutConfig(env_name="walkto/fast,walkto/slow", n_episodes=2, seed=0)
    errored = [EpisodeOutcome(episode_index=i, seed=i, success=False, sum_reward=0.0, max_reward=0.0, length=0,
                              error="env step raised", extras={"task": "walkto/slow"}) for i in range(2)]
    results = results_from_outcomes(config.env_name, config, None, _outcomes([0, 1]) + errored)
    assert results["per_task"]["walkto/slow"]["n_errors"] == 2
    assert results["overall"]["avg_task_pc_success"] == 100.0
