"""One connection's requests batched into one policy call are answered in the order it sent them, whichever of them
the worker refuses (the policy's own check, a NaN row of the merged call, a deadline passed): a DEALER peer that
pipelines pairs replies with requests by their order."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
from serving import running_server
from test_batching import LONG_BATCH_WAIT_MS, RawNanRowPolicy, StrictNanRowPolicy, expected_arm, observation
from test_serving_decode_limits import pipelining_dealer, replies_of

from gr00t_client import ObservationError, codec


class NegativeStateRefusingPolicy(StrictNanRowPolicy):
    """Strict, and its own check refuses a negative state on the worker, as Gr00tPolicy's refuses a degenerate
    rotation (the socket thread's checks let it through)."""

    def check_observation(self, observation: Dict[str, Any]) -> None:
        super().check_observation(observation)
        if (observation["state"]["joints"] < 0).any():
            raise ObservationError("state 'joints' has negative values")


class HeldResetPolicy(NegativeStateRefusingPolicy):
    """Its reset holds the worker until `release` is set, so that get_action requests wait queued behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.resetting = threading.Event()
        self.release = threading.Event()

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        self.resetting.set()
        self.release.wait(30)
        return {}


def get_action(obs: Dict[str, Any], timeout_ms: Optional[float] = None) -> bytes:
    request: Dict[str, Any] = {"endpoint": "get_action", "data": {"observation": obs}}
    if timeout_ms is not None:
        request["timeout_ms"] = timeout_ms
    return codec.encode(request)


def kinds(replies: List[Any]) -> List[str]:
    return ["error" if isinstance(reply, dict) and "error" in reply else "action" for reply in replies]


@pytest.mark.parametrize("policy_class", [NegativeStateRefusingPolicy, RawNanRowPolicy],
                         ids=["refused by the policy's check", "NaN row of the merged call"])
def test_a_later_request_refused_on_the_worker_is_answered_after_the_earlier_ones_of_its_batch(policy_class):
    policy = policy_class()
    with running_server(policy, max_batch_size=3, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server, \
            pipelining_dealer(server.port) as dealer:
        for obs in (observation(1), observation(-2), observation(3)):  # a full batch: one policy call
            dealer.send_multipart([b"", get_action(obs)])
        replies = replies_of(dealer, 3)
    assert kinds(replies) == ["action", "error", "action"], replies
    assert policy.row_counts[0] in (2, 3)  # the three shared the batch (the refused one left out of the call, or not)
    np.testing.assert_allclose(replies[0][0]["arm"], expected_arm(1), rtol=1e-6)
    np.testing.assert_allclose(replies[2][0]["arm"], expected_arm(3), rtol=1e-6)


def test_a_later_request_whose_deadline_passed_in_the_queue_is_answered_after_the_earlier_one_of_its_batch():
    policy = HeldResetPolicy()
    try:
        with running_server(policy, max_batch_size=2, batch_timeout_ms=LONG_BATCH_WAIT_MS) as server, \
                pipelining_dealer(server.port) as holder, pipelining_dealer(server.port) as dealer:
            holder.send_multipart([b"", codec.encode({"endpoint": "reset", "data": {}})])
            assert policy.resetting.wait(10), "the reset never reached the worker"
            dealer.send_multipart([b"", get_action(observation(1))])
            dealer.send_multipart([b"", get_action(observation(2), timeout_ms=50)])
            queued_by = time.monotonic() + 10
            while server._worker.queued < 1 and time.monotonic() < queued_by:  # both arrived and queued as one batch
                time.sleep(0.01)
            assert server._worker.queued == 1, "the two requests were not queued behind the reset"
            time.sleep(0.2)  # past the second one's 50 ms deadline, counted from its arrival
            policy.release.set()
            replies = replies_of(dealer, 2)
            assert replies_of(holder, 1) == [{}]
    finally:
        policy.release.set()
    assert kinds(replies) == ["action", "error"], replies
    assert "was not run: the client's deadline passed" in replies[1]["error"], replies[1]
    np.testing.assert_allclose(replies[0][0]["arm"], expected_arm(1), rtol=1e-6)
