"""uint8 frames holding only 0 and 1 are float [0, 1] frames cast with astype(np.uint8), a black image to the model:
served (a truly dark frame is legal), but warned about once per camera, naming the camera and the fix."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("torch")

from gr00t_server.policies.gr00t_policy import Gr00tPolicy  # noqa: E402
from gr00t_server.policies.sim_wrapper import Gr00tSimPolicyWrapper  # noqa: E402
from gr00t_server.test_checkpoint import example_observation  # noqa: E402

TAG = "libero_sim"  # cameras image and wrist_image


@pytest.fixture(scope="module")
def good(tiny_checkpoint):
    return example_observation(tiny_checkpoint, TAG, batch_size=1, image_size=(32, 32))


def _cast_without_scaling(frames):
    """What an integrator's `frames.astype(np.uint8)` makes of float frames in [0, 1]: zeros, and ones at 1.0."""
    return (np.asarray(frames) / 255.0).astype(np.uint8)


def _warnings(caplog):
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


@pytest.mark.parametrize("strict", [True, False])
def test_frames_cast_from_floats_in_0_1_are_warned_about_once_per_camera_naming_it_and_the_fix(tiny_checkpoint, good,
                                                                                            caplog, strict):
    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", strict=strict)
    cameras = list(good["video"])
    cast = {**good, "video": {**good["video"], cameras[0]: _cast_without_scaling(good["video"][cameras[0]])}}
    with caplog.at_level(logging.WARNING, logger="gr00t_server"):
        for _ in range(3):  # a robot loop: one warning, not one per step
            action, _ = policy.get_action(cast)
    assert action
    [message] = _warnings(caplog)
    assert f"'{cameras[0]}'" in message and f"'{cameras[1]}'" not in message
    assert "astype(np.uint8)" in message and "* 255" in message


def test_each_camera_is_warned_about_on_its_own_through_the_sim_wrappers_flat_form(tiny_checkpoint, good, caplog):
    wrapper = Gr00tSimPolicyWrapper(Gr00tPolicy(tiny_checkpoint, TAG, device="cpu"))
    language = {key: [row[0] for row in rows] for key, rows in good["language"].items()}
    flat = {**{f"video.{key}": _cast_without_scaling(value) for key, value in good["video"].items()},
            **{f"state.{key}": value for key, value in good["state"].items()}, **language}
    with caplog.at_level(logging.WARNING, logger="gr00t_server"):
        wrapper.get_action(flat)
        wrapper.get_action(flat)
    messages = _warnings(caplog)
    assert len(messages) == len(good["video"])
    for camera, message in zip(good["video"], messages):
        assert f"'{camera}'" in message


def test_frames_with_the_full_0_255_range_are_not_warned_about(tiny_checkpoint, good, caplog):
    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu")
    with caplog.at_level(logging.WARNING, logger="gr00t_server"):
        for seed in range(3):
            policy.get_action(example_observation(tiny_checkpoint, TAG, batch_size=2, seed=seed, image_size=(32, 32)))
    assert not _warnings(caplog)
