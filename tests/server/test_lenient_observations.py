"""strict=False takes lists and other dtypes, but a malformed observation still gets a message naming the entry and
what it needs: not a KeyError, an IndexError, or an "internal error" with a traceback in the server's log."""

import logging
import re

import numpy as np
import pytest
from serving import running_server

from gr00t_client import PolicyClient, PolicyServerError

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def lenient(tiny_checkpoint):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    return Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu", strict=False)


@pytest.fixture(scope="module")
def good(tiny_checkpoint):
    from gr00t_server.test_checkpoint import example_observation

    return example_observation(tiny_checkpoint, "libero_sim", batch_size=1, image_size=(32, 32))


def _broken(good, change):
    observation = {group: dict(values) for group, values in good.items()}
    return change(observation)


def _set(group, key, value):
    def change(observation):
        key_name = key or next(iter(observation[group]))
        observation[group][key_name] = value
        return observation
    return change


def _group(group, value):
    def change(observation):
        observation[group] = value
        return observation
    return change


def _rename_first_state(observation):
    first = next(iter(observation["state"]))
    observation["state"][first.capitalize()] = observation["state"].pop(first)
    return observation


def _frames(group, count):
    """The first key of `group` with `count` time steps (its step repeated) where the checkpoint's delta_indices
    have one."""
    def change(observation):
        key_name = next(iter(observation[group]))
        observation[group][key_name] = np.repeat(observation[group][key_name], count, axis=1)
        return observation
    return change


CASES = [
    ("observation None", lambda _: None, r"observation must be a dict with keys 'video', 'state', 'language'; got NoneType"),
    ("observation list", lambda _: [1], r"observation must be a dict with keys .*; got list"),
    ("observation {}", lambda _: {}, r"observation\['video'\] must be a dict holding \[.*\]; got no 'video' \(keys \[\]\)"),
    ("state group None", _group("state", None), r"observation\['state'\] must be a dict holding \[.*\]; got NoneType"),
    ("language group list", _group("language", ["x"]), r"observation\['language'\] must be a dict holding .*; got list"),
    ("state key typo", _rename_first_state, r"state key '\w+' is missing from observation\['state'\]; got keys \["),
    ("video None", _set("video", None, None), r"video\['\w+'\] must have shape \(B, T, H, W, 3\); got NoneType"),
    ("video without B and T", _set("video", None, np.zeros((32, 32, 3), np.uint8)),
     r"video\['\w+'\] must have shape \(B, T, H, W, 3\); got shape \(32, 32, 3\)"),
    ("state (B, D)", _set("state", None, [[0.1, 0.2]]), r"state\['\w+'\] must have shape \(B, T, D\); got shape \(1, 2\)"),
    ("state 0-d", _set("state", None, np.float32(0.5)), r"state\['\w+'\] must have shape \(B, T, D\); got a single float32"),
    ("state ragged", _set("state", None, [[[0.1], [0.2, 0.3]]]), r"state\['\w+'\] must have shape \(B, T, D\); got list"),
    # T=3 frames for a 1-frame checkpoint gave the prompt 3 images per camera: a plausible action, not an error
    ("video T=3", _frames("video", 3), r"video\['\w+'\] has T=3 time steps \(axis 1 of shape \(1, 3, 32, 32, 3\)\); this "
     r"checkpoint's video delta_indices \[0\] need T=1 \(shape \(B, T, H, W, 3\)\)"),
    ("state T=2", _frames("state", 2), r"state\['\w+'\] has T=2 time steps \(axis 1 of shape \(1, 2, \d+\)\); this "
     r"checkpoint's state delta_indices \[0\] need T=1 \(shape \(B, T, D\)\)"),
    ("language None", _set("language", None, None), r"language\['[\w.]+'\] must be a list of B rows, each a list of one str; got NoneType"),
    ("language bare str", _set("language", None, "pick it up"), r"language\['[\w.]+'\] must be a list of B rows.*; got str"),
]


@pytest.mark.parametrize("name, change, message", CASES, ids=[case[0] for case in CASES])
def test_a_malformed_observation_is_refused_naming_the_entry_and_not_counted_as_an_internal_error(
        lenient, good, name, change, message, caplog):
    with running_server(lenient) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with caplog.at_level(logging.ERROR, logger="gr00t_server"):
            with pytest.raises(PolicyServerError, match=message) as refused:
                client.get_action(_broken(good, change))
            assert "internal error" not in str(refused.value)
            action, _ = client.get_action(good)  # and the next request is answered
    assert all(np.isfinite(value).all() for value in action.values())
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], "a client's mistake was logged as a bug"


def test_a_lenient_sim_wrapper_refuses_an_observation_that_is_not_a_dict(lenient):
    from gr00t_server.policies.sim_wrapper import Gr00tSimPolicyWrapper

    wrapper = Gr00tSimPolicyWrapper(lenient, strict=False)
    with running_server(wrapper) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError, match=r"observation must be a dict of flat keys \('video.<key>', "
                                                    r"'state.<key>', ...\); got list"):
            client.get_action([1, 2])


def _flat(nested):
    """The flat form of a nested observation: `video.<k>`, `state.<k>` and the language keys with one str per row."""
    flat = {f"{group}.{key}": value for group in ("video", "state") for key, value in nested[group].items()}
    flat.update({key: [row[0] for row in rows] for key, rows in nested["language"].items()})
    return flat


def test_a_lenient_sim_wrapper_refuses_an_empty_observation_naming_the_flat_keys(lenient):
    """`serve --use-sim-policy-wrapper --no-strict` named observation['video']: the nested form, which this server
    does not take (docs/serving.md promises the flat keys)."""
    from gr00t_server.policies.sim_wrapper import Gr00tSimPolicyWrapper

    with running_server(Gr00tSimPolicyWrapper(lenient, strict=False)) as server, \
            PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError, match=r"observation is empty; expected the flat keys \['video\."):
            client.get_action({})


def test_a_lenient_sim_wrapper_names_a_missing_state_by_its_flat_key_and_still_takes_extra_keys(lenient, good):
    """A missing `state.<k>` was named as missing from observation['state'], a dict the client never sent."""
    from gr00t_server.policies.sim_wrapper import Gr00tSimPolicyWrapper

    flat = _flat(good)
    state_key = next(key for key in flat if key.startswith("state."))
    partial = {key: value for key, value in flat.items() if key != state_key}
    with running_server(Gr00tSimPolicyWrapper(lenient, strict=False)) as server, \
            PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError, match=re.escape(f"flat keys ['{state_key}'] are missing from the observation")):
            client.get_action(partial)
        action, _ = client.get_action(dict(flat, **{"state.unused": np.zeros((1, 1, 2), np.float32)}))
    assert all(np.isfinite(value).all() for value in action.values())


@pytest.mark.parametrize("convert, says", [
    (lambda v: v.astype(np.float32) / 255, r"got float32 \(1, 1, 32, 32, 3\) \(floats in \[0, 1\]\? send "
                                           r"\(frames \* 255\)\.round\(\)\.clip\(0, 255\)\.astype\(np\.uint8\)\)"),
    # frames * 255 of frames already in 0..255 wrapped modulo 256 in the cast: a garbage image
    (lambda v: v.astype(np.float32), r"got float32 \(1, 1, 32, 32, 3\) \(floats in 0\.\.255\? send "
                                     r"frames\.round\(\)\.clip\(0, 255\)\.astype\(np\.uint8\)\)$"),
    (lambda v: np.ascontiguousarray(v.transpose(0, 1, 4, 2, 3)), r"got uint8 \(1, 1, 3, 32, 32\) \(channels first\?"),
], ids=["float", "float-0-255", "channels-first"])
def test_frames_of_another_dtype_or_layout_are_refused_naming_the_camera_and_the_shape_sent(lenient, good, convert, says):
    """The message named no camera and showed a reshaped shape, or spoke of aspect ratios for channels-first frames."""
    key = next(iter(good["video"]))
    observation = _broken(good, _set("video", key, convert(good["video"][key])))
    with pytest.raises(ValueError, match=f"Video key '{key}' must be uint8 \\(B, T, H, W, 3\\) with values 0-255; {says}"):
        lenient.get_action(observation)


@pytest.mark.parametrize("convert", [
    lambda v: v.astype(np.complex64) + 0.3j,
    lambda v: np.full(v.shape, np.datetime64("NaT"), "datetime64[s]"),
    lambda v: np.full(v.shape, "1000"),
], ids=["complex", "datetime", "str"])
def test_a_state_that_is_not_real_numbers_is_refused_naming_the_key_and_the_dtype(lenient, good, convert):
    """The float64 cast dropped a complex state's imaginary part, read NaT as -9.2e18 and text as the number it
    spells, and the server answered a plausible action."""
    key = next(iter(good["state"]))
    state = convert(np.asarray(good["state"][key]))
    with running_server(lenient) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError, match=re.escape(f"state['{key}'] must hold real numbers (a bool, int or "
                                                              f"float dtype); got dtype {state.dtype}")):
            client.get_action(_broken(good, _set("state", key, state)))


@pytest.mark.parametrize("rows", [[[3]], [None], [np.array(["pick the cube", "twice"])[:0]]],
                         ids=["number", "none", "empty-array"])
def test_an_unreadable_language_row_is_refused_naming_the_key_and_the_row(lenient, good, rows):
    """The refusal said only "a language instruction must be a str": not which key, nor which row."""
    key = next(iter(good["language"]))
    with running_server(lenient) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError, match=re.escape(f"language['{key}'] row 0 must be a str")):
            client.get_action(_broken(good, _set("language", key, rows)))


def test_a_state_held_in_an_object_array_of_real_numbers_is_answered_as_the_same_floats(lenient, good):
    """An in-process lenient policy given states as object arrays of Python floats and ints (as a sim wrapper built
    from mixed Python values hands it) answered them before real-number states were required, then refused them."""
    as_objects = {group: dict(values) for group, values in good.items()}
    as_objects["state"] = {key: np.array(np.asarray(value).tolist(), dtype=object)
                           for key, value in good["state"].items()}
    assert all(value.dtype == object for value in as_objects["state"].values())
    expected, _ = lenient.get_action(good, options={"seed": 7})
    action, _ = lenient.get_action(as_objects, options={"seed": 7})
    assert action.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(action[key], expected[key])


@pytest.mark.parametrize("item", ["1000", 0.5 + 0.3j], ids=["str", "complex"])
def test_an_object_array_state_holding_other_than_real_numbers_is_refused_naming_the_key_and_the_item(lenient, good,
                                                                                                     item):
    key = next(iter(good["state"]))
    state = np.array(np.asarray(good["state"][key]).tolist(), dtype=object)
    state.flat[0] = item
    with pytest.raises(ValueError, match=re.escape(f"state['{key}'] must hold real numbers (a bool, int or float "
                                                   f"dtype); got dtype object holding a {type(item).__name__}")):
        lenient.get_action(_broken(good, _set("state", key, state)))


@pytest.fixture(scope="module")
def two_rows(tiny_checkpoint):
    from gr00t_server.test_checkpoint import example_observation

    return example_observation(tiny_checkpoint, "libero_sim", batch_size=2, image_size=(32, 32))


@pytest.mark.parametrize("rows", [[["pick up", "second"], ["place"]], [["pick up"], "place"],
                                  np.array([["pick up"], ["place"]]), np.array([[b"pick up"], [b"place"]])],
                         ids=["lists-of-two-and-one", "list-and-str", "str-array", "bytes-array"])
def test_language_rows_of_any_accepted_form_are_served_as_the_same_nested_list(lenient, two_rows, rows):
    """Each form alone was served, but mixed in one request they failed with numpy's raw "inhomogeneous shape"
    ValueError: the first str of each row is its instruction, whatever the other rows' forms. A (B, 1) str array is
    the [[str]] * B layout as an array (the reference reads row i as language[key][i][0]); it was refused: "row 0 must
    be a str (each row a list of one str); got ndarray"."""
    key = next(iter(two_rows["language"]))
    expected, _ = lenient.get_action(_broken(two_rows, _set("language", key, [["pick up"], ["place"]])),
                                     options={"seed": 7})
    with running_server(lenient) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        action, _ = client.get_action(_broken(two_rows, _set("language", key, rows)), options={"seed": 7})
    for name in expected:
        np.testing.assert_allclose(action[name], expected[name], rtol=1e-5, atol=1e-5)


def _masked(value):
    """`value` as a numpy masked array with its first entry masked (over a stale reading there)."""
    data = np.array(value)
    mask = np.zeros(data.shape, bool)
    mask.flat[0] = True
    return np.ma.MaskedArray(data, mask=mask)


@pytest.mark.parametrize("group", ["state", "video"])
def test_a_masked_array_is_refused_naming_the_entry_as_a_strict_policy_does(lenient, good, group):
    """np.asarray dropped the mask: the value under it (a stale reading) reached the model and moved the action."""
    key = next(iter(good[group]))
    with pytest.raises(ValueError, match=re.escape(f"{group}['{key}'] is a numpy masked array; send value.filled(x) "
                                                   "with the value the policy should see (a masked entry has no value "
                                                   "to act on)")):
        lenient.get_action(_broken(good, _set(group, key, _masked(good[group][key]))))


def test_a_lenient_sim_wrapper_refuses_a_masked_state_in_its_flat_form(lenient, good):
    from gr00t_server.policies.sim_wrapper import Gr00tSimPolicyWrapper

    flat = _flat(good)
    state_key = next(key for key in flat if key.startswith("state."))
    flat[state_key] = _masked(flat[state_key])
    with pytest.raises(ValueError, match="is a numpy masked array; send value.filled"):
        Gr00tSimPolicyWrapper(lenient, strict=False).get_action(flat)


@pytest.mark.parametrize("group", ["state", "video"])
@pytest.mark.parametrize("form", ["list of rows", "tuple of rows", "list of rows of time steps"])
def test_a_masked_array_inside_a_list_value_is_refused_with_the_same_words(lenient, good, group, form):
    """Lenient takes lists of per-row (or per-step) arrays: np.asarray dropped a masked item's mask too."""
    key = next(iter(good[group]))
    row = good[group][key][0]
    value = {"list of rows": lambda: [_masked(row)], "tuple of rows": lambda: (_masked(row),),
             "list of rows of time steps": lambda: [[_masked(step) for step in row]]}[form]()
    with pytest.raises(ValueError, match=re.escape(f"{group}['{key}'] is a numpy masked array; send value.filled(x) "
                                                   "with the value the policy should see")):
        lenient.get_action(_broken(good, _set(group, key, value)))
