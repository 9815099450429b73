"""exclude_state=true: the model sees zeros for every state key, so a key that anchors no relative action is never
read for its values (a NaN placeholder or another unit is served, as the reference serves it), while its width is
still checked; a key that anchors a relative action is decoded against, so it keeps every check."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from gr00t_client import ObservationError

pytest.importorskip("torch")

from gr00t_server.policies.gr00t_policy import Gr00tPolicy  # noqa: E402
from gr00t_server.test_checkpoint import example_observation  # noqa: E402

TAG = "new_embodiment"  # state keys eef_9d, gripper, joints; eef_9d and joints anchor relative actions, gripper none


def _exclude_state(checkpoint, use_relative_action=True):
    path = checkpoint / "processor_config.json"
    config = json.loads(path.read_text())
    config["processor_kwargs"].update(exclude_state=True, use_relative_action=use_relative_action)
    path.write_text(json.dumps(config))
    return checkpoint


@pytest.fixture(scope="module")
def excluded(tiny_checkpoint, tmp_path_factory):
    """{strict: Gr00tPolicy} of a checkpoint with exclude_state on and relative actions."""
    import shutil

    checkpoint = _exclude_state(shutil.copytree(tiny_checkpoint, tmp_path_factory.mktemp("excluded") / "ckpt"))
    return {strict: Gr00tPolicy(checkpoint, TAG, device="cpu", strict=strict) for strict in (True, False)}


def _observation(policy, key, value):
    observation = example_observation(policy.checkpoint_dir, TAG, batch_size=2, image_size=(32, 32))
    observation["state"][key] = observation["state"][key].copy()
    observation["state"][key][1] = value
    return observation


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("value", [np.nan, np.inf, 1e4], ids=["nan", "inf", "other-units"])
def test_a_state_key_anchoring_no_relative_action_is_not_value_checked(excluded, strict, value, caplog):
    policy = excluded[strict]
    with caplog.at_level(logging.WARNING):
        action, _ = policy.get_action(_observation(policy, "gripper", value), options={"seed": 0})
    plain, _ = policy.get_action(_observation(policy, "gripper", 0.0), options={"seed": 0})
    for key, chunk in action.items():
        assert np.isfinite(chunk).all(), key
        np.testing.assert_array_equal(chunk, plain[key], err_msg=f"the model saw zeros either way: {key}")
    assert not [record for record in caplog.records if "'gripper'" in record.getMessage()]


@pytest.mark.parametrize("strict", [True, False])
def test_a_state_key_anchoring_no_relative_action_keeps_its_width_check(excluded, strict):
    policy = excluded[strict]
    observation = example_observation(policy.checkpoint_dir, TAG, batch_size=1, image_size=(32, 32))
    observation["state"]["gripper"] = np.zeros(observation["state"]["gripper"].shape[:2] + (5,), np.float32)
    with pytest.raises(ObservationError, match="gripper"):
        policy.get_action(observation)


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("value,expected", [(np.nan, "NaN or inf"), (1e4, "1e\\+04")], ids=["nan", "other-units"])
def test_a_state_key_anchoring_a_relative_action_keeps_its_value_checks(excluded, strict, value, expected):
    """joints (a mean/std key) anchors the relative action joints: its raw value is added to the decoded action."""
    policy = excluded[strict]
    with pytest.raises(ObservationError, match=f"'joints'.*{expected}"):
        policy.get_action(_observation(policy, "joints", value))


def test_without_relative_actions_no_state_key_is_value_checked(tiny_checkpoint, tmp_path):
    """A vision-only fine-tune (exclude_state, no relative action): every state key may hold anything finite or not."""
    import shutil

    checkpoint = _exclude_state(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"), use_relative_action=False)
    policy = Gr00tPolicy(checkpoint, TAG, device="cpu")
    observation = _observation(policy, "joints", 1e4)
    observation["state"]["eef_9d"] = np.full_like(observation["state"]["eef_9d"], np.nan)
    action, _ = policy.get_action(observation)
    assert all(np.isfinite(chunk).all() for chunk in action.values())


def test_a_state_in_other_units_on_an_unread_key_is_served_over_the_wire(tiny_checkpoint, tmp_path):
    """A PolicyServer on loopback answers it (a NaN there is still refused by the request limits and the client's own
    check, which do not know the checkpoint)."""
    import shutil

    from serving import running_server

    from gr00t_client import PolicyClient

    checkpoint = _exclude_state(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"), use_relative_action=False)
    policy = Gr00tPolicy(checkpoint, TAG, device="cpu")
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        action, _ = client.get_action(_observation(policy, "joints", 1e4))
    assert all(np.isfinite(chunk).all() for chunk in action.values())


@pytest.mark.parametrize("strict", [True, False])
def test_the_sim_wrapper_serves_a_nan_placeholder_in_an_unread_state_key_as_the_wrapped_policy_does(excluded, strict):
    """The flat form (state.<key>, what gr00t-eval rollouts send) is checked as the nested one: the wrapped policy's
    unread keys are held to their width alone, its read keys still to finite values."""
    from gr00t_server.policies.sim_wrapper import Gr00tSimPolicyWrapper

    policy = excluded[strict]
    wrapper = Gr00tSimPolicyWrapper(policy)

    def flat(key, value):
        nested = _observation(policy, key, value)
        return {**{f"video.{name}": frames for name, frames in nested["video"].items()},
                **{f"state.{name}": state for name, state in nested["state"].items()},
                **{name: [row[0] for row in rows] for name, rows in nested["language"].items()}}

    action, _ = wrapper.get_action(flat("gripper", np.nan), options={"seed": 0})
    assert all(np.isfinite(chunk).all() for chunk in action.values())
    with pytest.raises(ObservationError, match="'state.joints'.*NaN or inf"):
        wrapper.get_action(flat("joints", np.nan))
