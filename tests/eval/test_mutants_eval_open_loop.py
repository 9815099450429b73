"""Audit 13 (mutation testing): open-loop scoring checks that no earlier test pinned down."""

from __future__ import annotations

import pytest

from eval.dataset_factory import make_dataset
from gr00t_eval.dataset import LeRobotDataset
from gr00t_eval.open_loop import OpenLoopConfig, TrajectoryError, evaluate_trajectory
from gr00t_server.policies.replay import ReplayPolicy


class PinnedReplay(ReplayPolicy):
    """A replay that always moves to episode 1, whatever episode it is reset to (another copy of the dataset, say)."""

    def reset(self, options=None):
        return super().reset({**(options or {}), "episode_index": 1})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ol") / "ds", lengths=(6, 6), cameras=())


def test_a_policy_that_replays_another_episode_errors_the_trajectory_instead_of_scoring_it(dataset):
    """A policy reporting episode 1 while trajectory 0 is evaluated is a TrajectoryError, not a scored MSE."""
    policy = PinnedReplay(dataset, execution_horizon=4, strict=False)
    config = OpenLoopConfig(str(dataset), traj_ids=[0], execution_horizon=4, plot=False)
    with pytest.raises(TrajectoryError, match="reports episode 1 while the evaluation is at trajectory 0"):
        evaluate_trajectory(policy, LeRobotDataset(dataset), 0, config, policy.get_modality_config(), report=lambda _: None)


def test_history_rows_past_the_episode_end_repeat_its_last_step():
    """Positive history deltas at the last step give the last row again, never an index past the episode."""
    from gr00t_eval.open_loop import history_steps

    assert history_steps(5, [-1, 0, 1, 3], 6).tolist() == [4, 5, 5, 5]
    assert history_steps(0, [-2, 0], 6).tolist() == [0, 0]


class OffsetReplay(ReplayPolicy):
    """A replay whose every predicted action is 2 above the recording: MSE 4 and MAE 2 on every trajectory."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        return {key: value + 2.0 for key, value in action.items()}, info


def test_an_id_equal_to_the_episode_count_is_refused_and_the_averages_are_mse_and_mae_of_the_scored(dataset, tmp_path):
    """traj id == the episode count is past the end (refused before any trajectory, not an aborted run), the last id
    is not, and avg_mae is the MAE average, not the MSE's."""
    from gr00t_eval.open_loop import evaluate_open_loop

    policy = OffsetReplay(dataset, execution_horizon=4, strict=False)
    config = OpenLoopConfig(str(dataset), traj_ids=[0, 2], execution_horizon=4, plot=False, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"\[2\] are not in the dataset .*: it has 2 episodes \(ids 0 to 1\)"):
        evaluate_open_loop(policy, config, report=lambda _: None, progress=False)
    config = OpenLoopConfig(str(dataset), traj_ids=[0, 1], execution_horizon=4, plot=False, output_dir=str(tmp_path))
    result = evaluate_open_loop(policy, config, report=lambda _: None, progress=False)
    assert result.skipped == [] and list(result.trajectories) == [0, 1] and result.status == "complete"
    assert result.avg_mse == pytest.approx(4.0) and result.avg_mae == pytest.approx(2.0)


def test_an_execution_horizon_past_the_policys_action_horizon_is_refused_up_front():
    """execution_horizon 5 against a 4-step action horizon is a ValueError before any trajectory runs."""
    from gr00t_client import ModalityConfig
    from gr00t_eval.open_loop import check_action_steps

    with pytest.raises(ValueError, match=r"execution_horizon must be in \[1, 4\]"):
        check_action_steps(ModalityConfig([0, 1, 2, 3], ["arm"]), 5)
