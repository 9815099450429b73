"""Map keys in a request: a reference server decodes with msgpack's strict_map_key (str and bytes keys only), so
PolicyClient refuses a request keyed by numbers before sending it there, naming the key's path; ours takes them."""

import numpy as np
import pytest

from gr00t_client import PolicyClient, WireEncodeError
from reference_peer import EchoPolicy, ReferenceServer, running_server

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


def test_our_server_still_gets_number_keys_from_our_client():
    """Our server decodes number keys (strict_map_key=False): nothing is refused for it."""
    seen = []

    class RecordingPolicy(EchoPolicy):
        def _get_action(self, observation, options=None):
            seen.append(options)
            return super()._get_action(observation, options)

    with running_server(RecordingPolicy()) as server, \
            PolicyClient(port=server.port, timeout_ms=5000, wire="reference") as client:
        client.get_action({}, {"gains": {0: 1.5}})
    assert seen[0]["gains"] == {0: 1.5}
