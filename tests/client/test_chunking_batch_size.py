"""ActionChunker's batch size: the rows of the observation's video and state keys, not of whatever key comes first.
A real PolicyServer on loopback."""

import numpy as np
import pytest

from gr00t_client import BasePolicy, PolicyClient
from gr00t_client.chunking import ActionChunker
from serving import running_server


class RowsPolicy(BasePolicy):
    """Step j of the chunk for the env whose state 't' (flat 'state.t' or nested state['t']) holds t is 100 * t + j."""

    def __init__(self):
        super().__init__(strict=False)
        self.calls = 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        t = observation["state.t"] if "state.t" in observation else observation["state"]["t"]
        t = np.asarray(t, np.float32)[:, 0]
        return {"action.x": (100.0 * t[:, None] + np.arange(4, dtype=np.float32))[:, :, None]}, {}

    def reset(self, options=None):
        return {}


def observation(flat, state_rows=2, video_rows=2):
    video = np.zeros((video_rows, 1, 4, 4, 3), np.uint8)
    state = np.arange(state_rows, dtype=np.float32)[:, None]
    return {"video.cam": video, "state.t": state} if flat else {"video": {"cam": video}, "state": {"t": state}}


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "nested"])
@pytest.mark.parametrize("extra", [{"timestamp": np.array([0.5])}, {"episode_id": [7, 8, 9]}],
                         ids=["timestamp of 1", "3 episode ids"])
@pytest.mark.parametrize("per_env", [False, True], ids=["all envs", "per env"])
def test_the_batch_size_is_read_from_the_video_and_state_keys_not_an_extra_key_ahead_of_them(flat, extra, per_env):
    """A 2-env observation starting with a 1-element timestamp was sent as 1 env, and its 2-row reply refused with
    "action key 'action.x' has batch size 2; expected 1 (the envs asked for)"."""
    with running_server(RowsPolicy()) as server, PolicyClient(port=server.port, timeout_ms=10000) as client:
        chunker = ActionChunker(client, n_action_steps=4, per_env=per_env)
        step, _ = chunker.get_action({**extra, **observation(flat)})
    assert chunker.n_envs == 2
    np.testing.assert_array_equal(step["action.x"][:, 0], [0.0, 100.0])


@pytest.mark.parametrize("flat, named", [(True, "'video.cam': 3, 'state.t': 2"), (False, "video['cam']: 3, state['t']: 2")],
                         ids=["flat", "nested"])
def test_video_and_state_keys_of_different_batch_sizes_are_refused_naming_them_before_any_call(flat, named):
    policy = RowsPolicy()
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=10000) as client:
        chunker = ActionChunker(client, n_action_steps=4)
        with pytest.raises(ValueError) as refused:
            chunker.get_action(observation(flat, state_rows=2, video_rows=3))
    assert str(refused.value) == (f"the observation's video and state keys disagree on the batch size (leading axes "
                                  f"{named}); expected one row per env in each")
    assert policy.calls == 0 and chunker.n_envs is None


def test_observation_batch_size_reads_any_mapping_as_it_reads_a_dict():
    # A dict is recognised first (no ABC check); any other Mapping still counts, by its first array's rows.
    import types

    from gr00t_client.chunking_envs import observation_batch_size

    observation = {"note": "x", "state": {"t": np.zeros((3, 1))}}
    proxied = types.MappingProxyType({"note": "x", "state": types.MappingProxyType({"t": np.zeros((3, 1))})})
    assert observation_batch_size(observation) == observation_batch_size(proxied) == 3
    assert observation_batch_size({"note": "x"}) == observation_batch_size(types.MappingProxyType({})) == -1


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "nested"])
def test_a_torch_tensor_is_refused_naming_its_key_and_the_fix_as_the_client_does(flat):
    """The chunker said the observation 'holds no array or list' (it holds a tensor): now PolicyClient's own words."""
    torch = pytest.importorskip("torch")
    tensor_observation = {"state.t": torch.zeros(2, 1)} if flat else {"state": {"t": torch.zeros(2, 1)}}
    with running_server(RowsPolicy()) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            with pytest.raises(TypeError) as by_client:
                client.get_action(tensor_observation)
            with pytest.raises(TypeError) as by_chunker:
                ActionChunker(client).get_action(tensor_observation)
    assert str(by_chunker.value) == str(by_client.value) == (  # the flat key, or the nested path, dotted alike
        "get_action: observation.state.t: cannot encode value of type Tensor for the wire; send a numpy array: "
        "value.detach().cpu().numpy()")


def test_a_chunker_over_a_local_policy_given_tensors_says_where_the_batch_size_is_read_not_a_wire_error():
    """Over an in-process policy nothing is sent: a WireEncodeError "for the wire" misled; the batch size is what the
    chunker cannot read from a tensor."""
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError) as refused:
        ActionChunker(RowsPolicy()).get_action({"state": {"t": torch.zeros(2, 1)}})
    assert str(refused.value) == ("cannot tell the batch size of the observation: it holds no numpy array or list (the "
                                  "batch size is read from those; a tensor's is not: value.detach().cpu().numpy())")
