"""Episode videos on disk: never a truncated file under an episode's name, never two outcomes of one episode."""

from __future__ import annotations

import av
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
