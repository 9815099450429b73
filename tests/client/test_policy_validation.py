"""BasePolicy: get_action validates input and output when strict; messages name key, expectation and value."""

import threading

import numpy as np
import pytest
from reference_peer import LANGUAGE_KEY, EchoPolicy, libero_like_configs, libero_like_observation

from gr00t_client import (ActionError, BasePolicy, ModalityConfig, NonFiniteActionError, ObservationError,
                          PolicyValidationError, PolicyWrapper)
from gr00t_client.policy import first_non_finite, rows_checked


class FixedActionPolicy(BasePolicy):
    """Returns whatever action it was given, to test output validation."""

    def __init__(self, action, strict=True):
        super().__init__(strict=strict)
        self.action = action

    def _get_action(self, observation, options=None):
        return self.action, {"seen_options": options}

    def reset(self, options=None):
        return {}

    def get_modality_config(self):
        return libero_like_configs(action_horizon=4)


def good_action(batch=1, horizon=4):
    return {k: np.zeros((batch, horizon, 1), np.float32) for k in libero_like_configs()["action"].modality_keys}


def strict_policy():
    return EchoPolicy(strict=True)


def test_base_policy_is_abstract():
    with pytest.raises(TypeError):
        BasePolicy()  # type: ignore[abstract]


def test_strict_defaults_to_true():
    assert FixedActionPolicy(good_action()).strict is True


def test_valid_observation_returns_action_and_info():
    action, info = strict_policy().get_action(libero_like_observation(batch=2), {"tag": "t"})
    assert action["x"].shape == (2, 16, 1) and action["x"].dtype == np.float32
    assert info["tag"] == "t"


def test_validation_errors_are_value_errors():
    assert issubclass(ObservationError, PolicyValidationError) and issubclass(ActionError, PolicyValidationError)
    assert issubclass(PolicyValidationError, ValueError)


def test_missing_modality_is_named():
    observation = libero_like_observation()
    del observation["state"]
    with pytest.raises(ObservationError, match="'state'"):
        strict_policy().get_action(observation)


def test_missing_video_key_is_named_with_the_keys_that_arrived():
    observation = libero_like_observation()
    del observation["video"]["wrist_image"]
    with pytest.raises(ObservationError, match=r"Video key 'wrist_image' is missing.*\['image'\]"):
        strict_policy().get_action(observation)


def test_video_that_is_not_an_array_names_key_expectation_and_type():
    observation = libero_like_observation()
    observation["video"]["image"] = {"nd": True}  # what an old server sees when it cannot decode arrays
    with pytest.raises(ObservationError, match=r"Video key 'image' must be a numpy array of dtype uint8 and shape \(B, T, H, W, 3\); got dict"):
        strict_policy().get_action(observation)


def test_wrong_video_dtype_names_expected_and_actual_dtype():
    observation = libero_like_observation()
    observation["video"]["image"] = observation["video"]["image"].astype(np.float32)
    with pytest.raises(ObservationError, match=r"Video key 'image' must have dtype uint8; got float32 with shape \(1, 1, 256, 256, 3\)"):
        strict_policy().get_action(observation)


def test_wrong_video_rank_names_expected_layout_and_actual_shape():
    observation = libero_like_observation()
    observation["video"]["image"] = observation["video"]["image"][:, 0]
    with pytest.raises(ObservationError, match=r"'image' must have shape \(B, T, H, W, 3\); got shape \(1, 256, 256, 3\)"):
        strict_policy().get_action(observation)


def test_wrong_video_horizon_names_expected_and_actual_t():
    observation = libero_like_observation()
    observation["video"]["image"] = np.concatenate([observation["video"]["image"]] * 2, axis=1)
    with pytest.raises(ObservationError, match=r"'image' must have horizon T=1.*got T=2"):
        strict_policy().get_action(observation)


def test_wrong_channel_count_is_named():
    observation = libero_like_observation()
    observation["video"]["image"] = np.zeros((1, 1, 8, 8, 4), np.uint8)
    with pytest.raises(ObservationError, match=r"'image' must have 3 channels.*\(1, 1, 8, 8, 4\)"):
        strict_policy().get_action(observation)


def test_wrong_state_dtype_names_key_and_dtypes():
    observation = libero_like_observation()
    observation["state"]["gripper"] = observation["state"]["gripper"].astype(np.float64)
    with pytest.raises(ObservationError, match=r"State key 'gripper' must have dtype float32; got float64"):
        strict_policy().get_action(observation)


def test_batch_size_mismatch_names_both_keys():
    observation = libero_like_observation(batch=2)
    observation["state"]["yaw"] = observation["state"]["yaw"][:1]
    with pytest.raises(ObservationError, match=r"State key 'yaw' has batch size 1; expected 2 like Video key 'image'"):
        strict_policy().get_action(observation)


@pytest.mark.parametrize("language", ["pick", ["pick"], [["pick", "place"]], [[3]]])
def test_language_must_be_b_lists_of_one_string(language):
    observation = libero_like_observation()
    observation["language"][LANGUAGE_KEY] = language
    with pytest.raises(ObservationError, match=f"Language key '{LANGUAGE_KEY}'"):
        strict_policy().get_action(observation)


def test_non_dict_observation_is_rejected():
    with pytest.raises(ObservationError, match="observation must be a dict"):
        strict_policy().get_action([1, 2, 3])  # type: ignore[arg-type]


def test_not_strict_skips_input_validation():
    policy = FixedActionPolicy({"anything": 1}, strict=False)
    assert policy.get_action({"no": "modalities"}) == ({"anything": 1}, {"seen_options": None})



@pytest.mark.parametrize("row_wise", [False, True])
def test_an_observation_marked_rows_checked_is_checked_again_unless_the_policys_checks_are_row_wise(row_wise):
    """A batching server marks a merged call whose rows it checked; a check of the batch as a whole still runs."""
    policy = strict_policy()
    policy.row_wise_checks = row_wise
    bad = libero_like_observation()
    bad["state"]["x"] = bad["state"]["x"].astype(np.float64)
    with rows_checked(bad, policy):
        if row_wise:
            policy.get_action(bad)
        else:
            with pytest.raises(ObservationError, match="'x' must have dtype float32"):
                policy.get_action(bad)
    with pytest.raises(ObservationError, match="'x' must have dtype float32"):  # the marker ends with its block
        policy.get_action(bad)



def test_a_strict_policy_checks_each_array_of_its_action_for_nan_once(monkeypatch):
    """The listed keys were checked by check_action and again by the walk over every key."""
    from gr00t_client import policy as policy_module

    checked = []
    for name in ("all_finite", "non_finite_rows"):
        real = getattr(policy_module, name)
        monkeypatch.setattr(policy_module, name, lambda value, real=real: checked.append(id(value)) or real(value))
    action = good_action()
    FixedActionPolicy(action).get_action(libero_like_observation())
    arrays = {id(value) for value in action.values()}
    assert sorted(found for found in checked if found in arrays) == sorted(arrays)  # the states are checked too


def test_options_reach_the_policy():
    assert FixedActionPolicy(good_action()).get_action(libero_like_observation(), {"k": 1})[1] == {"seen_options": {"k": 1}}


def test_missing_action_key_is_named():
    action = good_action()
    del action["gripper"]
    with pytest.raises(ActionError, match="Action key 'gripper' is missing"):
        FixedActionPolicy(action).get_action(libero_like_observation())


def test_wrong_action_dtype_is_named():
    action = good_action()
    action["x"] = action["x"].astype(np.float64)
    with pytest.raises(ActionError, match=r"Action key 'x' must have dtype float32; got float64"):
        FixedActionPolicy(action).get_action(libero_like_observation())


def test_wrong_action_horizon_is_named():
    action = good_action()
    action["x"] = np.zeros((1, 16, 1), np.float32)
    with pytest.raises(ActionError, match=r"Action key 'x' must have horizon T=4.*got T=16"):
        FixedActionPolicy(action).get_action(libero_like_observation())


def test_default_modality_config_is_empty_and_validates_nothing():
    class Bare(BasePolicy):
        def _get_action(self, observation, options=None):
            return {}, {}

        def reset(self, options=None):
            return {}

    assert Bare().get_modality_config() == {}
    assert Bare().get_action({}) == ({}, {})


def test_reset_returns_an_info_dict():
    policy = strict_policy()
    assert policy.reset() == {"resets": 1}


def test_policy_wrapper_forwards_reset_and_modality_config():
    inner = strict_policy()

    class Wrapper(PolicyWrapper):
        def _get_action(self, observation, options=None):
            return self.policy.get_action(observation, options)

    wrapper = Wrapper(inner)
    assert wrapper.reset({"episode_index": 1}) == {"resets": 1}
    assert wrapper.get_modality_config() == inner.get_modality_config()
    with pytest.raises(ObservationError):
        wrapper.get_action({"video": {}, "state": {}, "language": {}})


def test_config_without_video_does_not_require_a_video_key():
    configs = {"state": ModalityConfig(delta_indices=[0], modality_keys=["q"])}
    policy = EchoPolicy(configs={**configs, "action": ModalityConfig(delta_indices=[0, 1], modality_keys=["q"])}, strict=True)
    action, _ = policy.get_action({"state": {"q": np.zeros((3, 1, 7), np.float32)}})
    assert action["q"].shape == (3, 2, 1)


def test_a_flat_observation_sent_to_a_nested_policy_is_refused_with_the_sim_wrapper_hint():
    nested = libero_like_observation()
    flat = {f"{modality}.{key}": value for modality, group in nested.items() for key, value in group.items()}
    with pytest.raises(ObservationError) as refused:
        strict_policy().get_action(flat)
    message = str(refused.value)
    assert message.startswith("observation must contain a 'video' key (a dict); got keys ['language.")
    assert "this is the flat form ('video.<key>') a Gr00tSimPolicyWrapper takes: start the server with " \
           "--use-sim-policy-wrapper" in message
    with pytest.raises(ObservationError) as plain:  # a nested observation missing a modality gets no such hint
        strict_policy().get_action({"state": nested["state"], "language": nested["language"]})
    assert "--use-sim-policy-wrapper" not in str(plain.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_a_strict_policy_refuses_its_own_nan_action_naming_key_and_rows(bad):
    """Refused on the wire by every other part, a NaN (or inf) action reached a script calling its policy directly."""
    action = good_action(batch=2)
    key = sorted(action)[0]
    action[key][1, 2, 0] = bad
    with pytest.raises(NonFiniteActionError, match=rf"non-finite values \(NaN or inf\) in action key '{key}' rows \[1\]"):
        FixedActionPolicy(action).get_action(libero_like_observation(batch=2))


class ReturnsActionAlone(FixedActionPolicy):
    def _get_action(self, observation, options=None):
        return self.action  # forgot the info


@pytest.mark.parametrize("strict", [True, False])
def test_an_action_dict_returned_without_its_info_is_named_strict_or_not(strict):
    """strict: 'got str' or 'not enough values to unpack'; lenient: the two action keys came back as (action, info)."""
    action = {key: value for key, value in list(good_action().items())[:2]}
    with pytest.raises(ActionError, match=r"returned a dict alone \(keys .*\); expected a pair \(action: dict, info: "
                                          r"dict or None\): return \(action, \{\}\)"):
        ReturnsActionAlone(action, strict=strict).get_action(libero_like_observation())


def test_a_strict_policy_refuses_nan_in_an_action_key_its_config_does_not_list():
    """docs/serving.md: a script calling its strict policy directly never gets a non-finite action, listed or not."""
    action = {**good_action(), "base": np.full((1, 4, 2), np.nan, np.float32)}
    with pytest.raises(NonFiniteActionError, match=r"non-finite values \(NaN or inf\) in action key 'base' rows \[0\]"):
        FixedActionPolicy(action).get_action(libero_like_observation())


def test_a_strict_policy_refuses_nan_nested_in_an_unlisted_key_naming_the_dotted_key():
    action = {**good_action(), "extras": {"base": [0.0, float("inf")]}}
    with pytest.raises(NonFiniteActionError, match=r"in action key 'extras.base'"):
        FixedActionPolicy(action).get_action(libero_like_observation())


def test_a_strict_policy_refuses_a_masked_array_in_an_unlisted_key_naming_it():
    masked = np.ma.masked_invalid(np.array([[[np.nan, 0.0]] * 4], np.float32))
    with pytest.raises(ActionError, match=r"action key 'debug' is a numpy masked array \(shape \(1, 4, 2\), 4 masked"):
        FixedActionPolicy({**good_action(), "debug": masked}).get_action(libero_like_observation())


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix's own
def test_the_finite_check_reads_the_numbers_of_a_matrix():
    assert first_non_finite({"arm": np.matrix(np.zeros((4, 3), np.float32))}) is None
    found = first_non_finite({"arm": np.matrix([[0.0, np.inf]], np.float32)})
    assert found is not None and found[0] == "arm"


def outcome_within(seconds, call):
    """("returned", value) or ("raised", exception) of call(), or "still running" after `seconds` (a walk that never
    ends is left spinning on a daemon thread)."""
    outcome = ["still running"]

    def run():
        try:
            outcome[0] = ("returned", call())
        except Exception as exc:
            outcome[0] = ("raised", exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return outcome[0]


def test_a_strict_policy_refuses_an_action_holding_a_reference_cycle_naming_the_key():
    extras = [np.zeros(2, np.float32)]
    extras.append(extras)
    policy = FixedActionPolicy({**good_action(), "extras": {"trace": extras}})
    outcome = outcome_within(5, lambda: policy.get_action(libero_like_observation()))
    assert outcome != "still running", "the finite check walked the cycle for ever"
    kind, error = outcome
    assert kind == "raised" and isinstance(error, ActionError), outcome
    assert "action contains a reference cycle at key 'extras.trace'" in str(error)


def test_a_sub_structure_shared_many_times_is_walked_once():
    shared = [np.zeros(2, np.float32)]
    for _ in range(40):  # 2**40 paths to the array: walked per path, the check never ended
        shared = [shared, shared]
    policy = FixedActionPolicy({**good_action(), "extras": shared})
    outcome = outcome_within(5, lambda: policy.get_action(libero_like_observation()))
    assert outcome != "still running", "the finite check walked each path to the shared lists"
    assert outcome[0] == "returned", outcome


def test_a_lenient_policy_still_returns_an_unlisted_key_as_it_is():
    action = {**good_action(), "base": np.full((1, 4, 2), np.nan, np.float32)}
    returned, _ = FixedActionPolicy(action, strict=False).get_action(libero_like_observation())
    assert np.isnan(returned["base"]).all()


class ConfiguredPolicy(FixedActionPolicy):
    """FixedActionPolicy with the modality configs it is given."""

    def __init__(self, action, configs, strict=True):
        super().__init__(action, strict=strict)
        self.configs = configs

    def get_modality_config(self):
        return self.configs


def json_form_configs():
    """libero_like_configs(4) as get_modality_config() might return them read from a modality.json: plain dicts."""
    return {name: config.to_json_dict() for name, config in libero_like_configs(action_horizon=4).items()}


def test_a_strict_policy_whose_configs_are_the_json_form_validates_against_them():
    policy = ConfiguredPolicy(good_action(), json_form_configs())
    action, _ = policy.get_action(libero_like_observation())
    assert sorted(action) == sorted(good_action())
    with pytest.raises(ActionError, match=r"must have horizon T=4"):
        ConfiguredPolicy(good_action(horizon=3), json_form_configs()).get_action(libero_like_observation())


def test_json_form_configs_that_are_not_a_modality_config_are_refused_naming_get_modality_config_and_the_modality():
    configs = {**json_form_configs(), "state": {"modality_keys": ["x"]}}
    with pytest.raises(ValueError, match=r"get_modality_config\(\) returned an invalid modality config 'state': "
                                         r"ModalityConfig is missing required fields \['delta_indices'\]"):
        ConfiguredPolicy(good_action(), configs).get_action(libero_like_observation())
    with pytest.raises(ValueError, match=r"must return a dict \{modality: ModalityConfig\}; got list"):
        ConfiguredPolicy(good_action(), [json_form_configs()]).get_action(libero_like_observation())


def test_a_wrapper_hands_on_the_json_form_of_its_policy_as_modality_configs():
    class Wrapper(PolicyWrapper):
        def _get_action(self, observation, options=None):
            return self.policy.get_action(observation, options)

    wrapper = Wrapper(ConfiguredPolicy(good_action(), json_form_configs()))
    configs = wrapper.get_modality_config()
    assert all(isinstance(config, ModalityConfig) for config in configs.values())
    assert configs["action"].horizon == 4


def test_a_strict_policy_whose_action_config_has_no_delta_indices_refuses_its_empty_chunks():
    """ModalityConfig([], ...) decodes (peers send it); a 0-step chunk handed on failed later in robot code."""
    configs = {**libero_like_configs(), "action": ModalityConfig([], ["arm"])}
    policy = ConfiguredPolicy({"arm": np.zeros((1, 0, 7), np.float32)}, configs)
    with pytest.raises(ActionError, match=r"the 'action' modality config has no delta_indices \(horizon 0\) for action "
                                          r"keys \['arm'\]; expected at least one step"):
        policy.get_action(libero_like_observation())


@pytest.mark.parametrize("value", ["false", "no", None, 0, 1])
def test_a_strict_that_is_not_a_bool_is_refused_naming_it(value):
    """bool("false") is True: strict="false" validated every observation, and strict=None or 0 turned the checks off."""
    class Wrapper(PolicyWrapper):
        def _get_action(self, observation, options=None):
            return self.policy.get_action(observation, options)

    for make in (lambda: FixedActionPolicy(good_action(), strict=value), lambda: Wrapper(EchoPolicy(), strict=value)):
        with pytest.raises(ValueError) as refused:
            make()
        assert str(refused.value) == f"strict must be True or False, got {value!r} ({type(value).__name__})"


def test_a_numpy_bool_strict_is_taken_as_a_bool():
    policy = FixedActionPolicy(good_action(), strict=np.bool_(False))
    assert policy.strict is False
