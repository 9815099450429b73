"""A relay (robot -> a PolicyServer serving a PolicyClient -> the upstream), all on loopback: it reports the
upstream's policy, passes the upstream's errors on by name, re-checks a restarted upstream and answers info
while it waits."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

import numpy as np
import pytest

from gr00t_client import BasePolicy, PolicyClient, PolicyServerError, ServerStoppingError, UpstreamFailedError
from gr00t_client.modality import ModalityConfig
from gr00t_eval.policy_identity import (ServedPolicyChanged, check_serves, pinned_policy, policy_record,
                                        record_from_info, same_policy)
from gr00t_server.serving.server import PolicyServer

from reference_peer import ReferenceClient
from serving import RestartableServer, free_port, router_dealer_broker, running_server

LANGUAGE = "annotation.human.action.task_description"
CONFIGS = {
    "video": ModalityConfig(delta_indices=[0], modality_keys=["image"]),
    "state": ModalityConfig(delta_indices=[0], modality_keys=["arm"]),
    "action": ModalityConfig(delta_indices=[0, 1], modality_keys=["arm"]),
    "language": ModalityConfig(delta_indices=[0], modality_keys=[LANGUAGE]),
}


class Checkpoint(BasePolicy):
    """A model stand-in answering `value`; identity() names its checkpoint; `gate`, when given, holds each call."""

    observation_format = "nested"

    def __init__(self, value: float = 1.0, name: str = "A", strict: bool = False, gate=None):
        super().__init__(strict=strict)
        self.value, self.name, self.gate = value, name, gate
        self.entered = threading.Event()

    def get_modality_config(self):
        return CONFIGS

    def identity(self):
        return {"kind": "test", "checkpoint": self.name}

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        rows = len(observation["language"][LANGUAGE])
        return {"arm": np.full((rows, 2, 3), self.value, np.float32)}, {}


class SessionKeeping(Checkpoint):
    stateful_sessions = True


def observation():
    return {"video": {"image": np.zeros((1, 1, 8, 8, 3), np.uint8)},
            "state": {"arm": np.zeros((1, 1, 3), np.float32)},
            "language": {LANGUAGE: [["pick"]]}}


@contextlib.contextmanager
def relay_of(port: int, timeout_ms: int = 5000) -> Iterator[Any]:
    with PolicyClient("127.0.0.1", port, timeout_ms=timeout_ms) as upstream_client:
        with running_server(upstream_client) as relay:
            yield relay


def test_relay_reports_the_upstreams_class_identity_tag_and_observation_format():
    with running_server(Checkpoint(name="A"), embodiment_tag="new_embodiment") as upstream, \
            relay_of(upstream.port) as relay, PolicyClient("127.0.0.1", relay.port) as robot:
        info = robot.get_server_info()
    assert info["policy_class"] == "PolicyClient -> Checkpoint"
    assert info["policy_identity"] == {"kind": "test", "checkpoint": "A"}
    assert info["embodiment_tag"] == "new_embodiment"
    assert info["observation_format"] == "nested"


class Computing(Checkpoint):
    """Checkpoint A computed in `dtype`, as a Gr00tPolicy reports what computes its actions (runtime())."""

    def __init__(self, dtype: str, value: float = 1.0):
        super().__init__(value, "A")
        self.dtype = dtype

    def runtime(self):
        return {"dtype": self.dtype, "device": "cpu", "inference_mode": "pytorch"}


def test_relay_reports_the_upstreams_runtime_so_fp32_and_bf16_upstreams_are_two_policies():
    infos = {}
    for dtype in ("float32", "bfloat16"):
        with running_server(Computing(dtype)) as upstream, relay_of(upstream.port) as relay, \
                PolicyClient("127.0.0.1", relay.port) as robot:
            infos[dtype] = robot.get_server_info()
    assert infos["float32"]["runtime"] == {"dtype": "float32", "device": "cpu", "inference_mode": "pytorch"}
    assert infos["bfloat16"]["runtime"]["dtype"] == "bfloat16"
    assert not same_policy(record_from_info(infos["float32"]), record_from_info(infos["bfloat16"]))


def test_a_relay_whose_chain_says_its_own_runtime_reports_that_over_the_upstreams():
    class Recomputing(BasePolicy):
        """A wrapper in front of the relay's client that says what computes its actions itself."""

        def __init__(self, policy):
            super().__init__()
            self.policy = policy

        def runtime(self):
            return {"dtype": "float16", "device": "cpu", "inference_mode": "pytorch"}

        def get_modality_config(self):
            return self.policy.get_modality_config()

        def reset(self, options=None):
            return self.policy.reset(options)

        def _get_action(self, observation, options=None):
            return self.policy.get_action(observation, options)

    with running_server(Computing("float32")) as upstream, \
            PolicyClient("127.0.0.1", upstream.port, timeout_ms=5000) as upstream_client, \
            running_server(Recomputing(upstream_client)) as relay, PolicyClient("127.0.0.1", relay.port) as robot:
        info = robot.get_server_info()
    assert info["policy_identity"] == {"kind": "test", "checkpoint": "A"}
    assert info["runtime"]["dtype"] == "float16"


def test_pinned_policy_through_a_relay_stops_when_the_upstream_restarts_in_another_dtype_naming_the_flag():
    upstream = RestartableServer(lambda: Computing("float32"))
    try:
        with relay_of(upstream.port) as relay, PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot:
            record = policy_record(robot)
            with pinned_policy(robot, record):
                robot.get_action(observation())
                upstream.make_policy = lambda: Computing("bfloat16")
                upstream.restart(reconnecting=1)
                computed = "dtype bfloat16 on the server and float32 in this run"
                with pytest.raises(ServedPolicyChanged, match=computed) as stopped:
                    for _ in range(3):
                        robot.get_action(observation())
    finally:
        upstream.stop()
    assert "--dtype float32" in str(stopped.value)


def test_pinned_policy_through_a_relay_stops_when_the_upstream_serves_another_checkpoint():
    upstream = RestartableServer(lambda: Checkpoint(1.0, "A"))
    try:
        with relay_of(upstream.port) as relay, PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot:
            record = policy_record(robot)
            with pinned_policy(robot, record):
                robot.get_action(observation())
                upstream.make_policy = lambda: Checkpoint(7.0, "B")
                upstream.restart(reconnecting=1)
                with pytest.raises(ServedPolicyChanged, match="checkpoint B"):
                    for _ in range(3):
                        robot.get_action(observation())
    finally:
        upstream.stop()


@pytest.mark.parametrize("second, current, refusal", [
    (lambda: Computing("bfloat16"), {"runtime": {"dtype": "bfloat16", "device": "cpu", "inference_mode": "pytorch"}},
     "dtype bfloat16 on the server and float32 in this run"),
    (lambda: Checkpoint(7.0, "B"), {"identity": {"kind": "test", "checkpoint": "B"}}, "checkpoint B"),
], ids=["dtype", "checkpoint"])
def test_a_robot_connecting_after_the_upstream_restarted_while_the_relay_idled_is_told_the_upstreams_current_policy(
        second, current, refusal):
    """A `rollout --resume` through a relay after its upstream was restarted with other flags (or another checkpoint)
    while no robot was connected: the relay asks its upstream again for a new robot, so the resume is refused as it
    would be against the upstream itself, not told the policy it served before."""
    upstream = RestartableServer(lambda: Computing("float32"))
    try:
        with relay_of(upstream.port) as relay:
            with PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot:
                recorded = policy_record(robot)  # the run's record
                robot.get_action(observation())
            upstream.make_policy = second
            upstream.restart(reconnecting=1)
            with PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot:
                told = policy_record(robot)
                assert {key: told.get(key) for key in current} == current
                with pytest.raises(ServedPolicyChanged, match=refusal):
                    check_serves(robot, recorded)  # the resume's refusal
    finally:
        upstream.stop()


def test_a_robot_connecting_to_a_relay_of_a_relay_after_the_upstream_restarted_is_told_the_upstreams_current_policy():
    """robot -> relay A -> relay B -> upstream, the upstream restarted with another checkpoint while the chain idled:
    A's connection to B is old, so A marks its question to B as a new robot's, and B asks its upstream in turn; the
    resume is refused as it would be against the upstream itself, and the old policy is never pinned."""
    upstream = RestartableServer(lambda: Checkpoint(1.0, "A"))
    try:
        with relay_of(upstream.port) as relay_b, relay_of(relay_b.port) as relay_a:
            with PolicyClient("127.0.0.1", relay_a.port, timeout_ms=5000) as robot:
                recorded = policy_record(robot)  # the run's record
                robot.get_action(observation())
            upstream.make_policy = lambda: Checkpoint(7.0, "B")
            upstream.restart(reconnecting=1)  # relay B's client
            with PolicyClient("127.0.0.1", relay_a.port, timeout_ms=5000) as robot:
                assert policy_record(robot)["identity"] == {"kind": "test", "checkpoint": "B"}
                with pytest.raises(ServedPolicyChanged, match="checkpoint B"):
                    check_serves(robot, recorded)  # the resume's refusal
                action, _ = robot.get_action(observation())
            assert np.all(action["arm"] == 7.0)
    finally:
        upstream.stop()


def test_a_new_robots_info_through_a_relay_whose_upstream_is_down_is_refused_not_answered_with_the_old_policy():
    """Whether the upstream came back with another policy cannot be told: "ask again"; pings are still answered."""
    upstream = RestartableServer(lambda: Checkpoint())
    port = upstream.port
    refused = []
    try:
        with relay_of(port, timeout_ms=1000) as relay:
            with PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot:
                robot.get_action(observation())  # the relay learnt its upstream's policy
            upstream.stop()
            with PolicyClient("127.0.0.1", relay.port, timeout_ms=10_000) as robot, \
                    PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as watcher:
                def ask():
                    try:
                        robot.get_server_info()
                    except UpstreamFailedError as exc:
                        refused.append(exc)
                asking = threading.Thread(target=ask, daemon=True)
                asking.start()
                assert watcher.ping()  # on the relay's socket thread: never behind the worker's question upstream
                asking.join(15)
    finally:
        with contextlib.suppress(Exception):
            upstream.stop()
    assert len(refused) == 1
    assert (f"at tcp://127.0.0.1:{port}: what it serves now is not known (it did not answer this relay's check for a "
            "new connection") in str(refused[0])


def test_an_upstream_refusal_reaches_the_robot_with_its_words_and_the_upstreams_address():
    with running_server(Checkpoint(strict=True)) as upstream, relay_of(upstream.port) as relay, \
            PolicyClient("127.0.0.1", relay.port) as robot:
        wrong = observation()
        wrong["state"] = {"leg": np.zeros((1, 1, 3), np.float32)}
        with pytest.raises(PolicyServerError) as refused:
            robot.get_action(wrong)
        internal_errors = relay.stats.snapshot().get("internal_errors")
    assert f"upstream tcp://127.0.0.1:{upstream.port}: ObservationError: State key 'arm' is missing" in str(refused.value)
    assert not isinstance(refused.value, ConnectionError)  # the robot's mistake, not a server gone
    assert not internal_errors


def test_a_dead_upstream_is_a_connection_error_naming_the_upstream():
    upstream = RestartableServer(lambda: Checkpoint())
    port = upstream.port
    try:
        with relay_of(port, timeout_ms=1000) as relay, PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot:
            robot.get_action(observation())
            upstream.stop()  # the upstream dies (a crash, a host reboot)
            # a ConnectionError: gr00t-eval's liveness counts it as a server gone, not as the robot's mistake
            with pytest.raises(ConnectionError, match=f"upstream policy server failed at tcp://127.0.0.1:{port}"):
                robot.get_action(observation())
    finally:
        with contextlib.suppress(Exception):
            upstream.stop()


def test_the_robots_deadline_is_passed_upstream_so_a_hung_upstream_is_named_in_time():
    gate = threading.Event()
    try:
        with running_server(Checkpoint(gate=gate)) as upstream, relay_of(upstream.port, timeout_ms=60_000) as relay, \
                PolicyClient("127.0.0.1", relay.port, timeout_ms=2000) as robot:
            with pytest.raises(ConnectionError, match=f"upstream policy server failed at tcp://127.0.0.1:{upstream.port}"):
                robot.get_action(observation())
            gate.set()
    finally:
        gate.set()


def test_a_relay_answers_get_server_info_while_an_upstream_call_runs():
    gate = threading.Event()
    policy = Checkpoint(gate=gate)
    try:
        with running_server(policy) as upstream, relay_of(upstream.port) as relay, \
                PolicyClient("127.0.0.1", relay.port, timeout_ms=15_000) as robot_a, \
                PolicyClient("127.0.0.1", relay.port, timeout_ms=2000) as robot_b:
            robot_b.get_server_info()  # learnt before A's call holds the relay's client
            calling = threading.Thread(target=robot_a.get_action, args=(observation(),), daemon=True)
            calling.start()
            assert policy.entered.wait(10)
            info = robot_b.get_server_info()  # on the relay's socket thread: never behind the upstream call
            configs = robot_b.call_endpoint("get_modality_config", requires_input=False)
            gate.set()
            calling.join(10)
    finally:
        gate.set()
    assert info["policy_identity"] == {"kind": "test", "checkpoint": "A"}
    assert set(configs) == set(CONFIGS)


def test_a_new_robot_connecting_while_an_upstream_call_runs_is_answered_at_once():
    """A connection new to the relay is asked for upstream on its worker only while that is idle: behind a 10 s
    forwarded call, a new robot with a 1 s timeout could not connect (its client asks get_server_info first)."""
    gate = threading.Event()
    gate.set()  # robot A's first call passes
    policy = Checkpoint(gate=gate)
    try:
        with running_server(policy) as upstream, relay_of(upstream.port, timeout_ms=15_000) as relay, \
                PolicyClient("127.0.0.1", relay.port, timeout_ms=15_000) as robot_a:
            robot_a.get_action(observation())
            gate.clear()
            policy.entered.clear()
            calling = threading.Thread(target=robot_a.get_action, args=(observation(),), daemon=True)
            calling.start()
            assert policy.entered.wait(10)
            with PolicyClient("127.0.0.1", relay.port, timeout_ms=1000) as robot_b:
                info = robot_b.get_server_info()
            gate.set()
            calling.join(10)
    finally:
        gate.set()
    assert info["policy_identity"] == {"kind": "test", "checkpoint": "A"}


class LongerChunks(Checkpoint):
    def get_modality_config(self):
        return {**CONFIGS, "action": ModalityConfig(delta_indices=[0, 1, 2, 3], modality_keys=["arm"])}


def test_a_new_reference_robot_asking_configs_after_the_upstream_restarted_is_told_the_upstreams_current_ones():
    """A reference robot asks no get_server_info: its first get_modality_config through a relay that idled while its
    upstream restarted with 4-step chunks was answered with the old 2-step configs."""
    upstream = RestartableServer(lambda: Checkpoint(1.0, "A"))
    try:
        with relay_of(upstream.port) as relay:
            with PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot:
                robot.get_action(observation())
            upstream.make_policy = lambda: LongerChunks(7.0, "B")
            upstream.restart(reconnecting=1)
            with ReferenceClient(relay.port, timeout_ms=5000) as reference_robot:
                configs = reference_robot.call_endpoint("get_modality_config")
    finally:
        upstream.stop()
    assert configs["action"].as_json["delta_indices"] == [0, 1, 2, 3]


def test_robots_behind_a_router_dealer_proxy_connecting_after_the_upstream_restarted_are_told_its_current_policy():
    """Robots behind one ROUTER-DEALER proxy share its one connection to the relay: each is still new to the relay
    (told apart by the identity frames the proxy adds), so a reference robot and our client connecting after the
    upstream restarted with 4-step chunks while the relay idled are told checkpoint B's, not what an earlier robot was
    told."""
    upstream = RestartableServer(lambda: Checkpoint(1.0, "A"))
    try:
        with router_dealer_broker() as (front, back), \
                PolicyClient("127.0.0.1", upstream.port, timeout_ms=5000) as upstream_client, \
                running_server(upstream_client, port=back):
            with PolicyClient("127.0.0.1", front, timeout_ms=5000) as robot:
                robot.get_action(observation())
            upstream.make_policy = lambda: LongerChunks(7.0, "B")
            upstream.restart(reconnecting=1)
            with ReferenceClient(front, timeout_ms=5000) as reference_robot:
                configs = reference_robot.call_endpoint("get_modality_config")
            with PolicyClient("127.0.0.1", front, timeout_ms=5000) as robot:
                identity = robot.get_server_info()["policy_identity"]
    finally:
        upstream.stop()
    assert configs["action"].as_json["delta_indices"] == [0, 1, 2, 3]
    assert identity == {"kind": "test", "checkpoint": "B"}


def test_an_upstream_restarted_with_a_session_keeping_policy_is_refused_naming_the_shared_session():
    upstream = RestartableServer(lambda: Checkpoint())
    try:
        with relay_of(upstream.port) as relay, PolicyClient("127.0.0.1", relay.port) as robot:
            robot.reset()
            upstream.make_policy = SessionKeeping
            upstream.restart(reconnecting=1)
            with pytest.raises(PolicyServerError, match="would share its one session"):
                for _ in range(2):  # the reconnection may be seen by the first forwarded call itself
                    robot.reset()
    finally:
        upstream.stop()


def test_a_dead_upstream_stops_an_evaluation_as_requests_that_keep_failing():
    from gr00t_eval.rollout.liveness import ServerWatch

    upstream = RestartableServer(lambda: Checkpoint())
    port = upstream.port
    try:
        with relay_of(port, timeout_ms=1000) as relay, PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot:
            robot.get_action(observation())
            upstream.stop()
            watch, reasons = ServerWatch(robot), []
            for _ in range(watch.max_consecutive_timeouts):
                with pytest.raises(ConnectionError) as failed:
                    robot.get_action(observation())
                reasons.append(watch.unreachable_reason(failed.value))
    finally:
        with contextlib.suppress(Exception):
            upstream.stop()
    assert reasons[:-1] == [None] * (len(reasons) - 1)  # the relay answers pings: not stopped at the first
    assert f"upstream policy server failed at tcp://127.0.0.1:{port}" in reasons[-1]


def test_a_relay_started_before_its_upstream_serves_a_strict_robot_once_the_upstream_is_up():
    port = free_port()
    with relay_of(port, timeout_ms=500) as relay, \
            PolicyClient("127.0.0.1", relay.port, timeout_ms=5000, strict=True) as robot:
        assert robot.ping()  # answered once the relay serves: its start-up questions to the upstream found nobody
        with running_server(Checkpoint(name="A"), port=port):
            configs = robot.get_modality_config()  # asked before any action, as gr00t-eval's rollout does
            action, _ = robot.get_action(observation())
            record = policy_record(robot)
    assert set(configs) == set(CONFIGS)
    assert action["arm"].shape == (1, 2, 3)
    assert record["policy_class"] == "PolicyClient -> Checkpoint"
    assert record["identity"] == {"kind": "test", "checkpoint": "A"}


def test_after_an_upstream_timeout_a_relay_reports_the_policy_it_last_learnt():
    gate = threading.Event()
    gate.set()
    try:
        with running_server(Checkpoint(name="A", gate=gate), embodiment_tag="new_embodiment") as upstream, \
                relay_of(upstream.port, timeout_ms=1000) as relay, \
                PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot, \
                PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as other_robot:
            robot.get_action(observation())
            pinned = policy_record(robot)
            gate.clear()  # the upstream hangs: the relay's client times out and forgets what it learnt
            with pytest.raises(UpstreamFailedError):
                other_robot.get_action(observation())
            info = robot.get_server_info()
            check_serves(robot, pinned)  # the same checkpoint: no ServedPolicyChanged
            gate.set()
    finally:
        gate.set()
    assert info["policy_class"] == "PolicyClient -> Checkpoint"
    assert info["policy_identity"] == {"kind": "test", "checkpoint": "A"}
    assert info["embodiment_tag"] == "new_embodiment"


def test_a_robot_with_a_short_timeout_is_served_through_a_relay():
    with running_server(Checkpoint()) as upstream, \
            PolicyClient("127.0.0.1", upstream.port, timeout_ms=5000) as upstream_client, \
            running_server(upstream_client) as relay, \
            PolicyClient("127.0.0.1", relay.port, timeout_ms=150) as robot:
        actions = [robot.get_action(observation())[0] for _ in range(3)]
        changes = upstream_client.server_changes
    assert all(action["arm"].shape == (1, 2, 3) for action in actions)
    assert changes == 0  # no upstream call timed out


def test_the_relays_margin_is_a_fifth_of_a_short_budget_and_200_ms_of_a_long_one():
    from gr00t_server.serving.relay import upstream_deadline

    assert upstream_deadline(100.1, now=100.0) == pytest.approx(100.08)
    assert upstream_deadline(110.0, now=100.0) == pytest.approx(109.8)
    assert upstream_deadline(None, now=100.0) is None


def test_behind_two_relays_a_dead_upstream_is_still_an_upstream_failure():
    upstream = RestartableServer(lambda: Checkpoint())
    port = upstream.port
    try:
        with relay_of(port, timeout_ms=1000) as relay2, relay_of(relay2.port, timeout_ms=3000) as relay1, \
                PolicyClient("127.0.0.1", relay1.port, timeout_ms=5000) as robot:
            robot.get_action(observation())
            upstream.stop()
            with pytest.raises(UpstreamFailedError, match=f"upstream policy server failed at tcp://127.0.0.1:{port}"):
                robot.get_action(observation())
    finally:
        with contextlib.suppress(Exception):
            upstream.stop()


def test_open_loop_through_a_relay_stops_when_the_upstream_is_gone(tmp_path):
    from eval.dataset_factory import make_dataset
    from gr00t_eval.open_loop import OpenLoopConfig, evaluate_open_loop
    from gr00t_server.policies import ReplayPolicy

    class StopsAtTheSecondTrajectory(ReplayPolicy):
        """A replay without sessions (a relay may serve it) whose server goes away (a crash, a node drained) when
        the second trajectory starts."""

        stateful_sessions = False
        server: Any = None

        def reset(self, options=None):
            if options and options.get("episode_index") == 1:
                threading.Thread(target=self.server.stop, daemon=True).start()
                time.sleep(0.5)  # the stop is under way before this reset answers
            return super().reset(options)

    dataset = make_dataset(tmp_path / "dataset", lengths=(5, 5, 5), cameras=())
    policy = StopsAtTheSecondTrajectory(str(dataset), execution_horizon=5)
    config = OpenLoopConfig(str(dataset), traj_ids=[0, 1, 2], execution_horizon=5, plot=False,
                            output_dir=str(tmp_path / "out"))
    with running_server(policy, shutdown_timeout_s=0.2) as upstream, \
            relay_of(upstream.port, timeout_ms=1000) as relay, \
            PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot:
        policy.server = upstream
        with pytest.raises(ConnectionError, match="upstream policy server failed"):
            evaluate_open_loop(robot, config, report=lambda line: None, progress=False)


def test_an_upstream_refusing_the_relays_token_is_named_as_the_relays_not_the_robots():
    from gr00t_eval.rollout.liveness import ServerWatch

    with running_server(Checkpoint(), api_token="upstream-secret") as upstream, relay_of(upstream.port) as relay, \
            PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot:
        with pytest.raises(UpstreamFailedError) as failed:
            robot.get_action(observation())
        reason = ServerWatch(robot).unreachable_reason(failed.value)
    assert "the relay's upstream" in reason
    assert "requires another API token" not in reason  # the robot's token is not the one refused


class FailsOnItsInput(Checkpoint):
    """A model stand-in whose get_action raises (a bug for one input): its server answers an internal error."""

    def _get_action(self, observation, options=None):
        raise RuntimeError("model failed on this input")


class SlowConfigs(Checkpoint):
    """A model stand-in whose configs load slowly once `armed`: `asked` is set, then get_modality_config waits for
    `gate` (its server reads them once per policy object: swapped in, on the first request that asks, by its worker)."""

    def __init__(self, gate, name: str = "A"):
        super().__init__(name=name)
        self.config_gate, self.armed, self.asked = gate, False, threading.Event()

    def get_modality_config(self):
        if self.armed:
            self.asked.set()
            self.config_gate.wait(10)
        return CONFIGS


def test_behind_two_relays_started_before_their_upstream_the_robot_learns_its_policy_once_it_is_up():
    port = free_port()
    with relay_of(port, timeout_ms=800) as relay2, relay_of(relay2.port, timeout_ms=3000) as relay1, \
            PolicyClient("127.0.0.1", relay1.port, timeout_ms=5000) as robot:
        with running_server(Checkpoint(name="A"), port=port):
            for _ in range(3):  # the first may still meet the outage
                with contextlib.suppress(UpstreamFailedError):
                    robot.get_action(observation())
            robot.get_action(observation())
            info = robot.get_server_info()
    # relay2's "not known yet" while the upstream was down is not kept by relay1 as the upstream's policy
    assert info["policy_class"] == "PolicyClient -> PolicyClient -> Checkpoint"
    assert info["policy_identity"] == {"kind": "test", "checkpoint": "A"}


def test_a_relay_that_knows_nothing_of_its_upstream_refuses_info_and_is_not_taken_for_a_reference_server():
    port = free_port()
    with relay_of(port, timeout_ms=500) as relay, PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot:
        with pytest.raises(UpstreamFailedError, match=f"upstream policy server failed at tcp://127.0.0.1:{port}"):
            robot.get_action(observation())  # its first call asks get_server_info: refused, to be asked again
        undecided = robot.server_is_gr00t_server
        with running_server(Checkpoint(name="A"), port=port):
            action, _ = robot.get_action(observation())
            info = robot.get_server_info()
        decided = robot.server_is_gr00t_server
    assert undecided is None  # neither a gr00t-server with placeholder facts nor a reference server
    assert decided is True
    assert action["arm"].shape == (1, 2, 3)
    assert info["policy_identity"] == {"kind": "test", "checkpoint": "A"}


def test_an_upstreams_internal_error_reaches_the_robot_as_a_refusal_not_as_a_server_gone():
    with running_server(FailsOnItsInput()) as upstream, relay_of(upstream.port) as relay, \
            PolicyClient("127.0.0.1", relay.port, timeout_ms=5000) as robot:
        with pytest.raises(PolicyServerError) as failed:
            robot.get_action(observation())
    assert failed.value.server_message.startswith(
        f"upstream tcp://127.0.0.1:{upstream.port}: internal error in get_action: RuntimeError"), str(failed.value)
    assert not isinstance(failed.value, ConnectionError)  # the upstream answered: gr00t-eval scores that input failed


def test_a_relays_worker_asks_an_unknown_upstreams_facts_within_the_start_up_bound_not_the_robots_budget(monkeypatch):
    import re

    from gr00t_server.serving import builtin_endpoints, sessions

    monkeypatch.setattr(builtin_endpoints, "FACTS_AT_START_TIMEOUT_MS", 400)
    monkeypatch.setattr(sessions, "FACTS_AT_START_TIMEOUT_MS", 400)
    port = free_port()  # nothing listens there
    with relay_of(port, timeout_ms=60_000) as relay, \
            PolicyClient("127.0.0.1", relay.port, timeout_ms=8000) as robot:
        with pytest.raises(UpstreamFailedError) as failed:
            robot.get_server_info()
    budget = re.search(r"did not answer 'get_server_info' within (\d+) ms", str(failed.value))
    assert budget is not None, str(failed.value)
    assert int(budget.group(1)) <= 400, str(failed.value)


def test_a_robots_get_action_to_a_relay_that_knows_nothing_asks_the_upstreams_facts_within_the_start_up_bound(
        monkeypatch):
    """The facts question before a forwarded call took the robot's whole budget, and a Ctrl-C of the relay waited it
    out; it is the relay's own question, bounded as the info path's is."""
    import re

    from gr00t_server.serving import builtin_endpoints

    monkeypatch.setattr(builtin_endpoints, "FACTS_AT_START_TIMEOUT_MS", 400)
    port = free_port()  # nothing listens there
    with relay_of(port, timeout_ms=60_000) as relay, \
            PolicyClient("127.0.0.1", relay.port, timeout_ms=8000, strict=False, wire="multipart") as robot:
        with pytest.raises(UpstreamFailedError) as failed:
            robot.get_action(observation())
    budget = re.search(r"did not answer 'get_server_info' within (\d+) ms", str(failed.value))
    assert budget is not None, str(failed.value)
    assert int(budget.group(1)) <= 400, str(failed.value)


def _relay_stopped_with_a_call_upstream(answer_after_s=None):
    """A relay stopped while its upstream holds a robot's get_action (answered `answer_after_s` after the stop, or
    not before the stop ends): (what the robot got: {"action"} or {"error"}, the upstream's port, whether the relay's
    run() is still alive, the upstream's info asked through the relay's client after the stop)."""
    gate = threading.Event()
    upstream_policy = Checkpoint(gate=gate)
    outcome: dict = {}
    try:
        with running_server(upstream_policy) as upstream, \
                PolicyClient("127.0.0.1", upstream.port, timeout_ms=60_000) as upstream_client:
            relay = PolicyServer(upstream_client, host="127.0.0.1", port=0, shutdown_timeout_s=8)
            relay.start()
            serving = threading.Thread(target=relay.run, daemon=True)
            serving.start()
            with PolicyClient("127.0.0.1", relay.port, timeout_ms=30_000) as robot:
                def call():
                    try:
                        outcome["action"] = robot.get_action(observation())
                    except Exception as exc:  # noqa: BLE001 - what the robot is told
                        outcome["error"] = exc

                calling = threading.Thread(target=call, daemon=True)
                calling.start()
                assert upstream_policy.entered.wait(10)  # the upstream holds the forwarded call
                relay.stop()
                if answer_after_s is not None:
                    threading.Timer(answer_after_s, gate.set).start()
                calling.join(20)
                serving.join(20)
            after_stop = upstream_client.get_server_info()  # the relay's stop left the caller's client open
    finally:
        gate.set()
    return outcome, upstream.port, serving.is_alive(), after_stop


def test_a_relays_stop_ends_its_upstream_call_in_flight_and_tells_the_robot_it_is_shutting_down():
    """The relay's worker waited out the robot's budget on the upstream, and the stop with it."""
    outcome, upstream_port, serving, after_stop = _relay_stopped_with_a_call_upstream()
    error = outcome.get("error")
    assert isinstance(error, ServerStoppingError), f"expected ServerStoppingError, got {outcome!r}"
    assert (f"server is shutting down; 'get_action' was ended before the upstream at tcp://127.0.0.1:{upstream_port} "
            "answered") in str(error), str(error)
    assert not serving
    assert after_stop["policy_identity"] == {"kind": "test", "checkpoint": "A"}


def test_a_relays_stop_lets_an_upstream_call_answered_within_its_wait_reach_the_robot():
    """A stop ended a healthy upstream's call at once: its robot was told "shutting down" for an action that came 0.3 s
    later. A normal server lets a running call finish; a relay gives its upstream RELAY_STOP_WAIT_S."""
    outcome, _port, serving, _info = _relay_stopped_with_a_call_upstream(answer_after_s=0.3)
    assert "error" not in outcome, outcome
    assert "action" in outcome and not serving


def test_a_policy_swap_while_the_worker_learns_the_old_upstreams_facts_is_refused_to_be_asked_again():
    gate = threading.Event()
    port_a = free_port()
    answer: dict = {}
    try:
        with running_server(Checkpoint(name="B")) as upstream_b, \
                PolicyClient("127.0.0.1", upstream_b.port, timeout_ms=5000) as client_b, \
                relay_of(port_a, timeout_ms=1000) as relay, \
                PolicyClient("127.0.0.1", relay.port, timeout_ms=8000) as robot:
            assert robot.ping()  # the relay serves: its start-up questions found no upstream A
            slow = SlowConfigs(gate, name="A")
            with running_server(Checkpoint(name="A"), port=port_a) as upstream_a, \
                    PolicyClient("127.0.0.1", port_a, timeout_ms=5000) as direct:
                assert direct.ping()
                slow.armed = True
                upstream_a.policy = slow  # its configs are read when the relay's worker asks A's info

                def ask():
                    try:
                        answer["info"] = robot.get_server_info()
                    except Exception as exc:  # noqa: BLE001 - what the robot is told
                        answer["error"] = exc

                asking = threading.Thread(target=ask)
                asking.start()
                assert slow.asked.wait(8)  # the relay's worker asks upstream A
                relay.policy = client_b  # the operator points the relay at upstream B
                gate.set()
                asking.join(15)
                again = robot.get_server_info()
    finally:
        gate.set()
    assert "info" not in answer, {key: answer["info"][key] for key in ("policy_class", "modality_configs")}
    # not A's facts under B, nor an internal error in their place: a refusal the robot asks again after
    assert isinstance(answer["error"], UpstreamFailedError) and "ask again" in str(answer["error"]), answer
    assert again["policy_identity"] == {"kind": "test", "checkpoint": "B"}


def test_gr00t_eval_records_model_settings_as_not_applied_through_a_relay_to_a_reference_server():
    """Its check runs before the first get_action, so it reads the relay's info (no model of its own), not the
    options_not_applied of a get_action reply: --denoising-steps and --rtc-frozen-steps are recorded as not applied."""
    from gr00t_eval.applied_settings import settings_not_applied
    from reference_peer import ReferenceServer

    def ignoring_options(observation, options=None):
        return {"arm": np.zeros((1, 2, 1), np.float32)}, {}

    with ReferenceServer({"get_action": ignoring_options}) as reference:
        with PolicyClient(port=reference.port, timeout_ms=5000) as upstream, running_server(upstream) as relay:
            with PolicyClient(port=relay.port, timeout_ms=5000) as robot:
                assert robot.get_server_info()["policy_identity"] is None  # asked first, as open-loop does
                settings = {"denoising_steps": 2, "rtc_frozen_steps": 2}
                assert settings_not_applied(robot, settings) == settings
