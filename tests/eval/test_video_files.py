"""Episode videos on disk: never a truncated file under an episode's name, never two outcomes of one episode."""

from __future__ import annotations

import av
import gymnasium as gym
import numpy as np
import pytest

from gr00t_eval.video import EpisodeVideoRecorder, write_mp4


def frames(n=4):
    return [np.full((32, 32, 3), (40 * i) % 256, np.uint8) for i in range(n)]


def test_an_encode_that_fails_part_way_leaves_no_file_under_the_videos_name(tmp_path):
    """The mp4 was written straight to its name: a run killed mid-encode left a truncated video that looked whole."""
    path = tmp_path / "episode_0000_success.mp4"
    with pytest.raises(ValueError):
        write_mp4(path, frames(80) + ["not a frame"], "task (success)")  # packets muxed before it fails
    assert list(tmp_path.iterdir()) == []
    write_mp4(path, frames(3), "task (success)")
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_rerun_episodes_video_replaces_an_earlier_attempts_of_the_other_outcome(tmp_path):
    """A run interrupted after an episode's video (and before its log line), then resumed, ran the episode again;
    ending the other way, it left episode_0003_success.mp4 beside episode_0003_failure.mp4."""
    earlier = tmp_path / "episode_0003_success.mp4"
    write_mp4(earlier, frames(2), "earlier attempt")
    unrelated = tmp_path / "episode_0004_success.mp4"
    write_mp4(unrelated, frames(2), "another episode")
    recorder = EpisodeVideoRecorder(tmp_path, fps=10)
    for frame in frames(3):
        recorder.add(frame)
    written = recorder.finish("episode_0003_failure", "task", success=False)
    assert written == str(tmp_path / "episode_0003_failure.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode_0003_failure.mp4", "episode_0004_success.mp4"]


def decoded_grays(path):
    with av.open(str(path)) as container:
        return [int(round(frame.to_ndarray(format="rgb24")[:8, :8].mean())) for frame in container.decode(video=0)]


def test_a_video_of_every_nth_step_still_ends_on_the_episodes_last_observation(tmp_path):
    """steps_per_frame=3 over 8 observations kept 0, 3 and 6: the video ended before the final (success) state."""
    recorder = EpisodeVideoRecorder(tmp_path, fps=10, steps_per_frame=3)
    recorder.start()
    for step in range(8):
        recorder.add(np.full((32, 32, 3), 30 * step, np.uint8))
    path = recorder.finish("episode_0000_success", "task", success=True)
    grays = decoded_grays(path)
    assert len(grays) == 4 and abs(grays[-1] - 30 * 7) <= 4


class CameraEnvFailingAtStep2(gym.Env):
    """A camera and one action; its third step raises, as a simulator that diverges does."""

    def __init__(self):
        self.observation_space = gym.spaces.Dict({"video.cam": gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)})
        self.action_space = gym.spaces.Dict({"action.push": gym.spaces.Box(-1, 1, (1,), np.float32)})
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return {"video.cam": np.zeros((32, 32, 3), np.uint8)}, {}

    def step(self, action):
        if self.t == 2:
            raise RuntimeError("simulator diverged")
        self.t += 1
        return {"video.cam": np.full((32, 32, 3), 50 * self.t, np.uint8)}, 0.0, False, False, {"success": False}


def test_an_errored_episodes_video_is_named_error_not_failure(tmp_path):
    """An errored episode is neither a success nor a failure: its video was episode_0000_failure.mp4, counted as one."""
    from gr00t_eval.rollout import MultiStepWrapper

    (tmp_path / "episode_0000_failure.mp4").write_bytes(b"an earlier attempt")
    env = MultiStepWrapper(CameraEnvFailingAtStep2(), n_action_steps=4, max_episode_steps=10,
                           recorder=EpisodeVideoRecorder(tmp_path, fps=10))
    env.reset(options={"episodes": [0]})
    _obs, _reward, terminated, _truncated, info = env.step({"action.push": np.zeros((4, 1), np.float32)})
    summary = info["episode"]
    assert terminated and summary.failure_reason.startswith("step 2 failed")
    assert summary.video_path == str(tmp_path / "episode_0000_error.mp4")
    assert [p.name for p in tmp_path.iterdir()] == ["episode_0000_error.mp4"]
