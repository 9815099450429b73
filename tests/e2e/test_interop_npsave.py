"""Interop both ways with np.save-era peers (early N1.6 / early N1.7 `server_client.py`) and N1.5 clients.

server-eval.md §2.4: such peers write arrays as `{"__ndarray_class__": True, "as_npy": <np.save bytes>}` and
ModalityConfig under `__ModalityConfig_class__`, and cannot read msgpack-numpy maps. Our client must recognise
such a server and speak its format; our server must answer such a client in its format.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Optional

import numpy as np
import pytest
from reference_peer import (
    RefModalityConfig,
    ReferenceClient,
    ReferenceServer,
    libero_like_configs,
    libero_like_observation,
    running_server,
)

from gr00t_client import BasePolicy, ModalityConfig, PolicyClient, PolicyServerError
from gr00t_server import PolicyServer

ACTION_JSON = {
    "delta_indices": [0, 1, 2, 3],
    "modality_keys": ["x", "gripper"],
    "sin_cos_embedding_keys": None,
    "mean_std_embedding_keys": None,
    "action_configs": [
        {"rep": "RELATIVE", "type": "EEF", "format": "XYZ_ROT6D", "state_key": "x"},
        {"rep": "ABSOLUTE", "type": "NON_EEF", "format": "DEFAULT", "state_key": None},
    ],
}
VIDEO_JSON = {"delta_indices": [-15, 0], "modality_keys": ["image"], "sin_cos_embedding_keys": None, "mean_std_embedding_keys": None, "action_configs": None}


def observation(seed: int = 0) -> Dict[str, Any]:
    """A small nested observation with uint8 video, float32 state and a float64 extra, to compare exactly."""
    obs = libero_like_observation(height=8, width=8, seed=seed)
    obs["state"]["x"] = np.random.default_rng(seed).standard_normal((1, 1, 1)).astype(np.float32)
    return obs


def mirrored_action(obs: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """The action both test policies return: a pure function of the observation, so a round trip can be exact."""
    state = obs["state"]["x"]
    return {
        "x": np.repeat(state * np.float32(3.0), 4, axis=1).astype(np.float32),
        "gripper": np.arange(4, dtype=np.float64).reshape(1, 4, 1) + float(obs["video"]["image"].reshape(-1)[0]),
    }


def npsave_handlers() -> tuple:
    """A reference-side policy that keeps whatever arrived, for inspection."""
    seen: Dict[str, Any] = {}

    def get_action(observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None) -> tuple:
        seen["observation"], seen["options"] = observation, options
        return mirrored_action(observation), {"options": options}

    def echo(value: Any) -> Any:
        seen["echo"] = value
        return value

    handlers = {
        "get_action": get_action,
        "reset": lambda options=None: {"current_step": 0, "options": options},
        "get_modality_config": lambda: {"video": RefModalityConfig(VIDEO_JSON), "action": RefModalityConfig(ACTION_JSON)},
        "echo": echo,
    }
    return handlers, seen


@pytest.fixture
def npsave_server():
    handlers, seen = npsave_handlers()
    with ReferenceServer(handlers, generation="npsave") as server:
        server.seen = seen
        yield server


def client_for(server: Any, **kwargs: Any) -> PolicyClient:
    return PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000, **kwargs)


# --- our client -> np.save-era server -------------------------------------------------------------


def test_our_client_sends_real_arrays_to_an_npsave_server_from_its_first_action(npsave_server):
    sent = observation()
    with client_for(npsave_server) as client:
        client.get_action(sent)
        assert client.speaks_npsave is True
    received = npsave_server.seen["observation"]
    for modality in ("video", "state"):
        for key, array in sent[modality].items():
            assert isinstance(received[modality][key], np.ndarray), f"{modality}.{key} arrived as {type(received[modality][key])}"
            assert received[modality][key].dtype == array.dtype and np.array_equal(received[modality][key], array)
    assert received["language"] == sent["language"]


def test_get_action_round_trip_with_an_npsave_server_is_exact(npsave_server):
    sent = observation(seed=3)
    with client_for(npsave_server) as client:
        action, info = client.get_action(sent, {"episode": 7})
    expected = mirrored_action(sent)
    assert set(action) == set(expected)
    for key, array in expected.items():
        assert action[key].dtype == array.dtype and action[key].shape == array.shape
        assert np.array_equal(action[key], array)
        assert action[key].flags.writeable
    assert info == {"options": {"episode": 7}}


def test_our_client_decodes_npsave_modality_configs_as_instances(npsave_server):
    with client_for(npsave_server) as client:
        configs = client.get_modality_config()
    assert configs == {"video": ModalityConfig.from_json_dict(VIDEO_JSON), "action": ModalityConfig.from_json_dict(ACTION_JSON)}
    assert all(isinstance(config, ModalityConfig) for config in configs.values())


def test_an_npsave_server_decodes_modality_configs_and_arrays_our_client_sends(npsave_server):
    config = ModalityConfig.from_json_dict(ACTION_JSON)
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    with client_for(npsave_server) as client:
        client.get_modality_config()  # learns the wire generation
        echoed = client.call_endpoint("echo", {"value": {"config": config, "array": array}})
    received = npsave_server.seen["echo"]
    assert received["config"] == RefModalityConfig(ACTION_JSON)
    assert isinstance(received["array"], np.ndarray) and np.array_equal(received["array"], array)
    assert echoed["config"] == config and np.array_equal(echoed["array"], array)


def test_reset_and_ping_with_an_npsave_server(npsave_server):
    with client_for(npsave_server) as client:
        assert client.ping() is True
        assert client.reset({"episode_index": 2}) == {"current_step": 0, "options": {"episode_index": 2}}
        assert client.get_action(observation())[0]["x"].shape == (1, 4, 1)


def test_kill_stops_an_npsave_server(npsave_server):
    with client_for(npsave_server) as client:
        client.get_action(observation())
        client.kill_server()
        npsave_server._thread.join(5)
        assert not npsave_server._thread.is_alive()
        client.timeout_ms = 300
        assert client.ping() is False


def test_wire_npsave_speaks_np_save_to_a_server_without_modality_configs():
    """With nothing to probe (get_modality_config -> {}), wire="npsave" says it up front."""
    handlers, seen = npsave_handlers()
    del handlers["get_modality_config"]
    with ReferenceServer(handlers, generation="npsave") as server, client_for(server, wire="npsave") as client:
        action, _ = client.get_action(observation())
    assert isinstance(seen["observation"]["state"]["x"], np.ndarray)
    assert np.array_equal(action["x"], mirrored_action(observation())["x"])


def test_a_current_reference_server_is_not_taken_for_an_npsave_one():
    handlers, seen = npsave_handlers()
    with ReferenceServer(handlers, generation="current") as server, client_for(server) as client:
        client.get_action(observation())
        assert client.speaks_npsave is False
    assert isinstance(seen["observation"]["state"]["x"], np.ndarray)


# --- np.save-era and N1.5 clients -> our server ---------------------------------------------------------


class MirrorPolicy(BasePolicy):
    """Our-side policy: the action is mirrored_action(observation); info echoes the options."""

    def __init__(self) -> None:
        super().__init__(strict=False)
        self.configs = libero_like_configs(action_horizon=4)
        self.configs["action"] = ModalityConfig.from_json_dict(ACTION_JSON)
        self.resets = 0
        self.observations: list = []

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None) -> tuple:
        self.observations.append(observation)
        return mirrored_action(observation), {"options": options}

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        self.resets += 1
        return {"resets": self.resets}

    def get_modality_config(self) -> Dict[str, ModalityConfig]:
        return self.configs


@pytest.fixture
def our_server():
    with running_server(MirrorPolicy()) as server:
        yield server


def test_npsave_client_gets_real_arrays_back_from_our_server(our_server):
    sent = observation(seed=5)
    with ReferenceClient(our_server.port, generation="npsave") as client:
        action, info = client.get_action(sent, {"tag": "npsave"})
    received = our_server.policy.observations[-1]
    assert np.array_equal(received["video"]["image"], sent["video"]["image"])
    expected = mirrored_action(sent)
    for key, array in expected.items():
        assert isinstance(action[key], np.ndarray), f"action[{key!r}] came back as {type(action[key]).__name__}"
        assert action[key].dtype == array.dtype and np.array_equal(action[key], array)
    assert info == {"options": {"tag": "npsave"}}


def test_npsave_client_reads_our_modality_configs(our_server):
    with ReferenceClient(our_server.port, generation="npsave") as client:
        configs = client.get_modality_config()
    assert configs["action"] == RefModalityConfig(ACTION_JSON)
    assert isinstance(configs["video"], RefModalityConfig)
    assert configs["video"].as_json["modality_keys"] == ["image", "wrist_image"]


def test_npsave_client_reset_and_ping_on_our_server(our_server):
    with ReferenceClient(our_server.port, generation="npsave") as client:
        assert client.call_endpoint("ping", requires_input=False) == {"status": "ok", "message": "Server is running"}
        assert client.call_endpoint("reset", {"options": {"episode_index": 1}}) == {"resets": 1}
        assert client.call_endpoint("reset", {"options": None}) == {"resets": 2}


def test_npsave_client_errors_come_back_as_errors(our_server):
    with ReferenceClient(our_server.port, generation="npsave") as client:
        with pytest.raises(RuntimeError, match="Unknown endpoint: nope"):
            client.call_endpoint("nope")
        assert client.call_endpoint("ping", requires_input=False)["status"] == "ok"


def test_npsave_client_kill_stops_our_server():
    server = PolicyServer(MirrorPolicy(), host="127.0.0.1", port=0)
    server.start()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with ReferenceClient(server.port, generation="npsave") as client:
            client.kill_server()
        thread.join(5)
        assert not thread.is_alive(), "kill from an np.save-era client did not stop the server"
    finally:
        server.stop()
        thread.join(5)


def test_our_client_and_server_never_fall_back_to_npsave(our_server):
    with client_for(our_server) as client:
        action, _ = client.get_action(observation())
        assert client.speaks_npsave is False
    assert action["x"].dtype == np.float32


def test_npsave_server_error_replies_raise_policy_server_error(npsave_server):
    with client_for(npsave_server) as client:
        client.get_modality_config()
        with pytest.raises(PolicyServerError, match="Unknown endpoint: nope"):
            client.call_endpoint("nope")


# --- N1/N1.5 clients (gr00t/eval/service.py) against our server ---------------------------------------


class FlatKeysPolicy(BasePolicy):
    """A policy that takes the flat N1.5 observation keys (as Gr00tSimPolicyWrapper does) and returns flat actions."""

    def __init__(self) -> None:
        super().__init__(strict=False)
        self.observations: list = []

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None) -> tuple:
        self.observations.append(observation)
        state = observation["state.x"]
        return {"action.x": (state * np.float32(2.0)).astype(np.float32)}, {"options": options}

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {}


def n15_observation() -> Dict[str, Any]:
    return {
        "video.image": np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3),
        "state.x": np.array([[0.5, -1.25]], np.float32),
        "annotation.human.task_description": ["pick up the cube"],
    }


def test_an_n15_client_gets_the_action_dict_alone_from_our_server():
    with running_server(FlatKeysPolicy()) as server, ReferenceClient(server.port, generation="n15") as client:
        sent = n15_observation()
        action = client.get_action(sent)
        received = server.policy.observations[-1]
    assert sorted(received) == sorted(sent)
    assert np.array_equal(received["video.image"], sent["video.image"])
    assert received["annotation.human.task_description"] == ["pick up the cube"]
    assert list(action) == ["action.x"]
    assert isinstance(action["action.x"], np.ndarray) and action["action.x"].dtype == np.float32
    assert np.array_equal(action["action.x"], sent["state.x"] * 2)


def test_an_n15_client_error_comes_back_as_an_error_map():
    with running_server(FlatKeysPolicy()) as server, ReferenceClient(server.port, generation="n15") as client:
        with pytest.raises(RuntimeError, match="state.x"):
            client.get_action({"video.image": np.zeros((1, 2, 2, 3), np.uint8)})
        assert client.call_endpoint("ping", requires_input=False)["status"] == "ok"


def test_an_n15_client_gets_a_replaced_get_actions_action_dict_returned_alone():
    """A handler in N1/N1.5's convention (the action dict alone) gave "could not encode the result of 'get_action': 0":
    the server sent the result's item 0 to N1/N1.5 clients whatever it was."""
    with running_server(FlatKeysPolicy()) as server, ReferenceClient(server.port, generation="n15") as client:
        server.register_endpoint("get_action", lambda observation, options=None: {
            "action.x": (observation["state.x"] * np.float32(3.0)).astype(np.float32)})
        sent = n15_observation()
        action = client.get_action(sent)
    assert list(action) == ["action.x"] and np.array_equal(action["action.x"], sent["state.x"] * 3)


def test_an_n15_client_gets_a_replaced_get_actions_bare_array_whole():
    """A handler returning a bare (3, 4, 2) array gave N1/N1.5 clients its row 0 alone, with no error."""
    returned = np.arange(24, dtype=np.float32).reshape(3, 4, 2)
    with running_server(FlatKeysPolicy()) as server, ReferenceClient(server.port, generation="n15") as client:
        server.register_endpoint("get_action", lambda observation, options=None: returned)
        action = client.call_endpoint("get_action", n15_observation())
    assert isinstance(action, np.ndarray) and np.array_equal(action, returned)


def test_an_n15_client_gets_the_action_of_a_replaced_get_actions_pair():
    with running_server(FlatKeysPolicy()) as server, ReferenceClient(server.port, generation="n15") as client:
        server.register_endpoint("get_action", lambda observation, options=None: (
            {"action.x": observation["state.x"]}, None))
        sent = n15_observation()
        action = client.get_action(sent)
    assert list(action) == ["action.x"] and np.array_equal(action["action.x"], sent["state.x"])


def test_an_npsave_request_with_an_observation_map_is_not_taken_for_n15(our_server):
    with ReferenceClient(our_server.port, generation="npsave") as client:
        action, info = client.get_action(observation(seed=2), None)
    assert isinstance(action, dict) and info == {"options": None}
