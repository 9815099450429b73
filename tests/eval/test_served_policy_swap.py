"""A policy server restarted mid-run with another checkpoint behind the same address (a supervisor bringing a crashed
server back with the latest weights) stops the run as aborted: episodes after the restart were scored as the first
checkpoint's before (a 33% success rate labelled with a checkpoint that scores 100%, status complete, exit 0). A
restart with the same checkpoint goes on. Real PolicyServers on loopback, restarted between two requests by the
env's step hook; the real client, runner and CLI."""

from __future__ import annotations

import json
import string

import gymnasium as gym
import numpy as np
import pytest

from eval.dataset_factory import copy_with_actions_negated, make_dataset
from eval.scale_fixtures import LANGUAGE_KEY, Checkpoint, run_cli
from gr00t_client import EmbodimentTag, PolicyClient
from gr00t_eval.cli_errors import UsageError
from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout
from gr00t_eval.rollout.liveness import PolicyServerUnreachableError
from serving import RestartableServer

STEPS = 3  # steps per episode; one get_action (n_action_steps = STEPS) and one reset each


class PushEnv(gym.Env):
    """Succeeds iff each of its STEPS actions pushes forward; `on_step(total steps)` runs after every step."""

    on_step = None
    taken = 0

    def __init__(self):
        self.observation_space = gym.spaces.Dict({
            "state.position": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
            LANGUAGE_KEY: gym.spaces.Text(max_length=64, charset=string.printable),
        })
        self.action_space = gym.spaces.Dict({"action.push": gym.spaces.Box(-1.0, 1.0, (1,), np.float32)})

    def _obs(self):
        return {"state.position": np.zeros(1, np.float32), LANGUAGE_KEY: "push"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.pushed = 0, True
        return self._obs(), {}

    def step(self, action):
        self.pushed &= float(np.asarray(action["action.push"]).reshape(-1)[0]) > 0
        self.t += 1
        PushEnv.taken += 1
        if PushEnv.on_step is not None:
            PushEnv.on_step(PushEnv.taken)
        done = self.t >= STEPS
        return self._obs(), 0.0, done, False, {"success": done and self.pushed}


register_env_prefix("pushcheck", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: PushEnv())


class PullingCheckpoint(Checkpoint):
    """Another checkpoint of the same embodiment and configs: it pulls, so no episode of it succeeds."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        return {key: -value for key, value in action.items()}, info


def serving_in_turn(*policies):
    """A RestartableServer whose starts serve `policies` in turn (the first now, the next at each restart)."""
    return RestartableServer(iter(policies).__next__)


def restart_after(server, steps):
    """Restart `server` once the envs have taken `steps` steps in all (between two requests)."""
    def on_step(taken):
        if taken == steps:
            server.restart(reconnecting=1)
    PushEnv.taken, PushEnv.on_step = 0, on_step


@pytest.fixture
def swapped():
    """Checkpoint A, then (after 2 episodes) checkpoint B on the same port."""
    server = serving_in_turn(Checkpoint("A"), PullingCheckpoint("B"))
    restart_after(server, 2 * STEPS)
    yield server
    PushEnv.on_step = None
    server.stop()


def config(**overrides):
    settings = dict(env_name="pushcheck/any", n_episodes=4, n_envs=1, n_action_steps=STEPS, max_episode_steps=STEPS,
                    vectorization="sync", seed=0)
    settings.update(overrides)
    return RolloutConfig(**settings)


@pytest.mark.parametrize("chunking", ["off", "async"])
def test_a_run_stops_when_its_server_comes_back_with_another_checkpoint(swapped, chunking):
    scored = []
    with PolicyClient("127.0.0.1", swapped.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerUnreachableError, match=r"now serves Pulling.*checkpoint B.*this run evaluates "
                                                               r"Checkpoint .*checkpoint A"):
            run_rollout(client, config(client_chunking=chunking), progress=False, on_episode=scored.append)
    assert [(o.episode_index, o.success, o.error) for o in scored] == [(0, True, None), (1, True, None)]


def test_a_server_restarted_with_the_same_checkpoint_is_evaluated_on():
    server = serving_in_turn(Checkpoint("A"), Checkpoint("A"))
    restart_after(server, 2 * STEPS)
    try:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            result = run_rollout(client, config(), progress=False)
            assert client.server_changes >= 1  # the restart was seen, and the checkpoint found the same
    finally:
        PushEnv.on_step = None
        server.stop()
    assert [(o.success, o.error) for o in result.outcomes] == [(True, None)] * 4


def test_the_cli_reports_the_run_aborted_naming_both_checkpoints_and_keeps_the_first_episodes(swapped, tmp_path):
    out = tmp_path / "run"
    code = run_cli(["rollout", "--env-name", "pushcheck/any", "--n-episodes", "4", "--n-envs", "1", "--seed", "0",
                    "--n-action-steps", str(STEPS), "--max-episode-steps", str(STEPS), "--output-dir", str(out),
                    "--policy-client-port", str(swapped.port), "--no-video", "--allow-errors"])
    results = json.loads((out / "results.json").read_text())
    assert code != 0 and results["status"] == "aborted"  # --allow-errors does not make a swapped run pass
    assert "now serves" in results["stop_reason"] and "checkpoint B" in results["stop_reason"]
    assert results["policy"]["identity"] == {"kind": "test", "checkpoint": "A"}
    assert [(e["episode_index"], e["success"]) for e in results["per_episode"]] == [(0, True), (1, True)]
    # Resuming against B is refused too (the check made at resume), so no episode of B is ever pooled with A's.
    with pytest.raises(UsageError, match=r"serves PullingCheckpoint .*checkpoint B.*this run started against "
                                         r"Checkpoint .*checkpoint A"):
        run_cli(["rollout", "--resume", str(out), "--no-video", "--policy-client-port", str(swapped.port)])


def test_a_batch_job_whose_server_comes_back_with_another_checkpoint_fails_naming_it(swapped):
    from gr00t_eval.batch import Job, PolicyServerAddress, run_job

    settings = {"n_episodes": 4, "n_envs": 1, "max_episode_steps": STEPS, "n_action_steps": STEPS,
                "vectorization": "sync", "seed": 0}
    record = run_job(Job("swap", "pushcheck/any", PolicyServerAddress("127.0.0.1", swapped.port), settings))
    assert record["status"] == "failed" and "now serves PullingCheckpoint" in record["reason"]
    results = record["results"]
    assert results["status"] == "aborted" and results["policy"]["identity"]["checkpoint"] == "A"
    assert [(e["episode_index"], e["success"]) for e in results["per_episode"]] == [(0, True), (1, True)]


def test_a_ray_shard_that_starts_after_the_swap_is_refused_against_the_runs_policy():
    # Shards start when the cluster has room: one starting after the restart pinned checkpoint B and scored it as A.
    from gr00t_eval.policy_identity import ServedPolicyChanged, policy_record
    from gr00t_eval.ray_runner import run_shard_task

    server = serving_in_turn(Checkpoint("A"), PullingCheckpoint("B"))
    try:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            record = policy_record(client)  # what the driver found before any shard ran
        server.restart()  # B, before this shard starts
        payload = {"env_name": "pushcheck/any", "n_episodes": 2, "n_envs": 1, "n_action_steps": STEPS,
                   "max_episode_steps": STEPS, "vectorization": "sync", "seed": 0}
        items = run_shard_task("pushcheck/any", payload, (0, 1), ("127.0.0.1", server.port), None, 5000, policy=record)
        with pytest.raises(ServedPolicyChanged, match="now serves PullingCheckpoint .*checkpoint B.*evaluates Checkpoint"):
            list(items)
    finally:
        server.stop()


def test_the_check_after_a_reconnection_gets_a_budget_of_its_own():
    # On a slow link the get_action after a restart pays a handshake and a get_server_info; a check asked in what
    # was left of its budget timed out, replaced the socket and so made every later call check and time out again.
    import time

    class SlowCheckpoint(Checkpoint):  # the call itself takes most of the budget
        def _get_action(self, observation, options=None):
            time.sleep(1.5)
            return super()._get_action(observation, options)

    server = serving_in_turn(Checkpoint("A"), SlowCheckpoint("A"))
    budgets = []
    try:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=4000) as client:
            client.get_action(OBSERVATION)
            client.on_new_server(lambda current: budgets.append(current._deadline() - time.monotonic()))
            server.restart(reconnecting=1)
            client.get_action(OBSERVATION)
    finally:
        server.stop()
    assert len(budgets) == 1 and budgets[0] > 3.5  # not the 2.5 s the call left (3.9 left a stalled thread 0.1 s)


def test_a_run_that_cannot_ask_its_server_which_policy_it_serves_says_it_is_not_watched(caplog):
    from eval.scale_fixtures import free_port
    from gr00t_eval.policy_identity import pinned_policy

    with PolicyClient("127.0.0.1", free_port(), timeout_ms=300) as client:
        with caplog.at_level("WARNING"), pinned_policy(client):
            assert client.new_server_check is None
    assert "a restart with another checkpoint during this run will not be noticed" in caplog.text


OBSERVATION = {"state.position": np.zeros((1, 1), np.float32), LANGUAGE_KEY: ("push",)}


def other_episodes(recorded, root):
    """Another recording: another episode list, so another dataset_meta_sha256."""
    return make_dataset(root, lengths=(6, 9, 5))


@pytest.mark.parametrize("another_recording", [other_episodes, copy_with_actions_negated],
                         ids=["other episodes", "same meta, other actions"])
def test_open_loop_stops_when_its_server_comes_back_serving_another_dataset(tmp_path, another_recording):
    from gr00t_eval.open_loop import OpenLoopConfig, evaluate_open_loop
    from gr00t_eval.policy_identity import ServedPolicyChanged
    from gr00t_server.policies.replay import ReplayPolicy

    recorded = make_dataset(tmp_path / "a", lengths=(6, 9, 4))
    other = another_recording(recorded, tmp_path / "b")
    server = serving_in_turn(ReplayPolicy(recorded, execution_horizon=3), ReplayPolicy(other, execution_horizon=3))

    def report(line):
        if line.startswith("MSE for trajectory 0"):
            server.restart(reconnecting=1)  # between two trajectories, as a supervisor would

    try:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            config = OpenLoopConfig(str(recorded), traj_ids=[0, 1, 2], execution_horizon=3, plot=False,
                                    output_dir=str(tmp_path / "out"))
            with pytest.raises(ServedPolicyChanged, match="now serves ReplayPolicy .*this run evaluates ReplayPolicy"):
                evaluate_open_loop(client, config, report=report, progress=False)  # raised once results.json is written
    finally:
        server.stop()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["status"] == "aborted" and list(saved["trajectories"]) == ["0"]
    assert saved["not_run_trajectories"] == [1, 2] and "ServedPolicyChanged" in saved["stop_reason"]
