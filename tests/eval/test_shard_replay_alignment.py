"""Shards replay the right recordings: episode i of a run uses seed + i and replays dataset episode i, in any shard.

A ReplayPolicy (behind the sim wrapper, in a real PolicyServer) serves a dataset whose episode e always
pushes e + 1; the probe env's reward is the pushed value, so each scored episode's reward names the
recorded episode that was replayed for it.
"""

import json
import logging

import gymnasium as gym
import numpy as np
import pytest

from eval.scale_fixtures import policy_server, run_cli
from gr00t_client import EmbodimentTag, ModalityConfig, PolicyClient
from gr00t_eval.dataset import DatasetWriter
from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout
from gr00t_eval.shard import ShardSpec, run_suite

N_RECORDED = 4
CHUNK = 2  # action horizon, execution horizon and n_action_steps: one chunk per episode
SEED = 100


class ReplayProbeEnv(gym.Env):
    """Ends after one chunk of CHUNK steps; each step's reward is the pushed action value."""

    def __init__(self):
        self.observation_space = gym.spaces.Dict({"state.position": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)})
        self.action_space = gym.spaces.Dict({"action.push": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)})
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return {"state.position": np.zeros(1, np.float32)}, {}

    def step(self, action):
        self.t += 1
        reward = float(np.asarray(action["action.push"]).reshape(-1)[0])
        return {"state.position": np.full(1, self.t, np.float32)}, reward, self.t >= CHUNK, False, {"success": False}


register_env_prefix("replayprobe", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: ReplayProbeEnv())


def replayed_episode(entry):
    """The recorded episode a scored episode replayed: its pushes summed to CHUNK * (e + 1)."""
    return round(entry["sum_reward"] / CHUNK) - 1


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay_alignment") / "ds"
    with DatasetWriter(root, 10) as writer:
        for episode in range(N_RECORDED):
            length = 3
            writer.add_episode(
                frames={"image": np.zeros((length, 8, 8, 3), np.uint8)},
                states={"position": np.zeros((length, 1), np.float32)},
                actions={"push": np.full((length, 1), episode + 1, np.float32)},
                task="push",
            )
    return root


CONFIGS = {"state": ModalityConfig([0], ["position"]), "action": ModalityConfig(list(range(CHUNK)), ["push"])}


@pytest.fixture(scope="module")
def server(dataset_root):
    from gr00t_server.policies import Gr00tSimPolicyWrapper, ReplayPolicy

    with policy_server(Gr00tSimPolicyWrapper(ReplayPolicy(dataset_root, CONFIGS, execution_horizon=CHUNK))) as running:
        yield running


def config(env_name="replayprobe/any", **overrides):
    values = dict(env_name=env_name, n_episodes=N_RECORDED, n_envs=2, n_action_steps=CHUNK, max_episode_steps=10,
                  seed=SEED, vectorization="sync")
    values.update(overrides)
    return RolloutConfig(**values)


def run_shard(server, env_spec, shard, **overrides):
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        return run_suite(client, env_spec, config(**overrides), shard)


def test_a_rollout_from_first_episode_seeds_and_replays_by_run_wide_index(server):
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        result = run_rollout(client, config(n_episodes=2, first_episode=1), progress=False)
    assert [(o.episode_index, o.seed, round(o.sum_reward / CHUNK) - 1) for o in result.outcomes] == [(1, SEED + 1, 1), (2, SEED + 2, 2)]


def test_a_later_shard_replays_its_own_episodes_with_their_seeds(server):
    results = run_shard(server, "replayprobe/any", ShardSpec(1, 2))
    episodes = results["per_episode"]
    assert [e["episode_index"] for e in episodes] == [2, 3]
    assert [e["seed"] for e in episodes] == [SEED + 2, SEED + 3]
    assert [replayed_episode(e) for e in episodes] == [2, 3]


def test_every_shard_replays_episode_i_for_episode_i(server):
    for count in (1, 3, 4):
        for index in range(count):
            for entry in run_shard(server, "replayprobe/any", ShardSpec(index, count), n_envs=1)["per_episode"]:
                assert replayed_episode(entry) == entry["episode_index"]
                assert entry["seed"] == SEED + entry["episode_index"]


def test_in_a_suite_each_task_replays_its_own_episode_index(server):
    # Two tasks of 3 episodes in 3 shards: shard 1 runs task a's episode 2 and task b's episode 0.
    results = run_shard(server, "replayprobe/a,replayprobe/b", ShardSpec(1, 3), n_episodes=3)
    got = [(e["task"], e["episode_index"], e["seed"], replayed_episode(e)) for e in results["per_episode"]]
    assert got == [("replayprobe/a", 2, SEED + 2, 2), ("replayprobe/b", 0, SEED, 0)]


def test_cli_shard_replays_the_episodes_of_its_slice(server, tmp_path):
    argv = ["rollout", "--env-name", "replayprobe/any", "--n-episodes", str(N_RECORDED), "--n-envs", "2",
            "--n-action-steps", str(CHUNK), "--max-episode-steps", "10", "--seed", str(SEED), "--no-video",
            "--vectorization", "sync", "--policy-client-port", str(server.port), "--shard", "1/2",
            "--output-dir", str(tmp_path)]
    assert run_cli(argv) == 0
    episodes = json.loads((tmp_path / "results_shard1of2.json").read_text())["per_episode"]
    assert [(e["episode_index"], e["seed"], replayed_episode(e)) for e in episodes] == [(2, SEED + 2, 2), (3, SEED + 3, 3)]


def test_cli_refuses_a_replay_server_without_the_sim_wrapper_before_any_episode(dataset_root, tmp_path, capsys):
    from gr00t_eval.cli import main
    from gr00t_server.policies import ReplayPolicy

    with policy_server(ReplayPolicy(dataset_root, CONFIGS, execution_horizon=CHUNK)) as unwrapped:
        argv = ["rollout", "--env-name", "replayprobe/any", "--n-episodes", "2", "--n-action-steps", str(CHUNK),
                "--no-video", "--vectorization", "sync", "--policy-client-port", str(unwrapped.port),
                "--output-dir", str(tmp_path / "run")]
        assert main(argv) == 2  # every episode errored on the flat observations, one by one
        assert unwrapped.stats.snapshot()["policy_calls"] == 0 and unwrapped.stats.snapshot()["errors"] == 0
    err = capsys.readouterr().err
    assert "serves ReplayPolicy without the sim wrapper" in err and "restart the server with --use-sim-policy-wrapper" in err
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_batch_job_against_a_replay_server_without_the_sim_wrapper_fails_before_any_episode(dataset_root):
    from gr00t_eval.batch import Job, PolicyServerAddress, run_job
    from gr00t_server.policies import ReplayPolicy

    with policy_server(ReplayPolicy(dataset_root, CONFIGS, execution_horizon=CHUNK)) as unwrapped:
        job = Job("replay", "replayprobe/any", PolicyServerAddress("127.0.0.1", unwrapped.port),
                  {"n_episodes": 2, "n_envs": 1, "n_action_steps": CHUNK, "seed": SEED, "vectorization": "sync"})
        record = run_job(job)
        assert unwrapped.stats.snapshot()["errors"] == 0  # no episode's request was sent to be refused
    assert record["status"] == "failed" and record["results"] is None
    assert "serves ReplayPolicy without the sim wrapper" in record["reason"]
    assert "restart the server with --use-sim-policy-wrapper" in record["reason"]


def test_sync_client_chunking_replays_each_episode_without_warning_of_a_partial_reset(server, caplog):
    """Three episodes on two rows: episode 2 starts on row 0 alone. The rollout resets that row in the replay itself
    (per-row reset options), so the chunker's warning that a reset of some envs alone is not the policy's was false."""
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        with caplog.at_level(logging.WARNING, logger="gr00t_client.chunking"):
            result = run_rollout(client, config(n_episodes=3, client_chunking="sync"), progress=False)
    assert [(o.episode_index, round(o.sum_reward / CHUNK) - 1) for o in result.outcomes] == [(0, 0), (1, 1), (2, 2)]
    assert [r.getMessage() for r in caplog.records if r.name == "gr00t_client.chunking"] == []


def test_a_rollout_past_the_recording_is_refused_before_any_episode(server):
    """Episodes past the replay's recording ran the recorded ones, then each extra errored at its reset (the server's
    IndexError): an INCOMPLETE run. A slice (first_episode) is judged by its own last episode."""
    before = server.stats.snapshot()["policy_calls"]
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        with pytest.raises(ValueError, match=rf"recording of {N_RECORDED} episodes .* runs episodes 3 \.\. 4 "
                                             r"\(n_episodes=2\).*pass --n-episodes 1 \(or fewer\)"):
            run_rollout(client, config(n_episodes=2, first_episode=3), progress=False)
        result = run_rollout(client, config(n_episodes=1, first_episode=3), progress=False)  # the last one is there
    assert [(o.episode_index, round(o.sum_reward / CHUNK) - 1) for o in result.outcomes] == [(3, 3)]
    assert server.stats.snapshot()["policy_calls"] - before == 1


def test_a_suite_or_shard_past_the_recording_is_refused_before_any_episode(server):
    """Each task replays episodes 0 .. n_episodes - 1: a suite of two tasks, and every shard of a plan past the
    recording (the later shards' episodes error at reset, so the shards do not merge), are refused up front."""
    before = server.stats.snapshot()["policy_calls"]
    for env_spec, shard in (("replayprobe/a,replayprobe/b", None), ("replayprobe/any", ShardSpec(0, 2))):
        with pytest.raises(ValueError, match=rf"recording of {N_RECORDED} episodes .*n_episodes={N_RECORDED + 1}\).*"
                                             rf"pass --n-episodes {N_RECORDED}"):
            run_shard(server, env_spec, shard, n_episodes=N_RECORDED + 1)
    assert server.stats.snapshot()["policy_calls"] == before


def test_cli_refuses_more_episodes_than_the_replay_holds_before_any_episode(server, tmp_path, capsys):
    """The default --n-episodes 50 against a 4-episode replay: refused in one line, exit 2, naming the fix."""
    from gr00t_eval.cli import main

    before = server.stats.snapshot()["policy_calls"]
    argv = ["rollout", "--env-name", "replayprobe/any", "--n-action-steps", str(CHUNK), "--max-episode-steps", "10",
            "--seed", str(SEED), "--no-video", "--vectorization", "sync", "--policy-client-port", str(server.port),
            "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"recording of {N_RECORDED} episodes" in err and "n_episodes=50" in err
    assert f"pass --n-episodes {N_RECORDED} (or fewer)" in err
    assert server.stats.snapshot()["policy_calls"] == before
    assert not (tmp_path / "run" / "results.json").exists()
