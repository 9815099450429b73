"""Refusals and edge values of state normalization and action decoding that no other test pinned (audit 13, mutation
testing): each test here failed on a hand-made mutant of processing/normalization.py or processing/processor.py.
Real processors built from processor_kwargs and statistics.json dicts, as a checkpoint's files give them."""

import numpy as np
import pytest

from gr00t_client.policy import NonFiniteActionError
from gr00t_server.processing.config import parse_statistics, processor_config_from_kwargs
from gr00t_server.processing.processor import Gr00tN1d7Processor


def _stats(low, high, dim, rows=None):
    """min/max/q01/q99/mean/std of one key: (dim,) lists, or (rows, dim) for relative statistics."""
    shape = (rows, dim) if rows else (dim,)
    return {"min": np.full(shape, low).tolist(), "max": np.full(shape, high).tolist(),
            "q01": np.full(shape, low).tolist(), "q99": np.full(shape, high).tolist(),
            "mean": np.zeros(shape).tolist(), "std": np.ones(shape).tolist()}


def _processor(state=None, action=None, relative=None, max_state_dim=8, max_action_dim=8, horizon=2,
               state_keys_sincos=(), apply_sincos=False, exclude_state=False, state_keys_map=None):
    """Embodiment 'robot': state keys {name: stats}, action keys {name: (rep, stats)}, relative {name: stats}."""
    state = state if state is not None else {"arm": _stats(0, 4, 2), "hand": _stats(0, 1, 1)}
    action = action if action is not None else {"arm": ("RELATIVE", _stats(-1, 1, 2)), "hand": ("ABSOLUTE", _stats(0, 1, 1))}
    relative = relative if relative is not None else {"arm": _stats(-2, 2, 2, rows=horizon)}
    state_keys_map = state_keys_map or {}
    configs = {"robot": {
        "video": {"delta_indices": [0], "modality_keys": ["cam"]},
        "state": {"delta_indices": [0], "modality_keys": list(state), "sin_cos_embedding_keys": list(state_keys_sincos)},
        "action": {
            "delta_indices": list(range(horizon)),
            "modality_keys": list(action),
            "action_configs": [{"rep": rep, "type": "NON_EEF", "format": "DEFAULT", "state_key": state_keys_map.get(key)}
                               for key, (rep, _) in action.items()],
        },
        "language": {"delta_indices": [0], "modality_keys": ["task"]},
    }}
    config = processor_config_from_kwargs({
        "modality_configs": configs, "max_state_dim": max_state_dim, "max_action_dim": max_action_dim,
        "max_action_horizon": 4, "use_relative_action": True, "use_percentiles": True, "clip_outliers": True,
        "apply_sincos_state_encoding": apply_sincos, "exclude_state": exclude_state,
    })
    statistics = parse_statistics({"robot": {
        "state": state, "action": {key: stats for key, (_, stats) in action.items()}, "relative_action": relative,
    }})
    return Gr00tN1d7Processor(config, statistics, {"robot": 3}, tokenizer=None)


def _states(arm=(1.0, 2.0), hand=(0.5,)):
    return {"arm": np.array([[arm]]), "hand": np.array([[hand]])}  # (B=1, T=1, D)


# --- state normalization -------------------------------------------------------------------------------------------


def test_a_state_key_whose_q01_and_q99_differ_only_by_float_rounding_normalizes_to_zero():
    """A constant joint whose statistics differ by float noise (1e-9) is a degenerate range (np.isclose, as the
    reference): its state is 0, not the -1 or +1 that dividing by the noise gives."""
    constant = {"min": [0.5], "max": [0.5 + 1e-9], "q01": [0.5], "q99": [0.5 + 1e-9], "mean": [0.5], "std": [0.0]}
    proc = _processor(state={"arm": _stats(0, 4, 2), "hand": constant})
    state = proc.normalize_state("robot", {"arm": np.array([[2.0, 2.0]]), "hand": np.array([[0.5]])})
    np.testing.assert_array_equal(state[0, :3], [0.0, 0.0, 0.0])


def test_state_keys_exactly_as_wide_as_max_state_dim_load_and_normalize():
    """State keys that fill max_state_dim exactly are served (not refused at load, not refused by the pad)."""
    proc = _processor(max_state_dim=3)
    proc.norm_params("robot")
    state = proc.normalize_state("robot", {"arm": np.array([[0.0, 4.0]]), "hand": np.array([[1.0]])})
    assert state.shape == (1, 3)
    np.testing.assert_allclose(state[0], [-1.0, 1.0, 1.0])


def test_sin_cos_keys_are_min_max_normalized_when_the_encoding_is_off():
    """sin_cos_embedding_keys apply only with apply_sincos_state_encoding: otherwise the key is min/max normalized
    and keeps its width (an encoded key moved every later state column)."""
    proc = _processor(state_keys_sincos=["arm"], apply_sincos=False)
    state = proc.normalize_state("robot", {"arm": np.array([[1.0, 3.0]]), "hand": np.array([[0.0]])})
    np.testing.assert_allclose(state[0, :4], [-0.5, 0.5, -1.0, 0.0])


def test_sin_cos_keys_count_twice_against_max_state_dim_at_load():
    """An encoded sin/cos key is twice as wide: keys that only fit unencoded are refused at load, not at every request."""
    proc = _processor(state_keys_sincos=["arm"], apply_sincos=True, max_state_dim=4)  # 2*2 + 1 = 5 > 4
    with pytest.raises(ValueError, match="have 5 dimensions together, more than processor_config.json's max_state_dim 4"):
        proc.norm_params("robot")


def test_exclude_state_sends_zeros_of_the_normalized_width():
    """exclude_state=true: the model sees an all-zero state, whatever the robot sends."""
    proc = _processor(exclude_state=True)
    state = proc.normalize_state("robot", {"arm": np.array([[1.0, 3.0]]), "hand": np.array([[0.7]])})
    assert state.shape == (1, 8) and not state.any()


# --- statistics refused at load -----------------------------------------------------------------------------------


def test_relative_statistics_with_fewer_steps_than_the_action_horizon_are_refused_at_load():
    """One row of relative statistics for a 2-step horizon would broadcast step 0's range over every step."""
    proc = _processor(relative={"arm": _stats(-2, 2, 2, rows=1)})
    with pytest.raises(ValueError, match="have 1 steps; the action horizon is 2"):
        proc.norm_params("robot")


def test_relative_statistics_of_another_width_than_the_action_key_are_refused_at_load():
    """A 1-wide relative range for a 2-wide action key would broadcast one column's range over both."""
    proc = _processor(relative={"arm": _stats(-2, 2, 1, rows=2)})
    with pytest.raises(ValueError, match="relative_action key 'arm' of 'robot' has 1 values per step but action key 'arm' has 2"):
        proc.norm_params("robot")


def test_a_relative_key_missing_from_relative_action_statistics_is_refused_naming_it():
    """relative_action statistics that hold other keys but not this relative one: a ValueError naming the key and
    the embodiment (a bare KeyError('arm') told a user nothing)."""
    proc = _processor(relative={"other": _stats(-2, 2, 2, rows=2)})
    with pytest.raises(ValueError, match="Relative action statistics required for key 'arm' in embodiment 'robot' but "
                                         "not found"):
        proc.norm_params("robot")


def test_action_keys_wider_than_max_action_dim_are_refused_at_load():
    """Action keys needing more columns than the model outputs are refused when the statistics are read."""
    proc = _processor(max_action_dim=2)  # arm 2 + hand 1
    with pytest.raises(ValueError, match="the action keys of 'robot' have 3 dimensions together, more than the processor's "
                                         "max_action_dim 2"):
        proc.norm_params("robot")


# --- action decoding ------------------------------------------------------------------------------------------------


def test_an_inf_in_a_later_action_key_is_refused_not_clipped_to_its_range():
    """Every action key's raw output is checked, not only the first: min/max decoding clips an inf in 'hand' to q99."""
    proc = _processor()
    output = np.zeros((1, 2, 8))
    output[0, 1, 2] = np.inf  # 'hand' is column 2
    with pytest.raises(NonFiniteActionError, match=r"action key 'hand' of 'robot' holds non-finite values") as caught:
        proc.decode_action(output, "robot", _states())
    assert caught.value.key == "hand" and caught.value.rows == [0]


def test_an_rtc_start_row_the_model_moved_beyond_the_limit_is_refused_naming_the_movement():
    """The RTC start rows are judged by how far the model moved them from the start it was given; the refusal names
    that movement, not "the model's output" (whose value, the start plus the movement, it does not show)."""
    proc = _processor()
    given = np.full((1, 1, 8), 5e5)
    output = np.zeros((1, 2, 8))
    output[0, 0] = 5e5
    output[0, 0, 0] += 2000.0  # 'arm' column 0
    with pytest.raises(NonFiniteActionError, match=r"^the model's movement of the RTC start rows \(step 0\) for "
                                                   r"action key 'arm' of 'robot' reaches \|values\| up to 2e\+03 in "
                                                   r"rows \[0\]") as caught:
        proc.decode_action(output, "robot", _states(), inpainted=given)
    assert caught.value.key == "arm" and caught.value.rows == [0]
    output[0, 0, 0] = 5e5
    output[0, 1, 0] = 2000.0  # a later step is the model's own output
    with pytest.raises(NonFiniteActionError, match=r"^the model's output for action key 'arm' of 'robot' reaches"):
        proc.decode_action(output, "robot", _states(), inpainted=given)


def test_a_model_output_narrower_than_the_action_keys_is_refused():
    """An output with fewer columns than the action keys need is an error, not a silently shorter last key."""
    proc = _processor(relative={"arm": _stats(-2, 2, 2, rows=2)})
    with pytest.raises(ValueError, match="action keys need 3 values per step but the model output has 2"):
        proc.decode_action(np.zeros((1, 2, 2)), "robot", _states())


def test_a_model_output_shorter_than_the_action_horizon_is_refused():
    """An output with fewer steps than the embodiment's horizon is an error, not a silently shorter chunk."""
    proc = _processor(action={"hand": ("ABSOLUTE", _stats(0, 1, 1))}, relative={}, horizon=3)
    with pytest.raises(ValueError, match="action horizon 3 exceeds the model's action horizon 2"):
        proc.decode_action(np.zeros((1, 2, 8)), "robot", _states())


def test_a_reference_state_of_another_width_than_its_relative_action_is_refused():
    """A 1-wide reference state for a 2-wide relative key would be added to both joints; it is refused instead."""
    proc = _processor()
    with pytest.raises(ValueError, match="reference state 'state.arm' of relative key 'arm' has dimension 1; "
                                         "expected 2"):
        proc.decode_action(np.zeros((1, 2, 8)), "robot", {"arm": np.array([[[1.0]]]), "hand": np.array([[[0.5]]])})


def test_statistics_giving_a_relative_key_a_reference_state_of_another_width_are_refused_at_load():
    proc = _processor(state={"arm": _stats(0, 4, 1), "hand": _stats(0, 1, 1)})
    with pytest.raises(ValueError, match="relative action key 'arm' of 'robot' has 2 values but its reference state "
                                         "'arm' has 1"):
        proc.norm_params("robot")


def test_an_inf_last_reference_state_is_refused_for_a_relative_key():
    """inf in the state that anchors relative actions would make inf actions; NaN is not the only non-finite value."""
    proc = _processor()
    with pytest.raises(ValueError, match=r"reference state 'state.arm' of relative key 'arm' has NaN or infinite "
                                         r"values in rows \[0\]"):
        proc.decode_action(np.zeros((1, 2, 8)), "robot", _states(arm=(np.inf, 1.0)))


def test_reference_states_are_checked_under_the_action_configs_state_key():
    """A relative key anchored on another state key (action_configs state_key) has that state checked before the
    model runs; the check looked up the action key's own name, found nothing and let a NaN through to the model."""
    proc = _processor(state={"joint_state": _stats(0, 4, 2), "hand": _stats(0, 1, 1)}, state_keys_map={"arm": "joint_state"})
    states = {"joint_state": np.array([[[np.nan, 1.0]]]), "hand": np.array([[[0.5]]])}
    with pytest.raises(ValueError, match=r"reference state 'state.joint_state' of relative key 'arm' has NaN or "
                                         r"infinite values in rows \[0\]"):
        proc.check_reference_states("robot", states)
    states["joint_state"] = np.array([[[1.0, 2.0]]])
    proc.check_reference_states("robot", states)
    out = proc.decode_action(np.zeros((1, 2, 8)), "robot", states)
    np.testing.assert_allclose(out["arm"][0], [[1.0, 2.0], [1.0, 2.0]])  # relative 0 on the joint_state reference
