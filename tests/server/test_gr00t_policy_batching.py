"""Gr00tPolicy behind a batching server: one client's out-of-range input is refused as its own, never as a batching
bug that makes every batch mate re-run alone."""

import threading
from typing import Any, Dict, List

import numpy as np
import pytest
from serving import running_server

from gr00t_client import ObservationError, PolicyClient, PolicyServerError

TAG = "new_embodiment"
CLIENTS = 4
BAD_CLIENT = 2
LONG_BATCH_WAIT_MS = 10000.0  # far longer than the clients need to arrive; a full batch ends the wait early


@pytest.fixture(scope="module")
def fp16_policy(tiny_checkpoint):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    return Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", dtype="fp16")


def observation(tiny_checkpoint, joints: float = 0.0) -> Dict[str, Any]:
    from gr00t_server.test_checkpoint import example_observation

    sent = example_observation(tiny_checkpoint, TAG, image_size=(32, 32))
    sent["state"]["joints"][:] = joints
    return sent


def call_together(port: int, observations: List[Dict[str, Any]]) -> List[Any]:
    results: List[Any] = [None] * len(observations)
    barrier = threading.Barrier(len(observations))

    def one_client(index: int) -> None:
        with PolicyClient(port=port, timeout_ms=60000) as client:
            client.get_server_info()
            barrier.wait()
            try:
                results[index] = client.get_action(observations[index])
            except PolicyServerError as exc:
                results[index] = exc

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(len(observations))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_a_state_far_beyond_its_statistics_fails_only_its_sender_and_its_batch_mates_share_one_call(tiny_checkpoint,
                                                                                                    fp16_policy):
    observations = [observation(tiny_checkpoint) for _ in range(CLIENTS)]
    observations[BAD_CLIENT] = observation(tiny_checkpoint, joints=6e4)  # encoder ticks: ~1e5 once normalized
    with running_server(fp16_policy, max_batch_size=CLIENTS, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, observations)
        with PolicyClient(port=server.port) as client:
            stats = client.get_server_info()["stats"]
    refused = results[BAD_CLIENT]
    assert isinstance(refused, PolicyServerError), refused
    assert "State key 'joints'" in refused.server_message and "in rows [0], beyond +-1000" in refused.server_message
    for client_id in set(range(CLIENTS)) - {BAD_CLIENT}:
        action, _info = results[client_id]
        assert all(np.isfinite(value).all() for value in action.values())
    assert stats["internal_errors"] == 0
    assert stats["policy_calls"] == 1 and stats["batch_sizes"] == {str(CLIENTS - 1): 1}


def test_a_lenient_policy_refuses_a_state_far_beyond_its_statistics_as_an_observation_error(tiny_checkpoint,
                                                                                            fp16_policy):
    fp16_policy.strict = False
    try:
        beyond = r"State key 'joints' of 'new_embodiment' normalizes to \|values\| up to \S+ in rows \[0\], beyond \+-1000"
        with pytest.raises(ObservationError, match=beyond):
            fp16_policy.get_action(observation(tiny_checkpoint, joints=6e4))
    finally:
        fp16_policy.strict = True


def test_a_frame_size_the_image_processor_refuses_is_an_observation_error(tiny_checkpoint, fp16_policy):
    sent = observation(tiny_checkpoint)
    sent["video"]["front"] = np.zeros((1, 1, 1, 300, 3), np.uint8)
    with pytest.raises(ObservationError, match=r"Video key 'front' has 1x300 images"):
        fp16_policy.check_observation(sent)


def flat_form(nested: Dict[str, Any]) -> Dict[str, Any]:
    """The observation as a --use-sim-policy-wrapper client sends it: `video.<k>`, `state.<k>`, language B strings."""
    flat = {f"{modality}.{key}": value for modality in ("video", "state") for key, value in nested[modality].items()}
    flat.update({key: [row[0] for row in rows] for key, rows in nested["language"].items()})
    return flat


def test_behind_the_sim_wrapper_a_degenerate_rotation_fails_only_its_sender_and_its_batch_mates_share_one_call(
        tiny_checkpoint):
    from gr00t_server.policies import Gr00tSimPolicyWrapper
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    wrapper = Gr00tSimPolicyWrapper(Gr00tPolicy(tiny_checkpoint, TAG, device="cpu"))
    observations = [observation(tiny_checkpoint) for _ in range(CLIENTS)]
    observations[BAD_CLIENT]["state"]["eef_9d"][0, 0, 3:] = 0.0  # rot6d all zeros: no rotation
    with running_server(wrapper, max_batch_size=CLIENTS, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, [flat_form(sent) for sent in observations])
        with PolicyClient(port=server.port) as client:
            stats = client.get_server_info()["stats"]
    assert stats["policy_calls"] == 1 and stats["batch_sizes"] == {str(CLIENTS - 1): 1}
    for client_id in set(range(CLIENTS)) - {BAD_CLIENT}:
        action, _info = results[client_id]
        assert all(np.isfinite(value).all() for value in action.values())
    refused = results[BAD_CLIENT]
    assert isinstance(refused, PolicyServerError), refused
    assert "relative key 'action.eef_9d'" in refused.server_message and "degenerate rotation in rows [0]" in refused.server_message


@pytest.fixture(scope="module")
def counting_policy(tiny_checkpoint):
    """A strict Gr00tPolicy that counts the runs of its check_observation (`checks`)."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    class CheckCountingPolicy(Gr00tPolicy):
        checks = 0

        def check_observation(self, observation):
            self.checks += 1
            super().check_observation(observation)

    return CheckCountingPolicy(tiny_checkpoint, TAG, device="cpu")


def served_together(policy: Any, observations: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Serve `observations` from as many clients at once on a batching server; its stats after."""
    with running_server(policy, max_batch_size=len(observations), batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, observations)
        with PolicyClient(port=server.port) as client:
            stats = client.get_server_info()["stats"]
    assert not [result for result in results if isinstance(result, Exception)], results
    return stats


def test_a_batched_request_is_checked_once_not_again_in_the_merged_call(tiny_checkpoint, counting_policy):
    counting_policy.checks = 0
    stats = served_together(counting_policy, [observation(tiny_checkpoint) for _ in range(CLIENTS)])
    assert stats["policy_calls"] == 1 and stats["batch_sizes"] == {str(CLIENTS): 1}
    assert counting_policy.checks == CLIENTS  # each request's pre-check; the merged call of their rows none


def test_behind_the_sim_wrapper_a_batched_request_is_checked_once_at_each_level(tiny_checkpoint, counting_policy):
    from gr00t_server.policies import Gr00tSimPolicyWrapper

    class CheckCountingWrapper(Gr00tSimPolicyWrapper):
        checks = 0

        def check_observation(self, observation):
            self.checks += 1
            super().check_observation(observation)

    wrapper = CheckCountingWrapper(counting_policy)
    counting_policy.checks = 0
    stats = served_together(wrapper, [flat_form(observation(tiny_checkpoint)) for _ in range(CLIENTS)])
    assert stats["policy_calls"] == 1 and stats["batch_sizes"] == {str(CLIENTS): 1}
    assert (wrapper.checks, counting_policy.checks) == (CLIENTS, CLIENTS)


def test_a_direct_call_still_checks_its_observation_once(tiny_checkpoint, counting_policy):
    from gr00t_client.policy import rows_checked
    from gr00t_server.policies import Gr00tSimPolicyWrapper

    counting_policy.checks = 0
    counting_policy.get_action(observation(tiny_checkpoint))
    assert counting_policy.checks == 1
    bad = observation(tiny_checkpoint)
    bad["state"]["eef_9d"][0, 0, 3:] = 0.0
    with rows_checked(observation(tiny_checkpoint), counting_policy):  # another observation's marker does not cover this one
        with pytest.raises(ObservationError, match=r"degenerate rotation in rows \[0\]"):
            counting_policy.get_action(bad)
    with pytest.raises(ObservationError, match=r"relative key 'action\.eef_9d' \(xyz \+ rot6d\) has a degenerate"):
        Gr00tSimPolicyWrapper(counting_policy).get_action(flat_form(bad))
    assert counting_policy.checks == 3


class _RangeCheckedPolicy:
    """A row-wise checked policy (as Gr00tPolicy) refusing a state beyond 100, recording the states its model saw."""

    @staticmethod
    def build():
        from gr00t_client import BasePolicy, ModalityConfig

        class RangeChecked(BasePolicy):
            supports_batching = True
            row_wise_checks = True

            def __init__(self):
                super().__init__(strict=True)
                self.model_saw: List[float] = []

            def get_modality_config(self):
                return {"state": ModalityConfig(delta_indices=[0], modality_keys=["joints"]),
                        "action": ModalityConfig(delta_indices=list(range(4)), modality_keys=["arm"])}

            def check_observation(self, observation):
                super().check_observation(observation)
                if (np.abs(observation["state"]["joints"]) > 100).any():
                    raise ObservationError("state 'joints' is out of range (|x| > 100)")

            def _get_action(self, observation, options=None):
                self.model_saw.append(float(np.abs(observation["state"]["joints"]).max()))
                return {"arm": np.zeros((observation["state"]["joints"].shape[0], 4, 2), np.float32)}, {}

            def reset(self, options=None):
                return {}

        return RangeChecked()


def test_a_plain_wrapper_on_a_batching_server_leaves_its_row_wise_policys_checks_to_run():
    """The merged call was marked checked without naming whose checks ran: behind a wrapper whose own check is the
    generic one, the wrapped row-wise policy skipped its checks and a state it refuses reached its model."""
    from gr00t_client.policy import PolicyWrapper

    class PassThrough(PolicyWrapper):
        supports_batching = True

        def _get_action(self, observation, options=None):
            return self.policy.get_action(observation, options)

    inner = _RangeCheckedPolicy.build()
    states = [1.0, 1e6, 2.0, 3.0]
    observations = [{"state": {"joints": np.full((1, 1, 3), value, np.float32)}} for value in states]
    with running_server(PassThrough(inner), max_batch_size=len(states), batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        results = call_together(server.port, observations)
    assert isinstance(results[1], PolicyServerError) and "out of range" in str(results[1]), results[1]
    assert not [result for index, result in enumerate(results) if index != 1 and isinstance(result, Exception)]
    assert max(inner.model_saw) <= 100, inner.model_saw


def test_lenient_clients_whose_language_rows_differ_in_form_share_one_call(tiny_checkpoint):
    """[["a"]], ["a"] and [["a", "b"]] are each served alone; merged they failed inside the policy (numpy's
    "inhomogeneous shape"), and every round ran one by one with an error logged."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    lenient = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", strict=False)
    forms = [[["pick up the cube"]], ["pick up the cube"], [["pick up the cube", "alternative"]], [["place it"]]]
    observations = [observation(tiny_checkpoint) for _ in forms]
    for sent, rows in zip(observations, forms):
        sent["language"][next(iter(sent["language"]))] = rows
    stats = served_together(lenient, observations)
    assert stats["internal_errors"] == 0
    assert stats["policy_calls"] == 1 and stats["batch_sizes"] == {str(len(forms)): 1}


def test_lenient_clients_sending_instructions_as_str_arrays_of_other_lengths_share_one_call(tiny_checkpoint):
    """A (B,) str array's dtype holds its longest instruction's length ('<U16', '<U8'): clients whose instructions
    differed in length never shared a call."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    lenient = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", strict=False)
    texts = ["pick up the cube", "place it", "open the drawer", "stop"]
    observations = [observation(tiny_checkpoint) for _ in texts]
    for sent, text in zip(observations, texts):
        sent["language"][next(iter(sent["language"]))] = np.array([text])
    stats = served_together(lenient, observations)
    assert stats["policy_calls"] == 1 and stats["batch_sizes"] == {str(len(texts)): 1}


def camera_observations(tiny_checkpoint, height: int, width: int) -> List[Dict[str, Any]]:
    from gr00t_server.test_checkpoint import example_observation

    return [example_observation(tiny_checkpoint, TAG, seed=i, image_size=(height, width)) for i in range(CLIENTS)]


def test_clients_with_4_3_camera_frames_fill_a_call_of_max_rows_rows(tiny_checkpoint):
    """--max-rows 4 --max-batch-size 4: the vision-token budget was 4 rows of square frames (4 x 64 tokens), so four
    one-row clients of 480x640 frames (88 tokens each) made a merged call the policy refused, then bisected: 3 calls
    a round. The budget's rows are of frames up to 16:9."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", max_rows=CLIENTS)
    stats = served_together(policy, camera_observations(tiny_checkpoint, 480, 640))
    assert stats["policy_calls"] == 1 and stats["batch_sizes"] == {str(CLIENTS): 1}


def test_the_batcher_merges_no_more_rows_than_the_vision_token_budget_takes(tiny_checkpoint):
    """32x96 frames (3:1) make 192 tokens a row: a budget of 4 rows of 16:9 frames (448 tokens) takes 2 of them. The
    batcher merged all four, the policy refused the call, and bisection ran 7 calls; it now forms calls of 2."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", max_rows=CLIENTS)
    assert policy.max_call_rows(camera_observations(tiny_checkpoint, 32, 96)[0]) == 2
    stats = served_together(policy, camera_observations(tiny_checkpoint, 32, 96))
    assert stats["policy_calls"] == 2 and stats["batch_sizes"] == {"2": 2}


def test_a_frame_the_model_refuses_fails_only_its_sender_on_a_batching_server(tiny_checkpoint):
    """The batcher reads a call's row limit from the first request's frame shapes before the policy's checks ran: a
    1x4000 frame (12 KB) raised there ("aspect ratio must be smaller than 200") and the serving loop died."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", max_rows=CLIENTS)
    thin = example_observation(tiny_checkpoint, TAG, seed=0, image_size=(1, 4000))
    with running_server(policy, max_batch_size=CLIENTS, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server:
        with PolicyClient(port=server.port, timeout_ms=60000) as client:
            with pytest.raises(PolicyServerError, match="aspect ratio 4000"):
                client.get_action(thin)
            assert client.get_action(observation(tiny_checkpoint))[0]


def test_behind_the_sim_wrapper_the_batcher_merges_no_more_rows_than_the_budget_takes(tiny_checkpoint):
    """The wrapper did not pass on the policy's row limit: four clients' 32x96 frames were merged into a call of 4
    the budget refused, then re-split (3 calls); as for the bare policy, 2 calls of 2."""
    from gr00t_server.policies import Gr00tSimPolicyWrapper
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    wrapper = Gr00tSimPolicyWrapper(Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", max_rows=CLIENTS))
    flat = [{**{f"video.{key}": value for key, value in sent["video"].items()},
             **{f"state.{key}": value for key, value in sent["state"].items()},
             **{key: [row[0] if isinstance(row, list) else row for row in rows] for key, rows in sent["language"].items()}}
            for sent in camera_observations(tiny_checkpoint, 32, 96)]
    assert wrapper.max_call_rows(flat[0]) == 2
    stats = served_together(wrapper, flat)
    assert stats["policy_calls"] == 2 and stats["batch_sizes"] == {"2": 2}
