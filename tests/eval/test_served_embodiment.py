"""A rollout refuses, before any episode, a server that serves another embodiment than a task's env (its prefix's
tag): the episodes would run another embodiment's projector and statistics and be scored without a word. Replays,
servers that report no tag and a checkpoint's own tag (no env prefix can name it: warned) keep running. Real servers
on loopback, the real CLI, batch and Python API."""

from __future__ import annotations

import json
import logging

import pytest

from eval.dataset_factory import make_dataset
from eval.scale_fixtures import ConstantPolicy, CountingPolicy, sim_replay_policy
from gr00t_eval import cli
from gr00t_eval.batch import Job, PolicyServerAddress, connect, run_batch
from gr00t_eval.rollout import RolloutConfig, run_rollout
from gr00t_eval.shard import run_suite
from serving import running_server

ROLLOUT = ["--env-name", "walkto/fast", "--n-episodes", "2", "--n-envs", "1", "--vectorization", "sync",
           "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0", "--no-video"]
CONFIG = {"n_episodes": 2, "n_envs": 1, "max_episode_steps": 6, "n_action_steps": 2, "vectorization": "sync", "seed": 0}


def rollout(port, out):
    return cli.main(["rollout", *ROLLOUT, "--policy-client-port", str(port), "--output-dir", str(out)])


def test_a_rollout_of_a_new_embodiment_env_against_a_libero_server_is_refused_naming_both_tags(tmp_path, capsys):
    policy = CountingPolicy()
    with running_server(policy, embodiment_tag="libero_sim") as server:
        assert rollout(server.port, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "env walkto/fast is a new_embodiment env (its prefix 'walkto' maps to new_embodiment)" in err
    assert "the policy server serves embodiment 'libero_sim'" in err
    assert "--embodiment-tag new_embodiment, or" in err and "--env-prefix walkto=libero_sim" in err
    assert policy.calls == 0 and not (tmp_path / "run" / "results.json").exists()


def test_the_python_api_refuses_it_before_any_episode(tmp_path):
    from gr00t_client import PolicyClient

    policy = CountingPolicy()
    with running_server(policy, embodiment_tag="libero_sim") as server, PolicyClient(port=server.port) as client:
        with pytest.raises(ValueError, match="the policy server serves embodiment 'libero_sim'"):
            run_rollout(client, RolloutConfig(env_name="walkto/fast", **CONFIG), progress=False)
        with pytest.raises(ValueError, match="env walkto/slow is a new_embodiment env"):
            run_suite(client, "walkto/slow,walkto/fast", RolloutConfig(env_name="", **CONFIG))
    assert policy.calls == 0


def test_a_batch_job_against_a_server_of_another_embodiment_fails_naming_both_tags(tmp_path):
    policy = CountingPolicy()
    with running_server(policy, embodiment_tag="libero_sim") as server:
        job = Job("walk", "walkto/fast", PolicyServerAddress("127.0.0.1", server.port), CONFIG)
        record = run_batch([job], tmp_path / "batch_results.json", policy_factory=connect)["jobs"][0]
    assert record["status"] == "failed" and policy.calls == 0
    assert "new_embodiment env" in record["reason"] and "'libero_sim'" in record["reason"]


def test_the_same_embodiment_and_a_server_of_no_tag_run(tmp_path):
    for tag, out in (("new_embodiment", "same"), ("NEW_EMBODIMENT", "by_name"), (None, "untagged")):
        with running_server(ConstantPolicy(), embodiment_tag=tag) as server:
            assert rollout(server.port, tmp_path / out) == 0


def test_a_replay_served_under_another_tag_runs(tmp_path):
    """`serve --dataset-path D` reports new_embodiment unless told otherwise; a replay's tag picks only the modality
    config of its dataset, whose recorded actions it plays whatever the env's prefix."""
    pytest.importorskip("av")
    dataset = make_dataset(tmp_path / "data", lengths=(6, 6), cameras=(), state_dims={"position": 1},
                           action_dims={"push": 1})  # the walkto env's keys
    with running_server(sim_replay_policy(str(dataset), 2), embodiment_tag="libero_sim") as server:
        assert rollout(server.port, tmp_path / "run") == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["policy"]["embodiment_tag"] == "libero_sim"


def test_a_checkpoint_tag_no_env_prefix_can_name_is_warned_about_and_runs(tmp_path, caplog):
    with running_server(ConstantPolicy(), embodiment_tag="gr1") as server, caplog.at_level(logging.WARNING):
        assert rollout(server.port, tmp_path / "run") == 0
    warned = [r.getMessage() for r in caplog.records if "serves embodiment 'gr1'" in r.getMessage()]
    assert len(warned) == 1 and "new_embodiment env" in warned[0]
