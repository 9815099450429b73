"""Open-loop error metrics, rollout aggregates and the results.json files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gr00t_eval.metrics import EpisodeOutcome, NonFiniteError, action_errors, rollout_aggregates
from gr00t_eval.results import load_results, open_loop_results, rollout_results, write_results


def test_identical_actions_have_zero_error():
    gt = np.arange(12, dtype=np.float32).reshape(4, 3)
    errors = action_errors(gt, gt.copy(), {"arm": 2, "gripper": 1})
    assert errors.mse == 0.0 and errors.mae == 0.0
    assert errors.per_dim_mse == [0.0, 0.0, 0.0]


def test_errors_are_means_over_all_elements_in_physical_units():
    gt = np.zeros((2, 2))
    pred = np.array([[1.0, 0.0], [0.0, 3.0]])
    errors = action_errors(gt, pred, {"a": 2})
    assert errors.mse == pytest.approx((1 + 9) / 4)
    assert errors.mae == pytest.approx((1 + 3) / 4)


def test_errors_break_down_per_action_key_and_per_dimension():
    gt = np.zeros((2, 3))
    pred = np.array([[2.0, 0.0, 1.0], [2.0, 0.0, -1.0]])
    errors = action_errors(gt, pred, {"arm": 2, "gripper": 1})
    assert errors.per_dim_mse == [4.0, 0.0, 1.0]
    assert errors.per_dim_mae == [2.0, 0.0, 1.0]
    assert errors.per_key["arm"] == {"mse": 2.0, "mae": 1.0}
    assert errors.per_key["gripper"] == {"mse": 1.0, "mae": 1.0}


def test_mismatched_shapes_or_key_dims_are_rejected():
    with pytest.raises(ValueError, match="equal"):
        action_errors(np.zeros((3, 2)), np.zeros((2, 2)), {"a": 2})
    with pytest.raises(ValueError, match="sum to 3"):
        action_errors(np.zeros((3, 2)), np.zeros((3, 2)), {"a": 3})



@pytest.mark.parametrize("gt_value, pred_value, named", [
    (np.nan, 0.0, r"the ground truth holds nan at row 1, column 2 \(action key 'gripper', value 0\)"),
    (0.0, -np.inf, r"the prediction holds -inf at row 1, column 2 \(action key 'gripper', value 0\)"),
], ids=["nan-ground-truth", "inf-prediction"])
def test_a_non_finite_input_is_refused_naming_the_array_row_and_column_not_as_an_overflow(gt_value, pred_value, named):
    """It was reported as the arrays differing "by more than float64 can square or add up", which never happened."""
    gt, pred = np.zeros((2, 3)), np.zeros((2, 3))
    gt[1, 2], pred[1, 2] = gt_value, pred_value
    with pytest.raises(NonFiniteError, match=named + r"; expected finite actions \(no NaN or inf\)"):
        action_errors(gt, pred, {"arm": 2, "gripper": 1})


def test_finite_inputs_whose_squared_difference_overflows_are_refused_as_an_overflow():
    with pytest.raises(NonFiniteError, match=r"its action MSE is inf: the ground truth and prediction differ by more "
                                             r"than float64 can square or add up"):
        action_errors(np.full((2, 1), 1e200), np.zeros((2, 1)), {"arm": 1})

def _outcome(i, success, rewards=(1.0,), failure=None):
    return EpisodeOutcome(i, seed=10 + i, success=success, sum_reward=float(sum(rewards)), max_reward=float(max(rewards)),
                          length=len(rewards), video_path=f"/v/{i}.mp4", error=failure)


def test_rollout_aggregates_follow_lerobot_eval_over_the_episodes_without_an_error():
    outcomes = [_outcome(0, True, (1.0, 2.0)), _outcome(1, False, (0.0, 4.0)), _outcome(2, False, (0.5,), "boom")]
    agg = rollout_aggregates(outcomes, eval_s=6.0)
    # The errored episode is neither a success nor a failure: it is in no metric, only in n_errors.
    assert agg["pc_success"] == pytest.approx(50.0)
    assert agg["avg_sum_reward"] == pytest.approx((3.0 + 4.0) / 2)
    assert agg["avg_max_reward"] == pytest.approx((2.0 + 4.0) / 2)
    assert agg["n_episodes"] == 2 and agg["n_errors"] == 1
    assert agg["eval_s"] == 6.0 and agg["eval_ep_s"] == 2.0


def test_only_errored_episodes_give_no_success_rate_rather_than_zero():
    agg = rollout_aggregates([_outcome(0, False, failure="camera 'corner9' does not exist")], eval_s=1.0)
    assert agg["n_episodes"] == 0 and agg["n_errors"] == 1 and agg["pc_success"] != agg["pc_success"]  # NaN


def test_rollout_results_json_has_per_episode_entries_and_aggregates(tmp_path):
    outcomes = [_outcome(1, False, failure="env step raised"), _outcome(0, True)]
    path = write_results(tmp_path / "out" / "results.json", rollout_results(outcomes, 2.0, {"n_envs": 2}, "metaworld/reach-v3"))
    data = load_results(path)
    assert [e["episode_index"] for e in data["per_episode"]] == [0, 1]
    first = data["per_episode"][0]
    for key in ("seed", "success", "sum_reward", "max_reward", "length", "video_path"):
        assert key in first
    assert data["per_episode"][1]["error"] == "env step raised" and data["per_episode"][1]["success"] is None
    for key in ("pc_success", "avg_sum_reward", "avg_max_reward", "n_episodes", "eval_s", "eval_ep_s"):
        assert key in data["aggregated"]
    assert data["aggregated"]["pc_success"] == 100.0 and data["aggregated"]["n_errors"] == 1
    assert data["video_paths"] == ["/v/0.mp4", "/v/1.mp4"]
    assert data["config"] == {"n_envs": 2} and data["env_name"] == "metaworld/reach-v3"


def test_results_json_is_strict_json_without_nan(tmp_path):
    path = write_results(tmp_path / "r.json", {"value": math.nan, "array": np.arange(2), "scalar": np.float32(1.5)})
    data = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert data == {"value": None, "array": [0, 1], "scalar": 1.5}


def test_open_loop_results_average_plainly_over_trajectories():
    entries = {
        0: {"errors": action_errors(np.zeros((1, 1)), np.ones((1, 1)), {"a": 1}), "steps": 1},
        3: {"errors": action_errors(np.zeros((4, 1)), np.full((4, 1), 3.0), {"a": 1}), "steps": 4},
    }
    data = open_loop_results(entries, {"steps": 200}, skipped=[9])
    assert data["aggregated"]["avg_mse"] == pytest.approx((1 + 9) / 2)  # not weighted by steps
    assert data["trajectories"]["3"]["per_key"]["a"]["mae"] == 3.0
    assert data["skipped_trajectories"] == [9]
