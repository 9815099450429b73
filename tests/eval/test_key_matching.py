"""The policy's camera and state keys are paired with a dataset's or env's by name first; only those left over are
paired by position. When one name matched, every key was paired by position: the policy's 'wrist_image' was given
the dataset's 'image' camera (open-loop) or the env's (rollout), with one warning."""

from __future__ import annotations

import numpy as np
import pytest

from eval.dataset_factory import frame_colour, make_dataset
from gr00t_client import BasePolicy, ModalityConfig
from gr00t_eval.dataset import LeRobotDataset
from gr00t_eval.key_matching import match_keys
from gr00t_eval.open_loop import OpenLoopConfig, evaluate_trajectory


def test_names_pair_first_and_only_the_rest_by_position():
    assert match_keys(["wrist_image", "front"], ["image", "wrist_image"]) == (
        {"wrist_image": "wrist_image", "front": "image"}, [("front", "image")])
    assert match_keys(["a", "b"], ["b", "a"]) == ({"a": "a", "b": "b"}, [])
    assert match_keys(["x", "y"], ["p", "q"]) == ({"x": "p", "y": "q"}, [("x", "p"), ("y", "q")])
    assert match_keys(["a", "x", "y"], ["a", "p"]) is None  # two left over against one: nothing says how


def test_open_loop_gives_a_camera_of_a_matching_name_its_own_frames(tmp_path):
    root = make_dataset(tmp_path / "ds", lengths=(8,), fps=10)  # cameras: image (0), wrist_image (1)
    seen = {}

    class Recorder(BasePolicy):
        def get_modality_config(self):
            return {"video": ModalityConfig([0], ["wrist_image", "front"]), "state": ModalityConfig([0], ["arm", "gripper"]),
                    "action": ModalityConfig(list(range(4)), ["arm", "gripper"])}

        def reset(self, options=None):
            return {}

        def _get_action(self, observation, options=None):
            for key, value in observation["video"].items():
                blue = float(np.asarray(value)[0, 0].reshape(-1, 3).mean(0)[2])
                seen[key] = min((0, 1), key=lambda camera: abs(blue - frame_colour(0, camera, 0)[2]))
            return {"arm": np.zeros((1, 4, 3), np.float32), "gripper": np.zeros((1, 4, 1), np.float32)}, {}

    policy = Recorder(strict=False)
    config = OpenLoopConfig(str(root), traj_ids=(0,), steps=4, execution_horizon=4, plot=False)
    evaluate_trajectory(policy, LeRobotDataset(root), 0, config, policy.get_modality_config(), report=lambda _: None)
    assert seen == {"wrist_image": 1, "front": 0}


def test_rollout_gives_a_camera_of_a_matching_name_its_own_frames():
    pytest.importorskip("gymnasium")
    from gr00t_eval.rollout.policy_io import HorizonSpec, ObservationMapper

    spec = HorizonSpec.from_modality_config({"video": ModalityConfig([0], ["wrist_image", "front"]),
                                             "action": ModalityConfig([0, 1], ["a"])})
    mapper = ObservationMapper(spec, ["video.image", "video.wrist_image"])
    assert mapper.sources == {"video.wrist_image": "video.wrist_image", "video.front": "video.image"}


def two_camera_env(task="", **kwargs):
    """A flat GR00T env that declares its cameras scene (ego, frames of 10) then hand (wrist, 20): not alphabetically."""
    import string

    import gymnasium as gym

    class TwoCameraEnv(gym.Env):
        cameras = {"video.scene": 10, "video.hand": 20}
        observation_space = gym.spaces.Dict({
            **{key: gym.spaces.Box(0, 255, (4, 4, 3), np.uint8) for key in cameras},
            "state.pos": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
            "annotation.task": gym.spaces.Text(32, charset=string.printable),
        })
        action_space = gym.spaces.Dict({"action.move": gym.spaces.Box(-1, 1, (1,), np.float32)})

        def _obs(self):
            frames = {key: np.full((4, 4, 3), value, np.uint8) for key, value in self.cameras.items()}
            return {**frames, "state.pos": np.zeros(1, np.float32), "annotation.task": "look"}

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return self._obs(), {}

        def step(self, action):
            return self._obs(), 0.0, True, False, {"success": True}

    return TwoCameraEnv()


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_rollout_pairs_leftover_cameras_in_the_order_the_env_returns_them(vectorization):
    """gymnasium's Dict space sorts its keys: the policy's ego_view was given the env's second camera, video.hand."""
    pytest.importorskip("gymnasium")
    from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout

    frames = []

    class Recorder(BasePolicy):
        def get_modality_config(self):
            return {"video": ModalityConfig([0], ["ego_view", "wrist_view"]), "state": ModalityConfig([0], ["pos"]),
                    "action": ModalityConfig([0, 1], ["move"]), "language": ModalityConfig([0], ["annotation.task"])}

        def reset(self, options=None):
            return {}

        def _get_action(self, observation, options=None):
            frames.append({key: int(np.asarray(value).flat[0]) for key, value in observation.items() if key.startswith("video.")})
            return {"action.move": np.zeros((len(observation["annotation.task"]), 2, 1), np.float32)}, {}

    register_env_prefix("twocams", "new_embodiment", two_camera_env)
    config = RolloutConfig("twocams/look", n_episodes=2, n_envs=2, seed=0, max_episode_steps=2, n_action_steps=2,
                           vectorization=vectorization,
                           env_timeout_s=30 if vectorization == "async" else None)
    result = run_rollout(Recorder(strict=False), config, progress=False)
    assert result.n_errors == 0
    assert frames[0] == {"video.ego_view": 10, "video.wrist_view": 20}
