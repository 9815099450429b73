"""Gr00tSimPolicyWrapper: flat sim keys to the nested form and back, strict or not."""

from __future__ import annotations

import contextlib
import dataclasses

import re

import numpy as np
import pytest

from eval.dataset_factory import expected_actions, make_dataset
from gr00t_client.modality import ModalityConfig
from gr00t_client.policy import ActionError, BasePolicy, ObservationError
from gr00t_server.policies import Gr00tSimPolicyWrapper, ReplayPolicy

LANGUAGE_KEY = "annotation.human.action.task_description"
CONFIGS = {
    "video": ModalityConfig(delta_indices=[0], modality_keys=["image"]),
    "state": ModalityConfig(delta_indices=[0], modality_keys=["arm"]),
    "action": ModalityConfig(delta_indices=[0, 1], modality_keys=["arm"]),
    "language": ModalityConfig(delta_indices=[0], modality_keys=[LANGUAGE_KEY]),
}


class RecordingPolicy(BasePolicy):
    """Returns a fixed action and remembers what it was called with."""

    def __init__(self, configs=CONFIGS, *, strict=True, action_dtype=np.float32):
        super().__init__(strict=strict)
        self.configs = configs
        self.action_dtype = action_dtype
        self.calls = []

    def get_modality_config(self):
        return self.configs

    def reset(self, options=None):
        return {"reset": options}

    def _get_action(self, observation, options=None):
        self.calls.append((observation, options))
        batch = len(next(iter(observation["language"].values()))) if observation else 1
        return {"arm": np.ones((batch, 2, 3), self.action_dtype)}, {"seen": True}


def flat(batch=2, language=None):
    return {
        "video.image": np.zeros((batch, 1, 8, 8, 3), np.uint8),
        "state.arm": np.zeros((batch, 1, 3), np.float32),
        LANGUAGE_KEY: language if language is not None else ["pick"] * batch,
    }


def replay_flat(rows=1, arm=3):
    """A flat observation in the layout of make_dataset(cameras=("image",)): 32x32 camera, arm 3 and gripper 1 wide."""
    return {
        "video.image": np.zeros((rows, 1, 32, 32, 3), np.uint8),
        "state.arm": np.zeros((rows, 1, arm), np.float32),
        "state.gripper": np.zeros((rows, 1, 1), np.float32),
        LANGUAGE_KEY: ["pick"] * rows,
    }


def test_flat_observation_becomes_nested_and_actions_get_the_prefix():
    inner = RecordingPolicy()
    action, info = Gr00tSimPolicyWrapper(inner).get_action(flat())
    nested, _ = inner.calls[0]
    assert set(nested) == {"video", "state", "language"}
    assert nested["video"]["image"].shape == (2, 1, 8, 8, 3)
    assert nested["state"]["arm"].shape == (2, 1, 3)
    assert nested["language"][LANGUAGE_KEY] == [["pick"], ["pick"]]
    assert set(action) == {"action.arm"} and action["action.arm"].shape == (2, 2, 3)
    assert info == {"seen": True}


@pytest.mark.parametrize(
    "language, expected",
    [
        (("a", "b"), [["a"], ["b"]]),
        (["a", "b"], [["a"], ["b"]]),
        (np.array(["a", "b"]), [["a"], ["b"]]),
        (np.array([["a"], ["b"]]), [["a"], ["b"]]),
        ("only", [["only"]]),
    ],
)
def test_language_may_be_tuple_list_numpy_or_bare_str(language, expected):
    inner = RecordingPolicy()
    batch = len(expected)
    Gr00tSimPolicyWrapper(inner).get_action(flat(batch, language))
    assert inner.calls[0][0]["language"][LANGUAGE_KEY] == expected


@pytest.mark.parametrize("strict", [True, False])
def test_every_missing_flat_key_is_named_in_one_refusal_strict_or_not(strict):
    """With strict=False the wrapped policy's own check refuses it; the wrapper names the flat keys either way."""
    observation = flat()
    del observation["video.image"], observation["state.arm"]
    wrapper = Gr00tSimPolicyWrapper(RecordingPolicy(), strict=strict)
    with pytest.raises(ObservationError, match=rf"^flat keys \['video.image', 'state.arm'\] are missing from the "
                                               rf"observation; expected the flat keys .*got keys \['{LANGUAGE_KEY}'\]"):
        wrapper.get_action(observation)


def test_options_with_the_session_id_are_forwarded_untouched():
    inner = RecordingPolicy()
    options = {"_session_id": "client-7", "extra": 1}
    Gr00tSimPolicyWrapper(inner).get_action(flat(), options)
    assert inner.calls[0][1] is options and options == {"_session_id": "client-7", "extra": 1}
    assert Gr00tSimPolicyWrapper(inner).reset(options) == {"reset": options}


def test_strict_wrapper_rejects_missing_and_mistyped_flat_keys():
    wrapper = Gr00tSimPolicyWrapper(RecordingPolicy())
    missing = flat()
    del missing["video.image"]
    with pytest.raises(ObservationError, match=r"flat keys \['video.image'\] are missing from the observation; .*got keys"):
        wrapper.get_action(missing)
    wrong = flat()
    wrong["state.arm"] = wrong["state.arm"].astype(np.float64)
    with pytest.raises(ObservationError, match="'state.arm'.*float32"):
        wrapper.get_action(wrong)
    with pytest.raises(ObservationError, match="tuple, list, numpy array or str"):
        wrapper.get_action(flat(language=3))
    with pytest.raises(ObservationError, match="batch size 3"):
        wrapper.get_action(flat(2, ["a", "b", "c"]))


def test_strict_wrapper_checks_the_flat_action():
    wrapper = Gr00tSimPolicyWrapper(RecordingPolicy(strict=False, action_dtype=np.float64))
    with pytest.raises(ActionError, match="'action.arm'.*float32"):
        wrapper.get_action(flat())


def test_non_strict_wrapper_and_policy_validate_nothing():
    inner = RecordingPolicy(strict=False, action_dtype=np.float64)
    wrapper = Gr00tSimPolicyWrapper(inner, strict=False)
    observation = flat()
    observation["state.arm"] = observation["state.arm"].astype(np.float64)
    action, _ = wrapper.get_action(observation)
    assert action["action.arm"].dtype == np.float64
    assert inner.calls[0][0]["state"]["arm"].dtype == np.float64


def test_legacy_task_key_reads_the_coarse_action():
    configs = dict(CONFIGS, language=ModalityConfig(delta_indices=[0], modality_keys=["task"]))
    inner = RecordingPolicy(configs)
    observation = flat()
    del observation[LANGUAGE_KEY]
    observation["annotation.human.coarse_action"] = ("x", "y")
    Gr00tSimPolicyWrapper(inner).get_action(observation)
    assert inner.calls[0][0]["language"]["task"] == [["x"], ["y"]]


def test_modality_config_is_forwarded():
    wrapper = Gr00tSimPolicyWrapper(RecordingPolicy())
    assert wrapper.get_modality_config() == CONFIGS
    assert wrapper.modality_configs == CONFIGS


def test_wraps_replay_policy_with_flat_keys_and_sessions(tmp_path):
    root = make_dataset(tmp_path / "ds", lengths=(5, 3), cameras=("image",))
    replay = ReplayPolicy(root, execution_horizon=2)
    wrapper = Gr00tSimPolicyWrapper(replay)
    wrapper.reset({"_session_id": "s1", "episode_index": 1})
    observation = {
        "video.image": np.zeros((1, 1, 32, 32, 3), np.uint8),
        "state.arm": np.zeros((1, 1, 3), np.float32),
        "state.gripper": np.zeros((1, 1, 1), np.float32),
        LANGUAGE_KEY: np.array(["pick the red cube"]),
    }
    action, info = wrapper.get_action(observation, {"_session_id": "s1"})
    assert set(action) == {"action.arm", "action.gripper"}
    np.testing.assert_array_equal(action["action.arm"][0, :3], expected_actions(1, 3)["arm"])
    assert info["episode_index"] == 1
    empty_action, _ = wrapper.get_action({}, None)  # replay needs no observation
    assert empty_action["action.arm"].shape == (1, 16, 3)


def test_a_wrapped_replay_serves_an_instruction_holding_a_lone_surrogate(tmp_path):
    """No tokenizer reads a replay's language: only a policy that tokenizes the text as sent refuses a lone surrogate
    (a numpy string array carries one), so the wrapper and the client's flat check pass it on."""
    from gr00t_client import PolicyClient
    from serving import running_server

    root = make_dataset(tmp_path / "ds", lengths=(5,), cameras=("image",))
    observation = dict(replay_flat(), **{LANGUAGE_KEY: np.array(["pick \ud800 up the bowl"])})
    with running_server(Gr00tSimPolicyWrapper(ReplayPolicy(root, execution_horizon=2))) as server:
        with PolicyClient(port=server.port, strict=True, timeout_ms=10000) as client:
            client.reset({"episode_index": 0})
            action, _ = client.get_action(observation)
    np.testing.assert_array_equal(action["action.arm"][0, :3], expected_actions(0, 3)["arm"])


def test_wrapper_refuses_a_non_finite_flat_state_and_non_utf8_language_naming_the_key():
    wrapper = Gr00tSimPolicyWrapper(RecordingPolicy())
    observation = flat()
    observation["state.arm"][1, 0, 2] = np.nan
    with pytest.raises(ObservationError, match=r"State key 'state.arm' has non-finite values .* rows \[1\]"):
        wrapper.get_action(observation)
    with pytest.raises(ObservationError, match=f"Language key '{LANGUAGE_KEY}' row 1 holds bytes that are not UTF-8"):
        wrapper.get_action(flat(language=[b"pick", b"\xff\xfe"]))


def test_a_strict_client_validates_the_flat_form_a_sim_wrapper_server_takes(tmp_path):
    """The server reports its wrapped policy's nested configs; a strict client holds flat observations and flat
    actions to them (it refused every flat observation, and named --use-sim-policy-wrapper, already on)."""
    from gr00t_client import PolicyClient
    from serving import running_server

    root = make_dataset(tmp_path / "ds", lengths=(5,), cameras=("image",))
    observation = replay_flat()
    with running_server(Gr00tSimPolicyWrapper(ReplayPolicy(root, execution_horizon=2))) as server:
        with PolicyClient(port=server.port, strict=True, timeout_ms=10000) as client:
            client.reset({"episode_index": 0})
            action, _ = client.get_action(observation)
            assert set(action) == {"action.arm", "action.gripper"}
            np.testing.assert_array_equal(action["action.arm"][0, :3], expected_actions(0, 3)["arm"])
            requests = server.stats.snapshot()["policy_calls"]
            bad = dict(observation, **{"state.arm": np.zeros((1, 1, 3), np.float64)})
            with pytest.raises(ObservationError, match="'state.arm' must have dtype float32"):
                client.get_action(bad)
            missing = {k: v for k, v in observation.items() if k != "video.image"}
            with pytest.raises(ObservationError, match=r"flat keys \['video.image'\] are missing from the observation"):
                client.get_action(missing)
            # refused on the robot: the server saw neither request
            assert server.stats.snapshot()["policy_calls"] == requests


def test_an_empty_observation_to_a_wrapped_model_is_refused_naming_the_flat_keys(tiny_checkpoint):
    """A flat-form client that sent {} was told "observation must contain a 'video' key (a dict)": the nested form,
    which a --use-sim-policy-wrapper server does not take."""
    pytest.importorskip("torch")
    from gr00t_client import PolicyClient, PolicyServerError
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from serving import running_server

    wrapper = Gr00tSimPolicyWrapper(Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu"))
    configs = wrapper.get_modality_config()
    expected = ([f"video.{k}" for k in configs["video"].modality_keys]
                + [f"state.{k}" for k in configs["state"].modality_keys] + list(configs["language"].modality_keys))
    with running_server(wrapper) as server, PolicyClient(port=server.port, strict=False, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError) as refused:
            client.get_action({})
    assert f"ObservationError: observation is empty; expected the flat keys {expected}" in str(refused.value)
    assert "'video' key (a dict)" not in str(refused.value)


def test_the_wrapped_models_own_checks_run_in_check_observation_and_once_per_get_action(tiny_checkpoint):
    """A batching server pre-checks each request with check_observation: it skipped Gr00tPolicy's checks (a degenerate
    rotation failed the merged call of every batch mate), and running them there must not run them twice per call."""
    pytest.importorskip("torch")
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    class CheckCountingPolicy(Gr00tPolicy):
        checks = 0

        def check_observation(self, observation):
            self.checks += 1
            super().check_observation(observation)

    policy = CheckCountingPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    wrapper = Gr00tSimPolicyWrapper(policy)
    nested = example_observation(tiny_checkpoint, "new_embodiment", batch_size=2, image_size=(32, 32))
    sent = {f"{modality}.{key}": value for modality in ("video", "state") for key, value in nested[modality].items()}
    sent.update({key: [row[0] for row in rows] for key, rows in nested["language"].items()})
    wrapper.get_action(sent)
    assert policy.checks == 1
    sent["state.eef_9d"][1, 0, 3:] = 0.0
    with pytest.raises(ObservationError, match=r"relative key 'action\.eef_9d' \(xyz \+ rot6d\) has a degenerate rotation "
                                               r"in rows \[1\]"):
        wrapper.check_observation(sent)
    assert policy.checks == 2


def test_a_non_strict_replay_server_refuses_an_observation_of_only_unknown_keys_instead_of_answering_old_rows(tmp_path):
    """`serve --dataset-path --use-sim-policy-wrapper --no-strict`: B=3 with the config's keys, then B=5 whose camera
    and state keys are not the config's was answered with 3 rows of actions (the session's), without an error."""
    from gr00t_client import PolicyClient, PolicyServerError
    from serving import free_port, served

    root = make_dataset(tmp_path / "ds", lengths=(8,), cameras=("image",))
    port = free_port()
    good = replay_flat(rows=3)
    with served("serve", "--dataset-path", str(root), "--port", str(port), "--use-sim-policy-wrapper", "--no-strict"):
        with PolicyClient(port=port, strict=False, timeout_ms=30000) as client:
            action, _ = client.get_action(good)
            assert action["action.arm"].shape[0] == 3
            misnamed = {"video.front": np.zeros((5, 1, 32, 32, 3), np.uint8),
                        "state.joints": np.zeros((5, 1, 4), np.float32)}
            with pytest.raises(PolicyServerError, match=re.escape(
                    "none of the observation's keys ['state.joints', 'video.front'] are in the modality config; expected "
                    f"the flat keys ['video.image', 'state.arm', 'state.gripper', '{LANGUAGE_KEY}']")):
                client.get_action(misnamed)
            extra = {**{k: np.repeat(v[:1], 5, axis=0) for k, v in good.items() if k != LANGUAGE_KEY},
                     LANGUAGE_KEY: ["pick"] * 5, "video.front": misnamed["video.front"]}
            action, _ = client.get_action(extra)  # a merely extra key stays lenient, and the rows are the observation's
            assert action["action.arm"].shape[0] == 5


def test_a_strict_replay_server_refuses_a_state_width_the_dataset_does_not_have(tmp_path):
    """"Debug with replay first": a replay that answered any state width told a user the plumbing was right."""
    from gr00t_client import PolicyClient, PolicyServerError
    from serving import free_port, served

    root = make_dataset(tmp_path / "ds", lengths=(8,), cameras=("image",))
    port = free_port()
    observation = replay_flat(arm=7)
    with served("serve", "--dataset-path", str(root), "--port", str(port), "--use-sim-policy-wrapper"):
        with PolicyClient(port=port, strict=False, timeout_ms=30000) as client:
            with pytest.raises(PolicyServerError, match=r"ObservationError: State key 'state.arm' has dimension 7; the "
                                                        r"dataset expects 3 \(.*meta/modality.json\)"):
                client.get_action(observation)
            action, _ = client.get_action(dict(observation, **{"state.arm": np.zeros((1, 1, 3), np.float32)}))
            assert action["action.arm"].shape == (1, 16, 3)


class ExtraKeyPolicy(RecordingPolicy):
    """RecordingPolicy whose action also holds a key its config does not list, all NaN."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        return {**action, "base": np.full((len(observation["language"][LANGUAGE_KEY]), 2, 2), np.nan, np.float32)}, info


def test_a_strict_wrapper_refuses_nan_in_a_flat_action_key_the_config_does_not_list():
    from gr00t_client.policy import NonFiniteActionError

    wrapper = Gr00tSimPolicyWrapper(ExtraKeyPolicy(strict=False))
    with pytest.raises(NonFiniteActionError,
                       match=r"non-finite values \(NaN or inf\) in action key 'action.base' rows \[0, 1\]"):
        wrapper.get_action(flat())


def test_a_strict_wrapper_refuses_the_empty_chunks_of_an_action_config_without_delta_indices():
    configs = {**CONFIGS, "action": ModalityConfig(delta_indices=[], modality_keys=["arm"])}

    class EmptyChunkPolicy(RecordingPolicy):
        def _get_action(self, observation, options=None):
            return {"arm": np.zeros((2, 0, 3), np.float32)}, {}

    wrapper = Gr00tSimPolicyWrapper(EmptyChunkPolicy(configs, strict=False))
    with pytest.raises(ActionError, match=r"the 'action' modality config has no delta_indices \(horizon 0\) for action "
                                          r"keys \['arm'\]"):
        wrapper.get_action(flat())


def test_a_wrapper_takes_a_policy_whose_configs_are_the_json_form():
    configs = {name: config.to_json_dict() for name, config in CONFIGS.items()}
    wrapper = Gr00tSimPolicyWrapper(RecordingPolicy(configs))
    action, _ = wrapper.get_action(flat())
    assert action["action.arm"].shape == (2, 2, 3)
    assert wrapper.flat_keys() == ["video.image", "state.arm", LANGUAGE_KEY]


def test_editing_the_wrappers_modality_configs_leaves_the_wrapped_policys_alone():
    """Gr00tSimPolicyWrapper (any PolicyWrapper) handed out the wrapped policy's own configs: a caller sorting
    its key lists changed which keys the policy read and wrote."""
    configs = {name: ModalityConfig(delta_indices=[0], modality_keys=["b", "a"]) for name in ("video", "state")}
    inner = RecordingPolicy({**CONFIGS, **configs})
    wrapper = Gr00tSimPolicyWrapper(inner)
    handed_out = wrapper.get_modality_config()
    handed_out["state"].modality_keys.sort()
    handed_out["video"].delta_indices.append(1)
    assert configs["state"].modality_keys == ["b", "a"] and configs["video"].delta_indices == [0]
    assert wrapper.get_modality_config()["state"].modality_keys == ["b", "a"]


@dataclasses.dataclass(slots=True)
class TaggedConfig(ModalityConfig):
    """A user's config subclass keeping a field of its own in slots."""

    source: str = "teleop"


def test_a_config_subclass_with_slots_is_handed_out_whole():
    """The copies took only __dict__: a slotted subclass's own field (and some inherited ones) were lost."""
    configs = {**CONFIGS, "state": TaggedConfig(delta_indices=[0], modality_keys=["b", "a"], source="sim")}
    handed_out = Gr00tSimPolicyWrapper(RecordingPolicy(configs)).get_modality_config()["state"]
    assert isinstance(handed_out, TaggedConfig) and handed_out.source == "sim"
    assert handed_out.modality_keys == ["b", "a"] and handed_out.modality_keys is not configs["state"].modality_keys
    assert handed_out.sin_cos_embedding_keys == configs["state"].sin_cos_embedding_keys


def test_an_rtc_previous_chunk_holding_one_key_under_both_spellings_is_refused_naming_it():
    """{'action.arm': chunk1, 'arm': chunk2} was folded into one key: whichever came later silently won."""
    policy = RecordingPolicy()
    wrapper = Gr00tSimPolicyWrapper(policy)
    previous = {"action.arm": np.ones((2, 2, 3), np.float32), "arm": np.zeros((2, 2, 3), np.float32)}
    options = {"rtc": {"previous_action": previous, "overlap_steps": 1, "frozen_steps": 0}}
    with pytest.raises(ValueError, match=r"action key 'arm' twice, as 'action.arm' and 'arm'"):
        wrapper.get_action(flat(), options)
    assert policy.calls == []


def _flat_example(checkpoint, tag="new_embodiment", batch_size=2):
    from gr00t_server.test_checkpoint import example_observation

    nested = example_observation(checkpoint, tag, batch_size=batch_size, image_size=(32, 32))
    sent = {f"{modality}.{key}": value for modality in ("video", "state") for key, value in nested[modality].items()}
    sent.update({key: [row[0] for row in rows] for key, rows in nested["language"].items()})
    return sent


def test_a_bad_reference_state_of_a_relative_key_is_named_by_the_flat_state_key_the_client_sent(tiny_checkpoint):
    """The state anchoring relative action key eef_9d was named 'action.eef_9d', a key the client never sends."""
    pytest.importorskip("torch")
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    degenerate = _flat_example(tiny_checkpoint)
    degenerate["state.eef_9d"][1, 0, 3:] = 0.0
    narrow = _flat_example(tiny_checkpoint)
    narrow["state.eef_9d"] = np.ascontiguousarray(narrow["state.eef_9d"][..., :8])
    not_finite = _flat_example(tiny_checkpoint)
    not_finite["state.eef_9d"][0, 0, 2] = np.nan
    cases = [(True, True, degenerate, r"\(xyz \+ rot6d\) has a degenerate rotation in rows \[1\]"),
             (True, False, narrow, "has dimension 8; expected 9"),
             (False, False, not_finite, r"has NaN or infinite values in rows \[0\]")]
    for wrapper_strict, policy_strict, observation, problem in cases:
        policy.strict = policy_strict
        wrapper = Gr00tSimPolicyWrapper(policy, strict=wrapper_strict)
        with pytest.raises(ObservationError, match=r"reference state 'state\.eef_9d' of relative key 'action\.eef_9d' "
                                                   + problem):
            wrapper.get_action(observation)


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "nested"])
@pytest.mark.parametrize("empty", [{}, None], ids=["empty dict", "None"])
def test_a_strict_client_sends_a_replay_server_the_empty_observation_it_takes(tmp_path, flat, empty):
    """The server takes {} (a replay needs no observation); a strict client refused it before sending, and told a
    flat server's user "observation must contain a 'video' key (a dict)", the nested form."""
    from gr00t_client import PolicyClient
    from serving import running_server

    root = make_dataset(tmp_path / "ds", lengths=(5,), cameras=("image",))
    replay = ReplayPolicy(root, execution_horizon=2)
    with running_server(Gr00tSimPolicyWrapper(replay) if flat else replay) as server:
        with PolicyClient(port=server.port, strict=True, timeout_ms=10000) as client:
            action, info = client.get_action(empty)
    assert set(action) == ({"action.arm", "action.gripper"} if flat else {"arm", "gripper"})
    assert info["current_step"] == 0


def test_a_strict_client_refuses_an_empty_observation_to_a_flat_model_server_naming_the_flat_keys():
    from gr00t_client import PolicyClient
    from serving import running_server

    policy = RecordingPolicy()
    with running_server(Gr00tSimPolicyWrapper(policy)) as server:
        with PolicyClient(port=server.port, strict=True, timeout_ms=10000) as client:
            with pytest.raises(ObservationError) as refused:
                client.get_action({})
    assert f"expected the flat keys ['video.image', 'state.arm', '{LANGUAGE_KEY}']" in str(refused.value)
    assert "'video' key (a dict)" not in str(refused.value)
    assert policy.calls == []  # refused on the robot


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "nested"])
def test_a_strict_multipart_wire_client_sends_a_replay_server_the_empty_observation_it_takes(tmp_path, flat):
    """wire="multipart" never asked get_server_info, so the server's kind stayed unknown and {} was refused."""
    from gr00t_client import PolicyClient
    from serving import running_server

    root = make_dataset(tmp_path / "ds", lengths=(5,), cameras=("image",))
    replay = ReplayPolicy(root, execution_horizon=2)
    with running_server(Gr00tSimPolicyWrapper(replay) if flat else replay) as server:
        with PolicyClient(port=server.port, strict=True, timeout_ms=10000, wire="multipart") as client:
            action, info = client.get_action({})
            assert client.server_policy_kind == "replay"
    assert set(action) == ({"action.arm", "action.gripper"} if flat else {"arm", "gripper"})
    assert info["current_step"] == 0


def test_a_strict_multipart_wire_client_serves_a_server_that_refuses_get_server_info():
    from gr00t_client import PolicyClient
    from serving import running_server

    def refused():
        raise RuntimeError("get_server_info is not served here")

    policy = RecordingPolicy()
    with running_server(Gr00tSimPolicyWrapper(policy)) as server:
        server.register_endpoint("get_server_info", refused, requires_input=False)
        with PolicyClient(port=server.port, strict=True, timeout_ms=10000, wire="multipart") as client:
            action, _ = client.get_action(flat(batch=1))
            assert client.server_policy_kind is None and client.server_observation_format is None
    assert set(action) == {"action.arm"} and len(policy.calls) == 1


@pytest.mark.parametrize("flat_server", [True, False], ids=["flat", "nested"])
def test_a_strict_client_sends_the_empty_observation_at_once_to_a_replay_restarted_in_a_model_servers_place(
        tmp_path, flat_server):
    """The first two get_action({}) were refused on the robot: the retry asked the new configs but judged by the old
    server's form and kind."""
    from gr00t_client import PolicyClient
    from serving import free_port, running_server

    root = make_dataset(tmp_path / "ds", lengths=(6, 9), cameras=("image",))
    wrap = Gr00tSimPolicyWrapper if flat_server else (lambda inner: inner)
    port = free_port()
    with PolicyClient(port=port, strict=True, timeout_ms=10000) as client:
        with running_server(wrap(RecordingPolicy()), port=port):
            with pytest.raises(ObservationError):
                client.get_action({})
        with running_server(wrap(ReplayPolicy(root, execution_horizon=2)), port=port):
            action, info = client.get_action({})
    assert set(action) == ({"action.arm", "action.gripper"} if flat_server else {"arm", "gripper"})
    assert info["current_step"] == 0


def test_a_strict_client_behind_a_proxy_sends_the_empty_observation_to_a_replay_that_took_a_models_place(tmp_path):
    """Behind a ROUTER-DEALER proxy the client's socket never sees the server behind it restart: the retry fetched the
    new configs but not the new server's kind, and every get_action({}) to the replay was refused."""
    from gr00t_client import PolicyClient
    from serving import router_dealer_broker, running_server

    root = make_dataset(tmp_path / "ds", lengths=(6, 9), cameras=("image",))
    with router_dealer_broker() as (front, back), PolicyClient(port=front, strict=True, timeout_ms=10000) as client:
        with running_server(RecordingPolicy(), port=back):
            with pytest.raises(ObservationError):
                client.get_action({})
        with running_server(ReplayPolicy(root, execution_horizon=2), port=back):
            client.reset({"episode_index": 1})
            _, info = client.get_action({})
        assert client.server_policy_kind == "replay"
    assert info["episode_index"] == 1 and info["current_step"] == 0


def test_a_strict_client_behind_a_proxy_learns_a_replay_took_an_upstream_servers_place(tmp_path):
    """After an upstream server the client had learnt it was no gr00t-server and never asked again: the replay that
    took its place behind the proxy was refused every empty observation."""
    from gr00t_client import PolicyClient
    from reference_peer import RefModalityConfig, ReferenceServer
    from serving import router_dealer_broker, running_server

    root = make_dataset(tmp_path / "ds", lengths=(6, 9), cameras=("image",))
    configs = ReplayPolicy(root, execution_horizon=2).get_modality_config()
    handlers = {"get_action": lambda observation=None, options=None: ({}, {}),
                "get_modality_config": lambda: {k: RefModalityConfig(v.to_json_dict()) for k, v in configs.items()}}
    with router_dealer_broker() as (front, back), PolicyClient(port=front, strict=True, timeout_ms=10000) as client:
        with ReferenceServer(handlers, port=back):
            with pytest.raises(ObservationError):
                client.get_action({})
        with running_server(ReplayPolicy(root, execution_horizon=2), port=back):
            client.reset({"episode_index": 1})
            _, info = client.get_action({})
    assert info["episode_index"] == 1


def test_a_strict_client_asks_only_the_configs_again_for_an_observation_in_the_nested_form(tmp_path):
    """The retry after a refusal asked get_server_info too: each bad observation cost the server two requests."""
    from gr00t_client import PolicyClient
    from serving import running_server

    asked = []
    with running_server(RecordingPolicy()) as server:
        with PolicyClient(port=server.port, strict=True, timeout_ms=10000) as client:
            client.get_modality_config()
            call_endpoint = client.call_endpoint

            def counted(endpoint, *args, **kwargs):
                asked.append(endpoint)
                return call_endpoint(endpoint, *args, **kwargs)

            client.call_endpoint = counted
            for _ in range(3):
                with pytest.raises(ObservationError):
                    client.get_action({"state": {"nothing": np.zeros((1, 1, 1), np.float32)}})
    assert asked == ["get_modality_config"] * 3, asked



def test_a_refused_rtc_previous_chunk_names_its_keys_as_the_flat_client_sent_them(tiny_checkpoint):
    """previous_action sent with the `action.<key>` keys the wrapper returns was refused naming the nested keys the
    wrapped policy got ('yaw', 'bogus', ['x', 'y', ...]), which the client never sent."""
    pytest.importorskip("torch")
    from gr00t_client import PolicyClient, PolicyServerError
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from serving import running_server

    observations = {tag: _flat_example(tiny_checkpoint, tag) for tag in ("libero_sim", "new_embodiment")}
    refusals = []
    for tag, observation in observations.items():
        wrapper = Gr00tSimPolicyWrapper(Gr00tPolicy(tiny_checkpoint, tag, device="cpu"))
        with running_server(wrapper) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
            action, _ = client.get_action(observation, {"seed": 0})
            degenerate = {key: value.copy() for key, value in action.items()}
            if "action.eef_9d" in action:  # a relative EEF key: its rot6d rows zeroed
                degenerate["action.eef_9d"][..., 3:] = 0.0
            cases = [{key: value for key, value in action.items() if key != "action.yaw"},
                     {**action, "action.bogus": next(iter(action.values()))},
                     {**action, "action.yaw": action["action.yaw"][:1]}] if tag == "libero_sim" else [degenerate]
            for previous in cases:
                rtc = {"previous_action": previous, "overlap_steps": 8, "frozen_steps": 4}
                with pytest.raises(PolicyServerError) as refused:
                    client.get_action(observation, {"seed": 0, "rtc": rtc})
                refusals.append(str(refused.value))
    flat_keys = "['action.x', 'action.y', 'action.z', 'action.roll', 'action.pitch', 'action.yaw', 'action.gripper']"
    assert refusals[0].endswith(f"must have exactly the action keys {flat_keys}; missing ['action.yaw'], extra []")
    assert refusals[1].endswith(f"must have exactly the action keys {flat_keys}; missing [], extra ['action.bogus']")
    assert "options['rtc']['previous_action']['action.yaw'] must be a float array of shape (B=2, T, 1)" in refusals[2]
    assert "options['rtc']['previous_action']['action.eef_9d'] (XYZ_ROT6D pose) has a degenerate rotation" in refusals[3]


def test_a_wrapped_client_rewords_its_servers_refusals_in_the_flat_form_keeping_their_class(tiny_checkpoint):
    """Gr00tSimPolicyWrapper(PolicyClient(...)) of a nested server passed its refusals on as the server worded them:
    "State key 'gripper'" for the 'state.gripper' sent, "must contain a 'video' key (a dict)" for {}."""
    pytest.importorskip("torch")
    from gr00t_client import PolicyClient, PolicyServerError
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from serving import running_server

    observation = _flat_example(tiny_checkpoint, "libero_sim")
    narrow = {**observation, "state.gripper": np.ascontiguousarray(observation["state.gripper"][..., :1])}
    with running_server(Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu")) as server:
        with PolicyClient(port=server.port, strict=False, timeout_ms=60000) as client:
            wrapper = Gr00tSimPolicyWrapper(client)
            flat_keys = wrapper.flat_keys()
            action, _ = wrapper.get_action(observation, {"seed": 0})
            previous = {key: value for key, value in action.items() if key != "action.yaw"}
            refusals = []
            for sent, options in [(narrow, None), ({}, None),
                                  (observation, {"rtc": {"previous_action": previous, "overlap_steps": 8,
                                                         "frozen_steps": 4}})]:
                with pytest.raises(PolicyServerError) as refused:
                    wrapper.get_action(sent, options)
                refusals.append(refused.value)
    assert str(refusals[0]) == ("Server error: ObservationError: State key 'state.gripper' has dimension 1; the "
                                "checkpoint statistics expect 2")
    assert str(refusals[1]) == f"Server error: ObservationError: observation is empty; expected the flat keys {flat_keys}"
    assert "missing ['action.yaw'], extra []" in str(refusals[2])
    assert refusals[2].server_message.startswith("ValueError: options['rtc']['previous_action'] must have exactly")


def _previous_action_refusal(client, observation, previous):
    """The text of the refusal of `previous` as options['rtc']['previous_action'] (client: a PolicyClient or wrapper)."""
    from gr00t_client import PolicyServerError

    rtc = {"previous_action": previous, "overlap_steps": 8, "frozen_steps": 4}
    with pytest.raises(PolicyServerError) as refused:
        client.get_action(observation, {"seed": 0, "rtc": rtc})
    return str(refused.value)


@contextlib.contextmanager
def _wrapped_two_ways(tiny_checkpoint, wrapped):
    """(served, sender, observation, action): a tiny libero Gr00tPolicy served wrapped ("local policy": the client
    talks to the wrapper) or bare ("client of a nested server": the wrapper wraps the client); `action` is one answer
    of `sender` (seed 0)."""
    pytest.importorskip("torch")
    from gr00t_client import PolicyClient
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from serving import running_server

    observation = _flat_example(tiny_checkpoint, "libero_sim")
    policy = Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu")
    served = Gr00tSimPolicyWrapper(policy) if wrapped == "local policy" else policy
    with running_server(served) as server, PolicyClient(port=server.port, strict=False, timeout_ms=60000) as client:
        sender = client if wrapped == "local policy" else Gr00tSimPolicyWrapper(client)
        action, _ = sender.get_action(observation, {"seed": 0})
        yield served, sender, observation, action


@pytest.mark.parametrize("wrapped", ["local policy", "client of a nested server"])
def test_a_refused_rtc_previous_chunk_names_quoted_keys_and_dtypes_as_sent(tiny_checkpoint, wrapped):
    """The refusal's quoted words were renamed in pairs: an extra key holding an apostrophe (shown in double quotes)
    became "bo'gus" and 'action.zz' came back as 'zz'; a structured dtype's field 'x' came back as 'action.x'."""
    with _wrapped_two_ways(tiny_checkpoint, wrapped) as (served, sender, observation, action):
        extra = _previous_action_refusal(sender, observation, {**action, "action.bo'gus": action["action.x"],
                                                               "action.zz": action["action.x"]})
        if wrapped == "local policy":  # the wire carries no structured dtype: handed to the wrapper itself
            with pytest.raises(ValueError) as refused:
                served.get_action(observation, {"seed": 0, "rtc": {
                    "previous_action": {**action, "action.x": np.zeros((2, 16, 1), [("x", "<f4")])},
                    "overlap_steps": 8, "frozen_steps": 4}})
            assert str(refused.value) == ("options['rtc']['previous_action']['action.x'] must be a float array of "
                                          "shape (B=2, T, 1) with 1 <= T <= 16; got dtype [('x', '<f4')] shape "
                                          "(2, 16, 1)")
    assert extra.endswith("""missing [], extra ["action.bo'gus", 'action.zz']"""), extra


@pytest.mark.parametrize("wrapped", ["local policy", "client of a nested server"])
def test_a_refused_rtc_previous_chunk_sent_with_short_keys_names_them_as_sent(tiny_checkpoint, wrapped):
    """previous_action keyed 'yaw', ... (taken, as the wrapped policy's own keys) was refused naming 'action.yaw' and
    'action.bogus', which the client never sent; missing keys are named as the wrapper returns them."""
    with _wrapped_two_ways(tiny_checkpoint, wrapped) as (served, sender, observation, action):
        short = {key[len("action."):]: value for key, value in action.items()}
        refusals = [_previous_action_refusal(sender, observation, previous) for previous in (
            {**short, "yaw": short["yaw"][:1]},
            {**{key: value for key, value in short.items() if key != "yaw"}, "bogus": short["x"]},
        )]
    assert "options['rtc']['previous_action']['yaw'] must be a float array of shape (B=2, T, 1)" in refusals[0]
    assert refusals[1].endswith("missing ['action.yaw'], extra ['bogus']"), refusals[1]


class RefusingPolicy(RecordingPolicy):
    """Refuses every call with the given text, as a server's policy refusing options['rtc'] words it."""

    def __init__(self, refusal):
        super().__init__({**CONFIGS, "action": ModalityConfig(delta_indices=[0, 1], modality_keys=["min"])})
        self.refusal = refusal

    def _get_action(self, observation, options=None):
        raise ValueError(self.refusal)


def test_a_wrapped_client_renames_only_the_keys_of_its_servers_previous_action_refusal():
    """Every quoted word of a server's previous_action refusal was renamed: the statistic 'min' of action key 'min'
    became 'action.min'. A refusal whose keys do not read back surely ('bo'gus') is passed on as the server sent it."""
    from gr00t_client import PolicyClient, PolicyServerError
    from serving import running_server

    rtc = {"previous_action": {"action.min": np.ones((2, 2, 3), np.float32)}, "overlap_steps": 1, "frozen_steps": 0}
    refusals = []
    for refusal in ["options['rtc']['previous_action']['min'] step 1 is below the statistic 'min'",
                    "options['rtc']['previous_action']['bo'gus'] must be a float array; got 'min'",
                    # a list item no key can be (unhashable): renaming it raised TypeError in place of the refusal
                    "options['rtc']['previous_action'] must have exactly the action keys ['min']; missing [], "
                    "extra [{'min': 1}]"]:
        with running_server(RefusingPolicy(refusal)) as server:
            with PolicyClient(port=server.port, strict=False, timeout_ms=60000) as client:
                with pytest.raises(PolicyServerError) as refused:
                    Gr00tSimPolicyWrapper(client).get_action(flat(), {"rtc": rtc})
        refusals.append(str(refused.value))
    assert refusals == [
        "Server error: ValueError: options['rtc']['previous_action']['action.min'] step 1 is below the statistic 'min'",
        "Server error: ValueError: options['rtc']['previous_action']['bo'gus'] must be a float array; got 'min'",
        "Server error: ValueError: options['rtc']['previous_action'] must have exactly the action keys ['min']; "
        "missing [], extra [{'min': 1}]"]


def test_a_refused_rtc_previous_chunk_pickles_and_copies_with_its_keys(tiny_checkpoint):
    """A PreviousActionError pickled (as Ray sends a task's error) or copied came back as "... must be a map with keys
    None<its text>", its key, keys, missing and extra lost: the default rebuild passed its text as the detail."""
    pytest.importorskip("torch")
    import copy
    import pickle

    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.policies.previous_action import PreviousActionError

    observation = _flat_example(tiny_checkpoint, "libero_sim")
    wrapper = Gr00tSimPolicyWrapper(Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu"))
    action, _ = wrapper.get_action(observation, {"seed": 0})
    refusals = []
    for previous in ({**action, "action.bogus": action["action.x"]},
                     {**action, "action.yaw": action["action.yaw"][:1]}):
        with pytest.raises(PreviousActionError) as refused:
            wrapper.get_action(observation, {"seed": 0, "rtc": {"previous_action": previous, "overlap_steps": 8,
                                                                 "frozen_steps": 4}})
        refusals.append(refused.value)
    for refusal in refusals:
        for copied in (pickle.loads(pickle.dumps(refusal)), copy.copy(refusal), copy.deepcopy(refusal)):
            assert type(copied) is PreviousActionError
            assert str(copied) == str(refusal)
            assert (copied.detail, copied.key, copied.keys, copied.missing, copied.extra) == (
                refusal.detail, refusal.key, refusal.keys, refusal.missing, refusal.extra)
    assert refusals[0].extra == ["action.bogus"] and refusals[1].key == "action.yaw"


@pytest.mark.parametrize("wrapped", ["local policy", "client of a wrapper's server"])
def test_a_ragged_rtc_previous_chunk_key_is_refused_naming_the_key_and_the_shape(tiny_checkpoint, wrapped):
    """A ragged nested list as one previous_action key was refused with numpy's bare "setting an array element with a
    sequence", naming neither options['rtc']['previous_action'], nor the key, nor the shape expected."""
    pytest.importorskip("torch")
    from gr00t_client import PolicyClient, PolicyServerError
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from serving import running_server

    observation = _flat_example(tiny_checkpoint, "libero_sim")
    wrapper = Gr00tSimPolicyWrapper(Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu"))
    action, _ = wrapper.get_action(observation, {"seed": 0})
    ragged = [[[0.0]] * 16, [[0.0]] * 15]  # row 0 has 16 steps, row 1 has 15
    options = {"seed": 0, "rtc": {"previous_action": {**action, "action.x": ragged}, "overlap_steps": 8,
                                  "frozen_steps": 4}}
    if wrapped == "local policy":
        with pytest.raises(ValueError) as refused:
            wrapper.get_action(observation, options)
        text = str(refused.value)
    else:
        with running_server(wrapper) as server, PolicyClient(port=server.port, strict=False,
                                                             timeout_ms=60000) as client:
            with pytest.raises(PolicyServerError) as refused:
                client.get_action(observation, options)
        text = refused.value.server_message
    assert text.endswith("options['rtc']['previous_action']['action.x'] must be a float array of shape (B=2, T, 1) "
                         "with 1 <= T <= 16; got a ragged or non-numeric value"), text


def test_a_wrapped_client_renames_the_keys_before_the_cut_of_a_previous_action_refusal_its_server_cut():
    """A refusal longer than the server's 1,000-character error bound arrived cut ("... (N more characters)"), could
    not be read back whole, and was passed on naming the expected key 'min' (the wrapper returns 'action.min') and the
    extra keys without the 'action.' prefix the caller sent."""
    from gr00t_client import PolicyClient, PolicyServerError
    from serving import running_server

    extra = [f"extra_key_number_{n:02d}" for n in range(60)]
    previous = {f"action.{key}": np.ones((2, 2, 3), np.float32) for key in ["min", *extra]}
    rtc = {"previous_action": previous, "overlap_steps": 1, "frozen_steps": 0}
    texts = []
    for refusal in [f"options['rtc']['previous_action'] must have exactly the action keys ['min']; missing [], "
                    f"extra {extra}",
                    "options['rtc']['previous_action']['min'] step 1 normalizes to " + "9" * 2000]:
        with running_server(RefusingPolicy(refusal)) as server:
            with PolicyClient(port=server.port, strict=False, timeout_ms=60000) as client:
                with pytest.raises(PolicyServerError) as refused:
                    Gr00tSimPolicyWrapper(client).get_action(flat(), {"rtc": rtc})
        texts.append(refused.value.server_message)
    listed, one_key = texts
    assert listed.startswith("ValueError: options['rtc']['previous_action'] must have exactly the action keys "
                             "['action.min']; missing [], extra ['action.extra_key_number_00', "), listed
    whole = re.findall(r"'([^']*)', ", listed)  # the extra keys named whole before the cut
    assert whole == [f"action.{key}" for key in extra[:len(whole)]] and len(whole) > 20, listed
    assert re.search(r"\.\.\. \(\d+ more characters\)\Z", listed), listed
    assert one_key.startswith("ValueError: options['rtc']['previous_action']['action.min'] step 1 normalizes to 999")
    assert one_key.endswith("more characters)"), one_key


def test_serving_a_client_of_a_replay_server_is_refused_naming_the_chain(tmp_path):
    """PolicyServer(Gr00tSimPolicyWrapper(PolicyClient(replay server))) sent every robot's requests under the one
    session of its PolicyClient: robot B's reset to episode 2 moved robot A, reset to episode 1, onto episode 2."""
    from gr00t_client import PolicyClient
    from gr00t_server import PolicyServer
    from serving import running_server

    root = make_dataset(tmp_path / "ds", lengths=(6, 9), cameras=("image",))
    with running_server(ReplayPolicy(root, execution_horizon=2)) as inner:
        with PolicyClient(port=inner.port, timeout_ms=10000) as client:
            gateway = Gr00tSimPolicyWrapper(client, strict=False)
            for served in (gateway, client):
                with pytest.raises(ValueError) as refused:
                    PolicyServer(served, port=0)
                chain = "Gr00tSimPolicyWrapper -> PolicyClient" if served is gateway else "PolicyClient"
                assert f"the served policy ({chain}) ends in a PolicyClient of the replay server at " \
                       f"tcp://localhost:{inner.port}" in str(refused.value)
                assert "every client of this server would share its one session" in str(refused.value)


def test_a_client_of_a_replay_server_swapped_in_while_serving_is_refused_too(tmp_path):
    """The check ran only at construction: `server.policy = gateway` on a running server let robot A get robot B's
    episode. The assignment is refused, and the policy served stays the one before."""
    from gr00t_client import PolicyClient
    from serving import running_server

    root = make_dataset(tmp_path / "ds", lengths=(6, 9), cameras=("image",))
    with running_server(ReplayPolicy(root, execution_horizon=2)) as inner, \
            PolicyClient(port=inner.port, timeout_ms=10000) as client:
        served = RecordingPolicy()
        with running_server(served) as outer:
            with pytest.raises(ValueError, match=r"ends in a PolicyClient of the replay server"):
                outer.policy = Gr00tSimPolicyWrapper(client, strict=False)
            assert outer.policy is served


def test_serving_a_client_of_a_stateless_server_is_allowed(tmp_path):
    """A gateway to a policy without sessions (a model's server) loses nothing by its one session: served as before."""
    from gr00t_client import PolicyClient
    from serving import running_server

    with running_server(RecordingPolicy()) as inner, PolicyClient(port=inner.port, timeout_ms=10000) as client:
        with running_server(Gr00tSimPolicyWrapper(client)) as gateway:
            with PolicyClient(port=gateway.port, timeout_ms=10000) as robot:
                action, _ = robot.get_action(flat())
    assert action["action.arm"].shape == (2, 2, 3)


def test_a_lenient_replay_behind_the_wrapper_refuses_a_partial_observations_real_problem_in_flat_words(tmp_path):
    """`serve --dataset-path --use-sim-policy-wrapper --no-strict` answers a partial observation, yet one with empty
    frames was refused as 'flat keys [...] are missing', and rows that disagree named the nested keys 'arm', 'image'."""
    root = make_dataset(tmp_path / "ds", lengths=(6,), cameras=("image",))
    wrapper = Gr00tSimPolicyWrapper(ReplayPolicy(root, execution_horizon=2, strict=False), strict=False)
    action, _ = wrapper.get_action({"video.image": np.zeros((2, 1, 32, 32, 3), np.uint8)}, {"_session_id": "s"})
    assert action["action.arm"].shape[0] == 2  # partial observations are served
    with pytest.raises(ObservationError) as empty_frames:
        wrapper.get_action({"video.image": np.zeros((2, 1, 0, 32, 3), np.uint8)}, {"_session_id": "s"})
    assert "missing" not in str(empty_frames.value) and "Video key 'video.image'" in str(empty_frames.value)
    disagreeing = {**replay_flat(rows=2), "state.arm": np.zeros((3, 1, 3), np.float32)}
    with pytest.raises(ObservationError) as rows:
        wrapper.get_action(disagreeing, {"_session_id": "s"})
    assert "'state.arm' has 3 rows" in str(rows.value) and "(the rows of 'video.image')" in str(rows.value)


def test_a_strict_replay_behind_the_wrapper_still_names_the_missing_flat_keys(tmp_path):
    root = make_dataset(tmp_path / "ds", lengths=(6,), cameras=("image",))
    wrapper = Gr00tSimPolicyWrapper(ReplayPolicy(root, execution_horizon=2), strict=False)
    with pytest.raises(ObservationError, match=re.escape("flat keys ['state.arm', 'state.gripper', "
                                                         f"'{LANGUAGE_KEY}'] are missing")):
        wrapper.get_action({"video.image": np.zeros((2, 1, 32, 32, 3), np.uint8)}, {"_session_id": "s"})


class HistoryPolicy(RecordingPolicy):
    """A custom policy that keeps per-session state (a history), with an identity of its own: no replay."""

    stateful_sessions = True

    def identity(self):
        return {"kind": "history", "version": 1}


@pytest.mark.parametrize("make_policy, keeps", [(HistoryPolicy, True), (RecordingPolicy, False)],
                         ids=["stateful", "stateless"])
def test_get_server_info_reports_whether_the_policy_keeps_sessions(make_policy, keeps):
    from gr00t_client import PolicyClient
    from serving import running_server

    with running_server(make_policy()) as server, PolicyClient(port=server.port, timeout_ms=10000) as client:
        assert client.get_server_info()["keeps_sessions"] is keeps


def test_serving_a_client_of_any_server_that_keeps_sessions_is_refused_naming_its_policy_and_the_fix():
    """Only a replay kind was refused: a gateway to a custom policy with a history per session started, and robot B's
    calls moved robot A's history (A was served counts 1, 3, 5 and B 2, 4, 6)."""
    from gr00t_client import PolicyClient
    from gr00t_server import PolicyServer
    from serving import running_server

    with running_server(HistoryPolicy()) as inner, PolicyClient(port=inner.port, timeout_ms=10000) as client:
        gateway = Gr00tSimPolicyWrapper(client, strict=False)
        for served in (gateway, client):
            with pytest.raises(ValueError) as refused:
                PolicyServer(served, port=0)
            message = str(refused.value)
            assert f"ends in a PolicyClient of the server at tcp://localhost:{inner.port}, whose policy " \
                   "(HistoryPolicy, kind 'history') keeps state per client session" in message, message
            assert "every client of this server would share its one session" in message, message
            assert "Connect each robot to that server itself" in message and "in the robot's own process, not served" in message, message


def test_a_client_of_an_older_server_without_keeps_sessions_is_refused_for_a_replay_kind_only(tmp_path):
    """A server older than the keeps_sessions field is judged by its policy kind, as before."""
    from gr00t_client import PolicyClient
    from gr00t_server import PolicyServer
    from serving import running_server

    root = make_dataset(tmp_path / "ds", lengths=(6,), cameras=("image",))
    for inner_policy, refused in ((ReplayPolicy(root, execution_horizon=2), True), (HistoryPolicy(), False)):
        with running_server(inner_policy) as inner:
            with PolicyClient(port=inner.port, timeout_ms=10000) as asker:
                older_info = {k: v for k, v in asker.get_server_info().items() if k != "keeps_sessions"}
            inner.register_endpoint("get_server_info", lambda info=older_info: info, requires_input=False)
            with PolicyClient(port=inner.port, timeout_ms=10000) as client:
                if refused:
                    with pytest.raises(ValueError, match=r"ends in a PolicyClient of the replay server at "):
                        PolicyServer(client, port=0)
                else:
                    PolicyServer(client, port=0).close()


@pytest.mark.parametrize("value", ["false", "no", None, 0])
def test_a_sim_wrapper_strict_that_is_not_a_bool_is_refused_naming_it(value):
    """strict="false" validated every observation (bool("false") is True); strict=None or 0 turned the checks off."""
    with pytest.raises(ValueError) as refused:
        Gr00tSimPolicyWrapper(RecordingPolicy(strict=False), strict=value)
    assert str(refused.value) == f"strict must be True or False, got {value!r} ({type(value).__name__})"


def test_an_rtc_previous_chunk_key_sent_twice_is_named_escaped_and_cut():
    """The refusal put the client's key raw (4 times, any length) into its message, and so into the logged traceback:
    a newline in it forged log lines."""
    key = "arm\nINFO:gr00t_server:FORGED \x1b[31m" + "y" * 5000
    previous = {"action." + key: np.ones((2, 2, 3), np.float32), key: np.zeros((2, 2, 3), np.float32)}
    with pytest.raises(ValueError) as refused:
        Gr00tSimPolicyWrapper(RecordingPolicy()).get_action(flat(), {"rtc": {"previous_action": previous}})
    message = str(refused.value)
    assert "action key 'arm\\nINFO:gr00t_server:FORGED \\x1b[31m" in message and "more characters)" in message
    assert message.isprintable() and len(message) < 2000
