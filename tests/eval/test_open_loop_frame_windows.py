"""Open-loop decodes a long trajectory's frames a window at a time: the frames held at once do not grow with --steps,
and every query still gets the recorded frames of its own history rows. Real dataset and videos, in-process policy."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from eval.dataset_factory import CAMERAS, expected_actions, frame_colour, make_dataset
from gr00t_client import BasePolicy, ModalityConfig
from gr00t_eval.open_loop import OpenLoopConfig, evaluate_open_loop, history_steps

LENGTH = 512
SIZE = (96, 128)
FRAME_BYTES = SIZE[0] * SIZE[1] * 3
DOCUMENTED_WINDOW = 128  # docs/evaluation.md: at most 128 frames per camera decoded and held at once


class CentrePixelEcho(BasePolicy):
    """Returns the recorded actions from its cursor and keeps only the centre pixel of each frame it was sent."""

    def __init__(self, video_deltas=(0,)):
        super().__init__(strict=True)
        self.video_deltas, self.step, self.seen = list(video_deltas), 0, []

    def get_modality_config(self):
        return {"video": ModalityConfig(self.video_deltas, list(CAMERAS)),
                "action": ModalityConfig([0], ["arm", "gripper"])}

    def reset(self, options=None):
        self.step = options.get("step_index", 0)
        return {}

    def _get_action(self, observation, options=None):
        self.seen.append({cam: observation["video"][cam][0, :, SIZE[0] // 2, SIZE[1] // 2].astype(int) for cam in CAMERAS})
        actions = expected_actions(0, LENGTH)
        row = min(self.step, LENGTH - 1)
        self.step += 1
        return {k: v[[row]][None].astype(np.float32) for k, v in actions.items()}, {}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("frame_windows") / "ds", lengths=(LENGTH,), size=SIZE)


def frames_held_at_peak(dataset, tmp_path, steps: int) -> float:
    """The run's peak of traced memory above its start, in frames of one camera."""
    config = OpenLoopConfig(str(dataset), traj_ids=[0], steps=steps, execution_horizon=1, plot=False,
                            output_dir=str(tmp_path / f"out{steps}"))
    policy = CentrePixelEcho()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        result = evaluate_open_loop(policy, config, report=lambda line: None, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.trajectories[0].errors.mse == 0.0
    return (peak - start) / FRAME_BYTES


def test_frames_held_at_once_do_not_grow_with_the_steps_evaluated(dataset, tmp_path):
    """Every step's frames were decoded before the first query and kept to the end: 1500 steps of one 240x320 camera
    took 650 MB more than 100 steps, and a 20,000-step episode of two 480x640 cameras needed 37 GB."""
    one_window = frames_held_at_peak(dataset, tmp_path, DOCUMENTED_WINDOW)
    four_windows = frames_held_at_peak(dataset, tmp_path, 4 * DOCUMENTED_WINDOW)
    assert four_windows <= one_window + 32, (one_window, four_windows)
    assert four_windows <= len(CAMERAS) * DOCUMENTED_WINDOW + 64, four_windows


def test_each_query_gets_its_own_history_frames_across_decode_windows(dataset, tmp_path, monkeypatch):
    """A window boundary falls between a step and its history rows: each query still gets the frames recorded at
    those rows, the first frame repeated before the episode's start."""
    monkeypatch.setattr("gr00t_eval.open_loop_observation.FRAME_WINDOW", 5)
    policy = CentrePixelEcho(video_deltas=(-3, 0))
    config = OpenLoopConfig(str(dataset), traj_ids=[0], steps=40, execution_horizon=1, plot=False,
                            output_dir=str(tmp_path / "out"))
    evaluate_open_loop(policy, config, report=lambda line: None, progress=False)
    assert len(policy.seen) == 40
    for step, seen in enumerate(policy.seen):
        for camera, name in enumerate(CAMERAS):
            recorded = [frame_colour(0, camera, row).astype(int) for row in history_steps(step, [-3, 0], LENGTH)]
            assert np.abs(seen[name] - np.stack(recorded)).max() <= 6, (step, name)
