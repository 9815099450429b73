"""Finite in, finite out: NaN/inf inputs are refused naming the key; a NaN action is never sent to a robot."""

from __future__ import annotations

import numpy as np
import pytest
from reference_peer import EchoPolicy, libero_like_observation
from serving import running_server

from gr00t_client import BasePolicy, ObservationError, PolicyClient, PolicyServerError


class RotationPolicy(BasePolicy):
    """Normalises the eef_9d state as a rotation would be: an all-zero row divides by zero and gives NaN."""

    supports_batching = True

    def __init__(self):
        super().__init__(strict=False)
        self.calls = 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        eef = observation["state"]["eef_9d"]
        with np.errstate(invalid="ignore", divide="ignore"):
            normalised = eef / np.linalg.norm(eef, axis=-1, keepdims=True)
        return {"eef_9d": normalised.astype(np.float32), "gripper": np.zeros((eef.shape[0], 1, 1), np.float32)}, {}

    def reset(self, options=None):
        return {}


def rotation_observation(rows_of_zeros=(), rows=3):
    eef = np.ones((rows, 1, 9), np.float32)
    eef[list(rows_of_zeros)] = 0.0
    return {"state": {"eef_9d": eef}}


def test_a_nan_state_is_refused_by_the_server_naming_the_key_and_rows():
    policy = EchoPolicy()
    observation = libero_like_observation(batch=3, height=8, width=8)
    key = next(iter(observation["state"]))
    observation["state"][key][2, 0, 0] = np.inf
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match=rf"'state.{key}' has non-finite values \(NaN or inf\) in rows \[2\]"):
            client.get_action(observation)
    assert policy.calls == 0


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, np.float32(np.inf), complex(np.inf, 0)])
@pytest.mark.parametrize("form", ["nested list", "bare number"])
def test_a_non_finite_number_in_a_list_or_alone_is_refused_by_the_server(bad, form):
    """A lenient policy turns a list state into an array: an inf inside the list passed the server's non-finite check
    (it only looked at arrays) and was clipped to a plausible action."""
    policy = EchoPolicy()
    observation = libero_like_observation(batch=1, height=8, width=8)
    key = next(iter(observation["state"]))
    observation["state"][key] = [[[0.5, bad]]] if form == "nested list" else bad
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match=rf"'state.{key}' has a non-finite value \((nan|inf|-inf|\(inf\+0j\))\) in a list"):
            client.get_action(observation)
        client.get_action(libero_like_observation(batch=1, height=8, width=8))  # the next request is answered
    assert policy.calls == 1


def test_strict_validation_refuses_a_nan_state_without_a_server():
    policy = EchoPolicy(strict=True)
    observation = libero_like_observation(height=8, width=8)
    key = next(iter(observation["state"]))
    observation["state"][key][0, 0, 0] = np.nan
    with pytest.raises(ObservationError, match=f"State key '{key}' has non-finite values"):
        policy.get_action(observation)


def test_a_nan_action_is_never_sent_and_the_error_names_key_rows_and_the_degenerate_rotation():
    with running_server(RotationPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError) as caught:
            client.get_action(rotation_observation(rows_of_zeros=(1,)))
        action, _ = client.get_action(rotation_observation())
    message = caught.value.server_message
    assert "non-finite values (NaN or inf) in action key 'eef_9d' rows [1]" in message
    assert "'state.eef_9d' is all zeros" in message and "degenerate rotation" in message
    assert np.isfinite(action["eef_9d"]).all()


def calls_at_once(port, observations, timeout_ms):
    """{name: (action, info) or the PolicyServerError} of one get_action per named observation, each from its own
    thread and client, sent together."""
    import threading

    results = {}

    def call(name, observation):
        with PolicyClient(port=port, timeout_ms=timeout_ms) as client:
            try:
                results[name] = client.get_action(observation)
            except PolicyServerError as exc:
                results[name] = exc

    threads = [threading.Thread(target=call, args=item) for item in observations.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_ms / 1000 + 5)
    return results


def test_in_a_batch_only_the_client_whose_rotation_is_degenerate_gets_the_error():
    with running_server(RotationPolicy(), max_batch_size=4, batch_timeout_ms=500) as server:
        results = calls_at_once(server.port, {"good": rotation_observation(rows=1),
                                              "bad": rotation_observation(rows_of_zeros=(0,), rows=1)}, timeout_ms=10000)
    assert isinstance(results["bad"], PolicyServerError) and "'eef_9d' rows [0]" in results["bad"].server_message
    assert np.isfinite(results["good"][0]["eef_9d"]).all()


def test_the_real_checkpoint_with_an_all_zero_eef_9d_row_is_refused_naming_that_state_and_row(tiny_checkpoint):
    pytest.importorskip("torch")
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=2, image_size=(32, 32))
    observation["state"]["eef_9d"][1] = 0.0  # row 1: a degenerate rotation
    observation["state"]["gripper"][:] = 0.0  # zero grippers are normal and must not be blamed
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError) as refused:
            client.get_action(observation)
        observation["state"]["eef_9d"][1] = observation["state"]["eef_9d"][0]
        action, _ = client.get_action(observation)
    message = str(refused.value)  # refused by the policy before decoding, not found as NaN afterwards
    assert ("the reference state 'state.eef_9d' of relative key 'eef_9d' (xyz + rot6d) has a degenerate rotation in "
            "rows [1]") in message
    assert "gripper" not in message
    assert all(np.isfinite(value).all() for value in action.values())
    with pytest.raises(ValueError, match=r"'eef_9d' .* degenerate rotation in rows \[0, 1\]"):  # in-process alike
        policy.get_action({**observation, "state": {**observation["state"], "eef_9d": np.zeros_like(observation["state"]["eef_9d"])}})


def test_a_degenerate_reference_rotation_is_refused_before_the_model_runs_batched_or_not(tiny_checkpoint):
    """The check ran in decode_action, after the model: with batching on, one client's degenerate pose failed the
    merged call and every client of the batch was then served alone (three model calls for two requests)."""
    pytest.importorskip("torch")
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    forward = policy.model.get_action
    rows_run = []

    def counted_forward(inputs, **kwargs):
        rows_run.append(int(next(v for v in inputs.values() if hasattr(v, "shape")).shape[0]))
        return forward(inputs, **kwargs)

    policy.model.get_action = counted_forward
    bad = example_observation(tiny_checkpoint, "new_embodiment", batch_size=1, image_size=(32, 32))
    bad["state"]["eef_9d"][0] = 0.0
    with pytest.raises(ObservationError, match=r"'eef_9d' \(xyz \+ rot6d\) has a degenerate rotation in rows \[0\]"):
        policy.get_action(bad)
    policy.strict = False  # the model's own check, for a server started with --no-strict
    with pytest.raises(ObservationError, match="degenerate rotation"):
        policy.get_action(bad)
    policy.strict = True
    assert rows_run == []

    good = example_observation(tiny_checkpoint, "new_embodiment", batch_size=1, image_size=(32, 32))
    with running_server(policy, max_batch_size=2, batch_timeout_ms=2000) as server:
        results = calls_at_once(server.port, {"good": good, "bad": bad}, timeout_ms=60000)
    assert isinstance(results["bad"], PolicyServerError) and "degenerate rotation in rows [0]" in str(results["bad"])
    assert all(np.isfinite(value).all() for value in results["good"][0].values())
    assert len(rows_run) == 1  # the good request's call alone


def test_a_huge_finite_state_is_refused_naming_that_state_not_an_action_key(tiny_checkpoint):
    """A state of 1e38 overflowed float32 once normalized; the model made NaN actions and the error blamed the
    action key 'eef_9d' and all-zero rotations."""
    pytest.importorskip("torch")
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=2, image_size=(32, 32))
    observation["state"]["joints"][1] = 1e38
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError) as refused:
            client.get_action(observation)
    message = str(refused.value)
    assert "State key 'joints' of 'new_embodiment' normalizes to |values| up to 6.49e+38 in rows [1], beyond +-1000" in message
    assert "eef_9d" not in message


def test_a_nan_state_of_a_lenient_policy_is_named_as_nan_not_as_an_overflow(tiny_checkpoint):
    """strict=False: a NaN state was refused as 'normalizes to values beyond float32 ... send the state in the units
    the model was trained on', advice about units for a missing value."""
    pytest.importorskip("torch")
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", strict=False)
    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=2, image_size=(32, 32))
    observation["state"]["gripper"][1] = np.nan  # an absolute key (a relative one's reference check names it first)
    with pytest.raises(ValueError, match=r"State key 'gripper' of 'new_embodiment' has non-finite values \(NaN or inf\) in rows \[1\]; send finite"):
        policy.get_action(observation)


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_an_inf_state_of_a_lenient_policy_is_refused_not_clipped_to_a_plausible_action(tiny_checkpoint, bad):
    """strict=False, called in-process (no server limits in front): an inf state was clipped to the edge of its range
    and a finite action came back, the action for a state at its training maximum."""
    pytest.importorskip("torch")
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", strict=False)
    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=2, image_size=(32, 32))
    observation["state"]["gripper"][0] = bad
    with pytest.raises(ValueError, match=r"State key 'gripper' of 'new_embodiment' has non-finite values \(NaN or inf\) in rows \[0\]"):
        policy.get_action(observation)


def test_rows_of_one_entry_differing_from_the_batch_are_named_in_a_lenient_policy(tiny_checkpoint):
    """strict=False: video of 2 rows and a state of 1 ended in torch's 'Expected size for first two dimensions of
    batch2 tensor', naming no key."""
    pytest.importorskip("torch")
    from gr00t_client import ObservationError
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", strict=False)
    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=2, image_size=(32, 32))
    observation["state"]["gripper"] = observation["state"]["gripper"][:1]
    with pytest.raises(ObservationError, match=r"state\['gripper'\] has 1 rows; the observation's batch size is 2"):
        policy.get_action(observation)


def test_zero_joints_behind_a_nan_joints_action_are_not_called_a_degenerate_rotation():
    """The action's own state was blamed with the rotation wording whatever it held: 'state.joints ... a degenerate
    rotation (an all-zero rotation matrix or quaternion ...)' for joints at zero, a normal pose."""
    from gr00t_server.serving.limits import _likely_cause

    observation = {"state": {"joints": np.zeros((1, 1, 7), np.float32), "eef_9d": np.ones((1, 1, 9), np.float32)}}
    cause = _likely_cause(observation, [0], "joints")
    assert "'state.joints'" in cause and "degenerate rotation" not in cause


def test_a_strict_policys_own_nan_refusal_still_reaches_the_client_with_the_likely_cause():
    """A strict BasePolicy now refuses its own NaN action; served, the reply keeps naming the likely cause."""
    from gr00t_client import ModalityConfig

    class StrictNanRotation(RotationPolicy):
        def __init__(self):
            super().__init__()
            self.strict = True

        def get_modality_config(self):
            return {"state": ModalityConfig([0], ["eef_9d"]), "action": ModalityConfig([0], ["eef_9d", "gripper"])}

    with running_server(StrictNanRotation()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError) as caught:
            client.get_action(rotation_observation(rows_of_zeros=(1,)))
    message = caught.value.server_message
    assert "non-finite values (NaN or inf) in action key 'eef_9d' rows [1]" in message and "Likely cause" in message


def _as_4x4_pose_checkpoint(checkpoint):
    """The tiny checkpoint with its relative EEF key 'eef_9d' turned into a flattened 4x4 pose (DEFAULT format)."""
    import json

    config_path, stats_path = checkpoint / "processor_config.json", checkpoint / "statistics.json"
    config = json.loads(config_path.read_text())
    config["processor_kwargs"]["modality_configs"]["new_embodiment"]["action"]["action_configs"][0]["format"] = "DEFAULT"
    config_path.write_text(json.dumps(config))
    stats = json.loads(stats_path.read_text())
    eye = np.eye(4).reshape(-1)

    def key_stats(low, high):
        return {"min": low.tolist(), "max": high.tolist(), "q01": low.tolist(), "q99": high.tolist(),
                "mean": ((low + high) / 2).tolist(), "std": ((high - low) / 4).tolist()}

    tag = stats["new_embodiment"]
    tag["state"]["eef_9d"] = tag["action"]["eef_9d"] = key_stats(eye - 1, eye + 1)
    tag["relative_action"]["eef_9d"] = {k: [v] * 16 for k, v in key_stats(eye - 0.1, eye + 0.1).items()}
    stats_path.write_text(json.dumps(stats))
    return checkpoint


def test_an_all_zero_4x4_reference_pose_is_refused_not_answered_with_zero_matrices(copy_of):
    """A relative 4x4 (DEFAULT) EEF key anchored on an all-zero state decoded to all-zero matrices: finite, so
    nothing refused them, and the robot was sent them. A strict policy refuses the state before the model runs."""
    pytest.importorskip("torch")
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    checkpoint = _as_4x4_pose_checkpoint(copy_of())
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(checkpoint, "new_embodiment", batch_size=2, image_size=(32, 32))
    observation["state"]["eef_9d"][:] = np.eye(4).reshape(16)
    observation["state"]["eef_9d"][1] = 0.0
    expected = (r"reference state 'state.eef_9d' of relative key 'eef_9d' \(a flattened 4x4 pose\) is singular "
                r"\(not invertible\) in rows \[1\]")
    with pytest.raises(ObservationError, match=expected):
        policy.get_action(observation)
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError, match=expected):
            client.get_action(observation)
        observation["state"]["eef_9d"][1] = observation["state"]["eef_9d"][0]
        action, _ = client.get_action(observation)
    assert action["eef_9d"].shape[-1] == 16 and not (action["eef_9d"] == 0).all()


def _pose_at(translation, angle):
    """A flattened (row-major) 4x4 pose: a rotation by `angle` about z, then `translation`."""
    pose = np.eye(4)
    pose[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    pose[:3, 3] = translation
    return pose


def test_a_4x4_reference_pose_flattened_column_major_is_refused_naming_the_row_and_its_last_row(copy_of):
    """A pose flattened column-major (Eigen, OpenGL, T.T.flatten()) is invertible, so it was served: its translation
    (in the last row) was dropped and the robot was sent towards the origin with the inverse rotation."""
    pytest.importorskip("torch")
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    checkpoint = _as_4x4_pose_checkpoint(copy_of())
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(checkpoint, "new_embodiment", batch_size=2, image_size=(32, 32))
    pose = _pose_at([0.5, 0.1, 0.3], 0.5)
    observation["state"]["eef_9d"][0] = pose.reshape(16)
    observation["state"]["eef_9d"][1] = pose.T.reshape(16)  # the same pose, column-major
    expected = (r"reference state 'state.eef_9d' of relative key 'eef_9d' \(a flattened 4x4 pose\) has last row "
                r"\[0.5, 0.1, 0.3, 1\] in rows \[1\]; expected \[0, 0, 0, 1\].*flattened column-major")
    with pytest.raises(ObservationError, match=expected):
        policy.get_action(observation)
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError, match=expected):
            client.get_action(observation)
        observation["state"]["eef_9d"][1] = pose.reshape(16)
        action, _ = client.get_action(observation)
    assert np.isfinite(action["eef_9d"]).all()


def test_a_4x4_pose_flattened_column_major_in_the_rtc_previous_chunk_is_refused_naming_key_row_and_step(copy_of):
    """RTC re-expresses the overlap rows relative to the state: a column-major pose there lost its translation too."""
    pytest.importorskip("torch")
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.policies.previous_action import PreviousActionError
    from gr00t_server.test_checkpoint import example_observation

    checkpoint = _as_4x4_pose_checkpoint(copy_of())
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(checkpoint, "new_embodiment", batch_size=2, image_size=(32, 32))
    observation["state"]["eef_9d"][:] = _pose_at([0.2, -0.1, 0.4], 0.3).reshape(16)
    earlier, _ = policy.get_action(observation, {"seed": 1})
    previous = {key: value.copy() for key, value in earlier.items()}
    horizon = previous["eef_9d"].shape[1]
    step_pose = previous["eef_9d"][1, horizon - 2].reshape(4, 4).copy()
    previous["eef_9d"][1, horizon - 2] = step_pose.T.reshape(16)
    rtc = {"previous_action": previous, "overlap_steps": 4, "frozen_steps": 2}
    with pytest.raises(PreviousActionError, match=r"^options\['rtc'\]\['previous_action'\]\['eef_9d'\] \(DEFAULT "
                                                  r"pose\) has last row \[.*\] at \(row, step\) "
                                                  rf"\[\(1, {horizon - 2}\)\]; expected \[0, 0, 0, 1\].*column-major"):
        policy.get_action(observation, {"seed": 2, "rtc": rtc})
    previous["eef_9d"][1, horizon - 2] = step_pose.reshape(16)
    action, _ = policy.get_action(observation, {"seed": 2, "rtc": rtc})  # the poses get_action returned: served
    assert np.isfinite(action["eef_9d"]).all()


def test_a_state_far_beyond_its_statistics_is_refused_before_the_model_naming_it_not_the_weights_nor_a_zero_gripper(
        tiny_checkpoint):
    """A mean/std state of 1e30 (~6.5e30 once normalized) made the model's output NaN, refused after the model ran
    (ONNX Runtime answered finite actions from it instead)."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    observation = example_observation(tiny_checkpoint, "new_embodiment", image_size=(32, 32))
    observation["state"]["gripper"][:] = 0.0  # an open gripper: normal, not a cause
    observation["state"]["joints"][:] = 1e30  # finite in float32, ~1e30 once normalized: the model makes NaN
    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", dtype="fp32")
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError) as caught:
            client.get_action(observation, {"seed": 0})
    message = caught.value.server_message
    assert "State key 'joints' of 'new_embodiment' normalizes to |values| up to 6.49e+30 in rows [0], beyond +-1000" in message
    assert "holds 1e+30 against this checkpoint's statistics mean " in message and ", std " in message
    assert "weights were finite when loaded" not in message
    assert "gripper" not in message


def test_a_mean_std_column_whose_std_is_0_passes_its_raw_value_up_to_1000_times_its_magnitude(copy_of):
    """A mean/std column with std 0 reaches the model raw, as it did in training (model.md §3.5): 5000 there is the
    value the model was trained on, not an outlier; the same value in a column with a std is refused, and so is a
    value past 1000 times the column's own magnitude (1e20 was sent to the model raw: ONNX Runtime answered finite
    actions, PyTorch NaN at 1e30)."""
    import json

    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    checkpoint = copy_of()
    stats_path = checkpoint / "statistics.json"
    stats = json.loads(stats_path.read_text())
    joints = stats["new_embodiment"]["state"]["joints"]
    joints["mean"][0], joints["std"][0] = 5000.0, 0.0
    stats_path.write_text(json.dumps(stats))
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    assert "joints" in policy.processor.config.modality_configs["new_embodiment"]["state"].mean_std_embedding_keys
    observation = example_observation(checkpoint, "new_embodiment", image_size=(32, 32))
    observation["state"]["joints"][..., 0] = 5000.0
    action, _ = policy.get_action(observation, {"seed": 0})
    assert all(np.isfinite(value).all() for value in action.values())
    observation["state"]["joints"][..., 1] = 5000.0
    with pytest.raises(ObservationError, match=r"State key 'joints' of 'new_embodiment' normalizes to \|values\| up to "
                                               r"\S+ in rows \[0\], beyond \+-1000: column 1 holds 5e\+03"):
        policy.get_action(observation, {"seed": 0})


def test_a_std_0_column_of_a_mean_std_key_anchoring_nothing_is_refused_far_beyond_its_constant(copy_of):
    """A gripper constant at 0.04 in training (std 0) under mean/std reaches the model raw: 1e20 there was served
    without a word on every backend, and 1e30 gave ONNX Runtime finite actions where PyTorch made NaN. Held, as an
    anchor is, to 1000 times its statistics' magnitude before the model."""
    import json

    checkpoint = copy_of()
    config = json.loads((checkpoint / "processor_config.json").read_text())
    state = config["processor_kwargs"]["modality_configs"]["new_embodiment"]["state"]
    state["mean_std_embedding_keys"] = [*(state.get("mean_std_embedding_keys") or []), "gripper"]
    (checkpoint / "processor_config.json").write_text(json.dumps(config))
    stats = json.loads((checkpoint / "statistics.json").read_text())
    gripper = stats["new_embodiment"]["state"]["gripper"]
    for name in gripper:
        gripper[name] = [0.0 if name == "std" else 0.04 for _ in gripper[name]]
    (checkpoint / "statistics.json").write_text(json.dumps(stats))
    processor = _edited_checkpoint(checkpoint)
    states = _ordinary_states(checkpoint)
    states["gripper"][...] = 0.04
    processor.normalize_state("new_embodiment", states)  # the training constant
    states["gripper"][...] = 900.0  # within 1000 times its magnitude (at least 1): still taken
    processor.normalize_state("new_embodiment", states)
    states["gripper"][...] = 1e20
    with pytest.raises(ObservationError) as refused:
        processor.normalize_state("new_embodiment", states)
    assert str(refused.value) == (
        "State key 'gripper' of 'new_embodiment' is beyond its training data in rows [0]: column 0 holds 1e+20 in "
        "those rows, its std 0 (constant 0.04 in training), so passed raw to the model, beyond 1000 times its "
        "statistics' magnitude (+-1000); the model only ever saw the constant there, so this state is likely in other "
        "units: send states in the units of the checkpoint's statistics")


def test_a_min_max_state_far_beyond_its_range_is_refused_only_when_not_clipped(tiny_checkpoint):
    """--no-clip-outliers: a min/max state normalizes without a bound, as a mean/std one does."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    observation = example_observation(tiny_checkpoint, "new_embodiment", image_size=(32, 32))
    observation["state"]["gripper"][:] = 1e6
    clipped = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", clip_outliers=True)
    action, _ = clipped.get_action(observation, {"seed": 0})
    assert all(np.isfinite(value).all() for value in action.values())
    unclipped = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", clip_outliers=False)
    with running_server(unclipped) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError, match=r"State key 'gripper' of 'new_embodiment' normalizes to \|values\| "
                                                    r"up to \S+ in rows \[0\], beyond \+-1000: column 0 holds 1e\+06 "
                                                    r"against this checkpoint's statistics range \[\S+, \S+\], not clipped"):
            client.get_action(observation, {"seed": 0})


def test_a_clipped_state_that_anchors_a_relative_action_is_judged_by_its_unclipped_value(tiny_checkpoint):
    """eef_9d is clipped to +-1 for the model, but its relative action is decoded against its raw value: a 1e30
    state made an end-effector target of 1e30, sent as a good action."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", clip_outliers=True)
    observation = example_observation(tiny_checkpoint, "new_embodiment", image_size=(32, 32), batch_size=2)
    observation["state"]["eef_9d"][1, :, 0] = 1e30
    with pytest.raises(ObservationError, match=r"State key 'eef_9d' of 'new_embodiment' holds \|values\| up to 1e\+30 "
                                               r"in rows \[1\], beyond 1000 times its statistics' magnitude; it is "
                                               r"clipped for the model but anchors relative action key 'eef_9d'"):
        policy.get_action(observation, {"seed": 0})
    observation["state"]["eef_9d"][1, :, 0] = 3.0  # a few ranges out: clipped for the model, served as before
    action, _ = policy.get_action(observation, {"seed": 0})
    assert np.isfinite(action["eef_9d"]).all()


def test_a_real_rotation_of_a_column_that_barely_varied_in_training_is_served(tiny_checkpoint, tmp_path):
    """Judged in units of its range, a rot6d entry that stayed within +-5e-6 in training put a real 0.6 degree roll
    (0.01) thousands of ranges out, and the request was refused as 'in other units'; it is clipped and served."""
    import json
    import shutil

    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    stats_file = next(checkpoint.rglob("statistics.json"))
    stats = json.loads(stats_file.read_text())
    eef = stats["new_embodiment"]["state"]["eef_9d"]
    for name in ("min", "q01"):
        eef[name][4] = -5e-6
    for name in ("max", "q99"):
        eef[name][4] = 5e-6
    stats_file.write_text(json.dumps(stats))
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu", clip_outliers=True)
    observation = example_observation(checkpoint, "new_embodiment", image_size=(32, 32), batch_size=1)
    observation["state"]["eef_9d"][0, :, 4] = 0.01
    action, _ = policy.get_action(observation, {"seed": 0})
    assert np.isfinite(action["eef_9d"]).all()


def test_a_float64_state_beyond_float32_is_refused_by_a_lenient_policy_not_answered_with_inf(tiny_checkpoint):
    """strict=False: a float64 reference state of 1e300 passed the finiteness check, and the relative action decoded
    against it became inf in the float32 cast; in process nothing checked it, over the wire the refusal named no
    state."""
    pytest.importorskip("torch")
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", strict=False)
    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=2, image_size=(32, 32))
    eef = observation["state"]["eef_9d"].astype(np.float64)
    eef[1, ..., :3] = 1e300  # the rot6d part stays a real rotation
    observation["state"]["eef_9d"] = eef
    expected = (r"State key 'eef_9d' of 'new_embodiment' has values beyond float32's range \(largest \|value\| 1e\+300, "
                r"float32 holds up to 3.4e\+38\) in rows \[1\]; states must fit float32")
    with pytest.raises(ObservationError, match=expected):
        policy.get_action(observation, {"seed": 0})
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000, strict=False) as client:
        with pytest.raises(PolicyServerError, match=expected):
            client.get_action(observation, {"seed": 0})


def test_a_decoded_action_beyond_float32_is_refused_naming_the_key_and_its_reference_state(tiny_checkpoint):
    """The backstop after the float32 cast: an inf action of a relative key is refused, naming its reference state."""
    from gr00t_client import NonFiniteActionError
    from gr00t_server.processing.processor import Gr00tN1d7Processor
    from gr00t_server.test_checkpoint import example_observation

    processor = Gr00tN1d7Processor.from_pretrained(tiny_checkpoint, local_files_only=True)
    states = {key: value.astype(np.float64)
              for key, value in example_observation(tiny_checkpoint, "new_embodiment")["state"].items()}
    states["eef_9d"][..., :3] = 1e300
    output = np.zeros((1, 40, 132), np.float32)
    with pytest.raises(NonFiniteActionError, match=r"action key 'eef_9d' of 'new_embodiment' holds non-finite values "
                                                   r"\(NaN or inf\) in rows \[0\] once decoded to float32; the action was "
                                                   r"not sent. Likely cause: its reference state 'state.eef_9d' \(\|values\| "
                                                   r"up to 1e\+300\) is beyond float32's range"):
        processor.decode_action(output, "new_embodiment", states)


@pytest.mark.parametrize("result", [
    [np.full((1, 16, 7), np.nan, np.float32), {}],
    [[float("nan"), 1.0], {}],
    np.full((1, 16, 7), np.inf, np.float32),
    [1.0, float("nan")],
], ids=["ndarray_action", "list_action", "bare_array", "bare_list"])
def test_a_replaced_get_action_that_returns_no_action_map_is_still_refused_a_nan(result):
    """protocol.md §5: a replaced get_action's action is checked for NaN/inf whatever it is, not only a map."""
    with running_server(EchoPolicy()) as server:
        server.register_endpoint("get_action", lambda observation=None, options=None: result)
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000, strict=False) as client:
            with pytest.raises(PolicyServerError, match="non-finite value"):
                client.call_endpoint("get_action", {"observation": {}, "options": None})
            assert client.ping()


class SetActionPolicy(BasePolicy):
    """Answers with an action held in a Python set or frozenset, which the wire sends as a sorted list."""

    def __init__(self, action):
        super().__init__(strict=False)
        self.action = action

    def _get_action(self, observation, options=None):
        return self.action, {}

    def reset(self, options=None):
        return {}


@pytest.mark.parametrize("action", [{"move": {float("nan")}}, {"gripper": frozenset([float("inf"), 1.0])}],
                         ids=["set", "frozenset"])
def test_a_non_finite_number_in_a_set_action_is_never_sent_to_a_reference_client(action):
    """The non-finite check walked lists and tuples but not sets, which the wire sends as lists: a reference client
    (one that does not check the reply) received [nan]."""
    from reference_peer import ReferenceClient

    key = next(iter(action))
    with running_server(SetActionPolicy(action)) as server, ReferenceClient(server.port) as client:
        with pytest.raises(RuntimeError, match=rf"non-finite value \((nan|inf)\) in action key '{key}'; the action was"):
            client.get_action({"state": {"x": np.zeros((1, 1, 1), np.float32)}})


def _edited_checkpoint(checkpoint, processor_kwargs=None, joints_stats=None):
    """`checkpoint` (a copy) with processor_kwargs updated by `processor_kwargs(kwargs)` and the 'joints' state
    statistics by `joints_stats(stats)`; the processor loaded from it."""
    import json

    from gr00t_server.processing.processor import Gr00tN1d7Processor

    for name, edit, part in (("processor_config.json", processor_kwargs, lambda d: d["processor_kwargs"]),
                             ("statistics.json", joints_stats, lambda d: d["new_embodiment"]["state"]["joints"])):
        if edit is not None:
            data = json.loads((checkpoint / name).read_text())
            edit(part(data))
            (checkpoint / name).write_text(json.dumps(data))
    return Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True)


def _ordinary_states(checkpoint):
    from gr00t_server.test_checkpoint import example_observation

    return {k: v[0].astype(np.float64) for k, v in example_observation(checkpoint, "new_embodiment")["state"].items()}


def test_a_state_key_both_sin_cos_and_mean_std_encoded_is_normalized_not_checked_as_an_outlier(copy_of):
    # sin/cos takes precedence (model.md §3.5 step 1) and makes the key twice as wide: the outlier check broadcast its
    # std onto that width and failed every request of such a checkpoint.
    def sin_cos_joints(kwargs):
        kwargs["apply_sincos_state_encoding"] = True
        kwargs["modality_configs"]["new_embodiment"]["state"]["sin_cos_embedding_keys"] = ["joints"]

    checkpoint = copy_of()
    processor = _edited_checkpoint(checkpoint, processor_kwargs=sin_cos_joints)
    assert "joints" in processor.modality_configs("new_embodiment")["state"].mean_std_embedding_keys
    states = _ordinary_states(checkpoint)
    # An angle 1000 standard deviations out: sin/cos of it is within +-1 whatever its size (below the bound that
    # check_anchor_magnitude holds the raw value of this anchoring key to)
    states["joints"][..., 0] = 500.0
    state = processor.normalize_state("new_embodiment", states)
    assert np.abs(state).max() <= 1.0 + 1e-6


def test_a_float16_model_refuses_a_far_state_as_an_outlier_not_advising_bf16_or_fp32(copy_of):
    # The float16 overflow check ran first and advised "serve in bf16 or fp32", where the same state is refused too.
    checkpoint = copy_of()
    processor = _edited_checkpoint(checkpoint)
    processor.model_float = "float16"
    states = _ordinary_states(checkpoint)
    states["joints"][..., 1] = 1e5
    with pytest.raises(ObservationError) as refused:
        processor.normalize_state("new_embodiment", states)
    assert "beyond +-1000: column 1 holds 1e+05" in str(refused.value) and "bf16" not in str(refused.value)


def test_a_nan_model_output_does_not_blame_a_std_0_column_the_outlier_check_takes(copy_of):
    checkpoint = copy_of()

    def constant_first_column(stats):
        stats["mean"][0], stats["std"][0] = 5000.0, 0.0

    processor = _edited_checkpoint(checkpoint, joints_stats=constant_first_column)
    states = _ordinary_states(checkpoint)
    states["joints"][..., 0] = 5000.0
    processor.normalize_state("new_embodiment", states)  # taken: the model saw 5000 there in training
    output = np.zeros((1, 40, 132), np.float32)
    output[0, 3, 0] = np.nan
    from gr00t_client import NonFiniteActionError

    with pytest.raises(NonFiniteActionError) as refused:
        processor.decode_action(output, "new_embodiment", states)
    assert "state key 'joints'" not in str(refused.value) and "weights were finite when loaded" in str(refused.value)


def test_a_state_refused_against_a_near_zero_std_names_the_statistics_not_the_users_units(copy_of):
    # A column constant in training whose std came out of rounding (1e-9): an ordinary state normalized to 8e8 and
    # was refused as "likely in other units".
    checkpoint = copy_of()

    def rounding_std(stats):
        stats["std"][0] = 1e-9

    processor = _edited_checkpoint(checkpoint, joints_stats=rounding_std)
    with pytest.raises(ObservationError, match=r"column 0 holds .* std 1e-09; a std that small is that of a column "
                                               r"constant in training .* correct its std in the checkpoint's "
                                               r"statistics.json") as refused:
        processor.normalize_state("new_embodiment", _ordinary_states(checkpoint))
    assert "other units" not in str(refused.value)


def test_naming_the_likely_cause_under_a_long_key_costs_memory_near_the_message_size():
    """The likely-cause search made every child's dotted path up front: a 1 MB key over 300 float arrays held 300 MB
    of paths while a NaN action was refused. Only the arrays found are named, their paths cut."""
    import tracemalloc

    observation = rotation_observation(rows_of_zeros=(1,))
    observation["k" * 1_000_000] = {f"e{i}": np.zeros((3, 1, 1), np.float32) for i in range(300)}
    with running_server(RotationPolicy()) as server, PolicyClient(port=server.port, timeout_ms=30000) as client:
        tracemalloc.start()
        try:
            with pytest.raises(PolicyServerError) as caught:
                client.get_action(observation)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    message = caught.value.server_message
    assert "in action key 'eef_9d' rows [1]" in message and "'state.eef_9d' is all zeros" in message
    assert peak < 60_000_000, f"{peak} bytes traced for a request of about 1 MB"


def _refused_in_process_and_over_the_wire(checkpoint, states, pattern):
    """Gr00tPolicy at `checkpoint` refuses an example observation carrying `states` with an ObservationError matching
    `pattern`, in process and through a real server and PolicyClient."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(checkpoint, "new_embodiment", image_size=(32, 32))
    for key, edit in states.items():
        edit(observation["state"][key])
    with pytest.raises(ObservationError, match=pattern):
        policy.get_action(observation, {"seed": 0})
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError, match=pattern):
            client.get_action(observation, {"seed": 0})


def test_a_std_0_state_column_anchoring_a_relative_action_is_refused_far_beyond_its_constant(copy_of):
    """A mean/std column with std 0 passes its raw value to the model, and the relative action 'joints' is decoded
    against it: a 1e12 there was sent as a 1e12 joint target."""
    checkpoint = copy_of()

    def constant_first_column(stats):
        stats["std"][0] = 0.0

    _edited_checkpoint(checkpoint, joints_stats=constant_first_column)

    def huge_first_column(joints):
        joints[..., 0] = 1e12

    _refused_in_process_and_over_the_wire(
        checkpoint, {"joints": huge_first_column},
        r"State key 'joints' of 'new_embodiment' holds \|values\| up to 1e\+12 in rows \[0\], beyond 1000 times its "
        r"statistics' magnitude; it is passed raw to the model \(its std is 0\) but anchors relative action key "
        r"'joints', decoded against its raw value: column 0 holds 1e\+12, expected within \+-1407\.12")


def test_a_sin_cos_state_anchoring_a_relative_action_is_refused_far_beyond_its_statistics(copy_of):
    """sin/cos of any angle is within +-1, but the relative action 'joints' is decoded against the raw angle: a 1e30
    there was sent as a 1e30 joint target."""
    checkpoint = copy_of()

    def sin_cos_joints(kwargs):
        kwargs["apply_sincos_state_encoding"] = True
        kwargs["modality_configs"]["new_embodiment"]["state"]["sin_cos_embedding_keys"] = ["joints"]
        kwargs["modality_configs"]["new_embodiment"]["state"]["mean_std_embedding_keys"] = None

    _edited_checkpoint(checkpoint, processor_kwargs=sin_cos_joints)

    def huge_first_column(joints):
        joints[..., 0] = 1e30

    _refused_in_process_and_over_the_wire(
        checkpoint, {"joints": huge_first_column},
        r"State key 'joints' of 'new_embodiment' holds \|values\| up to 1e\+30 in rows \[0\], beyond 1000 times its "
        r"statistics' magnitude; it is encoded as sin/cos for the model but anchors relative action key 'joints'")


def test_an_unclipped_min_max_state_column_of_one_value_anchoring_a_relative_action_is_refused(copy_of):
    """clip_outliers off and q01 == q99: the column normalizes to 0 whatever its value, so the outlier check saw
    nothing, and the relative action 'eef_9d' decoded against 5000 was sent as a 5000 end-effector target."""
    import json

    checkpoint = copy_of()
    stats = json.loads((checkpoint / "statistics.json").read_text())
    eef = stats["new_embodiment"]["state"]["eef_9d"]
    for name in ("min", "max", "q01", "q99"):
        eef[name][0] = eef["mean"][0]
    (checkpoint / "statistics.json").write_text(json.dumps(stats))
    processor = _edited_checkpoint(checkpoint, processor_kwargs=lambda kwargs: kwargs.update(clip_outliers=False))
    states = _ordinary_states(checkpoint)
    states["eef_9d"][..., 0] = 5000.0
    with pytest.raises(ObservationError, match=r"State key 'eef_9d' of 'new_embodiment' holds \|values\| up to 5e\+03 "
                                               r"in rows \[0\], beyond 1000 times its statistics' magnitude; it is "
                                               r"normalized to 0 for the model \(its statistics' range is one value\) "
                                               r"but anchors relative action key 'eef_9d'"):
        processor.normalize_state("new_embodiment", states)


def test_a_nan_model_output_names_a_std_0_column_far_from_its_training_constant(copy_of):
    """A std-0 column passes its raw value to the model: 1e30 there made NaN, and the refusal blamed the weights,
    float16 and the backend."""
    checkpoint = copy_of()

    def constant_first_column(stats):
        stats["std"][0] = 0.0

    processor = _edited_checkpoint(checkpoint, joints_stats=constant_first_column)
    states = _ordinary_states(checkpoint)
    states["joints"][..., 0] = 1e30
    output = np.zeros((1, 40, 132), np.float32)
    output[0, 3, 0] = np.nan
    from gr00t_client import NonFiniteActionError

    with pytest.raises(NonFiniteActionError) as refused:
        processor.decode_action(output, "new_embodiment", states)
    message = str(refused.value)
    assert ("Likely cause: state key 'joints' column 0 holds 1e+30 in those rows, its std 0 (constant -0.47168 in "
            "training), so passed raw to the model, beyond 1000 times its statistics' magnitude") in message
    assert "weights were finite when loaded" not in message


def test_a_state_normalizing_just_beyond_the_limit_prints_enough_digits_to_show_it(copy_of):
    """Formatted with 3 digits, 1000.4 read 'up to 1e+03 ..., beyond +-1000'."""
    checkpoint = copy_of()

    def unit_first_column(stats):
        stats["mean"][0], stats["std"][0] = 0.0, 1.0

    processor = _edited_checkpoint(checkpoint, joints_stats=unit_first_column)
    states = _ordinary_states(checkpoint)
    states["joints"][..., 0] = 1000.4
    with pytest.raises(ObservationError, match=r"normalizes to \|values\| up to 1000\.4 in rows \[0\], beyond \+-1000: "
                                               r"column 0 holds"):
        processor.normalize_state("new_embodiment", states)


def test_a_mean_std_std_below_float32_resolution_at_its_mean_is_warned_about_at_load(copy_of, tiny_checkpoint, caplog):
    """numpy's std of a float64 column constant at 0.1 is 1.4e-17, not 0: every float32 state there normalizes to
    about 1e8 and is refused, the training value too (serve refused its own warm-up sample). Said at load, naming the
    statistics file, the key and column, and what to change."""
    import logging

    checkpoint = copy_of()

    def rounding_std(stats):
        stats["mean"][0], stats["std"][0] = 0.10000000000000002, 1.3877787807814457e-17

    with caplog.at_level(logging.WARNING, logger="gr00t_server.processing.norm_params"):
        processor = _edited_checkpoint(checkpoint, joints_stats=rounding_std)
        processor.norm_params("new_embodiment")
    warned = [r.getMessage() for r in caplog.records if "float32's resolution" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(
        f"{checkpoint / 'statistics.json'}: state key 'joints' of 'new_embodiment' column 0 has std 1.39e-17, below float32's resolution "
        "at its mean 0.1 (7.45e-09): a column constant in training whose std is rounding"), warned
    assert "set that std to 0" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gr00t_server.processing.norm_params"):
        _edited_checkpoint(tiny_checkpoint).norm_params("new_embodiment")  # ordinary statistics: nothing said
    assert not [r for r in caplog.records if "float32's resolution" in r.getMessage()]
