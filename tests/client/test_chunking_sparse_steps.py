"""ActionChunker and a policy whose action delta_indices are not consecutive steps ([0, 2, 4, ...]): it handed chunk row
j out at the j-th call, so the action predicted for step 2 ran at step 1 (the trajectory at double speed), without a
word, where gr00t-eval's rollout and open-loop refuse that config. It is refused now, unless allow_sparse_steps=True
says the robot loop calls get_action once per delta_indices step."""

from __future__ import annotations

import numpy as np
import pytest
from serving import RestartableServer, running_server

from gr00t_client import ActionChunker, ActionError, BasePolicy, ModalityConfig, PolicyClient
from gr00t_eval.action_steps import check_consecutive_action_deltas

SPARSE = [0, 2, 4, 6, 8, 10, 12, 14]
OBSERVATION = {"state": {"s": np.zeros((1, 1, 1), np.float32)}}


class StepsPolicy(BasePolicy):
    """Serves `deltas` as its action delta_indices; chunk row j is the step it was predicted for, deltas[j]."""

    def __init__(self, deltas) -> None:
        super().__init__(strict=False)
        self.deltas = list(deltas)

    def get_modality_config(self):
        return {"action": ModalityConfig(delta_indices=self.deltas, modality_keys=["x"])}

    def _get_action(self, observation, options=None):
        return {"x": np.array(self.deltas, np.float32)[None, :, None]}, {}

    def reset(self, options=None):
        return {}


def _refusal(chunker) -> str:
    with pytest.raises(ActionError) as refused:
        chunker.get_action(OBSERVATION)
    return str(refused.value)


def _assert_names_the_sparse_steps(message: str) -> None:
    assert "action delta_indices are [0, 2, 4, 6, 8, 10, 12, 14]" in message, message
    assert "each action would run at another step than it was predicted for" in message, message
    assert "allow_sparse_steps=True" in message, message


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_local_policy_with_sparse_action_steps_is_refused_naming_its_delta_indices(asynchronous):
    with ActionChunker(StepsPolicy(SPARSE), asynchronous=asynchronous) as chunker:
        _assert_names_the_sparse_steps(_refusal(chunker))
        _assert_names_the_sparse_steps(_refusal(chunker))  # and again at the next call: no chunk of it is handed out


class MapConfigStepsPolicy(StepsPolicy):
    """Its action config a plain map (the JSON form), delta_indices as given (a range, a numpy array)."""

    def __init__(self, deltas) -> None:
        super().__init__(deltas)
        self.deltas = deltas

    def get_modality_config(self):
        return {"action": {"delta_indices": self.deltas, "modality_keys": ["x"]}}


@pytest.mark.parametrize("deltas", [range(0, 16, 2), np.arange(0, 16, 2), np.arange(0, 16, 2, dtype=np.int32),
                                    tuple(SPARSE)], ids=["range", "int64-array", "int32-array", "tuple"])
def test_a_local_policy_with_a_map_config_is_refused_whatever_sequence_holds_its_sparse_steps(deltas):
    """A map config's numpy or range delta_indices were not read (only a list or tuple was): the chunk was handed out a
    row per call with no error, where the same policy served through a PolicyClient was refused."""
    with ActionChunker(MapConfigStepsPolicy(deltas)) as chunker:
        _assert_names_the_sparse_steps(_refusal(chunker))


def test_a_local_policy_with_a_map_config_of_consecutive_numpy_steps_is_served():
    with ActionChunker(MapConfigStepsPolicy(np.arange(4))) as chunker:
        assert [float(chunker.get_action(OBSERVATION)[0]["x"][0, 0]) for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]

@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_served_policy_with_sparse_action_steps_is_refused_through_a_policy_client(asynchronous):
    with running_server(StepsPolicy(SPARSE)) as server, \
            PolicyClient(port=server.port, timeout_ms=10000, strict=False) as client, \
            ActionChunker(client, n_action_steps=8, asynchronous=asynchronous) as chunker:
        _assert_names_the_sparse_steps(_refusal(chunker))


@pytest.mark.parametrize("asynchronous", [False, True])
def test_allow_sparse_steps_hands_the_chunk_out_one_row_per_call(asynchronous):
    with running_server(StepsPolicy(SPARSE)) as server, \
            PolicyClient(port=server.port, timeout_ms=10000, strict=False) as client, \
            ActionChunker(client, asynchronous=asynchronous, allow_sparse_steps=True) as chunker:
        rows = [float(chunker.get_action(OBSERVATION)[0]["x"][0, 0]) for _ in range(4)]
    assert rows == [0.0, 2.0, 4.0, 6.0]


def test_a_server_restarted_with_sparse_action_steps_is_refused_before_its_chunk_is_used():
    deltas = iter([list(range(8)), SPARSE])
    server = RestartableServer(lambda: StepsPolicy(next(deltas)))
    try:
        with PolicyClient(port=server.port, timeout_ms=10000, strict=False) as client, \
                ActionChunker(client, n_action_steps=2) as chunker:
            for _ in range(2):  # a consecutive 2-step chunk runs out
                chunker.get_action(OBSERVATION)
            server.restart(reconnecting=1)
            _assert_names_the_sparse_steps(_refusal(chunker))
    finally:
        server.stop()


def test_consecutive_action_steps_are_handed_out_in_order():
    with ActionChunker(StepsPolicy(range(8))) as chunker:
        rows = [float(chunker.get_action(OBSERVATION)[0]["x"][0, 0]) for _ in range(4)]
    assert rows == [0.0, 1.0, 2.0, 3.0]


def test_allow_sparse_steps_must_be_a_bool():
    with pytest.raises(ValueError, match="allow_sparse_steps"):
        ActionChunker(StepsPolicy(SPARSE), allow_sparse_steps="no")


@pytest.mark.parametrize("deltas", [[0, 2, 4], [1, 2, 3], [-1, 0, 1]])
def test_the_client_check_and_gr00t_eval_share_one_rule_and_gr00t_eval_keeps_its_words(deltas):
    from gr00t_client.modality import consecutive_action_deltas_problem

    problem = consecutive_action_deltas_problem(deltas)
    assert problem == (f"the policy's action delta_indices are {deltas}; this needs 0..{len(deltas) - 1} (one action "
                       "per step from the query on)")
    with pytest.raises(ValueError) as refused:
        check_consecutive_action_deltas(deltas, "it goes wrong")
    assert str(refused.value) == f"{problem}, or it goes wrong"
    assert consecutive_action_deltas_problem(range(len(deltas))) is None
