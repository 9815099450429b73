"""Episode videos on disk: never a truncated file under an episode's name, never two outcomes of one episode."""

from __future__ import annotations

import os
from pathlib import Path

import av
import gymnasium as gym
import numpy as np
import pytest

from eval.scale_fixtures import CameraWalkEnv, ConstantPolicy
from gr00t_client import EmbodimentTag, PolicyClient
from gr00t_eval.video import EpisodeVideoRecorder, caption_band, write_mp4
from serving import running_server


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


def test_an_instruction_with_dollar_signs_is_captioned_as_written_and_never_fails_the_video(tmp_path):
    """The caption was drawn as mathtext: "$x^$" raised in finish() (the episode lost its video), and "$5 then $10"
    was drawn as math, its spaces dropped."""
    recorder = EpisodeVideoRecorder(tmp_path, fps=10)
    for frame in frames(3):
        recorder.add(frame)
    path = recorder.finish("episode_0000_success", "move the $x^$ block", True)
    with av.open(path) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3

    def lit_columns(text):
        columns = np.flatnonzero(caption_band(text, 256).max(axis=(0, 2)) > 60)
        return columns.min(), columns.max()

    assert lit_columns("pay $5 then $10 (success)") == lit_columns("pay X5 then X10 (success)")  # monospace, verbatim


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


class NanAfterFirstCall(ConstantPolicy):
    """Walks on its first get_action, then answers NaN actions (refused by the rollout) on every later one."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        action, info = super()._get_action(observation, options)
        return ({"action.push": np.full_like(action["action.push"], np.nan)} if self.calls > 1 else action), info


@pytest.mark.parametrize("vectorization, n_envs", [("sync", 1), ("sync", 2), ("async", 1), ("async", 2)])
def test_an_episode_errored_by_the_policy_gets_its_error_video_of_the_frames_so_far(tmp_path, vectorization, n_envs):
    """docs/evaluation.md promises one mp4 per episode, episode_<i>_error.mp4 for an errored one; an episode errored by
    a failed policy request got none (video_path null), its recorded frames dropped at the next reset."""
    from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout

    register_env_prefix("nancam", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: CameraWalkEnv(0.0))  # never done
    config = RolloutConfig(env_name="nancam/walk", n_episodes=3, n_envs=n_envs, n_action_steps=2, max_episode_steps=6,
                           seed=0, vectorization=vectorization, video_dir=str(tmp_path))
    with running_server(NanAfterFirstCall()) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        outcomes = run_rollout(client, config, progress=False).outcomes
    assert all(outcome.error and "NaN" in outcome.error for outcome in outcomes)
    assert [outcome.video_path for outcome in outcomes] == [str(tmp_path / f"episode_000{i}_error.mp4") for i in range(3)]
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"episode_000{i}_error.mp4" for i in range(3)]
    for outcome in outcomes:
        with av.open(outcome.video_path) as container:
            assert sum(1 for _ in container.decode(video=0)) == outcome.length + 1  # the reset frame and each step's


def spill_files_open(folder):
    """The files this process holds open in `folder` (a recorder's spill file, unlinked or not, shows here)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc to see the files a recorder holds open")
    held = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            held.append(target)
    return held


def decoded_frames(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def noisy_frames(n):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(n)]


def test_a_long_episode_holds_at_most_its_memory_budget_of_frames_and_spills_the_rest(tmp_path):
    """Every frame of an episode was held in RAM until it ended: 18 GB per env at 10,000 steps of two 480x640 cameras."""
    budget = 3 * 32 * 48 * 3
    recorder = EpisodeVideoRecorder(tmp_path / "spilled", fps=10, memory_budget_bytes=budget)
    recorder.start()
    for frame in noisy_frames(10):
        recorder.add(frame)
        assert sum(held.nbytes for held in recorder._frames) <= budget
    assert recorder.n_frames == 10
    assert spill_files_open(tmp_path / "spilled")
    spilled = recorder.finish("episode_0000_success", "task", success=True)
    whole = EpisodeVideoRecorder(tmp_path / "whole", fps=10)
    for frame in noisy_frames(10):
        whole.add(frame)
    held = whole.finish("episode_0000_success", "task", success=True)
    spilled_frames, held_frames = decoded_frames(spilled), decoded_frames(held)
    assert len(spilled_frames) == len(held_frames) == 10
    assert all(np.array_equal(a, b) for a, b in zip(spilled_frames, held_frames))
    assert spill_files_open(tmp_path / "spilled") == []
    assert [p.name for p in (tmp_path / "spilled").iterdir()] == ["episode_0000_success.mp4"]


def test_closing_a_recorder_mid_episode_removes_its_spill_file(tmp_path):
    """A run stopped mid-episode (Ctrl-C, an error) must not leave the episode's spilled frames on disk."""
    recorder = EpisodeVideoRecorder(tmp_path, fps=10, memory_budget_bytes=0)
    recorder.start()
    for frame in noisy_frames(4):
        recorder.add(frame)
    assert spill_files_open(tmp_path)
    recorder.close()
    assert spill_files_open(tmp_path) == [] and list(tmp_path.iterdir()) == []
    assert recorder.n_frames == 0


def test_a_video_that_fails_to_encode_still_removes_its_spill_file(tmp_path):
    """An encoder error at finish() must not leave the spilled frames behind for the rest of the run."""
    recorder = EpisodeVideoRecorder(tmp_path, fps=10, memory_budget_bytes=0)
    recorder.start()
    for frame in noisy_frames(3):
        recorder.add(frame)
    recorder.add(np.zeros((32, 48), np.uint8))  # no (H, W, 3) frame: the encoder refuses it after the others
    with pytest.raises(ValueError):
        recorder.finish("episode_0000_success", "task", success=True)
    assert spill_files_open(tmp_path) == [] and list(tmp_path.iterdir()) == []


def test_closing_the_env_mid_episode_removes_its_videos_spill_file(tmp_path):
    """A run stopped mid-episode closes its envs: the recorder's spilled frames went only when the process ended."""
    from gr00t_eval.rollout import MultiStepWrapper

    env = MultiStepWrapper(CameraEnvFailingAtStep2(), n_action_steps=2, max_episode_steps=10,
                           recorder=EpisodeVideoRecorder(tmp_path, fps=10, memory_budget_bytes=0))
    env.reset(options={"episodes": [0]})
    env.step({"action.push": np.zeros((2, 1), np.float32)})
    assert spill_files_open(tmp_path)
    env.close()
    assert spill_files_open(tmp_path) == [] and list(tmp_path.iterdir()) == []


def test_a_spill_that_fails_loses_the_video_at_finish_not_the_env_step(tmp_path):
    """The spill file is made from add(), called by an env step: its OSError (the video folder's parent removed
    mid-episode) failed the episode, where a video error at finish() loses only the video (MultiStepWrapper)."""
    folder = tmp_path / "gone" / "videos"
    recorder = EpisodeVideoRecorder(folder, fps=10, memory_budget_bytes=0)
    recorder.start()
    for frame in noisy_frames(4):
        recorder.add(frame)  # no raise: the video folder's parent does not exist
    assert recorder.n_frames == 4
    with pytest.raises(FileNotFoundError):
        recorder.finish("episode_0000_success", "task", success=True)
    assert recorder.n_frames == 0  # the next episode starts afresh
    folder.mkdir(parents=True)
    for frame in noisy_frames(4):
        recorder.add(frame)
    assert Path(recorder.finish("episode_0001_success", "task", success=True)).is_file()


def test_a_full_disk_under_the_spill_is_raised_at_finish_naming_the_video_folder(tmp_path, monkeypatch):
    """The spill file has no name: a full disk's error named no file, so the run's storage line (which names the folder
    to free and says to resume) did not recognise it, and the buffered file raised it again at its close."""
    import errno

    from gr00t_eval import video

    def full_disk(self, frame):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(video._FrameSpill, "append", full_disk)
    recorder = EpisodeVideoRecorder(tmp_path / "videos", fps=10, memory_budget_bytes=0)
    recorder.start()
    for frame in noisy_frames(3):
        recorder.add(frame)
    with pytest.raises(OSError) as raised:
        recorder.finish("episode_0000_success", "task", success=True)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "videos")
