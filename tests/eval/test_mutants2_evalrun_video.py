"""Audit 13b (mutation testing, rollout videos): frame choice no earlier test pinned down."""

from __future__ import annotations

import numpy as np

from gr00t_eval.video import EpisodeVideoRecorder, frame_from_observation


def test_a_stacked_history_shows_its_newest_frame_in_the_video():
    """With a video history (T, H, W, 3) the episode video shows the current view (the last), not the oldest."""
    old, new = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 200, np.uint8)
    frame = frame_from_observation({"video.cam": np.stack([old, new]), "state.x": np.zeros(1)})
    assert frame.shape == (4, 4, 3) and (frame == 200).all()


def test_steps_per_frame_keeps_every_nth_env_step_of_the_episode(tmp_path):
    """steps_per_frame=3 keeps steps 0, 3 and 6 of 7: a video of 3 frames, not 7."""
    recorder = EpisodeVideoRecorder(tmp_path, fps=10, steps_per_frame=3)
    recorder.start()
    for step in range(7):
        recorder.add(np.full((4, 4, 3), step, np.uint8))
    assert recorder.n_frames == 3
