"""MultiStepWrapper: chunk execution, history stacking, episode end, failure isolation, videos."""

from __future__ import annotations

import string

import gymnasium as gym
import numpy as np
import pytest

from gr00t_eval.rollout.multistep import MultiStepWrapper, success_from_info
from gr00t_eval.video import EpisodeVideoRecorder


class StepEnv(gym.Env):
    """Observations carry the step counter; succeeds at `success_at`, raises at `raise_at`."""

    def __init__(self, success_at=None, raise_at=None, terminate_at=None, success_key="success"):
        self.success_at, self.raise_at, self.terminate_at, self.success_key = success_at, raise_at, terminate_at, success_key
        self.observation_space = gym.spaces.Dict({
            "video.cam": gym.spaces.Box(0, 255, (4, 4, 3), np.uint8),
            "state.pos": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
            "annotation.task": gym.spaces.Text(64, charset=string.printable),
        })
        self.action_space = gym.spaces.Dict({"action.move": gym.spaces.Box(-10, 10, (1,), np.float32)})
        self.actions = []

    def _obs(self):
        return {"video.cam": np.full((4, 4, 3), self.t, np.uint8), "state.pos": np.array([self.t], np.float32), "annotation.task": "count up"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        if self.raise_at is not None and self.t == self.raise_at:
            raise RuntimeError("simulator exploded")
        self.actions.append(float(action["action.move"][0]))
        self.t += 1
        success = self.success_at is not None and self.t >= self.success_at
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return self._obs(), float(self.t), terminated, False, {self.success_key: success}


def chunk(n, start=0.0):
    return {"action.move": (start + np.arange(n, dtype=np.float32))[:, None]}


def wrap(env, **kwargs):
    defaults = dict(n_action_steps=3, max_episode_steps=100)
    defaults.update(kwargs)
    return MultiStepWrapper(env, **defaults)


def test_executes_the_first_n_action_steps_of_a_chunk():
    env = StepEnv()
    wrapper = wrap(env, n_action_steps=3)
    wrapper.reset(seed=0)
    _, reward, terminated, truncated, info = wrapper.step(chunk(8))
    assert env.actions == [0.0, 1.0, 2.0]
    assert reward == 1.0 + 2.0 + 3.0
    assert info["env_steps"] == 3 and not terminated and not truncated


def test_history_is_stacked_at_the_delta_indices():
    wrapper = wrap(StepEnv(), n_action_steps=2, state_delta_indices=[-2, -1, 0], video_delta_indices=[-1, 0])
    wrapper.reset(seed=0)
    obs, *_ = wrapper.step(chunk(2))
    obs, *_ = wrapper.step(chunk(2))
    assert obs["state.pos"][:, 0].tolist() == [2.0, 3.0, 4.0]
    assert obs["video.cam"].shape == (2, 4, 4, 3)
    assert obs["video.cam"][:, 0, 0, 0].tolist() == [3, 4]
    assert obs["annotation.task"] == "count up"


class InPlaceEnv(StepEnv):
    """Hands out the same arrays every step, updated in place, as an env viewing MuJoCo's data.qpos or reusing its
    render buffer does."""

    def _obs(self):
        if not hasattr(self, "_buffers"):
            self._buffers = {"video.cam": np.zeros((4, 4, 3), np.uint8), "state.pos": np.zeros(1, np.float32)}
        self._buffers["video.cam"][...] = self.t
        self._buffers["state.pos"][...] = self.t
        return {**self._buffers, "annotation.task": "count up"}


def test_history_of_an_env_that_updates_its_arrays_in_place_keeps_each_steps_values():
    wrapper = wrap(InPlaceEnv(), n_action_steps=2, state_delta_indices=[-2, -1, 0], video_delta_indices=[-1, 0])
    wrapper.reset(seed=0)
    wrapper.step(chunk(2))
    obs, *_ = wrapper.step(chunk(2))
    assert obs["state.pos"][:, 0].tolist() == [2.0, 3.0, 4.0]  # was [4, 4, 4]: every entry the current step
    assert obs["video.cam"][:, 0, 0, 0].tolist() == [3, 4]


class InPlaceListEnv(StepEnv):
    """Keeps its state in a list it updates in place, as toy envs and simulators with Python state do."""

    def _obs(self):
        if not hasattr(self, "_pos"):
            self._pos = [0.0]
        self._pos[0] = float(self.t)
        return {**super()._obs(), "state.pos": self._pos}


def test_history_of_an_env_that_updates_a_list_state_in_place_keeps_each_steps_values():
    wrapper = wrap(InPlaceListEnv(), n_action_steps=1, state_delta_indices=[-1, 0])
    wrapper.reset(seed=0)
    obs, *_ = wrapper.step(chunk(1))
    assert obs["state.pos"][:, 0].tolist() == [0.0, 1.0]  # was [1, 1]: the kept list was the env's own
    obs, *_ = wrapper.step(chunk(1))
    assert obs["state.pos"][:, 0].tolist() == [1.0, 2.0]


class InPlaceTensorEnv(StepEnv):
    """Keeps its state in a torch tensor it updates in place (a GPU-batched simulator's CPU copy)."""

    def _obs(self):
        import torch

        if not hasattr(self, "_pos"):
            self._pos = torch.zeros(1)
        self._pos.fill_(float(self.t))
        return {**super()._obs(), "state.pos": self._pos}


def test_history_of_an_env_that_updates_a_torch_state_in_place_keeps_each_steps_values():
    pytest.importorskip("torch")
    wrapper = wrap(InPlaceTensorEnv(), n_action_steps=1, state_delta_indices=[-1, 0])
    wrapper.reset(seed=0)
    wrapper.step(chunk(1))
    obs, *_ = wrapper.step(chunk(1))
    assert obs["state.pos"][:, 0].tolist() == [1.0, 2.0]  # was [2, 2]


def test_history_before_the_episode_start_repeats_the_first_observation():
    wrapper = wrap(StepEnv(), state_delta_indices=[-15, 0])
    obs, _ = wrapper.reset(seed=0)
    assert obs["state.pos"].shape == (2, 1)
    assert obs["state.pos"][:, 0].tolist() == [0.0, 0.0]
    assert wrapper.observation_space["state.pos"].shape == (2, 1)


def test_history_reaching_far_back_is_padded_by_index_not_by_copies():
    """The padding inserted the first observation at the front once per missing step: quadratic in the history, so a
    server config's [-1000000, 0] hung the env's reset. Steps before the episode's first read its first observation."""
    wrapper = wrap(StepEnv(), n_action_steps=2, state_delta_indices=[-9999, -2, -1, 0])
    obs, _ = wrapper.reset(seed=0)
    assert obs["state.pos"][:, 0].tolist() == [0.0, 0.0, 0.0, 0.0]
    obs, *_ = wrapper.step(chunk(2))
    assert obs["state.pos"][:, 0].tolist() == [0.0, 0.0, 1.0, 2.0]


def test_delta_indices_beyond_the_history_kept_are_refused_naming_the_servers_config():
    with pytest.raises(ValueError, match=r"reach -1000000 steps back; at most 10000 are kept \(the policy server's "
                                         r"modality config"):
        wrap(StepEnv(), state_delta_indices=[-1000000, 0])


def test_positive_delta_indices_are_refused():
    with pytest.raises(ValueError, match="<= 0"):
        wrap(StepEnv(), state_delta_indices=[0, 1])


@pytest.mark.parametrize("setting, value, shown", [
    ("n_action_steps", 2.5, "float 2.5"), ("n_action_steps", True, "bool True"),
    ("max_episode_steps", 7.9, "float 7.9"), ("max_episode_steps", "8", "str '8'"),
])
def test_a_step_count_that_is_no_whole_number_is_refused_naming_it_as_rollout_config_does(setting, value, shown):
    """int() cut 2.5 steps per chunk to 2 and an episode limit of 7.9 to 7, and took True as 1."""
    with pytest.raises(ValueError, match=f"^{setting} must be a whole number >= 1, got {shown}$"):
        wrap(StepEnv(), **{setting: value})


def test_numpy_int_step_counts_are_taken_as_plain_ints():
    wrapper = wrap(StepEnv(), n_action_steps=np.int64(2), max_episode_steps=np.int32(4))
    assert (type(wrapper.n_action_steps), type(wrapper.max_episode_steps)) == (int, int)


def test_episode_terminates_on_success_mid_chunk_with_a_summary():
    env = StepEnv(success_at=4)
    wrapper = wrap(env, n_action_steps=3)
    wrapper.reset(seed=7, options={"episodes": [5]})
    wrapper.step(chunk(3))
    _, _, terminated, truncated, info = wrapper.step(chunk(3))
    assert terminated and not truncated
    assert len(env.actions) == 4  # stopped at the success step, not at the end of the chunk
    summary = info["episode"]
    assert (summary.episode_index, summary.seed, summary.success, summary.length) == (5, 7, True, 4)
    assert summary.sum_reward == 1 + 2 + 3 + 4 and summary.max_reward == 4.0


def test_is_success_counts_as_success():
    assert success_from_info({"is_success": True})
    assert not success_from_info({"reward": 1.0})
    wrapper = wrap(StepEnv(success_at=1, success_key="is_success"))
    wrapper.reset(seed=0)
    _, _, terminated, _, info = wrapper.step(chunk(3))
    assert terminated and info["episode"].success


def test_episode_is_truncated_at_max_episode_steps():
    env = StepEnv()
    wrapper = wrap(env, n_action_steps=4, max_episode_steps=6)
    wrapper.reset(seed=0)
    wrapper.step(chunk(4))
    _, _, terminated, truncated, info = wrapper.step(chunk(4))
    assert truncated and not terminated
    assert len(env.actions) == 6 and info["episode"].length == 6 and not info["episode"].success


def test_an_env_exception_ends_the_episode_as_failed_with_its_reason():
    wrapper = wrap(StepEnv(raise_at=4, success_at=50))
    wrapper.reset(seed=0)
    wrapper.step(chunk(3))
    _, _, terminated, _, info = wrapper.step(chunk(3))
    assert terminated
    assert not info["episode"].success
    assert "simulator exploded" in info["episode"].failure_reason and info["episode"].length == 4


def test_stepping_a_finished_or_idle_wrapper_is_a_no_op():
    env = StepEnv(success_at=1)
    wrapper = wrap(env)
    wrapper.reset(seed=0)
    wrapper.step(chunk(3))
    _, reward, terminated, truncated, info = wrapper.step(chunk(3))
    assert (reward, terminated, truncated, info["idle"]) == (0.0, False, False, True)
    assert len(env.actions) == 1
    obs, info = wrapper.reset(options={"episodes": [-1]})
    assert info["idle"] and obs["state.pos"].shape == (1, 1)


def test_a_recorder_writes_one_captioned_video_per_episode(tmp_path):
    import av

    recorder = EpisodeVideoRecorder(tmp_path, fps=10)
    wrapper = wrap(StepEnv(success_at=5), recorder=recorder)
    wrapper.reset(seed=0, options={"episodes": [3]})
    info = {}
    while "episode" not in info:
        *_, info = wrapper.step(chunk(3))
    path = info["episode"].video_path
    assert path.endswith("episode_0003_success.mp4")
    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 6  # the reset frame and five steps
    height = frames[0].shape[0]
    assert frames[0].shape[1] >= 256 and height > 256  # upscaled frame plus the caption band
    assert frames[0][-30:].max() > 128  # white caption text under the frame


class CaptionRecorder(EpisodeVideoRecorder):
    """An EpisodeVideoRecorder that also keeps the caption text of each video it writes."""

    captions: list

    def finish(self, name, task, success, note="", errored=False):
        self.captions.append(task)
        return super().finish(name, task, success, note, errored)


class BytesLanguageEnv(StepEnv):
    """StepEnv whose language is UTF-8 bytes in a one-element numpy array."""

    def _obs(self):
        return {**super()._obs(), "annotation.task": np.array([b"count up"])}


def test_a_video_caption_is_the_text_of_a_bytes_language(tmp_path):
    recorder = CaptionRecorder(tmp_path, fps=10)
    recorder.captions = []
    wrapper = wrap(BytesLanguageEnv(success_at=2), recorder=recorder)
    wrapper.reset(seed=0, options={"episodes": [0]})
    info = {}
    while "episode" not in info:
        *_, info = wrapper.step(chunk(3))
    assert recorder.captions == ["count up"]



class FloatCameraEnv(StepEnv):
    """StepEnv whose camera space says uint8 but whose frames are floats in [0, 1] (normalised)."""

    def _obs(self):
        obs = super()._obs()
        return {**obs, "video.cam": obs["video.cam"].astype(np.float32) / 255.0}


class WideStateEnv(StepEnv):
    """StepEnv whose state space says 1 value but whose state holds 2."""

    def _obs(self):
        return {**super()._obs(), "state.pos": np.array([self.t, 0.0], np.float32)}


class DiscreteGripperEnv(StepEnv):
    def __init__(self):
        super().__init__()
        self.action_space = gym.spaces.Dict({"action.gripper": gym.spaces.Discrete(2)})


def test_a_non_box_action_space_is_refused_naming_the_env_the_key_and_its_space():
    """It failed with a bare AttributeError: 'Discrete' object has no attribute 'low'."""
    with pytest.raises(TypeError, match=r"env DiscreteGripperEnv declares 'action.gripper' as a Discrete space; each "
                                        r"'action.\*' subspace must be a gym.spaces.Box"):
        wrap(DiscreteGripperEnv())


def test_float_images_in_a_uint8_camera_space_are_refused_naming_the_camera():
    with pytest.raises(TypeError, match=r"returned float32 images for 'video.cam' \(its observation space says uint8 "
                                        r"0..255\): convert them in the env"):
        wrap(FloatCameraEnv()).reset(seed=0)


def test_a_state_of_another_shape_than_its_space_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"returned 'state.pos' of shape \(2,\); its observation space says \(1,\)"):
        wrap(WideStateEnv()).reset(seed=0)


def test_a_rollout_of_an_env_returning_float_images_in_a_uint8_space_names_the_camera():
    """The vector env's cast failed first, with only "Cannot cast array data from dtype('float32') to dtype('uint8')"."""
    from gr00t_client import BasePolicy, ModalityConfig
    from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout

    class ZeroPolicy(BasePolicy):
        def get_modality_config(self):
            return {"video": ModalityConfig([0], ["cam"]), "state": ModalityConfig([0], ["pos"]),
                    "action": ModalityConfig([0, 1], ["move"]), "language": ModalityConfig([0], ["annotation.task"])}

        def reset(self, options=None):
            return {}

        def _get_action(self, observation, options=None):
            return {"action.move": np.zeros((1, 2, 1), np.float32)}, {}

    register_env_prefix("floatcam", "new_embodiment", lambda task, **kwargs: FloatCameraEnv())
    config = RolloutConfig("floatcam/look", n_episodes=1, n_envs=1, seed=0, max_episode_steps=2, n_action_steps=2)
    with pytest.raises(TypeError, match="float32 images for 'video.cam'"):
        run_rollout(ZeroPolicy(strict=False), config, progress=False)


class IntStateEnv(StepEnv):
    """An env whose state is an int32 Box (a joint encoder's counts)."""

    def __init__(self):
        super().__init__()
        self.observation_space = gym.spaces.Dict({**self.observation_space.spaces,
                                                  "state.pos": gym.spaces.Box(-1000, 1000, (1,), np.int32)})

    def _obs(self):
        return {**super()._obs(), "state.pos": np.array([self.t], np.int32)}


def test_an_int_state_is_declared_and_stacked_as_the_float32_it_is_sent_as_so_vector_envs_reset():
    """The stacked space kept int32 while the wrapper returns float32: every vector env's reset failed ("Cannot cast
    array data from dtype('float32') to dtype('int32')"), naming no key, and no episode ran."""
    assert wrap(IntStateEnv()).observation_space["state.pos"].dtype == np.float32
    vec = gym.vector.SyncVectorEnv([lambda: wrap(IntStateEnv(), state_delta_indices=[-1, 0])] * 2)
    try:
        obs, _ = vec.reset(seed=0)
        assert obs["state.pos"].dtype == np.float32 and obs["state.pos"].shape == (2, 2, 1)
        obs, *_ = vec.step({"action.move": np.ones((2, 3, 1), np.float32)})
        assert obs["state.pos"][:, -1, 0].tolist() == [3.0, 3.0]
    finally:
        vec.close()
