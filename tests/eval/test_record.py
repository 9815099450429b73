"""`gr00t-eval record`: Meta-World's scripted expert into a LeRobot v2.1 dataset that replays deterministically."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering

from gr00t_eval.dataset import LeRobotDataset  # noqa: E402
from gr00t_eval.record import record_metaworld  # noqa: E402

pytest.importorskip("metaworld")
pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("record") / "reach"
    summary = record_metaworld("metaworld/reach-v3", 2, root, seed=7, image_size=32, progress=False)
    return summary, LeRobotDataset(root)


def test_each_episode_stores_its_seed_and_the_expert_succeeds(recorded):
    summary, dataset = recorded
    assert summary.seeds == [7, 8] and summary.successes == [True, True]
    assert [dataset.episode(i).extras["seed"] for i in range(2)] == [7, 8]
    assert dataset.episode_lengths == summary.lengths
    assert dataset.codebase_version == "v2.1"


def test_the_dataset_has_camera_state_action_and_language_groups(recorded):
    _, dataset = recorded
    assert dataset.video_keys == ["corner2"]
    assert dataset.state_dims() == {"eef_pos": 3, "gripper": 1, "objects": 14, "goal": 3}
    assert dataset.action_dims() == {"eef_delta": 3, "gripper": 1}
    episode = dataset.episode(0)
    assert episode.frames("corner2", [0]).shape == (1, 32, 32, 3)
    assert episode.language(dataset.language_keys[0])[0] == "reach the red goal position"


def test_replaying_the_recorded_actions_with_the_seed_reproduces_the_episode(recorded):
    from gr00t_eval.rollout import make_env

    _, dataset = recorded
    episode = dataset.episode(1)
    env = make_env("metaworld/reach-v3", image_size=32)
    try:
        obs, _ = env.reset(seed=episode.extras["seed"])
        states, success = [], False
        for t in range(episode.length):
            states.append(obs["state.eef_pos"])
            action = {"action.eef_delta": episode.actions("eef_delta")[t], "action.gripper": episode.actions("gripper")[t]}
            obs, _, _, _, info = env.step(action)
            success = info["success"]
    finally:
        env.close()
    assert np.array_equal(np.stack(states), episode.states("eef_pos"))
    assert success


def test_record_refuses_other_envs(tmp_path):
    with pytest.raises(ValueError, match="metaworld/<task>"):
        record_metaworld("pusht/PushT-v0", 1, tmp_path / "x", progress=False)
