"""Audit 13 (mutation testing): metric behaviour no earlier test pinned down."""

from __future__ import annotations

import numpy as np
import pytest

from gr00t_eval.metrics import EpisodeOutcome, action_errors, rollout_aggregates


def test_key_dims_that_cover_fewer_columns_than_the_arrays_are_refused():
    """Action keys summing to fewer dims than the arrays have are refused, not scored on a subset of columns."""
    with pytest.raises(ValueError, match="sum to 2"):
        action_errors(np.zeros((3, 3)), np.ones((3, 3)), {"arm": 2})


def test_errors_over_zero_steps_are_refused_rather_than_nan():
    """Zero steps give an error, never a NaN MSE that would pass as a score."""
    with pytest.raises(ValueError, match="zero steps"):
        action_errors(np.zeros((0, 2)), np.zeros((0, 2)), {"arm": 2})


def test_avg_length_is_the_mean_over_finished_episodes_only():
    """avg_length is the plain mean length of the episodes that finished; an errored episode's length is left out."""
    outcomes = [EpisodeOutcome(i, i, False, 0.0, 0.0, length) for i, length in enumerate((1, 2, 9))]
    outcomes.append(EpisodeOutcome(3, 3, False, 0.0, 0.0, 1000, error="env step raised"))
    assert rollout_aggregates(outcomes, 1.0)["avg_length"] == pytest.approx(4.0)


def test_an_older_log_line_with_failure_reason_reads_back_as_an_errored_episode():
    """An episodes.jsonl line of an older gr00t-eval (`failure_reason`) is read as errored, not as a failure."""
    outcome = EpisodeOutcome.from_json_dict({"episode_index": 4, "seed": 9, "success": False, "sum_reward": 0.0,
                                             "max_reward": 0.0, "length": 3, "failure_reason": "physics blew up"})
    assert outcome.error == "physics blew up" and not outcome.finished
    agg = rollout_aggregates([outcome, EpisodeOutcome(5, 10, True, 1.0, 1.0, 2)], 1.0)
    assert agg["n_errors"] == 1 and agg["n_episodes"] == 1 and agg["pc_success"] == 100.0
