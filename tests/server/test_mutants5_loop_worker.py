"""Mutation-testing round 5 on the socket loop (serving/loop.py) and the policy worker (serving/worker.py): each test
pins one behaviour a mutant of those modules broke without any other test noticing, through a real server on
loopback."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from reference_peer import EchoPolicy
from serving import running_server
from test_serving_decode_limits import pipelining_dealer, replies_of
from test_serving_inline import INLINE_STREAK, LIMIT_MS, SOCKET, ThreadNotingPolicy, _error_of, observation

from gr00t_client import PolicyClient, PolicyServerError, ServerStoppingError, codec
from gr00t_server.serving import ServerLimits


def small_observation(value: float = 0.0) -> dict:
    return {"state": {"x": np.full((1, 1, 4), value, np.float32)}}


@pytest.mark.parametrize("limits", [
    ServerLimits(max_queued_requests=1),  # guards: the queue's request count not given back on reply
    ServerLimits(max_client_queued_requests=1),  # guards: the connection's request count not given back
    ServerLimits(max_queued_bytes=1),  # an idle queue takes any one request; guards: the queue's bytes not given back
], ids=["queue requests", "connection requests", "queue bytes"])
def test_each_reply_gives_its_requests_queue_budget_back(limits):
    with running_server(EchoPolicy(), limits=limits, inline_below_ms=0) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            for i in range(4):
                _action, info = client.get_action(small_observation(float(i)))
                assert info["first_state"] == float(i)
    assert server.stats.refused == 0


def test_a_request_over_the_queue_byte_budget_is_served_when_nothing_else_waits():
    # guards: the idle-queue exemption of --max-queued-mb dropped (every request refused "server busy")
    with running_server(EchoPolicy(), limits=ServerLimits(max_queued_bytes=1), inline_below_ms=0) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            _action, info = client.get_action(small_observation(3.0))
    assert info["first_state"] == 3.0 and server.stats.refused == 0


class BlockingResetPolicy(ThreadNotingPolicy):
    """Fast get_action; reset blocks until `release` and notes any get_action that ran meanwhile."""

    def __init__(self):
        super().__init__()
        self.resetting = threading.Event()
        self.release = threading.Event()
        self.overlapped = []

    def _get_action(self, observation, options=None):
        if self.resetting.is_set():
            self.overlapped.append(threading.current_thread().name)
        return super()._get_action(observation, options)

    def reset(self, options=None):
        self.resetting.set()
        self.release.wait(10)
        self.resetting.clear()
        return super().reset(options)


def test_an_open_inline_gate_never_runs_get_action_beside_a_call_on_the_worker():
    # guards: _submit running a get_action inline while the worker is busy (two policy calls at once)
    policy = BlockingResetPolicy()
    with running_server(policy, inline_below_ms=LIMIT_MS) as server, \
            PolicyClient(port=server.port, timeout_ms=15000) as first, PolicyClient(port=server.port, timeout_ms=15000) as second:
        for i in range(INLINE_STREAK + 1):  # the gate is open: the last one ran on the socket thread
            first.get_action(observation(float(i)))
        resetter = threading.Thread(target=first.reset, daemon=True)
        resetter.start()
        assert policy.resetting.wait(10)
        got = {}
        caller = threading.Thread(target=lambda: got.setdefault("action", second.get_action(observation(5.0))[0]), daemon=True)
        caller.start()
        caller.join(0.5)  # an inline call would be done by now; the right one waits for the reset
        policy.release.set()
        caller.join(10)
        resetter.join(10)
    assert policy.threads[INLINE_STREAK] == SOCKET
    assert policy.overlapped == []
    np.testing.assert_array_equal(got["action"]["x"], np.full((1, 4, 1), 5.0, np.float32))


class OrderNotingPolicy(ThreadNotingPolicy):
    """Notes the calls it ran, in order."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def _get_action(self, observation, options=None):
        self.calls.append("get_action")
        return super()._get_action(observation, options)

    def reset(self, options=None):
        self.calls.append("reset")
        return super().reset(options)


@pytest.mark.parametrize("gathered, reset_session", [(1, "robot-a"), (1, "robot-b"), (2, "robot-a")],
                         ids=["same session", "same connection only", "two gathered ahead"])
def test_a_reset_pipelined_behind_gathered_get_actions_runs_after_them(gathered, reset_session):
    # guards: _route submitting a non-batchable request before the gathered ones of its connection (`if ahead`),
    # _gathered_before matching connection AND session instead of either, and handing over only one batch of them
    # (two that cannot share a call)
    policy = OrderNotingPolicy()
    reset = codec.encode({"endpoint": "reset", "session_id": reset_session, "data": {"options": None}})
    with running_server(policy, max_batch_size=8, batch_timeout_ms=500, inline_below_ms=0) as server, \
            pipelining_dealer(server.port) as dealer:
        for dtype in (np.float32, np.float64)[:gathered]:  # gathered: the window waits for more clients
            state = {"state": {"x": np.zeros((1, 1, 1), dtype)}}  # dtypes differ: never merged into one call
            dealer.send_multipart([b"", codec.encode({"endpoint": "get_action", "session_id": "robot-a",
                                                      "data": {"observation": state}})])
        dealer.send_multipart([b"", reset])
        replies = replies_of(dealer, gathered + 1)
    assert policy.calls == ["get_action"] * gathered + ["reset"]
    assert len(replies) == gathered + 1 and all(isinstance(r, list) for r in replies[:-1]) and replies[-1] == {}, replies


def test_a_gathered_get_action_is_answered_not_run_when_a_kill_ends_the_server():
    # guards: shut_down answering only the worker's queued jobs, not the requests still gathered (a kill, unlike
    # stop(), does not hand them over first): their clients waited for nothing until their own timeout
    policy = ThreadNotingPolicy()
    outcome = {}
    with running_server(policy, max_batch_size=8, batch_timeout_ms=5000, inline_below_ms=0) as server:
        with PolicyClient(port=server.port, timeout_ms=4000) as waiting:
            caller = threading.Thread(
                target=lambda: outcome.setdefault("reply", _error_of(waiting.get_action, observation(1.0))), daemon=True)
            caller.start()
            deadline = time.monotonic() + 3
            while not server._loop.pending and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server._loop.pending  # gathered, its window far from over
            with PolicyClient(port=server.port, timeout_ms=4000) as killer:
                killer.kill_server()
            caller.join(10)
    assert isinstance(outcome["reply"], ServerStoppingError) and "'get_action' was not run" in str(outcome["reply"])
    assert policy.threads == []


def test_an_inline_job_whose_execute_raised_is_answered_and_serving_goes_on(monkeypatch):
    # guards: _run_inline's last line of defence (as the worker's): a failure of execute itself ended run()
    from gr00t_server.serving.execution import JobRunner

    policy = ThreadNotingPolicy()
    with running_server(policy, inline_below_ms=LIMIT_MS) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        for i in range(INLINE_STREAK + 1):  # the gate is open: the last one ran on the socket thread
            client.get_action(observation(float(i)))
        assert policy.threads[INLINE_STREAK] == SOCKET

        def broken(self, job):
            raise RuntimeError("execute itself failed")

        monkeypatch.setattr(JobRunner, "execute", broken)
        error = _error_of(client.get_action, observation(1.0))
        monkeypatch.undo()
        assert client.ping()
        action, _ = client.get_action(observation(2.0))
    assert isinstance(error, PolicyServerError) and "internal error in get_action: RuntimeError" in str(error), error
    np.testing.assert_array_equal(action["x"], np.full((1, 4, 1), 2.0, np.float32))
