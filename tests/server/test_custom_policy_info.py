"""What a served custom policy says about itself: configs in the JSON form (plain dicts, as read from a
modality.json), an identity() holding values the wire cannot carry (a Path, a datetime), and the observation form it
takes. A real PolicyServer on loopback, real PolicyClients, and gr00t-eval's policy record."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest

from eval.dataset_factory import make_dataset
from gr00t_client import BasePolicy, ModalityConfig, PolicyClient, PolicyServerError, PolicyWrapper
from gr00t_eval.policy_identity import policy_record
from gr00t_server.policies import Gr00tSimPolicyWrapper, ReplayPolicy
from serving import running_server

CONFIGS = {"state": ModalityConfig([0], ["joints"]), "action": ModalityConfig([0, 1, 2, 3], ["arm"])}
OBSERVATION = {"state": {"joints": np.zeros((1, 1, 3), np.float32)}}


class CustomPolicy(BasePolicy):
    """A strict policy with the configs and identity it is given."""

    def __init__(self, configs=CONFIGS, identity=None):
        super().__init__()
        self.configs, self._identity = configs, identity

    def identity(self):
        return self._identity

    def get_modality_config(self):
        return self.configs

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        return {"arm": np.zeros((1, 4, 3), np.float32)}, {}


JSON_FORM = {name: config.to_json_dict() for name, config in CONFIGS.items()}


def test_configs_in_the_json_form_are_served_as_modality_configs():
    with running_server(CustomPolicy(JSON_FORM)) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        configs = client.get_modality_config()
        assert sorted(configs) == ["action", "state"]
        assert all(type(config) is ModalityConfig for config in configs.values())
        assert configs["action"].horizon == 4


@pytest.mark.parametrize("strict_client", [False, True])
def test_a_strict_policy_with_configs_in_the_json_form_answers_get_action(strict_client):
    with running_server(CustomPolicy(JSON_FORM)) as server, \
            PolicyClient(port=server.port, timeout_ms=5000, strict=strict_client) as client:
        action, _ = client.get_action(OBSERVATION)
        assert action["arm"].shape == (1, 4, 3)


def test_an_identity_holding_a_path_and_a_datetime_is_sent_as_their_text(caplog):
    when = datetime.datetime(2026, 1, 2, 3, 4, 5)
    identity = {"kind": "my_policy", "checkpoint": Path("/models/my_robot/step_20000"),
                "trained": {"at": when, "steps": [20000, Path("/logs")]}}
    with running_server(CustomPolicy(identity=identity)) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        with caplog.at_level("WARNING"):
            assert client.get_server_info()["policy_identity"] == {
                "kind": "my_policy", "checkpoint": "/models/my_robot/step_20000",
                "trained": {"at": str(when), "steps": [20000, "/logs"]}}
            client.get_server_info()
    warnings = [record.getMessage() for record in caplog.records if "the wire cannot carry" in record.getMessage()]
    assert warnings == ["CustomPolicy.identity() returned values the wire cannot carry (PosixPath under 'checkpoint', "
                        "datetime under 'trained.at', PosixPath under 'trained.steps'); sent as their text"]


def test_gr00t_eval_records_the_identity_of_a_policy_whose_identity_holds_a_path():
    identity = {"kind": "my_policy", "checkpoint": Path("/models/my_robot/step_20000")}
    with running_server(CustomPolicy(identity=identity)) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        record = policy_record(client)
    assert record is not None and record["policy_class"] == "CustomPolicy"
    assert record["identity"] == {"kind": "my_policy", "checkpoint": "/models/my_robot/step_20000"}


class FlatLoggingWrapper(Gr00tSimPolicyWrapper):
    """A user's subclass of the sim wrapper, under a name without "Sim"."""


class FlatKeysAdapter(PolicyWrapper):
    """A user's wrapper that may take another form than the policy it wraps (flat keys around a nested replay)."""

    def _get_action(self, observation, options=None):
        return self.policy.get_action(observation, options)


class SimpleArmPolicy(CustomPolicy):
    """A nested-form policy whose name happens to contain "Sim"."""


@pytest.mark.parametrize("make_policy, expected", [
    (lambda root: FlatLoggingWrapper(ReplayPolicy(root, execution_horizon=2)), "flat"),
    (lambda root: ReplayPolicy(root, execution_horizon=2), "nested"),
    (lambda root: SimpleArmPolicy(), None),
    (lambda root: FlatKeysAdapter(ReplayPolicy(root, execution_horizon=2)), None),
], ids=["sim wrapper subclass", "replay", "custom policy that does not say", "a wrapper that does not say"])
def test_get_server_info_reports_the_observation_form_the_policy_takes(tmp_path, make_policy, expected):
    policy = make_policy(make_dataset(tmp_path / "ds", lengths=(4,)))
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        assert client.get_server_info()["observation_format"] == expected


class ComputingPolicy(CustomPolicy):
    """A CustomPolicy that says what computes its actions, as Gr00tPolicy does."""

    def runtime(self):
        return {"dtype": "float16", "device": "cuda:0", "inference_mode": "onnxruntime"}


def test_a_policy_reports_what_computes_its_actions_only_when_it_says():
    with running_server(CustomPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        assert client.get_server_info()["runtime"] == {}
    with running_server(FlatKeysAdapter(ComputingPolicy())) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        assert client.get_server_info()["runtime"] == {"dtype": "float16", "device": "cuda:0",
                                                       "inference_mode": "onnxruntime"}


# --- per-key dimensions -----------------------------------------------------------------------------------------------


def _refusal_of_one_state_key_too_narrow(port, observation, key):
    """The server's refusal of `observation` with state `key` one column wide."""
    narrow = {**observation, "state": {**observation["state"], key: observation["state"][key][..., :1]}}
    with PolicyClient(port=port, timeout_ms=30000) as client, pytest.raises(PolicyServerError) as refused:
        client.get_action(narrow)
    return refused.value.server_message


def test_a_served_checkpoint_reports_the_dims_its_refusals_name_and_its_actions_have(tiny_checkpoint):
    """A raw client learnt each state key's width only from refusals ('the checkpoint statistics expect 9')."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    observation = example_observation(tiny_checkpoint, "new_embodiment")
    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=30000) as client:
        dims = client.get_server_info()["dims"]
        action, _ = client.get_action(observation, {"seed": 0})
        key = max(dims["state"], key=dims["state"].get)
        refusal = _refusal_of_one_state_key_too_narrow(server.port, observation, key)
    assert dims["state"] == {name: value.shape[-1] for name, value in observation["state"].items()}
    assert f"State key '{key}' has dimension 1; the checkpoint statistics expect {dims['state'][key]}" in refusal
    assert dims["action"] == {name: value.shape[-1] for name, value in action.items()}


def test_a_replay_reports_the_dims_of_its_dataset_that_its_refusals_name(tmp_path):
    configs = {"state": ModalityConfig([0], ["joints", "gripper"]), "action": ModalityConfig([0, 1, 2, 3], ["arm", "grip"])}
    root = make_dataset(tmp_path / "ds", lengths=(4,), state_dims={"joints": 5, "gripper": 1},
                        action_dims={"arm": 6, "grip": 1})
    policy = ReplayPolicy(root, configs, execution_horizon=2)
    observation = {"state": {"joints": np.zeros((1, 1, 5), np.float32), "gripper": np.zeros((1, 1, 1), np.float32)}}
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        dims = client.get_server_info()["dims"]
        refusal = _refusal_of_one_state_key_too_narrow(server.port, observation, "joints")
    assert dims == {"state": {"joints": 5, "gripper": 1}, "action": {"arm": 6, "grip": 1}}
    assert "State key 'joints' has dimension 1; the dataset expects 5" in refusal


def test_a_policy_that_does_not_know_its_dims_reports_none():
    with running_server(CustomPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        assert "dims" not in client.get_server_info()


class OddInfoPolicy(CustomPolicy):
    """runtime() and dims() holding what the wire cannot carry: a numpy dtype, a tuple key."""

    def runtime(self):
        return {"dtype": np.dtype("float32"), "device": "cpu"}

    def dims(self):
        return {"state": {("joints", 0): 3}, "action": {"arm": np.int64(3)}}


def test_a_runtime_or_dims_the_wire_cannot_carry_is_sent_as_text_and_info_still_answers(caplog):
    """Their values failed the encode of every get_server_info reply, and clients then took the server for a reference
    server (no sessions, no identity)."""
    with running_server(OddInfoPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with caplog.at_level("WARNING"):
            info = client.get_server_info()
            client.get_server_info()
        assert client.server_is_gr00t_server is True
    assert info["runtime"] == {"dtype": "float32", "device": "cpu"}
    assert info["dims"] == {"state": {"('joints', 0)": 3}, "action": {"arm": 3}}
    warnings = sorted(record.getMessage() for record in caplog.records if "cannot carry" in record.getMessage())
    dtype_type = type(np.dtype("float32")).__name__  # Float32DType on numpy 2
    assert warnings == [f"get_server_info: OddInfoPolicy.runtime returned values the wire cannot carry ({dtype_type} "
                        "under 'dtype'); sent as their text"]


class OutOfRangeInfoPolicy(CustomPolicy):
    """work_limits() and runtime() holding values msgpack cannot carry though their types look plain."""

    def work_limits(self):
        return {"max_widgets": 2 ** 65, "max_denoising_steps": 8}

    def runtime(self):
        return {"raw": np.void(b"ab"), "device": "cpu"}


def test_an_int_beyond_64_bits_or_a_void_numpy_scalar_in_info_is_sent_as_text():
    with running_server(OutOfRangeInfoPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        info = client.get_server_info()
        assert client.server_is_gr00t_server is True
    assert info["limits"]["max_widgets"] == str(2 ** 65) and info["limits"]["max_denoising_steps"] == 8
    assert info["runtime"]["device"] == "cpu" and isinstance(info["runtime"]["raw"], str)
