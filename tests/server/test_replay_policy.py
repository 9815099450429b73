"""ReplayPolicy: dataset actions in chunks, one cursor per session, one episode per batch row."""

from __future__ import annotations

import os
import re
import sys
import threading
import time

import numpy as np
import pytest
from serving import RestartableServer, running_server

from eval.dataset_factory import expected_actions, make_dataset, slice_past_the_data
from gr00t_client import PolicyClient, PolicyServerError
from gr00t_client.modality import ModalityConfig
from gr00t_client.policy import ObservationError
from gr00t_eval.dataset import LeRobotDataset
from gr00t_server.modality_configs import derive_from_dataset
from gr00t_server.policies import Gr00tSimPolicyWrapper, ReplayPolicy
from gr00t_server.serving import ServerLimits

LENGTHS = (6, 9, 4)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("replay") / "ds", lengths=LENGTHS, cameras=("image",))


@pytest.fixture
def dataset(dataset_root):
    return LeRobotDataset(dataset_root)


@pytest.fixture
def policy(dataset):
    return ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2)


def rows(episode, indices, key="arm"):
    """Expected action rows of an episode (indices already clamped by the test)."""
    return expected_actions(episode, LENGTHS[episode])[key][list(indices)]


def session(name, **options):
    return {"_session_id": name, **options}


def observation(dataset, batch):
    return {
        "video": {"image": np.zeros((batch, 1, 32, 32, 3), np.uint8)},
        "state": {"arm": np.zeros((batch, 1, 3), np.float32), "gripper": np.zeros((batch, 1, 1), np.float32)},
        "language": {"annotation.human.action.task_description": [["task"]] * batch},
    }


def test_first_call_without_reset_replays_episode_0_from_step_0(policy):
    action, info = policy.get_action(None)
    assert set(action) == {"arm", "gripper"}
    assert action["arm"].dtype == np.float32 and action["arm"].shape == (1, 4, 3)
    np.testing.assert_array_equal(action["arm"][0], rows(0, [0, 1, 2, 3]))
    np.testing.assert_array_equal(action["gripper"][0], rows(0, [0, 1, 2, 3], "gripper"))
    assert info == {
        "current_step": 0, "episode_length": 6, "episode_index": 0, "dataset_episode_index": 0, "episode_done": False,
        "num_episodes": 3, "execution_horizon": 2, "seed": 100,  # the seed the dataset stores for episode 0
    }


def test_each_call_advances_by_the_execution_horizon(policy):
    policy.get_action({})
    action, info = policy.get_action({})
    assert info["current_step"] == 2
    np.testing.assert_array_equal(action["arm"][0], rows(0, [2, 3, 4, 5]))


def test_chunks_past_the_episode_end_repeat_the_last_row_and_flag_done(policy):
    policy.reset(session("s", episode_index=2, step_index=1))
    action, info = policy.get_action(None, session("s"))
    np.testing.assert_array_equal(action["arm"][0], rows(2, [1, 2, 3, 3]))
    assert info["episode_done"] is False
    action, info = policy.get_action(None, session("s"))
    np.testing.assert_array_equal(action["arm"][0], rows(2, [3, 3, 3, 3]))
    assert (info["current_step"], info["episode_length"], info["episode_done"]) == (3, 4, True)


def test_two_sessions_replay_different_episodes_independently(policy):
    policy.reset(session("a", episode_index=1))
    policy.reset(session("b", episode_index=2, step_index=2))
    first_a, _ = policy.get_action(None, session("a"))
    first_b, info_b = policy.get_action(None, session("b"))
    second_a, info_a = policy.get_action(None, session("a"))
    np.testing.assert_array_equal(first_a["arm"][0], rows(1, [0, 1, 2, 3]))
    np.testing.assert_array_equal(first_b["arm"][0], rows(2, [2, 3, 3, 3]))
    np.testing.assert_array_equal(second_a["arm"][0], rows(1, [2, 3, 4, 5]))
    assert (info_a["episode_index"], info_a["current_step"]) == (1, 2)
    assert (info_b["episode_index"], info_b["current_step"]) == (2, 2)
    _, default_info = policy.get_action(None)  # the default session was untouched
    assert (default_info["episode_index"], default_info["current_step"]) == (0, 0)


def test_a_batch_of_three_rows_replays_three_episodes(policy, dataset):
    info = policy.reset(session("batch", episode_index=[0, 1, 2], step_index=[0, 3, 2]))
    assert info["episode_index"] == [0, 1, 2] and info["current_step"] == [0, 3, 2]
    action, info = policy.get_action(observation(dataset, 3), session("batch"))
    assert action["arm"].shape == (3, 4, 3)
    np.testing.assert_array_equal(action["arm"][0], rows(0, [0, 1, 2, 3]))
    np.testing.assert_array_equal(action["arm"][1], rows(1, [3, 4, 5, 6]))
    np.testing.assert_array_equal(action["arm"][2], rows(2, [2, 3, 3, 3]))
    assert info["episode_length"] == [6, 9, 4]
    assert info["episode_done"] == [False, False, True]


def test_a_single_episode_is_broadcast_to_the_observation_batch(policy, dataset):
    policy.reset(session("wide", episode_index=1))
    action, info = policy.get_action(observation(dataset, 2), session("wide"))
    assert action["arm"].shape == (2, 4, 3)
    np.testing.assert_array_equal(action["arm"][1], rows(1, [0, 1, 2, 3]))
    assert info["episode_index"] == [1, 1]


def test_batch_size_that_disagrees_with_rows_at_different_positions_is_an_error(policy, dataset):
    policy.reset(session("x", episode_index=[0, 1]))
    with pytest.raises(ValueError, match=r"batch size 3.*2 rows at different positions \(episodes \[0, 1\], steps \[0, 0\]\)"):
        policy.get_action(observation(dataset, 3), session("x"))


def test_rows_at_one_position_take_any_batch_size_as_the_reference_replay_does(policy, dataset):
    """The reference's replay takes B from every call; a client that sent B=3 and then B=1 (a reset in between
    or not) was refused for ever: the session kept its first row count."""
    policy.reset(session("tile", episode_index=1))
    action, info = policy.get_action(observation(dataset, 3), session("tile"))
    assert action["arm"].shape == (3, 4, 3) and info["current_step"] == [0, 0, 0]
    action, info = policy.get_action(observation(dataset, 1), session("tile"))  # on from step 2 (the horizon), one row
    np.testing.assert_array_equal(action["arm"][0], rows(1, [2, 3, 4, 5]))
    assert info["current_step"] == 2 and info["episode_index"] == 1
    policy.reset(session("tile"))  # rewinds, keeping the episode
    action, info = policy.get_action(observation(dataset, 2), session("tile"))
    np.testing.assert_array_equal(action["arm"][1], rows(1, [0, 1, 2, 3]))
    assert info["current_step"] == [0, 0]


@pytest.mark.parametrize("deltas", [[0, 2, 5], [1, 2, 3, 4], [-1, 0, 1], [3, 2, 1, 0]])
def test_action_delta_indices_other_than_0_to_h_minus_1_are_refused_naming_them(dataset, deltas):
    """A chunk advanced by its length served [0, 2, 4] as rows 0, 2, 4, 3, 5, 7 (row 1 never), [-1, 0, 1] a step late
    and [3, 2, 1, 0] backwards: every recorded row once, in order, needs 0..H-1."""
    configs = {"action": ModalityConfig(delta_indices=deltas, modality_keys=["arm"])}
    with pytest.raises(ValueError) as refused:
        ReplayPolicy(dataset, configs)
    assert str(refused.value) == (
        f"the policy's action delta_indices are {deltas}; this needs 0..{len(deltas) - 1} (one action per step from "
        "the query on), or the replay serves recorded rows out of order (modality_configs['action'])")


def test_modality_configs_in_their_json_form_are_served(dataset_root):
    """json.load of a modality config file (or of get_modality_config's wire form) gives dicts: 'dict' object has no
    attribute 'delta_indices' failed the start."""
    as_json = {name: config.to_json_dict() for name, config in ReplayPolicy(dataset_root).get_modality_config().items()}
    as_json["action"]["delta_indices"] = [0, 1, 2]
    with running_server(ReplayPolicy(dataset_root, as_json)) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        assert client.get_modality_config()["action"].delta_indices == [0, 1, 2]
        client.reset({"episode_index": 1})
        first, _ = client.get_action({})
        second, _ = client.get_action({})
    np.testing.assert_array_equal(np.concatenate([first["arm"][0], second["arm"][0]]), rows(1, range(6)))


def test_modality_configs_json_that_is_no_config_is_refused_naming_modality_configs(dataset):
    with pytest.raises(ValueError, match=r"^modality_configs: modality config 'action': .*; expected ModalityConfig "
                                         r"objects or their JSON form$"):
        ReplayPolicy(dataset, {"action": {"delta_indices": "0..15", "modality_keys": ["arm"]}})


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"episode_index": 3}, IndexError, "episode_index 3 out of range"),
        ({"episode_index": -1}, IndexError, "episode_index -1"),
        ({"episode_index": [0, 7]}, IndexError, "episode_index 7"),
        ({"episode_index": 2, "step_index": 4}, IndexError, "step_index 4 out of range for episode 2 of length 4"),
        ({"episode_index": 0, "step_index": -1}, IndexError, "step_index -1"),
        ({"episode_index": [0, 1], "step_index": [0, 1, 2]}, ValueError, "3 entries"),
        ({"episode_index": "one"}, ValueError, "must be an int"),
    ],
)
def test_bad_reset_indices_are_clear_errors(policy, options, error, message):
    with pytest.raises(error, match=message):
        policy.reset(options)


def test_misspelled_options_are_refused_naming_the_ones_taken_and_the_session_is_untouched(policy, dataset):
    """{"episode": 2} for episode_index restarted the episode the session was on, and {"batchsize": 2} replayed one
    row, both without a word."""
    policy.reset(session("s", episode_index=1, step_index=2))
    with pytest.raises(ValueError, match=r"unknown reset options \['episode'\]; ReplayPolicy's reset takes "
                                         r"\['episode_index', 'step_index'\]"):
        policy.reset(session("s", episode=2))
    with pytest.raises(ValueError, match=r"unknown get_action options \['batchsize'\]; ReplayPolicy's get_action takes "
                                         r"\['batch_size', 'denoising_steps', 'noise', 'reset_mask', 'rtc', 'seed'\]"):
        policy.get_action(None, session("s", batchsize=2))
    _action, info = policy.get_action(None, session("s"))  # where the session was: episode 1, step 2
    assert (info["episode_index"], info["current_step"]) == (1, 2)


def test_a_models_options_are_taken_and_ignored_and_unknown_ones_warned_when_not_strict(dataset, caplog):
    lenient = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, strict=False)
    plain, _ = lenient.get_action(None, session("a"))
    seeded, _ = lenient.get_action(None, session("b", seed=3, denoising_steps=2, reset_mask=np.array([True])))
    assert np.array_equal(plain["arm"], seeded["arm"])  # a replay is the recording, whatever the model options
    with caplog.at_level("WARNING"):
        lenient.get_action(None, session("a", Seed=1))
        lenient.get_action(None, session("a", Seed=1))
    assert [r.getMessage() for r in caplog.records].count(
        "unknown get_action options ['Seed']; ReplayPolicy's get_action takes ['batch_size', 'denoising_steps', "
        "'noise', 'reset_mask', 'rtc', 'seed'] and the server takes ['return_server_timing'] (ignored: strict=False; "
        "said once per set of names)") == 1


def test_a_misspelt_return_server_timing_is_refused_with_the_option_it_meant(dataset):
    """The refusal listed the replay's own options only, as if the server took no timing option."""
    replay = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2)
    with running_server(replay) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError) as refused:
            client.get_action(observation(dataset, 1), {"return_server_timng": True})
    assert ("unknown get_action options ['return_server_timng']; ReplayPolicy's get_action takes ['batch_size', "
            "'denoising_steps', 'noise', 'reset_mask', 'rtc', 'seed'] and the server takes ['return_server_timing']; "
            "did you mean 'return_server_timing'?") in str(refused.value)


def test_a_batch_size_option_that_disagrees_with_the_observation_is_refused(policy, dataset):
    with pytest.raises(ValueError, match=r"options\['batch_size'\] is 2 but the observation has batch size 3"):
        policy.get_action(observation(dataset, 3), session("s", batch_size=2))
    action, _ = policy.get_action(observation(dataset, 3), session("s", batch_size=3))
    assert action["arm"].shape[0] == 3


def test_reset_without_options_rewinds_the_current_episode(policy):
    policy.reset({"episode_index": 2, "step_index": 3})
    info = policy.reset(None)
    assert (info["episode_index"], info["current_step"], info["num_episodes"]) == (2, 0, 3)


def test_no_video_is_decoded(policy, dataset):
    policy.get_action(None)
    policy.reset({"episode_index": 1})
    policy.get_action(None)
    assert dataset.frames_decoded == 0


def test_a_malformed_observation_is_rejected_when_strict(policy, dataset):
    bad = observation(dataset, 1)
    bad["state"]["arm"] = bad["state"]["arm"].astype(np.float64)
    with pytest.raises(ObservationError, match="State key 'arm'"):
        policy.get_action(bad)


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_a_zero_row_observation_is_refused_naming_the_observations_rows_not_an_option(dataset, strict):
    """The refusal said "batch_size must be an int in [1, 128], got 0": an option the client never sent."""
    replay = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, strict=strict)
    with running_server(replay) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match=re.escape("the observation has 0 rows (its arrays' first axis); "
                                                              f"expected 1 to {replay.max_rows}")) as refused:
            client.get_action(observation(dataset, 0))
        assert "batch_size" not in str(refused.value)
        assert client.get_action(observation(dataset, 1))[0]["arm"].shape[0] == 1  # and the next call is answered


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_zero_height_video_is_refused_naming_the_camera_as_the_model_server_does(dataset, strict):
    """A replay answered frames of no pixels that the model server refuses: a replay check passed a broken camera."""
    replay = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, strict=strict)
    empty_frames = observation(dataset, 1)
    empty_frames["video"]["image"] = np.zeros((1, 1, 0, 32, 3), np.uint8)
    with running_server(replay) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match=re.escape("Video key 'image' has 0x32 images; an image needs at "
                                                              "least one pixel on each side")):
            client.get_action(empty_frames)


def flat(observation):
    """`observation` as flat keys ('video.image', 'state.arm', the language key), as a sim wrapper sends it."""
    return {f"{group}.{key}" if group != "language" else key: value
            for group, values in observation.items() for key, value in values.items()}


def as_lists(observation):
    """`observation`'s video and state arrays as nested lists, as a lenient client may send them, and no language (a
    replay needs none, so its rows are the lists')."""
    return {group: {key: value.tolist() for key, value in values.items()}
            for group, values in observation.items() if group != "language"}


@pytest.mark.parametrize("form", [flat, as_lists], ids=["flat", "lists"])
def test_a_lenient_replay_refuses_a_zero_row_observation_sent_as_flat_keys_or_lists(dataset, form):
    """Only nested arrays were counted: a 0-row flat or list observation was answered with a 1-row action."""
    replay = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, strict=False)
    with running_server(replay) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match=re.escape("the observation has 0 rows (its arrays' first axis); "
                                                              f"expected 1 to {replay.max_rows}")):
            client.get_action(form(observation(dataset, 0)))


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_a_sim_wrapper_refuses_a_zero_row_flat_observation_naming_its_rows_not_its_language(dataset, strict):
    """The flat form's empty language list was refused first, as "Language key ... must not be empty": the user was
    sent to the instruction's text, not to the empty batch the docs name."""
    replay = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, strict=strict)
    with running_server(Gr00tSimPolicyWrapper(replay, strict=strict)) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match=re.escape("the observation has 0 rows (its arrays' first axis); "
                                                              f"expected 1 to {replay.max_rows}")):
            client.get_action(flat(observation(dataset, 0)))
        one_row = flat(observation(dataset, 1))
        one_row.update({key: [rows[0][0]] for key, rows in observation(dataset, 1)["language"].items()})  # B strings
        assert client.get_action(one_row)[0]["action.arm"].shape[0] == 1  # and the next call is answered


@pytest.mark.parametrize("form, says", [
    (flat, "Video key 'video.image' has 0x32 images"),
    (as_lists, "Video key 'image' has images of height 0 (nested lists of shape (1, 1, 0))"),
], ids=["flat", "lists"])
def test_a_lenient_replay_refuses_zero_height_frames_sent_as_flat_keys_or_lists(dataset, form, says):
    """Only nested arrays' frames were checked: zero-height frames sent flat or as lists were answered."""
    replay = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, strict=False)
    empty_frames = observation(dataset, 1)
    empty_frames["video"]["image"] = np.zeros((1, 1, 0, 32, 3), np.uint8)
    with running_server(replay) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match=re.escape(f"{says}; an image needs at least one pixel on each "
                                                              "side")):
            client.get_action(form(empty_frames))


@pytest.mark.parametrize("form", [lambda o: o, flat, as_lists], ids=["nested", "flat", "lists"])
@pytest.mark.parametrize("state_rows", [0, 3])
def test_a_lenient_replay_refuses_entries_whose_rows_disagree_as_the_model_server_does(dataset, form, state_rows):
    """Only the first entry's rows were read: 0 or 3 rows of state beside a 1-row camera got a 1-row action, where
    the lenient model server refuses the observation."""
    replay = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, strict=False)
    mixed = observation(dataset, 1)
    mixed["state"] = {key: np.repeat(value[:1], state_rows, axis=0) for key, value in mixed["state"].items()}
    with running_server(replay) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match=rf"has {state_rows} rows; the observation's batch size is 1"):
            client.get_action(form(mixed))


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_an_entry_the_modality_configs_do_not_name_is_ignored_whatever_its_rows(dataset, strict):
    """A 'timestamp' state the model never reads, of another batch, got 'has 1 rows; the observation's batch size is
    2': the model server ignores keys its configs do not name, and the replay stands in for it."""
    replay = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, strict=strict)
    extra = observation(dataset, 2)
    extra["state"]["timestamp"] = np.zeros((1,), np.float32)
    with running_server(replay) as server, PolicyClient(port=server.port, timeout_ms=5000, strict=False) as client:
        assert client.get_action(extra)[0]["arm"].shape[0] == 2


def test_a_lenient_replay_refuses_language_rows_that_disagree_with_the_batch(dataset):
    replay = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, strict=False)
    three_instructions = observation(dataset, 1)
    language_key = next(iter(three_instructions["language"]))
    three_instructions["language"][language_key] = [["pick"], ["place"], ["push"]]
    with running_server(replay) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match=rf"Language key '{language_key}' has batch size 3; expected 1"):
            client.get_action(three_instructions)


@pytest.mark.parametrize("instructions", [np.array(["a", "b", "c"]), np.array([["a"], ["b"], ["c"]])],
                         ids=["(B,)", "(B,1)"])
def test_a_lenient_replay_given_instructions_alone_as_an_array_answers_one_row_each(dataset, instructions):
    """Only lists of instructions were counted: three as a numpy array got the session's earlier one row."""
    replay = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, strict=False)
    language_key = next(iter(observation(dataset, 1)["language"]))
    with running_server(replay) as server, PolicyClient(port=server.port, timeout_ms=5000, strict=False) as client:
        client.get_action(observation(dataset, 1))
        assert client.get_action({"language": {language_key: instructions}})[0]["arm"].shape[0] == 3


@pytest.mark.parametrize("limit", ["max_rows", "max_sessions", "max_cached_bytes"])
def test_replay_limits_take_numpy_ints_and_refuse_bools_and_floats(dataset, limit):
    """np.int64(2) was refused as 'must be an int >= 1, got np.int64(2)'."""
    configs = derive_from_dataset(dataset, action_horizon=4)
    replay = ReplayPolicy(dataset, configs, execution_horizon=2, **{limit: np.int64(2)})
    assert getattr(replay, limit) == 2 and type(getattr(replay, limit)) is int
    for bad in (True, np.bool_(True), 2.0):
        with pytest.raises(ValueError, match=rf"{limit} must be an int >= 1"):
            ReplayPolicy(dataset, configs, execution_horizon=2, **{limit: bad})


@pytest.mark.parametrize("form", [flat, as_lists], ids=["flat", "lists"])
def test_a_lenient_replay_answers_a_flat_or_list_observation_with_one_row_per_observation_row(dataset, form):
    """A 3-row flat or list observation was answered with 1 row: the rows were counted from nested arrays only."""
    replay = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, strict=False)
    with running_server(replay) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        action, _ = client.get_action(form(observation(dataset, 3)))
    assert {np.shape(value)[0] for value in action.values()} == {3}, {k: np.shape(v) for k, v in action.items()}


@pytest.mark.parametrize("arm, gripper", [(7, 1), (1, 3)])
def test_a_state_of_another_width_than_the_datasets_is_refused_when_strict_and_the_session_is_untouched(
        policy, dataset, arm, gripper):
    """meta/modality.json gives arm 3 values and gripper 1; a replay that took any width told a user the observation
    plumbing was right ("Debug with replay first") and the model served next refused the same states."""
    policy.reset(session("w", episode_index=1))
    bad = observation(dataset, 1)
    bad["state"] = {"arm": np.zeros((1, 1, arm), np.float32), "gripper": np.zeros((1, 1, gripper), np.float32)}
    says = rf"State key 'arm' has dimension {arm}; the dataset expects 3 \(.*meta/modality.json\)"
    with pytest.raises(ObservationError, match=says):
        policy.get_action(bad, session("w"))
    _action, info = policy.get_action(observation(dataset, 1), session("w"))  # the refused call did not advance it
    assert (info["episode_index"], info["current_step"]) == (1, 0)


def test_a_non_strict_replay_warns_once_about_a_state_width_and_replays(dataset, caplog):
    lenient = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, strict=False)
    wide = observation(dataset, 2)
    wide["state"]["gripper"] = np.zeros((2, 1, 4), np.float32)
    with caplog.at_level("WARNING"):
        action, _ = lenient.get_action(wide)
        lenient.get_action(wide)
    assert action["arm"].shape == (2, 4, 3)
    assert [r.getMessage() for r in caplog.records if "dimension" in r.getMessage()] == [
        f"State key 'gripper' has dimension 4; the dataset expects 1 ({dataset.root}/meta/modality.json) "
        "(ignored: strict=False; said once per key and dimension)"]


def test_construction_checks_horizon_and_action_keys(dataset):
    configs = derive_from_dataset(dataset, action_horizon=4)
    with pytest.raises(ValueError, match="execution_horizon"):
        ReplayPolicy(dataset, configs, execution_horizon=5)
    with pytest.raises(ValueError, match=r"\['wheels'\]"):
        ReplayPolicy(dataset, {"action": ModalityConfig(delta_indices=[0], modality_keys=["wheels"])}, 1)


def test_defaults_from_a_path_derive_configs_and_modality_config_is_served(dataset_root):
    policy = ReplayPolicy(dataset_root)
    assert policy.get_modality_config()["action"].delta_indices == list(range(16))
    assert policy.execution_horizon == 16
    assert policy.stateful_sessions is True


def test_a_dropped_session_is_refused_until_its_reset(policy):
    """Whoever calls get_action (a server's custom endpoint too): it was served from episode 0, step 0, no error."""
    policy.reset(session("gone", episode_index=2))
    policy.drop_session("gone")
    with pytest.raises(ValueError, match="session 'gone' was forgotten by this replay, which was told to drop it"):
        policy.get_action(None, session("gone"))
    policy.reset(session("gone", episode_index=1))
    _, info = policy.get_action(None, session("gone"))
    assert info["episode_index"] == 1


def test_a_broken_data_file_fails_the_start_not_a_later_request(tmp_path):
    from gr00t_eval.dataset import DatasetError

    root = make_dataset(tmp_path / "ds", lengths=(6, 9, 4))
    ReplayPolicy(root)  # sound: starts
    broken = LeRobotDataset(root)._records[2].data_path
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(DatasetError, match=f"{broken}: cannot read parquet \\(episode 2\\)"):
        ReplayPolicy(root)


def _zero_length(root, positions):
    """Set the meta/episodes.jsonl length of the episodes at `positions` to 0 (an empty recording)."""
    import json

    path = root / "meta" / "episodes.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    for position in positions:
        entries[position]["length"] = 0
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))


def test_an_empty_episode_is_named_at_start_and_refused_on_request_while_the_others_replay(tmp_path, caplog):
    """A length-0 episode started silently, then answered get_action with numpy's "index -1 is out of bounds"."""
    root = make_dataset(tmp_path / "ds", lengths=(5, 7), cameras=())
    _zero_length(root, [0])
    with caplog.at_level("WARNING"):
        policy = ReplayPolicy(str(root), execution_horizon=4, strict=False)
    assert "episodes [0] have no steps (length 0); requests for them are refused" in caplog.text
    empty = r"episode 0 \(episode_index 0\) of .* has no steps to replay \(length 0\); reset to another episode"
    with pytest.raises(ValueError, match=empty):
        policy.get_action({"state": {}}, session("a"))  # a fresh session starts at episode 0
    with pytest.raises(ValueError, match=empty):
        policy.reset(session("a", episode_index=0))
    assert policy.reset(session("a", episode_index=1))["episode_length"] == 7
    action, _ = policy.get_action({"state": {}}, session("a"))
    steps = np.clip(np.arange(action["arm"].shape[1]), 0, 6)  # episode 1's first chunk, held at its last step
    np.testing.assert_array_equal(action["arm"][0], expected_actions(1, 7)["arm"][steps])


def test_a_dataset_of_only_empty_episodes_is_refused_at_start(tmp_path):
    root = make_dataset(tmp_path / "ds", lengths=(5, 7), cameras=())
    _zero_length(root, [0, 1])
    with pytest.raises(ValueError, match="has no steps to replay: every episode has length 0"):
        ReplayPolicy(str(root), execution_horizon=4)


def _keep_episodes(root, kept):
    """Keep only the episodes whose own episode_index is in `kept` (a split of a larger dataset): their episode_index
    values are then not their positions in meta/episodes.jsonl."""
    import json

    path = root / "meta" / "episodes.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries if entry["episode_index"] in kept))
    for entry in entries:
        if entry["episode_index"] not in kept:
            (root / "data" / "chunk-000" / f"episode_{entry['episode_index']:06d}.parquet").unlink()
    info = json.loads((root / "meta" / "info.json").read_text())
    (root / "meta" / "info.json").write_text(json.dumps({**info, "total_episodes": len(kept)}))
    return root


@pytest.fixture
def split_policy(tmp_path):
    """A replay of a dataset holding episodes 0 and 2 of three (positions 0 and 1)."""
    root = _keep_episodes(make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=()), kept={0, 2})
    return ReplayPolicy(str(root), execution_horizon=2)


def test_episode_index_is_a_position_and_info_names_the_datasets_own_episode_index(split_policy):
    info = split_policy.reset({"episode_index": 1})
    assert (info["episode_index"], info["dataset_episode_index"]) == (1, 2)
    action, info = split_policy.get_action(None)
    np.testing.assert_array_equal(action["arm"][0][:4], rows(2, [0, 1, 2, 3]))  # position 1: the dataset's episode 2
    assert (info["episode_index"], info["dataset_episode_index"]) == (1, 2)
    split_policy.reset({"episode_index": [1, 0]})
    assert split_policy.get_action(None, {"batch_size": 2})[1]["dataset_episode_index"] == [2, 0]


def test_a_position_past_the_episode_list_is_refused_naming_the_datasets_own_indices(split_policy, policy):
    with pytest.raises(IndexError) as refused:
        split_policy.reset({"episode_index": 2})
    assert str(refused.value) == (
        "episode_index 2 out of range: it is a position in the dataset's episode list (meta/episodes order), and the "
        "dataset has 2 episodes (0..1); their own episode_index values are 0, 2 (reported in info as "
        "dataset_episode_index)")
    with pytest.raises(IndexError) as refused:
        policy.reset({"episode_index": 3})
    assert str(refused.value).endswith("the dataset has 3 episodes (0..2)")  # its own indices are its positions


def test_editing_the_given_or_returned_modality_configs_leaves_the_replay_alone(dataset):
    """The replay kept the configs it was given and handed them out: sorting their action keys, before or after,
    changed which keys it replayed in which order."""
    given = derive_from_dataset(dataset, action_horizon=4)
    keys = list(given["action"].modality_keys)
    replay = ReplayPolicy(dataset, given, execution_horizon=2)
    given["action"].modality_keys.reverse()
    replay.get_modality_config()["action"].modality_keys.reverse()
    replay.get_modality_config()["action"].delta_indices.append(9)
    assert replay.get_modality_config()["action"].modality_keys == keys
    action, _ = replay.get_action(observation(dataset, 1), session("a"))
    assert list(action) == keys and all(value.shape[1] == 4 for value in action.values())


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs os.fork (Linux)")
def test_a_forked_child_replays_while_another_parent_thread_was_inside_a_reset_at_the_fork(policy, dataset):
    """The parent's thread held the replay's lock at the fork (reading an episode): the child inherited it held, with
    no thread to release it, and its first reset waited for ever."""
    from forked_child import in_forked_child

    inside, release, read_episode = threading.Event(), threading.Event(), dataset.episode

    def episode_paused_in_the_robot_thread(position):
        if threading.current_thread().name == "parent's robot":
            inside.set()
            release.wait(60)
        return read_episode(position)

    dataset.episode = episode_paused_in_the_robot_thread
    robot = threading.Thread(target=policy.reset, args=(session("robot", episode_index=1),), name="parent's robot")
    robot.start()

    def replayed_in_the_child():
        policy.reset(session("child", episode_index=2))
        action, _ = policy.get_action(None, session("child"))
        return bool(np.array_equal(action["arm"][0], rows(2, [0, 1, 2, 3])))

    try:
        assert inside.wait(30)
        assert in_forked_child(replayed_in_the_child, timeout_s=20) == (0, "True")
    finally:
        release.set()
        robot.join(30)


def test_a_reset_keeping_the_episodes_of_a_session_the_server_dropped_restarts_those_episodes(policy):
    """The server's drop message says 'call reset to start it again': reset() restarts the session's episodes [1, 2, 1]
    at step 0 (it moved every row to episode 0, and then was refused asking for episode_index)."""
    with running_server(policy, limits=ServerLimits(session_idle_s=0.3)) as server:
        with PolicyClient(port=server.port, timeout_ms=5000, session_id="robot") as client:
            client.reset({"episode_index": [1, 2, 1]})
            client.get_action({})
            time.sleep(0.5)
            with pytest.raises(PolicyServerError, match="call reset to start it again"):
                client.get_action({})
            client.reset()
            _, info = client.get_action({})
    assert info["episode_index"] == [1, 2, 1] and info["current_step"] == [0, 0, 0]


def test_a_reset_of_a_dropped_session_keeps_its_episodes_at_the_step_index_given(policy):
    with running_server(policy, limits=ServerLimits(session_idle_s=0.3)) as server:
        with PolicyClient(port=server.port, timeout_ms=5000, session_id="robot") as client:
            client.reset({"episode_index": [1, 2, 1]})
            time.sleep(0.5)
            client.reset({"step_index": [0, 1, 2]})  # said 'episode_index has 1 entries', none sent
            _, info = client.get_action({})
    assert info["episode_index"] == [1, 2, 1] and info["current_step"] == [0, 1, 2]


def test_a_session_continuing_after_a_server_restart_is_refused_a_reset_without_episode_index(dataset):
    """The new server's replay knows nothing of the session: reset() moved rows [1, 2, 1] to episode 0, one row."""
    configs = derive_from_dataset(dataset, action_horizon=4)
    server = RestartableServer(lambda: ReplayPolicy(dataset, configs, execution_horizon=2))
    client = PolicyClient(port=server.port, timeout_ms=5000, session_id="robot")
    try:
        client.reset({"episode_index": [1, 2, 1]})
        client.get_action({})
        server.restart(reconnecting=1)  # a reset sent into the old connection is lost (ReplyLostError): not this test's
        with pytest.raises(PolicyServerError, match=r"session 'robot' was served before \(the client's mark"
                           r".*not known to this replay \(the server restarted.*reset it with options\['episode_index'\]"):
            client.reset()
        client.reset({"episode_index": [1, 2, 1]})
        _, info = client.get_action({})
    finally:
        server.stop()
        client.close()
    assert info["episode_index"] == [1, 2, 1]


def test_a_new_clients_reset_without_episode_index_after_a_server_restart_starts_episode_0(dataset):
    configs = derive_from_dataset(dataset, action_horizon=4)
    with running_server(ReplayPolicy(dataset, configs, execution_horizon=2)) as server:
        with PolicyClient(port=server.port, timeout_ms=5000, session_id="robot") as client:
            client.reset()
            _, info = client.get_action({})
    assert info["episode_index"] == 0 and info["current_step"] == 0


def test_step_index_for_rows_of_a_session_never_reset_names_the_sessions_rows_not_an_episode_index_list(policy):
    with pytest.raises(ValueError, match=r"step_index has 3 entries but session 'new' replays 1 rows \(episodes "
                       r"\[0\]\); expected one per row, or send episode_index"):
        policy.reset(session("new", step_index=[0, 1, 2]))


@pytest.mark.parametrize("step", [np.uint8(250), np.int8(120)])
def test_a_numpy_int8_or_uint8_step_index_advances_without_wrapping(tmp_path, step):
    """uint8 250 + 8 was 2 (and int8 120 + 8 was -128): the replay jumped back in the episode, a warning in the log."""
    root = make_dataset(tmp_path / "ds", lengths=(260,), cameras=("image",))
    replay = ReplayPolicy(root, derive_from_dataset(LeRobotDataset(root), action_horizon=8), execution_horizon=8)
    with running_server(replay) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        client.reset({"episode_index": 0, "step_index": step})
        client.get_action({})
        action, info = client.get_action({})
    assert info["current_step"] == int(step) + 8
    np.testing.assert_array_equal(action["arm"][0], expected_actions(0, 260)["arm"][np.minimum(int(step) + 8 + np.arange(8), 259)])


def test_the_default_execution_horizon_is_the_chunks_length(dataset):
    configs = {"action": ModalityConfig(delta_indices=[0, 1, 2, 3], modality_keys=["arm"])}
    with running_server(ReplayPolicy(dataset, configs)) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        client.reset({"episode_index": 1})
        first, info = client.get_action({})
        second, _ = client.get_action({})
    assert info["execution_horizon"] == 4
    np.testing.assert_array_equal(np.concatenate([first["arm"][0], second["arm"][0]]), rows(1, range(8)))


def test_an_execution_horizon_past_the_chunks_length_is_refused_naming_both(dataset):
    configs = {"action": ModalityConfig(delta_indices=[0, 1, 2, 3], modality_keys=["arm"])}
    with pytest.raises(ValueError, match=r"execution_horizon must be an int in \[1, 4\] \(each action chunk holds 4 "
                       r"actions, action delta_indices \[0, 1, 2, 3\]\), got 5"):
        ReplayPolicy(dataset, configs, execution_horizon=5)


def test_a_modality_slice_past_its_columns_declared_width_fails_the_start(tmp_path):
    """Every reset of every episode was refused after 'Server is ready'."""
    from gr00t_eval.dataset import DatasetError

    root = make_dataset(tmp_path / "ds", lengths=(6, 9, 4))
    slice_past_the_data(root)
    with pytest.raises(DatasetError, match=r"modality.json: action key 'gripper' reads \[3:5\] of column 'action', "
                       r"which .*info.json declares 4 values wide"):
        ReplayPolicy(root)


def test_a_modality_slice_past_its_columns_width_in_the_data_fails_the_start_without_a_declared_shape(tmp_path):
    """info.json without the column's shape: the start passed and every reset was refused."""
    from gr00t_eval.dataset import DatasetError

    root = make_dataset(tmp_path / "ds", lengths=(6, 9, 4))
    slice_past_the_data(root, shape=None)
    with pytest.raises(DatasetError, match=r"episode_000000.parquet: action key 'gripper' \(meta/modality.json\) reads "
                       r"\[3:5\] of column 'action', which holds 4 values per step"):
        ReplayPolicy(root)


class _StrictResetOptions(ReplayPolicy):
    """A session-keeping policy of a user's own whose reset refuses option names it does not know, and says nothing of
    taking the server's session-lost mark."""

    takes_session_lost = False

    def reset(self, options=None):
        unknown = sorted(set(options or {}) - {"_session_id", "episode_index", "step_index"})
        if unknown:
            raise ValueError(f"unknown reset options {unknown}")
        return super().reset(options)


def test_a_policy_that_does_not_take_the_session_lost_mark_is_not_sent_it_after_a_server_restart(dataset):
    """The mark reached every session-keeping policy: one checking its reset options' names refused every reset of a
    client after the server restarted ("unknown reset options ['_session_lost']")."""
    configs = derive_from_dataset(dataset, action_horizon=4)
    server = RestartableServer(lambda: _StrictResetOptions(dataset, configs, execution_horizon=2))
    client = PolicyClient(port=server.port, timeout_ms=5000, session_id="robot")
    try:
        client.reset({"episode_index": 1})
        client.get_action({})
        server.restart(reconnecting=1)  # a reset sent into the old connection is lost (ReplyLostError): not this test's
        info = client.reset()
    finally:
        client.close()
        server.stop()
    assert info["episode_index"] == 0


def test_a_wrapper_that_says_it_does_not_take_the_session_lost_mark_is_not_sent_it(dataset):
    """The chain was asked with any(): a replay inside a wrapper saying takes_session_lost = False overrode it, and the
    wrapper refused every reset of a returning client after a restart. The outermost link that says decides."""
    from gr00t_client import BasePolicy

    class Wrapper(BasePolicy):
        stateful_sessions = True
        takes_session_lost = False

        def __init__(self, inner):
            super().__init__(strict=False)
            self.policy = inner

        def reset(self, options=None):
            unknown = sorted(set(options or {}) - {"_session_id", "episode_index", "step_index"})
            if unknown:
                raise ValueError(f"unknown reset options {unknown}")
            return self.policy.reset(options)

        def _get_action(self, observation, options=None):
            return self.policy.get_action(observation, options)

        def get_modality_config(self):
            return self.policy.get_modality_config()

    configs = derive_from_dataset(dataset, action_horizon=4)
    server = RestartableServer(lambda: Wrapper(ReplayPolicy(dataset, configs, execution_horizon=2)))
    client = PolicyClient(port=server.port, timeout_ms=5000, session_id="robot")
    try:
        client.reset({"episode_index": 2})
        client.get_action({})
        # a reset sent before the client saw the old connection close was lost in it (ReplyLostError): not this test's
        server.restart(reconnecting=1)
        info = client.reset()
    finally:
        client.close()
        server.stop()
    assert info["episode_index"] == 0



@pytest.mark.parametrize("value", ["false", None, 0])
def test_a_replay_strict_that_is_not_a_bool_is_refused_naming_it(dataset, value):
    """ReplayPolicy took strict="false" as True and strict=None as False (BasePolicy stored it unchecked)."""
    with pytest.raises(ValueError, match=rf"^strict must be True or False, got {value!r}"):
        ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, strict=value)


class _ListReadsCounted(LeRobotDataset):
    """A real dataset that counts the reads of its episode list's lengths and indices."""

    reads = 0

    @property
    def episode_lengths(self):
        self.reads += 1
        return super().episode_lengths

    @property
    def episode_indices(self):
        self.reads += 1
        return super().episode_indices


def test_requests_read_no_episode_list_of_the_dataset(dataset_root):
    """The lengths are read once at start: each row of every request read the list of every episode's length under
    the policy's lock (O(episodes) a row, tens of milliseconds a request on a 50k-episode dataset)."""
    dataset = _ListReadsCounted(dataset_root)
    policy = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2)
    reads_at_start = dataset.reads
    policy.reset(session("batch", episode_index=[0, 1, 2], step_index=[0, 3, 2]))
    for _ in range(3):
        policy.get_action(observation(dataset, 3), session("batch"))
    with pytest.raises(IndexError, match="step_index 4 out of range for episode 2 of length 4"):
        policy.reset({"episode_index": 2, "step_index": 4})
    assert dataset.reads == reads_at_start


def test_forgotten_session_marks_stay_small_and_outlive_the_churn_of_thousands_of_sessions(dataset):
    """Each mark kept its formatted reason and its episode list (about 1.5 KB for 128 rows), 65,536 of them: a flood of
    one-shot sessions made a replay hold ~100 MB. The marks now fit 16 MB whatever the flood, and a robot's mark still
    outlives thousands of other sessions."""
    import tracemalloc

    policy = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, max_sessions=16)
    episodes = [row % len(LENGTHS) for row in range(policy.max_rows)]
    policy.reset(session("robot", episode_index=2))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(3000):
            policy.reset(session(f"flood-{index:0122d}", episode_index=episodes))  # 128-character ids, the server's cap
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    marks = len(policy._forgotten)
    assert marks >= 2900
    assert held / marks * policy._forgotten.capacity < 16e6, f"{held / marks:.0f} bytes per mark"
    with pytest.raises(ValueError, match="session 'robot' was forgotten by this replay, which keeps at most 16"):
        policy.get_action(None, session("robot"))
