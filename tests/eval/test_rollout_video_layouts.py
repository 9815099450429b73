"""A camera the episode videos cannot show (grayscale, channels-first, RGBA, float) is refused before any episode when
videos are recorded, naming the env, the key, its layout and the remedies; without videos the env runs. Real gymnasium
envs, real rollouts, the real CLI against a loopback server."""

from __future__ import annotations

import string
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from gr00t_client import BasePolicy, ModalityConfig
from gr00t_eval.cli import main
from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout
from gr00t_eval.video import frame_from_observation
from serving import running_server

CAMERAS = {"rgb": ((8, 8, 3), np.uint8), "gray": ((8, 8), np.uint8), "chw": ((3, 8, 8), np.uint8), "rgba": ((8, 8, 4), np.uint8),
           "float": ((8, 8, 3), np.float32)}


RESETS = []  # the seed of every reset of a LayoutCameraEnv built in this process


class LayoutCameraEnv(gym.Env):
    """A flat GR00T env whose camera `video.cam` has the shape and dtype of `layout` (CAMERAS), declared and returned
    alike; `extra_view` adds a grayscale `video.depth` its observation space does not declare."""

    metadata = {"render_modes": []}

    def __init__(self, layout="gray", extra_view=False, **_):
        shape, dtype = CAMERAS[layout]
        self.extra_view = extra_view
        self.observation_space = gym.spaces.Dict({
            "video.cam": gym.spaces.Box(0, 255 if dtype == np.uint8 else 1, shape, dtype),
            "state.pos": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
            "annotation.human.task_description": gym.spaces.Text(64, charset=string.printable),
        })
        self.action_space = gym.spaces.Dict({"action.move": gym.spaces.Box(-1, 1, (2,), np.float32)})

    def _obs(self):
        space = self.observation_space["video.cam"]
        obs = {"video.cam": np.zeros(space.shape, space.dtype), "state.pos": np.zeros(2, np.float32),
               "annotation.human.task_description": "go"}
        if self.extra_view:
            obs["video.depth"] = np.zeros((8, 8), np.uint8)
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        RESETS.append(seed)
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, self.t >= 3, False, {"success": self.t >= 3}


class ZeroPolicy(BasePolicy):
    """Moves nowhere; takes any camera layout (strict=False), so only the video recorder can object to one."""

    def __init__(self):
        super().__init__(strict=False)

    def get_modality_config(self):
        return {"video": ModalityConfig([0], ["cam"]), "state": ModalityConfig([0], ["pos"]),
                "action": ModalityConfig([0, 1], ["move"]),
                "language": ModalityConfig([0], ["annotation.human.task_description"])}

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        batch = observation["state.pos"].shape[0]
        return {"action.move": np.zeros((batch, 2, 2), np.float32)}, {}


gym.register("vidlayout/Camera-v0", entry_point=LayoutCameraEnv)
register_env_prefix("vidlayout", "new_embodiment")


def config(video_dir, **env_kwargs):
    return RolloutConfig(env_name="vidlayout/Camera-v0", n_episodes=2, n_envs=1, n_action_steps=2,
                         max_episode_steps=10, seed=0, vectorization="sync", video_dir=video_dir, env_kwargs=env_kwargs)


@pytest.mark.parametrize("layout, declared", [("gray", r"\(8, 8\) uint8"), ("chw", r"\(3, 8, 8\) uint8"),
                                              ("rgba", r"\(8, 8, 4\) uint8"), ("float", r"\(8, 8, 3\) float32")])
def test_a_camera_the_videos_cannot_show_is_refused_before_any_episode_naming_the_env_key_layout_and_remedies(
        tmp_path, layout, declared):
    """It failed the task inside the recorder: 'a camera view must be (H, W, 3), got shape (8, 8)', naming no key."""
    RESETS.clear()
    with pytest.raises(ValueError, match=rf"env LayoutCameraEnv declares 'video.cam' as {declared}; episode videos "
                                         r"take \(H, W, 3\) uint8 frames: convert the frames in the env, or record no "
                                         r"videos \(--no-video\)"):
        run_rollout(ZeroPolicy(), config(str(tmp_path / "videos"), layout=layout), progress=False)
    assert RESETS == []  # refused as the env was built: no episode began


@pytest.mark.parametrize("layout", ["gray", "chw", "rgba"])
def test_without_videos_such_a_camera_reaches_the_policy_and_every_episode_runs(layout):
    result = run_rollout(ZeroPolicy(), config(None, layout=layout), progress=False)
    assert [(o.success, o.error) for o in result.outcomes] == [(True, None), (True, None)]


def test_an_rgb_camera_is_recorded_as_before(tmp_path):
    result = run_rollout(ZeroPolicy(), config(str(tmp_path / "videos"), layout="rgb"), progress=False)
    assert [o.error for o in result.outcomes] == [None, None]
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["episode_0000_success.mp4",
                                                                         "episode_0001_success.mp4"]


def test_the_recorders_error_names_the_camera_key_it_cannot_tile():
    with pytest.raises(ValueError, match=r"camera 'video.depth' has shape \(8, 8\); a video frame takes \(H, W, 3\) "
                                         r"views"):
        frame_from_observation({"video.cam": np.zeros((8, 8, 3), np.uint8), "video.depth": np.zeros((8, 8), np.uint8)})


def test_a_camera_the_space_does_not_declare_fails_the_rollout_naming_its_key(tmp_path):
    """Its space holds no shape to check when the env is built: the recorder's own error is the one that names it."""
    with pytest.raises(ValueError, match=r"camera 'video.depth' has shape \(8, 8\)"):
        run_rollout(ZeroPolicy(), config(str(tmp_path / "videos"), layout="rgb", extra_view=True), progress=False)


ENV_MODULE = """
    import gymnasium as gym
    from test_rollout_video_layouts import LayoutCameraEnv

    gym.register("vidlayoutcli/Camera-v0", entry_point=LayoutCameraEnv)
"""


@pytest.mark.parametrize("n_envs, vectorization", [(1, "sync"), (2, "async")])
def test_the_cli_refuses_such_a_camera_in_one_line_with_exit_2_and_no_run_left(tmp_path, capfd, monkeypatch, n_envs,
                                                                                vectorization):
    (tmp_path / "gray_camera_envs.py").write_text(textwrap.dedent(ENV_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # spawned env workers import this module too
    with running_server(ZeroPolicy()) as server:
        code = main(["rollout", "--env-name", "vidlayoutcli/Camera-v0", "--env-import", "gray_camera_envs",
                     "--env-prefix", "vidlayoutcli=new_embodiment", "--env-kwarg", "layout=gray", "--n-episodes", "2",
                     "--n-envs", str(n_envs), "--vectorization", vectorization, "--n-action-steps", "2",
                     "--max-episode-steps", "10", "--seed", "0", "--policy-client-port", str(server.port),
                     "--output-dir", str(tmp_path / "run")])
    err = capfd.readouterr().err  # fd 2: the spawned env workers' too
    assert code == 2
    line = ("no episode was scored: task vidlayoutcli/Camera-v0 failed: ValueError: env LayoutCameraEnv declares 'video.cam' as "
            "(8, 8) uint8; episode videos take (H, W, 3) uint8 frames: convert the frames in the env, or record no "
            "videos (--no-video)")
    assert line in err, err
    assert "Traceback" not in err and "Worker" not in err, err
    assert not [p for p in (tmp_path / "run").iterdir() if not p.name.startswith(".")]
