"""A relay's metrics and stats count what happened upstream: a request it refused before calling its upstream is no
policy call, and the upstream's refusals keep their outcome (expired, refused). Real relay chains (robot -> a
PolicyServer serving a PolicyClient -> the upstream) on loopback, real HTTP scrapes."""

from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np
import pytest

from gr00t_client import BasePolicy, DeadlineNotRunError, PolicyClient, PolicyServerError, codec
from gr00t_server.serving import relay as relay_module
from gr00t_server.server import ServerLimits
from reference_peer import raw_round_trip
from serving import free_port, running_server

prometheus_parser = pytest.importorskip("prometheus_client.parser")
from test_prometheus_metrics import requests_count, scrape_settled, stage_count  # noqa: E402 - needs prometheus_client


class Upstream(BasePolicy):
    """Answers a zero action after `call_s` seconds; `gate`, when given, holds each call until it is set."""

    def __init__(self, call_s: float = 0.0, gate: Optional[threading.Event] = None) -> None:
        super().__init__(strict=False)
        self.call_s, self.gate = call_s, gate
        self.entered = threading.Event()

    def _get_action(self, observation, options=None):
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.call_s)
        return {"x": np.zeros((1, 4, 1), np.float32)}, {}

    def reset(self, options=None):
        return {}


def observation():
    return {"state": {"x": np.zeros((1, 1, 1), np.float32)}}


def assert_no_policy_call(relay, samples):
    stats = relay.stats.snapshot()
    assert (stats["policy_calls"], stats["batch_sizes"]) == (0, {}), f"expected no policy call counted, got {stats}"
    assert samples.get(("gr00t_batch_size_count", ()), 0) == 0
    assert stage_count(samples, "policy") == 0


def test_a_relays_own_refusal_of_a_deadline_too_near_to_pass_upstream_is_expired_and_no_policy_call(monkeypatch):
    # a relay that keeps the whole of a short budget for its own reply: nothing is left to pass upstream
    monkeypatch.setattr(relay_module, "UPSTREAM_MARGIN_SHARE", 1.0)
    with running_server(Upstream()) as upstream, \
            PolicyClient("127.0.0.1", upstream.port, timeout_ms=5000) as upstream_client, \
            running_server(upstream_client, metrics_port=0) as relay, \
            PolicyClient("127.0.0.1", relay.port, timeout_ms=150) as robot:
        with pytest.raises(DeadlineNotRunError, match="when it was to be passed to the upstream"):
            robot.get_action(observation())
        samples = scrape_settled(relay, 3)  # the robot's get_server_info and get_modality_config, then its get_action
        assert_no_policy_call(relay, samples)
        assert requests_count(samples, "get_action", "expired") == 1
        assert requests_count(samples, "get_action", "error") == 0
        # a new robot's info and configs ask the upstream again (its policy may have changed while the relay idled):
        # refused alike
        assert requests_count(samples, "get_server_info", "expired") == 1
        assert requests_count(samples, "get_modality_config", "expired") == 1
        assert relay.stats.snapshot()["expired"] == 3


def test_a_relay_whose_upstream_is_unreachable_counts_no_policy_call():
    request = codec.encode({"endpoint": "get_action", "data": {"observation": observation()}, "timeout_ms": 5000})
    with PolicyClient("127.0.0.1", free_port(), timeout_ms=300) as upstream_client, \
            running_server(upstream_client, metrics_port=0) as relay:
        for _ in range(2):  # a robot's get_action that asks no info first (a reference client's)
            reply = codec.decode(raw_round_trip(relay.port, request)[0])
            assert "upstream policy server failed" in reply["error"]
            assert "did not answer 'get_server_info'" in reply["error"]
        samples = scrape_settled(relay, 2)
        assert_no_policy_call(relay, samples)
        assert requests_count(samples, "get_action", "error") == 2


def test_an_upstreams_refusal_for_want_of_time_counts_as_expired_and_no_policy_call_at_the_relay():
    with running_server(Upstream(call_s=0.2), inline_below_ms=0, metrics_port=0) as upstream, \
            PolicyClient("127.0.0.1", upstream.port, timeout_ms=5000) as upstream_client:
        upstream_client.get_action(observation())  # the upstream learns that a call takes 200 ms
        with running_server(upstream_client, metrics_port=0) as relay, \
                PolicyClient("127.0.0.1", relay.port, timeout_ms=150) as robot:
            not_run = f"upstream tcp://127.0.0.1:{upstream.port}: 'get_action' was not run"
            with pytest.raises(DeadlineNotRunError, match=not_run):
                robot.get_action(observation())
            samples = scrape_settled(relay, 2)
            assert requests_count(scrape_settled(upstream, 2), "get_action", "expired") == 1
            assert requests_count(samples, "get_action", "expired") == 1, "the upstream's expired counted otherwise"
            assert requests_count(samples, "get_action", "error") == 0
            assert relay.stats.snapshot()["expired"] == 1
            assert_no_policy_call(relay, samples)  # "not run" upstream: the relay's call computed nothing


def test_an_upstreams_server_busy_refusal_counts_as_refused_and_no_policy_call_at_the_relay():
    gate = threading.Event()
    policy = Upstream(gate=gate)
    try:
        with running_server(policy, inline_below_ms=0, limits=ServerLimits(max_queued_requests=1)) as upstream, \
                PolicyClient("127.0.0.1", upstream.port, timeout_ms=5000) as upstream_client, \
                running_server(upstream_client, metrics_port=0) as relay, \
                PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot, \
                PolicyClient("127.0.0.1", upstream.port, timeout_ms=10_000) as other:
            robot.get_server_info()  # the relay learns its upstream's facts before the queue is full
            holding = threading.Thread(target=other.get_action, args=(observation(),), daemon=True)
            holding.start()
            assert policy.entered.wait(10), "the upstream never ran the holding request"
            with pytest.raises(PolicyServerError, match="server busy"):
                robot.get_action(observation())
            gate.set()
            holding.join(10)
            samples = scrape_settled(relay, 3)
            assert requests_count(samples, "get_action", "refused") == 1, "the upstream's refused counted otherwise"
            assert requests_count(samples, "get_action", "error") == 0
            assert relay.stats.snapshot()["refused"] == 1
            # the upstream computed nothing for it: a relay under an upstream's overload counted each refusal's round
            # trip as a fast policy call (call rate up, policy latency down)
            assert_no_policy_call(relay, samples)
    finally:
        gate.set()


def wait_for_queue_depth(server, depth: int) -> None:
    """Return once the server's gr00t_queue_depth (its running call included) reaches `depth`, within 10 s."""
    deadline = time.monotonic() + 10
    while scrape_settled(server, 0).get(("gr00t_queue_depth", ()), 0) < depth:
        assert time.monotonic() < deadline, f"the server's queue never held {depth} requests"
        time.sleep(0.02)


def test_an_upstreams_stop_that_did_not_run_the_request_is_no_policy_call_at_the_relay():
    gate = threading.Event()
    policy = Upstream(gate=gate)
    answers = []

    def robot_call(robot):
        try:
            robot.get_action(observation())
        except PolicyServerError as exc:
            answers.append(exc)

    try:
        with running_server(policy, inline_below_ms=0, metrics_port=0) as upstream, \
                PolicyClient("127.0.0.1", upstream.port, timeout_ms=5000) as upstream_client, \
                running_server(upstream_client, metrics_port=0) as relay, \
                PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot, \
                PolicyClient("127.0.0.1", upstream.port, timeout_ms=10_000) as other:
            robot.get_server_info()  # the relay learns its upstream's facts before the upstream is held
            holding = threading.Thread(target=other.get_action, args=(observation(),), daemon=True)
            holding.start()
            assert policy.entered.wait(10), "the upstream never ran the holding request"
            relayed = threading.Thread(target=robot_call, args=(robot,), daemon=True)
            relayed.start()
            wait_for_queue_depth(upstream, 2)  # the robot's request waits upstream behind the held one
            upstream.stop()  # answers the waiting request "server is shutting down; 'get_action' was not run"
            relayed.join(10)
            gate.set()
            holding.join(10)
            assert len(answers) == 1 and "'get_action' was not run" in str(answers[0]), answers
            samples = scrape_settled(relay, 3)
            assert requests_count(samples, "get_action", "error") == 1
            assert_no_policy_call(relay, samples)
    finally:
        gate.set()


def relay_chain_counts_case(policy, upstream_settings):
    """Context for robot -> relay A -> relay B -> the upstream (`policy`, served with `upstream_settings`)."""
    import contextlib

    @contextlib.contextmanager
    def chain():
        with running_server(policy, inline_below_ms=0, metrics_port=0, **upstream_settings) as upstream, \
                PolicyClient("127.0.0.1", upstream.port, timeout_ms=5000) as to_upstream, \
                running_server(to_upstream, metrics_port=0) as relay_b, \
                PolicyClient("127.0.0.1", relay_b.port, timeout_ms=5000) as to_relay_b, \
                running_server(to_relay_b, metrics_port=0) as relay_a, \
                PolicyClient("127.0.0.1", relay_a.port, timeout_ms=5000) as robot, \
                PolicyClient("127.0.0.1", upstream.port, timeout_ms=10_000) as other:
            robot.get_server_info()  # both relays learn their upstream's facts before the upstream is held
            holding = threading.Thread(target=other.get_action, args=(observation(),), daemon=True)
            holding.start()
            assert policy.entered.wait(10), "the upstream never ran the holding request"
            yield upstream, relay_b, relay_a, robot
            policy.gate.set()
            holding.join(10)
    return chain()


def test_an_upstreams_server_busy_refusal_counts_as_refused_and_no_policy_call_at_every_relay_of_a_chain():
    policy = Upstream(gate=threading.Event())
    try:
        with relay_chain_counts_case(policy, {"limits": ServerLimits(max_queued_requests=1)}) as (
                upstream, relay_b, relay_a, robot):
            with pytest.raises(PolicyServerError, match=r"upstream \S+: upstream \S+: server busy"):
                robot.get_action(observation())
            for relay in (relay_b, relay_a):  # relay A reads its answer through relay B's "upstream ADDR: "
                samples = scrape_settled(relay, 3)
                assert requests_count(samples, "get_action", "refused") == 1, "the upstream's refused counted otherwise"
                assert requests_count(samples, "get_action", "error") == 0
                assert_no_policy_call(relay, samples)
    finally:
        policy.gate.set()


def test_an_upstreams_stop_that_did_not_run_the_request_is_no_policy_call_at_every_relay_of_a_chain():
    policy = Upstream(gate=threading.Event())
    answers = []

    def robot_call(robot):
        try:
            robot.get_action(observation())
        except PolicyServerError as exc:
            answers.append(exc)

    try:
        with relay_chain_counts_case(policy, {}) as (upstream, relay_b, relay_a, robot):
            relayed = threading.Thread(target=robot_call, args=(robot,), daemon=True)
            relayed.start()
            wait_for_queue_depth(upstream, 2)  # the robot's request waits upstream behind the held one
            upstream.stop()  # answers the waiting request "server is shutting down; 'get_action' was not run"
            relayed.join(10)
            assert len(answers) == 1 and "'get_action' was not run" in str(answers[0]), answers
            for relay in (relay_b, relay_a):  # relay A gets relay B's UpstreamFailure naming the upstream's stop
                samples = scrape_settled(relay, 3)
                assert requests_count(samples, "get_action", "error") == 1
                assert_no_policy_call(relay, samples)
    finally:
        policy.gate.set()


@pytest.mark.parametrize("message, did_not_run", [
    ("server is shutting down; 'get_action' was not passed to the upstream at tcp://127.0.0.1:5555", True),
    ("server is shutting down; 'get_action' was ended before the upstream at tcp://127.0.0.1:5555 answered", False),
])
def test_a_relays_own_stop_answer_for_a_request_it_never_passed_upstream_is_not_run(message, did_not_run):
    from gr00t_client.client_errors import server_error
    # as the relay one hop nearer the robot gets it
    assert relay_module.upstream_did_not_run(server_error(message, "get_action")) is did_not_run
