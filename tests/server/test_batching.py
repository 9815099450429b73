"""Batching across clients: concurrent get_action requests share one policy call and each client gets its rows back.

Concurrency is made deterministic with a barrier (all clients send together) and a batch_timeout_ms far longer
than the clients need to arrive, so a full batch forms; assertions are on correctness, never on timing.
"""

import math
import threading
import time
import urllib.request
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

from gr00t_client import BasePolicy, ModalityConfig, ObservationError, PolicyClient, PolicyServerError
from gr00t_client.policy import NonFiniteActionError, PolicyWrapper
from gr00t_server import batching
from gr00t_server.policies import Gr00tSimPolicyWrapper
from serving import running_server

LONG_BATCH_WAIT_MS = 10000.0  # far longer than K clients need to arrive; a full batch ends the wait early


class RowEchoPolicy(BasePolicy):
    """Records each call's rows and options; action row i is 10 * state[i, 0, 0] (so rows identify clients)."""

    supports_batching = True

    def __init__(self, fail_on_negative: bool = False, call_s: float = 0.0) -> None:
        super().__init__(strict=False)
        self.fail_on_negative = fail_on_negative
        self.call_s = call_s  # how long a call takes, as a real model's would
        self.calls: List[Dict[str, Any]] = []
        self._lock = threading.Lock()

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        state = observation["state"]["joints"]
        language = observation.get("language", {}).get("task", [])
        with self._lock:
            self.calls.append({"rows": state.shape[0], "dim": state.shape[-1], "options": options, "language": list(language)})
        if self.fail_on_negative and (state < 0).any():
            raise ObservationError(f"state 'joints' has negative values in rows {np.nonzero(state[:, 0, 0] < 0)[0].tolist()}")
        if self.call_s:
            time.sleep(self.call_s)
        ids = state[:, 0, 0]
        offset = float(options["seed"]) * 1000.0 if options and "seed" in options else 0.0
        action = {"arm": (ids[:, None, None] * 10.0 + offset + np.zeros((1, 4, 2))).astype(np.float32)}
        info = {
            "row_ids": ids.copy(),
            "row_names": [f"row-{int(i)}" for i in ids],
            "nested": {"per_row": np.stack([ids, -ids], axis=1)},
            "model": "row-echo",
        }
        return action, info

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {}

    @property
    def row_counts(self) -> List[int]:
        return [call["rows"] for call in self.calls]


class NonBatchingPolicy(RowEchoPolicy):
    """The same policy without the supports_batching declaration."""

    supports_batching = False


class GainsPolicy(RowEchoPolicy):
    """RowEchoPolicy whose info also holds fixed two-entry gains and settings, whatever the batch size."""

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        action, info = super()._get_action(observation, options)
        info.update(
            gains=np.array([0.5, 2.0]),
            gain_names=["kp", "kd"],
            settings={"limits": np.array([-1.0, 1.0]), "mode": "fast"},
            step_ms=12.5,
            version=np.array(3),
            note=None,
        )
        return action, info


class DeclaredGainsPolicy(GainsPolicy):
    """GainsPolicy that declares which info keys hold one entry per row."""

    per_row_info_keys = frozenset({"row_ids", "row_names", "nested"})


def batched_call(policy: BasePolicy, observations: Sequence[Dict[str, Any]]) -> List[Any]:
    """What the server does with one batch: merge, one policy call, split by the policy's declaration."""
    merged, rows = batching.merge_observations(list(observations))
    action, info = policy.get_action(merged, None)
    return batching.split_result(action, info, rows, batching.declared_per_row_info_keys(policy))


def observation(client_id: float, rows: int = 1, dim: int = 3, dtype: Any = np.float32) -> Dict[str, Any]:
    """An observation whose rows carry client_id + row / 100 in state[:, 0, 0], so every row is identifiable."""
    state = np.zeros((rows, 1, dim), dtype=dtype)
    state[:, 0, 0] = [client_id + row / 100.0 for row in range(rows)]
    return {"state": {"joints": state}, "language": {"task": [[f"client {client_id} row {row}"] for row in range(rows)]}}


def call_together(port: int, observations: Sequence[Dict[str, Any]], options: Sequence[Optional[Dict[str, Any]]] = (),
                  strict: bool = True) -> List[Any]:
    """Each observation from its own thread and PolicyClient, all sent at once; returns (action, info) or the error.
    strict=False sends what the client's own checks would refuse, for the server to answer."""
    count = len(observations)
    options = list(options) or [None] * count
    barrier = threading.Barrier(count)
    results: List[Any] = [None] * count

    def one_client(index: int) -> None:
        with PolicyClient(port=port, timeout_ms=15000, strict=strict) as client:
            client.get_server_info()  # negotiate the wire before the barrier so the get_action calls coincide
            barrier.wait()
            try:
                results[index] = client.get_action(observations[index], options[index])
            except Exception as exc:  # the test inspects it
                results[index] = exc

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def server_info(port: int) -> Dict[str, Any]:
    with PolicyClient(port=port) as client:
        return client.get_server_info()


def expected_arm(client_id: float, rows: int = 1, offset: float = 0.0) -> np.ndarray:
    ids = np.array([client_id + row / 100.0 for row in range(rows)], dtype=np.float32)
    return (ids[:, None, None] * 10.0 + offset + np.zeros((1, 4, 2))).astype(np.float32)


def test_concurrent_clients_each_get_their_own_rows_from_one_batch():
    policy = RowEchoPolicy()
    with running_server(policy, max_batch_size=8, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, [observation(i) for i in range(8)])
    for client_id, (action, _info) in enumerate(results):
        np.testing.assert_allclose(action["arm"], expected_arm(client_id), rtol=1e-6)
    assert policy.row_counts == [8]


def test_clients_sending_several_rows_get_exactly_their_rows_back():
    policy = RowEchoPolicy()
    rows = [1, 2, 3, 1, 2, 1]
    with running_server(policy, max_batch_size=sum(rows), batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, [observation(i, rows=n) for i, n in enumerate(rows)])
    for client_id, (action, info) in enumerate(results):
        assert action["arm"].shape == (rows[client_id], 4, 2)
        np.testing.assert_allclose(action["arm"], expected_arm(client_id, rows[client_id]), rtol=1e-6)
        assert len(info["row_names"]) == rows[client_id]
    assert policy.row_counts == [sum(rows)]


def test_language_lists_are_joined_in_row_order():
    policy = RowEchoPolicy()
    with running_server(policy, max_batch_size=4, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        call_together(server.port, [observation(i) for i in range(4)])
    (call,) = policy.calls
    ids = [text[0].split()[1] for text in call["language"]]
    assert sorted(ids) == ["0", "1", "2", "3"]  # one entry per client, rows aligned with the states below


def test_info_is_split_per_client_and_shared_values_are_copied():
    policy = RowEchoPolicy()
    with running_server(policy, max_batch_size=6, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:  # max_batch_size counts rows
        results = call_together(server.port, [observation(i, rows=1 + i % 2) for i in range(4)])
    assert policy.row_counts == [6]
    for client_id, (_action, info) in enumerate(results):
        rows = 1 + client_id % 2
        expected_ids = [client_id + row / 100.0 for row in range(rows)]
        np.testing.assert_allclose(info["row_ids"], expected_ids, rtol=1e-6)
        assert info["row_names"] == [f"row-{client_id}"] * rows
        np.testing.assert_allclose(info["nested"]["per_row"], np.stack([expected_ids, np.negative(expected_ids)], axis=1), rtol=1e-6)
        assert info["model"] == "row-echo"


def test_declared_per_row_info_is_split_into_each_clients_rows():
    rows = [1, 2, 1]
    results = batched_call(DeclaredGainsPolicy(), [observation(i, rows=n) for i, n in enumerate(rows)])
    for client_id, (_action, info) in enumerate(results):
        expected_ids = [client_id + row / 100.0 for row in range(rows[client_id])]
        np.testing.assert_allclose(info["row_ids"], expected_ids, rtol=1e-6)
        assert info["row_names"] == [f"row-{client_id}"] * rows[client_id]
        np.testing.assert_allclose(info["nested"]["per_row"], np.stack([expected_ids, np.negative(expected_ids)], axis=1), rtol=1e-6)


def test_an_info_vector_as_long_as_the_batch_is_copied_whole_when_not_declared_per_row():
    """Two clients of one row each: the two-entry gains match the batch's 2 rows by coincidence only."""
    results = batched_call(DeclaredGainsPolicy(), [observation(0), observation(1)])
    for client_id, (action, info) in enumerate(results):
        np.testing.assert_allclose(action["arm"], expected_arm(client_id), rtol=1e-6)
        np.testing.assert_array_equal(info["gains"], [0.5, 2.0])
        assert info["gain_names"] == ["kp", "kd"]
        np.testing.assert_array_equal(info["settings"]["limits"], [-1.0, 1.0])
        np.testing.assert_allclose(info["row_ids"], [client_id], rtol=1e-6)


def test_scalars_strings_and_maps_not_declared_per_row_are_copied_to_every_request():
    results = batched_call(DeclaredGainsPolicy(), [observation(i) for i in range(3)])
    for _action, info in results:
        assert info["model"] == "row-echo" and info["step_ms"] == 12.5 and info["note"] is None
        assert info["settings"]["mode"] == "fast" and int(info["version"]) == 3


def test_a_declared_per_row_key_without_one_entry_per_row_fails_the_batch():
    class MisdeclaredPolicy(GainsPolicy):
        per_row_info_keys = frozenset({"row_ids", "gains"})

    with pytest.raises(ValueError, match=r"'info\.gains' is declared per-row but has shape \(2,\); expected 3 rows"):
        batched_call(MisdeclaredPolicy(), [observation(i) for i in range(3)])


def test_without_a_declaration_values_with_one_entry_per_row_are_split_and_others_copied():
    results = batched_call(GainsPolicy(), [observation(i, rows=2) for i in range(3)])
    for client_id, (_action, info) in enumerate(results):
        np.testing.assert_allclose(info["row_ids"], [client_id, client_id + 0.01], rtol=1e-6)
        assert info["row_names"] == [f"row-{client_id}"] * 2
        np.testing.assert_array_equal(info["gains"], [0.5, 2.0])
        assert info["model"] == "row-echo"


def test_the_sim_wrapper_forwards_the_declaration_of_the_policy_it_wraps():
    wrapped = Gr00tSimPolicyWrapper(DeclaredGainsPolicy(), strict=False)
    assert batching.declared_per_row_info_keys(wrapped) == {"row_ids", "row_names", "nested"}
    assert batching.declared_per_row_info_keys(Gr00tSimPolicyWrapper(GainsPolicy(), strict=False)) is None
    assert batching.declared_per_row_info_keys(GainsPolicy()) is None


class RowNormsWrapper(PolicyWrapper):
    """A user's wrapper that adds one float per row to the info of a policy declaring no per-row keys, and declares
    nothing itself."""

    supports_batching = True

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        action, info = self.policy.get_action(observation, options)
        return action, dict(info, row_norms=[float(np.abs(row).sum()) for row in action["arm"]])


class NothingPerRowPolicy(RowEchoPolicy):
    """Declares that its own info holds nothing per row (as Gr00tPolicy does)."""

    per_row_info_keys = frozenset()

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        action, _info = super()._get_action(observation, options)
        return action, {"model": "row-echo"}


def test_a_wrapper_without_a_declaration_gets_the_guess_not_the_wrapped_policys_declaration():
    wrapped = RowNormsWrapper(NothingPerRowPolicy(), strict=False)
    with running_server(wrapped, max_batch_size=4, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, [observation(1, rows=1), observation(2, rows=3)])
    assert wrapped.policy.row_counts == [4]
    for (action, info), rows in zip(results, (1, 3)):
        assert len(info["row_norms"]) == rows, info["row_norms"]
        assert info["row_norms"] == [float(np.abs(row).sum()) for row in action["arm"]]
        assert info["model"] == "row-echo"
    assert batching.declared_per_row_info_keys(wrapped) is None


def test_gr00t_policy_declares_that_its_info_has_no_per_row_values():
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy  # imports torch

    assert batching.declared_per_row_info_keys(Gr00tPolicy) == frozenset()


def test_a_declaration_must_be_a_collection_of_key_names():
    class OneStringPolicy(GainsPolicy):
        per_row_info_keys = "row_ids"

    with pytest.raises(TypeError, match="OneStringPolicy.per_row_info_keys must be a collection of info key names"):
        batching.declared_per_row_info_keys(OneStringPolicy())


def test_served_clients_of_a_declaring_policy_get_a_fixed_info_vector_whole():
    policy = DeclaredGainsPolicy()
    with running_server(policy, max_batch_size=2, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, [observation(0), observation(1)])
    assert policy.row_counts == [2]
    for client_id, (_action, info) in enumerate(results):
        np.testing.assert_array_equal(info["gains"], [0.5, 2.0])
        np.testing.assert_allclose(info["row_ids"], [client_id], rtol=1e-6)


@pytest.mark.parametrize("n_clients, bad", [(6, 3), (8, 5)])
def test_a_failing_observation_fails_only_its_sender_found_by_bisection(n_clients, bad):
    policy = RowEchoPolicy(fail_on_negative=True)
    observations = [observation(i) for i in range(n_clients)]
    observations[bad] = observation(-bad)
    with running_server(policy, max_batch_size=n_clients, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, observations)
        info = server_info(server.port)
    assert isinstance(results[bad], PolicyServerError) and "negative values" in results[bad].server_message
    for client_id in set(range(n_clients)) - {bad}:
        np.testing.assert_allclose(results[client_id][0]["arm"], expected_arm(client_id), rtol=1e-6)
    assert info["stats"]["errors"] == 1
    # the batch was tried first, then halved until the failing request ran alone: 8, 4+4, 2+2, 1+1 (not 8 + 1 calls)
    assert policy.row_counts[0] == n_clients
    assert len(policy.calls) <= 1 + 2 * math.ceil(math.log2(n_clients)), policy.row_counts


class MergedCallBugPolicy(RowEchoPolicy):
    """A batching bug: every call of more than one row fails inside the policy (`bug`: RuntimeError, internal; or
    ValueError, as a reshape to one row raises it)."""

    def __init__(self, bug: type = RuntimeError) -> None:
        super().__init__()
        self.bug = bug

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        if observation["state"]["joints"].shape[0] > 1:
            with self._lock:
                self.calls.append({"rows": observation["state"]["joints"].shape[0]})
            raise self.bug("merged call failed")
        return super()._get_action(observation, options)


@pytest.mark.parametrize("bug", [RuntimeError, ValueError], ids=["RuntimeError", "ValueError"])
def test_a_policy_whose_every_merged_call_fails_serves_each_request_alone_not_by_bisection(bug):
    # Bisection would hit the bug in every half (2K - 1 calls, 7 of them uncounted); only an input refusal
    # (ObservationError) is one client's, and a numpy shape error in a one-row post-processing (a ValueError) is not.
    policy = MergedCallBugPolicy(bug)
    with running_server(policy, max_batch_size=8, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, [observation(i) for i in range(8)])
        stats = server_info(server.port)["stats"]
    for client_id in range(8):
        np.testing.assert_allclose(results[client_id][0]["arm"], expected_arm(client_id), rtol=1e-6)
    assert policy.row_counts == [8] + [1] * 8, policy.row_counts
    assert stats["policy_calls"] == 9  # the failed merged call ran too


class StrictNanRowPolicy(RowEchoPolicy):
    """Strict RowEchoPolicy whose action rows for a negative state are NaN (a model blowing up on one input): its
    own check raises NonFiniteActionError for the whole merged call, with the action."""

    def __init__(self) -> None:
        super().__init__()
        self.strict = True

    def get_modality_config(self) -> Dict[str, ModalityConfig]:
        return {"state": ModalityConfig(delta_indices=[0], modality_keys=["joints"]),
                "action": ModalityConfig(delta_indices=list(range(4)), modality_keys=["arm"])}

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        action, info = super()._get_action(observation, options)
        action["arm"][observation["state"]["joints"][:, 0, 0] < 0] = np.nan
        return action, info


class RawNanRowPolicy(StrictNanRowPolicy):
    """Finds a negative state's NaN in its model's raw output, before any action is made, as Gr00tPolicy's processor
    does: NonFiniteActionError with the merged rows and no action."""

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        action, info = super()._get_action(observation, options)
        rows = np.nonzero(np.isnan(action["arm"][:, 0, 0]))[0].tolist()
        if rows:
            raise NonFiniteActionError(f"the model's output for action key 'arm' holds non-finite values (NaN or inf) "
                                       f"in rows {rows}, before unnormalization; the action was not sent.",
                                       key="arm", rows=rows)
        return action, info


def test_the_batch_mates_of_a_nan_row_are_answered_from_the_merged_call_which_is_counted():
    policy = StrictNanRowPolicy()
    observations = [observation(i) for i in range(4)]
    observations[2] = observation(-2)
    with running_server(policy, max_batch_size=4, batch_timeout_ms=LONG_BATCH_WAIT_MS, metrics_port=0) as server:
        results = call_together(server.port, observations)
        stats = server_info(server.port)["stats"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read().decode()
    assert isinstance(results[2], PolicyServerError)
    assert "non-finite values (NaN or inf) in action key 'arm' rows [0]" in results[2].server_message
    for client_id in (0, 1, 3):
        action, info = results[client_id]
        np.testing.assert_allclose(action["arm"], expected_arm(client_id), rtol=1e-6)
        assert info["row_names"] == [f"row-{client_id}"]  # its own info, as unbatched
    assert policy.row_counts == [4]  # no call re-run
    assert stats["policy_calls"] == 1 and stats["batch_sizes"] == {"4": 1}
    assert "gr00t_batch_size_count 1.0" in metrics


class ClippingNanRowPolicy(StrictNanRowPolicy):
    """Post-processes what BasePolicy.get_action returns (clips to [-1, 1]): the action its NonFiniteActionError
    carries is not what it answers."""

    def get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        action, info = super().get_action(observation, options)
        return {"arm": np.clip(action["arm"], -1.0, 1.0)}, info


def test_the_batch_mates_of_a_nan_row_of_a_post_processing_policy_get_its_post_processed_action():
    # They were answered from the error's action (50.0 where alone they get 1.0): it is the action before the
    # subclass's own get_action post-processed it, so they are run again (one merged call), as unbatched.
    policy = ClippingNanRowPolicy()
    observations = [observation(i) for i in range(4)]
    observations[2] = observation(-2)
    with running_server(policy, max_batch_size=4, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, observations)
    assert isinstance(results[2], PolicyServerError)
    for client_id in (0, 1, 3):
        np.testing.assert_allclose(results[client_id][0]["arm"], np.clip(expected_arm(client_id), -1.0, 1.0))
    assert policy.row_counts == [4, 3]


def test_a_nan_row_in_a_models_raw_output_refuses_its_sender_in_its_own_rows_and_reruns_the_rest_once():
    policy = RawNanRowPolicy()
    observations = [observation(i) for i in range(4)] + [observation(-4, rows=2)]
    observations[4]["state"]["joints"][0, 0, 0] = 4.0  # only its second row (merged row 5) blows up
    with running_server(policy, max_batch_size=6, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, observations)
        stats = server_info(server.port)["stats"]
        unbatched = RowEchoPolicy().get_action(observation(1))
    assert isinstance(results[4], PolicyServerError)
    assert "in rows [1], before unnormalization" in results[4].server_message, results[4].server_message
    for client_id in range(4):
        np.testing.assert_allclose(results[client_id][0]["arm"], expected_arm(client_id), rtol=1e-6)
    np.testing.assert_array_equal(results[1][0]["arm"], unbatched[0]["arm"])
    assert policy.row_counts == [6, 4]  # the merged call, then one merged re-run of the four clean requests
    assert stats["policy_calls"] == 2 and stats["batch_sizes"] == {"5": 1, "4": 1}


def test_an_observation_with_disagreeing_row_counts_is_served_alone():
    policy = RowEchoPolicy()
    observations = [observation(i) for i in range(4)]
    observations[2]["language"]["task"] = [["two rows of language"], ["for one row of state"]]
    with running_server(policy, max_batch_size=4, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, observations)
    for client_id, (action, _info) in enumerate(results):
        np.testing.assert_allclose(action["arm"], expected_arm(client_id), rtol=1e-6)
    assert sorted(policy.row_counts) == [1, 3]


def test_batch_shape_is_the_signature_and_rows_or_none_for_what_is_served_alone():
    """What a round's dispatch groups by, worked out once when a request arrives."""
    shape = batching.batch_shape({"observation": observation(3.0), "options": None})
    assert shape is not None and shape[1] == 1
    reordered = {key: value for key, value in reversed(list(observation(4.0).items()))}
    assert batching.batch_shape({"observation": reordered, "options": {"return_server_timing": True}}) == shape
    assert batching.batch_shape({"observation": observation(3.0, dim=5)})[0] != shape[0]
    disagreeing = observation(3.0)
    disagreeing["language"]["task"] = [["a"], ["b"]]
    assert batching.batch_shape({"observation": disagreeing})[1] == -1
    assert batching.batch_shape({"observation": observation(3.0), "options": {"seed": 1}}) is None
    assert batching.batch_shape({"observation": [observation(3.0)]}) is None
    deep: Dict[str, Any] = {"state": {"joints": np.zeros((1, 1, 2), np.float32)}}
    for _ in range(5000):  # far deeper than any decoded message: the walk stops at the limit, never recursing on
        deep = {"level": deep}
    assert batching.batch_shape({"observation": deep}) is None
    within = observation(3.0)  # maps two deep: the observation and its "state"
    for _ in range(batching.MAX_BATCH_NESTING - 2):
        within = {"level": within}
    assert batching.batch_shape({"observation": within}) is not None
    assert batching.batch_shape({"observation": {"level": within}}) is None


@pytest.mark.parametrize(
    "odd_one_out",
    [
        pytest.param(lambda i: observation(i, dim=5), id="other-state-dim"),
        pytest.param(lambda i: observation(i, dtype=np.float64), id="other-dtype"),
        pytest.param(lambda i: {**observation(i), "extra": {"other_key": np.zeros((1, 2), np.float32)}}, id="other-keys"),
    ],
)
def test_incompatible_observations_go_to_separate_batches(odd_one_out):
    policy = RowEchoPolicy()
    observations = [observation(i) if i % 2 == 0 else odd_one_out(i) for i in range(8)]
    with running_server(policy, max_batch_size=8, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, observations)
    for client_id, (action, _info) in enumerate(results):
        np.testing.assert_allclose(action["arm"], expected_arm(client_id), rtol=1e-6)
    assert sorted(policy.row_counts) == [4, 4]


def test_key_names_do_not_change_whether_observations_batch():
    policy = RowEchoPolicy()
    observations = [{**observation(i), "other": {"scalar-array": np.full((1, 2), i, np.float32)}} for i in range(4)]
    with running_server(policy, max_batch_size=4, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        call_together(server.port, observations)
    assert policy.row_counts == [4]


def test_requests_with_a_seed_are_not_batched():
    policy = RowEchoPolicy()
    observations = [observation(i) for i in range(8)]
    options = [{"seed": i} if i % 2 else None for i in range(8)]
    with running_server(policy, max_batch_size=4, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, observations, options)
    for client_id, (action, _info) in enumerate(results):
        offset = 1000.0 * client_id if client_id % 2 else 0.0
        np.testing.assert_allclose(action["arm"], expected_arm(client_id, offset=offset), rtol=1e-6)
    seeded = [call for call in policy.calls if call["options"] and "seed" in call["options"]]
    assert sorted(call["options"]["seed"] for call in seeded) == [1, 3, 5, 7]
    assert all(call["rows"] == 1 for call in seeded)
    assert [call["rows"] for call in policy.calls if call not in seeded] == [4]


def test_a_request_with_other_arguments_is_never_merged_and_is_refused_as_when_alone():
    """A mistyped argument ('option' for 'options') is refused when served alone; merged into a batch it was served
    and the argument dropped, so the reply depended on timing."""
    assert batching.batch_shape({"observation": observation(1), "option": {"seed": 7}}) is None
    policy = RowEchoPolicy()
    barrier = threading.Barrier(2)
    results = {}
    with running_server(policy, max_batch_size=4, batch_timeout_ms=2000.0) as server:
        def send(name, data):
            with PolicyClient(port=server.port, timeout_ms=15000) as client:
                client.get_server_info()
                barrier.wait()
                try:
                    results[name] = client.call_endpoint("get_action", data)
                except PolicyServerError as exc:
                    results[name] = exc

        threads = [threading.Thread(target=send, args=("good", {"observation": observation(1)})),
                   threading.Thread(target=send, args=("typo", {"observation": observation(2), "option": {"seed": 7}}))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert isinstance(results["typo"], PolicyServerError) and "bad arguments for 'get_action'" in str(results["typo"])
    np.testing.assert_allclose(results["good"][0]["arm"], expected_arm(1), rtol=1e-6)
    assert policy.row_counts == [1]


def test_a_gathered_request_goes_before_its_clients_deadline_however_long_the_window():
    """A first client (nobody known to wait for) was held the whole batch_timeout_ms, past its own timeout_ms,
    while the server idled."""
    policy = RowEchoPolicy()
    with running_server(policy, max_batch_size=8, batch_timeout_ms=4000.0) as server:
        with PolicyClient(port=server.port, timeout_ms=1500) as client:
            client.get_server_info()
            started = time.monotonic()
            action, _ = client.get_action(observation(3.0))
            waited = time.monotonic() - started
    np.testing.assert_allclose(action["arm"], expected_arm(3.0), rtol=1e-6)
    assert waited < 1.5


def test_mean_batch_rows_counts_observation_rows_not_requests():
    with running_server(RowEchoPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        client.get_action(observation(1, rows=3))
        client.get_action(observation(2, rows=1))
        stats = client.get_server_info()["stats"]
    assert stats["batch_sizes"] == {"1": 2} and stats["mean_batch_rows"] == 2.0


def test_batching_is_off_by_default():
    policy = RowEchoPolicy()
    with running_server(policy) as server:
        results = call_together(server.port, [observation(i) for i in range(4)])
        info = server_info(server.port)
    for client_id, (action, _info) in enumerate(results):
        np.testing.assert_allclose(action["arm"], expected_arm(client_id), rtol=1e-6)
    assert policy.row_counts == [1, 1, 1, 1]
    assert info["max_batch_size"] == 1 and "batching" not in info["capabilities"]


def test_a_policy_that_does_not_declare_batching_is_never_batched():
    policy = NonBatchingPolicy()
    with running_server(policy, max_batch_size=8, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        call_together(server.port, [observation(i) for i in range(4)])
    assert policy.row_counts == [1, 1, 1, 1]


def test_server_info_reports_the_batch_sizes_it_ran():
    policy = RowEchoPolicy()
    with running_server(policy, max_batch_size=4, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        call_together(server.port, [observation(i) for i in range(4)])
        with PolicyClient(port=server.port) as client:
            client.get_action(observation(9), {"seed": 0})  # not batchable: served at once, as a batch of one
            info = client.get_server_info()
    assert "batching" in info["capabilities"] and info["max_batch_size"] == 4
    assert info["stats"]["batch_sizes"] == {"1": 1, "4": 1}
    assert info["stats"]["policy_calls"] == 2


def test_no_batch_exceeds_max_batch_size_rows():
    policy = RowEchoPolicy()
    with running_server(policy, max_batch_size=4, batch_timeout_ms=200.0) as server:
        results = call_together(server.port, [observation(i, rows=2) for i in range(6)])
    for client_id, (action, _info) in enumerate(results):
        np.testing.assert_allclose(action["arm"], expected_arm(client_id, rows=2), rtol=1e-6)
    assert sum(policy.row_counts) == 12
    assert max(policy.row_counts) <= 4


class ConfiguredRowEchoPolicy(RowEchoPolicy):
    """RowEchoPolicy with the modality configs the sim wrapper reads its flat keys by."""

    def get_modality_config(self) -> Dict[str, ModalityConfig]:
        return {
            "state": ModalityConfig(delta_indices=[0], modality_keys=["joints"]),
            "language": ModalityConfig(delta_indices=[0], modality_keys=["task"]),
            "action": ModalityConfig(delta_indices=list(range(4)), modality_keys=["arm"]),
        }


def test_the_sim_wrapper_is_batched_when_the_policy_it_wraps_is():
    """`serve --use-sim-policy-wrapper` (the README's model deployment) with --max-batch-size used to serve every
    request alone: only the outermost policy's supports_batching was read."""
    policy = ConfiguredRowEchoPolicy()
    wrapped = Gr00tSimPolicyWrapper(policy, strict=False)
    flat = [{"state.joints": obs["state"]["joints"], "task": [row[0] for row in obs["language"]["task"]]}
            for obs in (observation(i) for i in range(4))]
    with running_server(wrapped, max_batch_size=4, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        assert server.batching_enabled
        results = call_together(server.port, flat)
    for client_id, (action, _info) in enumerate(results):
        np.testing.assert_allclose(action["action.arm"], expected_arm(client_id), rtol=1e-6)
    assert policy.row_counts == [4]
    assert not Gr00tSimPolicyWrapper(NonBatchingPolicy(), strict=False).supports_batching  # as the policy it wraps


def test_a_session_keeping_policy_is_never_batched_and_sees_each_clients_session():
    class SessionPolicy(RowEchoPolicy):
        stateful_sessions = True

    policy = SessionPolicy()
    with running_server(policy, max_batch_size=4, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, [observation(i) for i in range(4)])
    for client_id, (action, _info) in enumerate(results):
        np.testing.assert_allclose(action["arm"], expected_arm(client_id), rtol=1e-6)
    assert policy.row_counts == [1, 1, 1, 1]
    assert len({call["options"]["_session_id"] for call in policy.calls}) == 4


FIRST_CONTACT_WAIT_MS = 3000.0  # what an unknown client's first request may wait
HELD_WOULD_TIME_OUT_MS = 2000  # a client timeout shorter than that wait: being held would raise PolicyTimeoutError


def test_a_lone_known_client_is_not_held_for_the_batch_timeout():
    """After its first request, a single client's get_action is served without waiting out batch_timeout_ms."""
    policy = RowEchoPolicy()
    with running_server(policy, max_batch_size=8, batch_timeout_ms=FIRST_CONTACT_WAIT_MS) as server:
        with PolicyClient(port=server.port, timeout_ms=60000) as client:
            client.get_action(observation(1.0))  # unknown client: nobody knows who else may come, so it waits
            client.timeout_ms = HELD_WOULD_TIME_OUT_MS
            for step in range(3):
                action, info = client.get_action(observation(2.0 + step), {"return_server_timing": True})
                assert action["arm"][0, 0, 0] == pytest.approx((2.0 + step) * 10.0)
                assert info["server_timing"]["batch_size"] == 1


def test_a_steady_group_of_clients_is_batched_without_waiting_for_the_timeout():
    """K known clients in lock-step: each round forms one batch of K as soon as all K are waiting."""
    clients_count, rounds = 3, 4
    # The gather window follows the widest recent arrival spread, never past the policy's own call time. Lock-step
    # threads arrive well under a millisecond apart, and a busy 2-core machine can stall one of them longer than
    # that, which cuts a round by design (CI saw [1, 2] then [3]). So the first round arrives staggered (0.3 s from
    # first to last) and the policy takes 0.5 s: later rounds tolerate stalls of ~0.45 s (0.15 s did not always
    # suffice beside other test runs), and what they show is that the gather ends when all three are waiting - none
    # of them is held for the 3 s first-contact wait.
    stagger_s = 0.15
    policy = RowEchoPolicy(call_s=0.5)
    with running_server(policy, max_batch_size=16, batch_timeout_ms=FIRST_CONTACT_WAIT_MS) as server:
        barrier = threading.Barrier(clients_count)
        errors: List[BaseException] = []

        def robot(client_id: int) -> None:
            try:
                with PolicyClient(port=server.port, timeout_ms=60000) as client:
                    for step in range(rounds):
                        barrier.wait(timeout=120)
                        if step == 0:
                            time.sleep(stagger_s * (client_id - 1))
                        value = client_id + step / 10.0
                        action, _ = client.get_action(observation(value))
                        assert action["arm"][0, 0, 0] == pytest.approx(value * 10.0)
                        client.timeout_ms = HELD_WOULD_TIME_OUT_MS  # known from now on: must not be held
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=robot, args=(i + 1,)) for i in range(clients_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors, errors
    # max_batch_size 16 never fills, so every later round ended its gather because all 3 known clients waited.
    assert policy.row_counts[-(rounds - 1):] == [clients_count] * (rounds - 1)


def test_the_gather_window_starts_at_the_cap_and_follows_the_arrival_spread():
    window = batching.GatherWindow(cap_ms=50.0)
    assert window.seconds() == pytest.approx(0.050)  # nothing observed yet: wait as long as allowed
    window.observe_spread(0.004)
    assert window.seconds() == pytest.approx(batching.SPREAD_MARGIN * 0.004 + batching.SPREAD_SLACK_S)
    window.observe_spread(0.001)
    assert window.seconds() == pytest.approx(batching.SPREAD_MARGIN * 0.004 + batching.SPREAD_SLACK_S)  # the widest


def test_the_gather_window_never_exceeds_the_cap_or_the_policy_call_time():
    window = batching.GatherWindow(cap_ms=50.0)
    window.observe_spread(0.200)
    assert window.seconds() == pytest.approx(0.050)
    window.observe_call(0.010)
    assert window.seconds() == pytest.approx(0.010)  # a straggler left out waits about one call at most


def test_old_spreads_are_forgotten():
    window = batching.GatherWindow(cap_ms=50.0)
    window.observe_spread(0.020)
    for _ in range(batching.SPREAD_HISTORY):
        window.observe_spread(0.001)
    assert window.seconds() == pytest.approx(batching.SPREAD_MARGIN * 0.001 + batching.SPREAD_SLACK_S)


def test_a_call_takes_at_least_a_smaller_calls_time_and_its_share_of_a_larger_ones():
    window = batching.GatherWindow(cap_ms=50.0)
    assert window.least_call_seconds(1, time.monotonic()) == 0.0  # nothing measured
    window.observe_call(0.200, rows=8)
    window.observe_call(0.300, rows=2)
    now = time.monotonic()
    assert window.least_call_seconds(1, now) == pytest.approx(0.025)  # 1/8 of the batch of 8
    assert window.least_call_seconds(8, now) == pytest.approx(0.200)
    assert window.least_call_seconds(16, now) == pytest.approx(0.200)


def test_call_times_stop_counting_when_no_call_ran_for_a_while_or_once_old(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(batching, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    window = batching.GatherWindow(cap_ms=50.0)
    window.observe_call(1.0)  # a cold first call
    assert window.least_call_seconds(1, clock[0]) == pytest.approx(1.0)
    assert window.least_call_seconds(1, clock[0] + batching.PROBE_AFTER_IDLE_S) == 0.0  # a probe may run
    clock[0] += batching.CALL_MEMORY_S + 1.0
    window.observe_call(0.2)
    assert window.least_call_seconds(1, clock[0]) == pytest.approx(0.2)  # the cold call is forgotten


def test_a_call_stops_counting_once_old_between_calls_too(monkeypatch):
    """The least is asked for every request and kept between calls: a kept answer still forgets a call grown old."""
    clock = [1000.0]
    monkeypatch.setattr(batching, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    window = batching.GatherWindow(cap_ms=50.0)
    window.observe_call(0.1)  # fast, at 1000
    clock[0] = 1000.0 + batching.CALL_MEMORY_S - 0.1
    window.observe_call(0.3)  # slower, 29.9 s later
    assert window.least_call_seconds(1, clock[0] + 0.05) == pytest.approx(0.1)  # both count
    assert window.least_call_seconds(2, clock[0] + 0.05) == pytest.approx(0.1)
    assert window.least_call_seconds(1, clock[0] + 0.3) == pytest.approx(0.3)  # the fast one is 30.2 s old
    assert window.least_call_seconds(1, clock[0] + 0.05) == pytest.approx(0.1)  # an earlier `now` is answered for it
    window.observe_call(0.05, rows=2)
    assert window.least_call_seconds(1, clock[0] + 0.1) == pytest.approx(0.025)  # a new call counts at once


def test_the_default_gather_cap_is_the_same_in_the_server_and_the_cli():
    from gr00t_server.cli import build_parser
    from gr00t_server.server import PolicyServer

    server = PolicyServer(RowEchoPolicy(), host="127.0.0.1", port=0)
    args = build_parser().parse_args(["serve"])
    assert server.batch_timeout_ms == args.batch_timeout_ms == batching.DEFAULT_BATCH_TIMEOUT_MS


def test_a_client_that_stopped_sending_holds_the_others_only_for_the_observed_spread():
    """Three clients in lock-step, then one goes quiet: the other two are not held for the whole cap."""
    cap_ms = 3000.0
    policy = RowEchoPolicy()
    with running_server(policy, max_batch_size=16, batch_timeout_ms=cap_ms) as server:
        barrier = threading.Barrier(3)
        pair_barrier = threading.Barrier(2)
        latencies: List[float] = []
        errors: List[BaseException] = []

        def robot(client_id: int, rounds: int, later_rounds: int) -> None:
            try:
                with PolicyClient(port=server.port, timeout_ms=60000) as client:
                    for step in range(rounds):
                        barrier.wait(timeout=120)
                        client.get_action(observation(client_id + step / 10.0))
                    for step in range(later_rounds):
                        pair_barrier.wait(timeout=120)
                        _action, info = client.get_action(observation(client_id), {"return_server_timing": True})
                        latencies.append(info["server_timing"]["queue_wait_ms"])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=robot, args=(1, 3, 2)), threading.Thread(target=robot, args=(2, 3, 2)),
                   threading.Thread(target=robot, args=(3, 3, 0))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors, errors
    # The quiet client is still "active" for a second; a fixed wait would hold each later round for cap_ms.
    assert max(latencies) < cap_ms / 3, latencies


def _loop_without_worker() -> Tuple[Any, List[Any], float]:
    """A batching server's request loop with no worker: (loop, the jobs it would submit, its gather window in s),
    the window set by an observed 4 ms arrival spread."""
    from gr00t_server.server import PolicyServer

    server = PolicyServer(RowEchoPolicy(), host="127.0.0.1", port=0, max_batch_size=16, batch_timeout_ms=50.0)
    submitted: List[Any] = []
    server._loop._submit = submitted.append  # the worker is not started: record what would be handed to it
    server._window.observe_spread(0.004)
    return server._loop, submitted, server._window.seconds()


def _gathered(session: str, received_at: float) -> Any:
    """A batchable get_action Request from `session`, as the loop gathers it."""
    from gr00t_server.serving.messages import Request

    request = Request([session.encode()], False, "get_action", {"observation": observation(1.0), "options": None},
                      session, None, received_at, 0.0)
    request.batch_shape = batching.batch_shape(request.data)
    request.rows = max(request.batch_shape[1], 1)
    return request


def test_a_round_is_timed_from_when_the_last_replies_went_out_not_from_a_request_that_waited_through_the_call():
    """Two closed-loop cohorts: A's request waited through the call that served B. When that call's replies go out,
    B needs a moment to send again; dispatching A alone at once (its wait already exceeds the window) would make
    A and B alternate for good, each batch part full (measured with 16 client processes: batches of 7 and 9).
    The window counts from when the replies went out, so A waits for B, and only a B that stays away is cut."""
    loop, submitted, window_s = _loop_without_worker()
    now = time.monotonic()
    loop.active_clients = {"a": now, "b": now}
    waited_through_call = _gathered("a", now - 0.05)
    loop.pending = [waited_through_call]
    loop._served_at = now  # B's reply has just been sent
    loop.dispatch_pending()
    assert submitted == []  # held: B is expected back within the window
    loop._served_at = now - 2 * window_s  # B's reply went out a whole window ago and B has not come back
    loop.dispatch_pending()
    assert submitted == [[waited_through_call]]


def test_a_client_a_round_was_cut_without_is_not_waited_for_again_until_it_sends():
    """One cut round is what a stalled (or departed) client costs: the next rounds go as soon as the others are
    waiting, instead of each waiting out the window for it until it is forgotten a second later."""
    loop, submitted, window_s = _loop_without_worker()
    now = time.monotonic()
    loop.active_clients = {"a": now, "b": now, "c": now}
    loop._served_at = now - 2 * window_s  # the last replies went out a whole window ago; c has not come back
    loop.pending = [_gathered("a", now - 2 * window_s), _gathered("b", now - 2 * window_s)]
    loop.dispatch_pending()
    assert [[r.session for r in job] for job in submitted] == [["a", "b"]]  # cut without c

    loop._served_at = time.monotonic()  # the next round: a and b are back at once, c is still away
    loop.pending = [_gathered("a", loop._served_at), _gathered("b", loop._served_at)]
    loop.dispatch_pending()
    assert [[r.session for r in job] for job in submitted][-1] == ["a", "b"]  # not held for c again

    late = _gathered("c", time.monotonic())
    loop._note_straggler(late)  # c sends again: rounds wait for it from now on
    loop._served_at = time.monotonic()
    loop.pending = [late, _gathered("a", loop._served_at)]
    loop.dispatch_pending()
    assert len(submitted) == 2  # held: b is expected back within the window
