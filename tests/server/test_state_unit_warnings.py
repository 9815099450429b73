"""A state far outside its training range (degrees for radians, mm for m) is not refused below the outlier limit,
but warned about once per state key, naming the key, its value, its statistics' range and the usual unit slips."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("torch")

from gr00t_server.policies.gr00t_policy import Gr00tPolicy  # noqa: E402
from gr00t_server.test_checkpoint import example_observation  # noqa: E402

TAG = "new_embodiment"  # gripper: min/max (clipped); joints: mean/std


@pytest.fixture(scope="module")
def good(tiny_checkpoint):
    return example_observation(tiny_checkpoint, TAG, batch_size=1, image_size=(32, 32))


def _with_state(observation, key, value):
    return {**observation, "state": {**observation["state"], key: np.asarray(value, np.float32)}}


def _warnings(caplog):
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


@pytest.mark.parametrize("strict", [True, False])
def test_a_min_max_state_in_degrees_is_warned_once_naming_the_key_value_range_and_unit_slips(tiny_checkpoint, good,
                                                                                           caplog, strict):
    """The gripper is clipped to +-1 for the model: nothing told the user its value was 35 ranges out."""
    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", strict=strict)
    params = policy.processor.norm_params(TAG).state["gripper"]
    degrees = np.rad2deg(params.high).reshape(1, 1, -1)  # the top of its range, in degrees
    with caplog.at_level(logging.WARNING, logger="gr00t_server"):
        for _ in range(3):  # a robot loop: one warning, not one per step
            action, _ = policy.get_action(_with_state(good, "gripper", degrees))
    assert action
    [message] = _warnings(caplog)
    assert f"State key 'gripper' of '{TAG}'" in message
    assert f"{float(degrees.max()):.3g}" in message
    assert f"min/max [{float(params.data_min.min()):.3g}, {float(params.data_max.max()):.3g}]" in message
    assert "degrees" in message and "radians" in message and "millimetres" in message and "metres" in message


def test_a_mean_std_state_twenty_stds_out_is_warned_once_and_each_key_on_its_own(tiny_checkpoint, good, caplog):
    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu")
    params = policy.processor.norm_params(TAG).state
    joints = (params["joints"].mean + 20 * params["joints"].std).reshape(1, 1, -1)
    gripper = (params["gripper"].high + 20 * (params["gripper"].high - params["gripper"].low)).reshape(1, 1, -1)
    with caplog.at_level(logging.WARNING, logger="gr00t_server"):
        policy.get_action(_with_state(good, "joints", joints))
        policy.get_action(_with_state(good, "joints", joints))
        policy.get_action(_with_state(_with_state(good, "joints", joints), "gripper", gripper))
    messages = _warnings(caplog)
    assert len(messages) == 2
    assert f"State key 'joints' of '{TAG}' normalizes to |values| up to 20" in messages[0]
    assert "mean" in messages[0] and "std" in messages[0]
    assert f"State key 'gripper' of '{TAG}'" in messages[1]


def test_states_in_their_training_range_are_not_warned_about(tiny_checkpoint, good, caplog):
    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu")
    with caplog.at_level(logging.WARNING, logger="gr00t_server"):
        for seed in range(3):
            policy.get_action(example_observation(tiny_checkpoint, TAG, batch_size=2, seed=seed, image_size=(32, 32)))
    assert not _warnings(caplog)


@pytest.fixture
def mostly_closed_gripper(copy_of):
    """A checkpoint whose gripper was closed in ~98% of the training frames: q01/q99 (the normalization range, with
    use_percentiles) hug the closed value, min/max span the full opening."""
    checkpoint = copy_of()
    path = checkpoint / "statistics.json"
    stats = json.loads(path.read_text())
    stats[TAG]["state"]["gripper"].update(
        {"min": [0.0], "max": [0.08], "q01": [0.0], "q99": [0.002], "mean": [0.0016], "std": [0.008]})
    path.write_text(json.dumps(stats))
    return checkpoint


def test_a_state_within_its_training_min_max_is_not_warned_about_though_far_beyond_q01_q99(mostly_closed_gripper,
                                                                                           caplog):
    policy = Gr00tPolicy(mostly_closed_gripper, TAG, device="cpu")
    assert policy.processor.config.use_percentiles
    observation = example_observation(mostly_closed_gripper, TAG, batch_size=1, image_size=(32, 32))
    half_open = _with_state(observation, "gripper", np.full((1, 1, 1), 0.04))  # 39 q01..q99 ranges out, seen in data
    with caplog.at_level(logging.WARNING, logger="gr00t_server"):
        action, _ = policy.get_action(half_open)
    assert action
    assert not _warnings(caplog)


def test_a_unit_slip_beyond_the_training_min_max_is_warned_naming_the_min_max(mostly_closed_gripper, caplog):
    policy = Gr00tPolicy(mostly_closed_gripper, TAG, device="cpu")
    observation = example_observation(mostly_closed_gripper, TAG, batch_size=1, image_size=(32, 32))
    millimetres = _with_state(observation, "gripper", np.full((1, 1, 1), 40.0))  # 0.04 m sent in mm
    with caplog.at_level(logging.WARNING, logger="gr00t_server"):
        policy.get_action(millimetres)
    [message] = _warnings(caplog)
    assert "State key 'gripper'" in message and "holds 40" in message
    assert "min/max [0, 0.08]" in message
