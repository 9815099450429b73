"""A server restarted with another policy whose first answers are error replies (another dataset with fewer episodes,
a session it never saw) stops the run as `aborted`, naming the new policy, exactly as when its first answer is a
success. Before, the check for another policy ran only after a successful reset or get_action: the run went on
against the other policy, scored each refusal as its own trajectory's or episode's error ("episode_index out of
range", "session was dropped") and ended `complete`. Real PolicyServers on loopback, restarted between two requests;
the real client, open-loop, runner and CLI."""

from __future__ import annotations

import json
import threading

import pytest

from eval.scale_fixtures import Checkpoint, run_cli
# the module pytest imports (its env registration and PushEnv hook are that module's: a second copy under another
# name re-registered the env, and its tests' restarts never ran)
from test_served_policy_swap import OBSERVATION, STEPS, PushEnv, restart_after, serving_in_turn
from gr00t_client import PolicyClient, PolicyServerError
from gr00t_eval.rollout import run_rollout
from gr00t_eval.rollout.liveness import PolicyServerUnreachableError


class SessionCheckpoint(Checkpoint):
    """A checkpoint whose server keeps per-client sessions (as a replay's or a stateful policy's does): a restarted
    server refuses a get_action of a session it never saw."""

    stateful_sessions = True


class RefusingCheckpoint(Checkpoint):
    """Another checkpoint that refuses every reset, as a replay of a shorter dataset refuses an episode past its end."""

    def reset(self, options=None):
        raise IndexError("episode_index 2 out of range: the dataset has 1 episodes (0..0)")


def test_open_loop_stops_when_the_restarted_server_refuses_the_next_trajectory(tmp_path):
    from eval.dataset_factory import make_dataset
    from gr00t_eval.open_loop import OpenLoopConfig, evaluate_open_loop
    from gr00t_eval.policy_identity import ServedPolicyChanged
    from gr00t_server.policies.replay import ReplayPolicy

    recorded = make_dataset(tmp_path / "a", lengths=(6, 9, 4))
    shorter = make_dataset(tmp_path / "b", lengths=(6,))  # another dataset, of one episode: trajectory 1 is refused
    server = serving_in_turn(ReplayPolicy(recorded, execution_horizon=3), ReplayPolicy(shorter, execution_horizon=3))
    lines = []

    def report(line):
        lines.append(line)
        if line.startswith("MSE for trajectory 0"):
            server.restart(reconnecting=1)  # between two trajectories: the next request is trajectory 1's reset

    try:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            config = OpenLoopConfig(str(recorded), traj_ids=[0, 1, 2], execution_horizon=3, plot=False,
                                    output_dir=str(tmp_path / "out"))
            with pytest.raises(ServedPolicyChanged, match="now serves ReplayPolicy .*this run evaluates ReplayPolicy"):
                evaluate_open_loop(client, config, report=report, progress=False)
    finally:
        server.stop()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["status"] == "aborted" and "now serves" in saved["stop_reason"]
    assert list(saved["trajectories"]) == ["0"] and saved["not_run_trajectories"] == [1, 2]
    assert not saved["errored_trajectories"]  # the refusal is not trajectory 1's error
    assert not any("out of range" in line or "errored" in line for line in lines)


@pytest.fixture
def swapped_to_refusing():
    """Checkpoint A, then (after 2 episodes, between two requests) one that refuses every reset."""
    server = serving_in_turn(Checkpoint("A"), RefusingCheckpoint("B"))
    restart_after(server, 2 * STEPS)
    yield server
    PushEnv.on_step = None
    server.stop()


@pytest.fixture
def swapped_mid_episode():
    """Checkpoint A, then (in episode 2, between two get_actions) B, which never saw this client's session."""
    server = serving_in_turn(SessionCheckpoint("A"), SessionCheckpoint("B"))
    restart_after(server, 2 * STEPS + 1)
    yield server
    PushEnv.on_step = None
    server.stop()


def rollout_argv(port, out, n_action_steps):
    return ["rollout", "--env-name", "pushcheck/any", "--n-episodes", "4", "--n-envs", "1", "--seed", "0",
            "--n-action-steps", str(n_action_steps), "--max-episode-steps", str(STEPS), "--output-dir", str(out),
            "--policy-client-port", str(port), "--no-video", "--allow-errors"]


def assert_aborted_for_the_swap(out, finished):
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "aborted"
    assert "now serves" in results["stop_reason"]
    assert "checkpoint B" in results["stop_reason"] and results["policy"]["identity"]["checkpoint"] == "A"
    assert [(e["episode_index"], e["success"], e["error"]) for e in results["per_episode"]] == finished
    assert results["overall"]["n_errors"] == 0  # no refusal of B is counted as an episode's error


def test_a_rollout_stops_when_the_restarted_server_refuses_its_reset(swapped_to_refusing, tmp_path):
    out = tmp_path / "run"
    code = run_cli(rollout_argv(swapped_to_refusing.port, out, STEPS))
    assert code != 0
    assert_aborted_for_the_swap(out, [(0, True, None), (1, True, None)])


def test_a_rollout_stops_when_the_restarted_server_does_not_know_its_session(swapped_mid_episode, tmp_path):
    out = tmp_path / "run"
    code = run_cli(rollout_argv(swapped_mid_episode.port, out, 1))  # a get_action each step: one lands on B mid-episode
    assert code != 0
    assert_aborted_for_the_swap(out, [(0, True, None), (1, True, None)])


def test_run_rollout_raises_the_policy_change_not_the_refusal(swapped_to_refusing):
    scored = []
    with PolicyClient("127.0.0.1", swapped_to_refusing.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerUnreachableError, match=r"now serves RefusingCheckpoint .*checkpoint B") as raised:
            run_rollout(client, config_for_api(), progress=False, on_episode=scored.append)
    assert "out of range" not in str(raised.value)
    assert [(o.episode_index, o.error) for o in scored] == [(0, None), (1, None)]


def config_for_api():
    from gr00t_eval.rollout import RolloutConfig

    return RolloutConfig(env_name="pushcheck/any", n_episodes=4, n_envs=1, n_action_steps=STEPS,
                         max_episode_steps=STEPS, vectorization="sync", seed=0)


def test_an_error_reply_from_a_restart_with_the_same_policy_is_raised_as_it_is_once_checked():
    from gr00t_eval.policy_identity import check_serves, policy_record

    server = serving_in_turn(SessionCheckpoint("A"), SessionCheckpoint("A"))
    checks = []
    try:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            record = policy_record(client)
            client.on_new_server(lambda current: (checks.append(1), check_serves(current, record)))
            client.get_action(OBSERVATION)
            server.restart(reconnecting=1)  # the same checkpoint, without this client's session
            with pytest.raises(PolicyServerError, match="was dropped by the server"):
                client.get_action(OBSERVATION)
            assert checks == [1]  # checked on the refusal, found the same policy, and the refusal raised
            client.reset()
            assert checks == [1]  # not checked again
    finally:
        server.stop()


class HangingInfoCheckpoint(RefusingCheckpoint):
    """Refuses every reset; once it has, its server's get_server_info hangs until `answer` is set (a server that stops
    answering right after its error reply; see hang_info_once_refused)."""

    def __init__(self, name):
        super().__init__(name)
        self.refused, self.answer = threading.Event(), threading.Event()

    def reset(self, options=None):
        self.refused.set()
        super().reset(options)


def hang_info_once_refused(server, policy):
    """Serve `server`'s get_server_info on its worker, in place of the built-in one: once `policy` refused a reset, it
    waits for `policy.answer` first (the server reads a policy's identity once, so the policy cannot hang it itself)."""
    built_in = server._get_server_info

    def get_server_info():
        if policy.refused.is_set():
            policy.answer.wait(10)
        return built_in()

    server.register_endpoint("get_server_info", get_server_info, requires_input=False)


def test_a_check_that_cannot_reach_the_server_is_raised_instead_of_the_refusal_and_stays_due():
    from gr00t_client import PolicyTimeoutError
    from gr00t_eval.policy_identity import ServedPolicyChanged, pinned_policy

    hanging = HangingInfoCheckpoint("B")
    server = serving_in_turn(Checkpoint("A"), hanging)
    try:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=1500) as client, pinned_policy(client):
            client.reset()
            server.restart(reconnecting=1)
            hang_info_once_refused(server.server, hanging)
            # B refused the reset, then could not say which policy it serves: whether that refusal is this run's own
            # error is unknown, so it is not raised as one (a run's liveness rules judge the timeout)
            with pytest.raises(PolicyTimeoutError, match="get_server_info") as raised:
                client.reset()
            assert isinstance(raised.value.__cause__, PolicyServerError)
            assert "out of range" in raised.value.__cause__.server_message
            hanging.answer.set()
            with pytest.raises(ServedPolicyChanged, match="now serves RefusingCheckpoint|now serves HangingInfo"):
                client.reset()  # the check was still due: asked again after the next answer
    finally:
        hanging.answer.set()
        server.stop()
