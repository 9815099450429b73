"""Map keys in a reply: reference clients decode with msgpack's strict_map_key (str and bytes keys only), so a
result keyed by numbers is refused for them with its key path; our own client, which decodes such keys, gets it."""

import enum

import numpy as np
import pytest

from gr00t_client import BasePolicy, PolicyClient
from reference_peer import ReferenceClient, running_server


class PerCameraInfoPolicy(BasePolicy):
    """Answers a zero action; its info (and its reset's result) holds `info`."""

    def __init__(self, info):
        super().__init__(strict=False)
        self.info = info

    def _get_action(self, observation, options=None):
        return {"arm": np.zeros((1, 4, 7), np.float32)}, self.info

    def reset(self, options=None):
        return self.info


OBSERVATION = {"state": {"arm": np.zeros((1, 1, 7), np.float32)}}


@pytest.mark.parametrize("generation", ["current", "npsave"])
@pytest.mark.parametrize("key", [0, 1.5, True, None], ids=["int", "float", "bool", "nil"])
def test_a_number_map_key_in_a_reply_to_a_reference_client_is_an_error_naming_its_path(generation, key):
    """The server sent {0: 1.5} to every client: a reference client's get_action raised a bare msgpack ValueError
    ('int is not allowed for map key when strict_map_key=True') and the server counted a success."""
    policy = PerCameraInfoPolicy({"latency_ms_per_camera": {key: 1.5}})
    with running_server(policy) as server, ReferenceClient(server.port, generation=generation) as client:
        with pytest.raises(RuntimeError) as refused:
            client.get_action(OBSERVATION)
        assert client.call_endpoint("ping", requires_input=False)["status"] == "ok"  # serving goes on
        stats = server.stats.snapshot()
    message = str(refused.value)
    assert (f"could not encode the result of 'get_action': info.latency_ms_per_camera has the {type(key).__name__} "
            f"key {key!r}") in message, message
    assert "strict_map_key" in message and "expected str or bytes keys" in message, message
    assert stats["errors"] == 1, stats


def test_a_number_map_key_in_a_reset_result_to_a_reference_client_is_named_too():
    with running_server(PerCameraInfoPolicy({"cameras": [{"by_index": {3: "wrist"}}]})) as server, \
            ReferenceClient(server.port) as client:
        with pytest.raises(RuntimeError) as refused:
            client.call_endpoint("reset", {"options": None})
    assert "the reset result.cameras[0].by_index has the int key 3" in str(refused.value), str(refused.value)


def test_str_and_bytes_map_keys_reach_a_reference_client():
    info = {"by_name": {"wrist": 1.5, b"front": 2.5}}
    with running_server(PerCameraInfoPolicy(info)) as server, ReferenceClient(server.port) as client:
        _, got = client.get_action(OBSERVATION)
    assert got == info


@pytest.mark.parametrize("wire", ["multipart", "reference", "npsave"])
def test_our_client_still_gets_number_map_keys_on_every_wire(wire):
    """Our client decodes number keys (strict_map_key=False), multipart or single-frame: nothing is refused for it."""
    info = {"latency_ms_per_camera": {0: 1.5, 1: 2.5}}
    with running_server(PerCameraInfoPolicy(info)) as server, \
            PolicyClient(port=server.port, timeout_ms=5000, wire=wire) as client:
        _, got = client.get_action(OBSERVATION)
        assert client.reset() == info
    assert got == info


class Camera(enum.Enum):
    WRIST = "wrist"


class CameraIndex(enum.Enum):
    WRIST = 0


def test_an_enum_key_with_a_str_value_reaches_a_reference_client_as_that_str():
    """The wire sends an Enum as its value (the encoder's hook): {Camera.WRIST: 1.5} arrives as {"wrist": 1.5}."""
    policy = PerCameraInfoPolicy({"latency_ms_per_camera": {Camera.WRIST: 1.5}})
    with running_server(policy) as server, ReferenceClient(server.port) as client:
        _, got = client.get_action(OBSERVATION)
        stats = server.stats.snapshot()
    assert got == {"latency_ms_per_camera": {"wrist": 1.5}}
    assert stats["errors"] == 0, stats


def test_an_enum_key_with_a_number_value_is_refused_for_a_reference_client():
    policy = PerCameraInfoPolicy({"latency_ms_per_camera": {CameraIndex.WRIST: 1.5}})
    with running_server(policy) as server, ReferenceClient(server.port) as client:
        with pytest.raises(RuntimeError) as refused:
            client.get_action(OBSERVATION)
    assert "info.latency_ms_per_camera has the CameraIndex key <CameraIndex.WRIST: 0>" in str(refused.value), \
        str(refused.value)


def test_an_n15_client_gets_its_action_whatever_keys_the_info_it_is_not_sent_holds():
    """An N1/N1.5 client gets the action alone: the info's keys are no concern of its reply."""
    with running_server(PerCameraInfoPolicy({"latency_ms_per_camera": {0: 1.5}})) as server, \
            ReferenceClient(server.port, generation="n15") as client:
        action = client.get_action({"state.arm": np.zeros((1, 1, 7), np.float32)})
    assert action["arm"].shape == (1, 4, 7)
