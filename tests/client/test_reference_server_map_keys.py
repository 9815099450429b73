"""Map keys in a request: a reference server decodes with msgpack's strict_map_key (str and bytes keys only), so
PolicyClient refuses a request keyed by numbers before sending it there, naming the key's path; ours takes them."""

import enum

import numpy as np
import pytest

from gr00t_client import ModalityConfig, PolicyClient, WireEncodeError
from reference_peer import EchoPolicy, ReferenceServer, libero_like_configs, libero_like_observation, running_server

OBSERVATION = {"state": {"arm": np.zeros((1, 1, 7), np.float32)}}


def _zero_action(observation, options=None):
    return {"arm": np.zeros((1, 4, 7), np.float32)}, {}


def _get_actions_sent(server):
    return [request for request in server.requests if request.get("endpoint") == "get_action"]


@pytest.mark.parametrize("generation", ["current", "npsave"])
def test_a_number_key_in_options_is_refused_before_it_reaches_a_reference_server(generation):
    """The request went out and the server answered only with msgpack's bare 'int is not allowed for map key when
    strict_map_key=True', naming no key."""
    with ReferenceServer({"get_action": _zero_action}, generation=generation) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        client.get_action(OBSERVATION)  # learns the server is a reference one (and its wire)
        with pytest.raises(WireEncodeError) as refused:
            client.get_action(OBSERVATION, {"gains": {0: 1.5}})
        message = str(refused.value)
        assert message.startswith("get_action: options.gains has the int key 0"), message
        assert "strict_map_key" in message and "str or bytes keys" in message, message
        assert len(_get_actions_sent(server)) == 1  # the refused one was never sent
        client.get_action(OBSERVATION, {"gains": {"0": 1.5}})  # str keys go, and the client still works
        assert len(_get_actions_sent(server)) == 2


def test_a_number_key_deep_in_an_observation_is_named_by_its_path():
    with ReferenceServer({"get_action": _zero_action}) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(WireEncodeError) as refused:
            client.get_action({**OBSERVATION, "extra": [{"by_camera": {2: np.zeros(3)}}]})
    assert str(refused.value).startswith("get_action: observation.extra[0].by_camera has the int key 2"), \
        str(refused.value)


class OptionsRecordingPolicy(EchoPolicy):
    """Echoes, keeping the options of every call (in `seen`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def _get_action(self, observation, options=None):
        self.seen.append(options)
        return super()._get_action(observation, options)


def test_our_server_still_gets_number_keys_from_our_client():
    """Our server decodes number keys (strict_map_key=False): nothing is refused for it."""
    policy = OptionsRecordingPolicy()
    with running_server(policy) as server, \
            PolicyClient(port=server.port, timeout_ms=5000, wire="reference") as client:
        client.get_action({}, {"gains": {0: 1.5}})
    assert policy.seen[0]["gains"] == {0: 1.5}


class NewerModalityConfig(ModalityConfig):
    """A later release's config: one field more in its JSON form, which this client cannot read."""

    def to_json_dict(self):
        return {**super().to_json_dict(), "state_dims": None}


def test_a_number_key_reaches_a_gr00t_server_whose_info_this_client_cannot_read():
    """Not known to be a reference server, so not refused as one: a newer gr00t-server decodes number keys."""
    configs = {k: NewerModalityConfig(v.delta_indices, v.modality_keys) for k, v in libero_like_configs().items()}
    policy = OptionsRecordingPolicy(configs)
    with running_server(policy) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        client.get_action(libero_like_observation(height=8, width=8), {"gains": {0: 1.5}})
    assert policy.seen[-1]["gains"] == {0: 1.5}


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = 1


def test_an_enum_key_with_a_str_value_goes_to_a_reference_server_as_that_str():
    """The wire sends an Enum as its value: {Mode.FAST: 1.0} arrives as {"fast": 1.0}, which strict_map_key takes."""
    with ReferenceServer({"get_action": _zero_action}) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        client.get_action(OBSERVATION)  # learns the server is a reference one
        client.get_action(OBSERVATION, {"gains": {Mode.FAST: 1.0}})
        assert _get_actions_sent(server)[-1]["data"]["options"] == {"gains": {"fast": 1.0}}


def test_an_enum_key_with_a_number_value_is_refused_before_it_reaches_a_reference_server():
    with ReferenceServer({"get_action": _zero_action}) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        client.get_action(OBSERVATION)
        with pytest.raises(WireEncodeError) as refused:
            client.get_action(OBSERVATION, {"gains": {Mode.SLOW: 1.0}})
    assert str(refused.value).startswith("get_action: options.gains has the Mode key <Mode.SLOW: 1>"), \
        str(refused.value)
