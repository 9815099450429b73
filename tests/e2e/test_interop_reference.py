"""Interop both ways with a reference-style peer (server-eval.md §2), mostly the current format.

The np.save-era and N1.5 peers have their own file, test_interop_npsave.py.
"""

import time

import numpy as np
import pytest
from reference_peer import (
    EchoPolicy,
    RefModalityConfig,
    ReferenceClient,
    ReferenceServer,
    libero_like_observation,
    ref_packb,
    ref_unpackb,
    running_server,
)

from gr00t_client import ActionConfig, ModalityConfig, PolicyClient, PolicyServerError, PolicyTimeoutError

ACTION_JSON = {
    "delta_indices": list(range(4)),
    "modality_keys": ["eef_9d", "gripper_position"],
    "sin_cos_embedding_keys": None,
    "mean_std_embedding_keys": None,
    "action_configs": [
        {"rep": "RELATIVE", "type": "EEF", "format": "XYZ_ROT6D", "state_key": "eef_9d"},
        {"rep": "ABSOLUTE", "type": "NON_EEF", "format": "DEFAULT", "state_key": None},
    ],
}
VIDEO_JSON = {"delta_indices": [-15, 0], "modality_keys": ["front"], "sin_cos_embedding_keys": None, "mean_std_embedding_keys": None, "action_configs": None}


def small_observation():
    return libero_like_observation(height=8, width=8)


def reference_handlers():
    """A reference-side policy: fixed actions, and whatever observation arrived recorded for inspection."""
    seen = {}

    def get_action(observation, options=None):
        seen["observation"] = observation
        action = {"eef_9d": np.full((1, 4, 9), 0.5, np.float32), "gripper_position": np.ones((1, 4, 1), np.float32)}
        return action, {"options": options}

    handlers = {
        "get_action": get_action,
        "reset": lambda options=None: {"current_step": 0, "options": options},
        "get_modality_config": lambda: {"video": RefModalityConfig(VIDEO_JSON), "action": RefModalityConfig(ACTION_JSON)},
    }
    return handlers, seen


@pytest.fixture(params=["current", "early"])
def ref_server(request):
    handlers, seen = reference_handlers()
    with ReferenceServer(handlers, early=request.param == "early") as server:
        server.seen = seen
        yield server


@pytest.fixture
def current_ref_server():
    handlers, seen = reference_handlers()
    with ReferenceServer(handlers) as server:
        server.seen = seen
        yield server


# --- our client -> reference-style server ---------------------------------------------------------------


def test_our_client_pings_and_reads_modality_configs_from_both_formats(ref_server):
    with PolicyClient(host="127.0.0.1", port=ref_server.port, timeout_ms=5000) as client:
        assert client.ping() is True
        configs = client.get_modality_config()
    assert configs["action"] == ModalityConfig.from_json_dict(ACTION_JSON)
    assert configs["action"].action_configs[0] == ActionConfig("RELATIVE", "EEF", "XYZ_ROT6D", "eef_9d")
    assert configs["video"].delta_indices == [-15, 0]


def test_our_client_decodes_action_replies_from_both_formats(ref_server):
    with PolicyClient(host="127.0.0.1", port=ref_server.port, timeout_ms=5000) as client:
        action, info = client.get_action(small_observation(), {"episode": 3})
        assert client.reset({"episode_index": 1}) == {"current_step": 0, "options": {"episode_index": 1}}
    assert action["eef_9d"].dtype == np.float32 and action["eef_9d"].shape == (1, 4, 9)
    assert action["eef_9d"].flags.writeable
    assert info == {"options": {"episode": 3}}


def test_current_reference_server_receives_real_arrays_from_our_client(current_ref_server):
    observation = small_observation()
    with PolicyClient(host="127.0.0.1", port=current_ref_server.port, timeout_ms=5000) as client:
        client.get_action(observation)
    received = current_ref_server.seen["observation"]
    assert np.array_equal(received["video"]["image"], observation["video"]["image"])
    assert received["language"] == observation["language"]


def test_our_client_asks_for_server_info_and_probes_the_wire_once_then_uses_the_reference_wire(current_ref_server):
    with PolicyClient(host="127.0.0.1", port=current_ref_server.port, timeout_ms=5000) as client:
        for _ in range(3):
            client.get_action(small_observation())
        client.get_modality_config()  # the probe's answer was kept
        assert client.speaks_npsave is False
    endpoints = [request.get("endpoint") for request in current_ref_server.requests]
    assert endpoints == ["get_server_info", "get_modality_config", "get_action", "get_action", "get_action"]


def test_reference_error_replies_raise_policy_server_error(current_ref_server):
    with PolicyClient(host="127.0.0.1", port=current_ref_server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match="Unknown endpoint: nope"):
            client.call_endpoint("nope")


def test_a_reference_result_with_an_error_key_is_indistinguishable_from_an_error():
    """The reference format cannot tell them apart, so from a reference server such a result raises."""
    handlers = {"get_action": lambda observation, options=None: ({}, {}), "reset": lambda options=None: {"error": "field"}}
    with ReferenceServer(handlers) as server, PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match="field"):
            client.reset()


def test_our_client_sends_the_token_to_a_reference_server():
    handlers, _ = reference_handlers()
    with ReferenceServer(handlers, api_token="tok") as server:
        with PolicyClient(host="127.0.0.1", port=server.port, api_token="tok", timeout_ms=5000) as client:
            assert client.get_action(small_observation())[0]["gripper_position"].shape == (1, 4, 1)
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000) as client:
            with pytest.raises(PolicyServerError, match="Unauthorized"):
                client.get_action(small_observation())


def test_dead_reference_server_times_out_and_its_restart_on_the_same_port_is_used():
    handlers, _ = reference_handlers()
    with ReferenceServer(handlers) as server:
        port = server.port
        with PolicyClient(host="127.0.0.1", port=port, timeout_ms=400) as client:
            assert client.get_action(small_observation())[0]["eef_9d"].shape == (1, 4, 9)
            server.__exit__(None, None, None)
            started = time.monotonic()
            with pytest.raises(PolicyTimeoutError):
                client.get_action(small_observation())
            assert time.monotonic() - started < 3.0
            client.timeout_ms = 5000
            with ReferenceServer(handlers, port=port):
                assert client.get_action(small_observation())[0]["eef_9d"].shape == (1, 4, 9)


# --- reference-style client -> our server -----------------------------------------------------------


@pytest.fixture
def our_server():
    with running_server(EchoPolicy()) as server:
        yield server


def test_reference_client_gets_action_tuple_from_our_server(our_server):
    with ReferenceClient(our_server.port) as client:
        action, info = client.get_action(small_observation(), {"tag": "ref"})
        assert client.call_endpoint("ping", requires_input=False) == {"status": "ok", "message": "Server is running"}
        assert client.call_endpoint("reset", {"options": None}) == {"resets": 1}
    assert action["x"].shape == (1, 16, 1) and action["x"].dtype == np.float32
    assert not action["x"].flags.writeable  # msgpack-numpy's read-only arrays: our bytes are its format
    assert info["tag"] == "ref"


def test_reference_client_reads_modality_configs_in_the_reference_json_form(our_server):
    our_server.policy.configs["action"] = ModalityConfig.from_json_dict(ACTION_JSON)
    with ReferenceClient(our_server.port) as client:
        configs = client.call_endpoint("get_modality_config", requires_input=False)
    assert configs["action"] == RefModalityConfig(ACTION_JSON)
    assert list(configs["action"].as_json) == list(ACTION_JSON)


def test_reference_client_sees_our_errors_as_errors(our_server):
    with ReferenceClient(our_server.port) as client:
        with pytest.raises(RuntimeError, match="Server error: Unknown endpoint: nope"):
            client.call_endpoint("nope")
        with pytest.raises(RuntimeError, match="bad arguments for 'get_action'"):
            client.call_endpoint("get_action", {"obs": {}})
        assert client.call_endpoint("ping", requires_input=False)["status"] == "ok"


def test_reference_client_without_endpoint_field_gets_an_action(our_server):
    with ReferenceClient(our_server.port) as client:
        client._socket.send(ref_packb({"data": {"observation": small_observation(), "options": None}}))
        action, info = ref_unpackb(client._socket.recv())
    assert action["x"].shape == (1, 16, 1)
