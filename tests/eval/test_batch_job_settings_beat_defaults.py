"""`gr00t-eval batch`: a job's own settings win over `defaults` setting by setting, whatever names (ours, Arena's
aliases, `overrides`) either layer gives them in; two different values for one setting within one layer are refused.
Real PolicyServers on loopback, the real CLI; the assertions read what the job actually ran."""

from __future__ import annotations

import json

import pytest

from eval.scale_fixtures import Checkpoint, WalkToEnv, expected_success, policy_server
from gr00t_client import EmbodimentTag
from gr00t_eval import cli
from gr00t_eval.rollout.envs import register_env_prefix

SMALL = {"n_envs": 1, "seed": 0, "max_episode_steps": 6, "overrides": {"n_action_steps": 2, "vectorization": "sync",
                                                                        "video_dir": None}}


def make_stride_env(task: str, speed: float = 1.0):
    """`stride/<any>`: the walkto env with its speed an env kwarg (so what env_kwargs a job ran shows in its outcomes)."""
    return WalkToEnv(speed)


register_env_prefix("stride", EmbodimentTag.NEW_EMBODIMENT, make_stride_env)


@pytest.fixture(scope="module")
def servers():
    """Two policy servers serving different checkpoints ('a' and 'b'), so a job's results tell which one it ran."""
    with policy_server(Checkpoint("a")) as a, policy_server(Checkpoint("b")) as b:
        yield a, b


def run_batch(tmp_path, defaults, jobs, expected_code=0):
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"defaults": defaults, "jobs": jobs}))
    assert cli.main(["batch", "--jobs", str(path), "--output-dir", str(tmp_path / "out")]) == expected_code
    return {job["name"]: job for job in json.loads((tmp_path / "out" / "batch_results.json").read_text())["jobs"]}


def checkpoint_run(record):
    return record["results"]["policy"]["identity"]["checkpoint"]


def seeds_run(record):
    return sorted(episode["seed"] for episode in record["results"]["per_episode"])


@pytest.mark.parametrize("defaults_server, job_server", [
    ("policy_config_dict", "policy_server"), ("policy_server", "policy_config_dict")])
def test_a_jobs_own_policy_server_beats_the_defaults_one_whatever_field_names_it(servers, tmp_path, defaults_server,
                                                                                 job_server):
    a, b = servers
    records = run_batch(tmp_path, {**SMALL, "n_episodes": 1, defaults_server: {"port": a.port, "timeout_ms": 5000}},
                        [{"name": "on-b", "env_name": "walkto/fast", job_server: {"port": b.port, "timeout_ms": 5000}}])
    job = records["on-b"]
    assert (job["status"], job["policy_server"]) == ("done", f"127.0.0.1:{b.port}")
    assert checkpoint_run(job) == "b"


def test_a_job_giving_policy_server_and_policy_config_dict_different_ports_fails_naming_both(servers, tmp_path):
    a, b = servers
    records = run_batch(tmp_path, {**SMALL, "n_episodes": 1}, [
        {"name": "two-ports", "env_name": "walkto/fast", "policy_server": {"port": a.port},
         "policy_config_dict": {"port": b.port}}], expected_code=1)
    job = records["two-ports"]
    assert (job["status"], job["results"]) == ("failed", None)
    assert job["reason"] == (f"invalid job: job 'two-ports': 'policy_server.port' ({a.port}) and 'policy_config_dict.port' "
                             f"({b.port}) both given with different values; give one of them")


def test_a_jobs_arena_environment_beats_an_env_name_in_defaults(servers, tmp_path):
    a, _ = servers
    records = run_batch(tmp_path, {**SMALL, "n_episodes": 1, "env_name": "walkto/slow", "policy_server": {"port": a.port}},
                        [{"name": "arena", "arena_env_args": {"environment": "walkto/fast"}}])
    job = records["arena"]
    assert (job["status"], job["env_name"], set(job["results"]["per_task"])) == ("done", "walkto/fast", {"walkto/fast"})


def test_a_job_whose_arena_env_args_and_own_env_kwargs_disagree_fails_naming_both(servers, tmp_path):
    a, _ = servers
    records = run_batch(tmp_path, {**SMALL, "n_episodes": 1, "policy_server": {"port": a.port}}, [
        {"name": "two-speeds", "arena_env_args": {"environment": "stride/x", "speed": 2.0},
         "overrides": {"env_kwargs": {"speed": 1.0}}}], expected_code=1)
    assert records["two-speeds"]["reason"] == (
        "invalid job: job 'two-speeds': 'overrides.env_kwargs.speed' (1.0) and 'arena_env_args.speed' (2.0) both given "
        "with different values; give one of them")


def test_two_env_names_in_one_jobs_arena_env_args_fail_naming_both(servers, tmp_path):
    # The first one found was the env and the other went to the env as a keyword argument (task=walkto/fast).
    a, _ = servers
    records = run_batch(tmp_path, {**SMALL, "n_episodes": 1, "policy_server": {"port": a.port}}, [
        {"name": "two-names", "arena_env_args": {"environment": "walkto/slow", "task": "walkto/fast"}}], expected_code=1)
    assert records["two-names"]["reason"] == (
        "invalid job: job 'two-names': 'arena_env_args.environment' ('walkto/slow') and 'arena_env_args.task' "
        "('walkto/fast') both given with different values; give one of them")


def test_a_jobs_env_kwargs_replace_the_defaults_env_kwargs_as_a_whole(servers, tmp_path):
    a, _ = servers
    defaults = {**SMALL, "n_episodes": 7, "max_episode_steps": 4, "policy_server": {"port": a.port},
                "overrides": {**SMALL["overrides"], "env_kwargs": {"speed": 2.0}}}
    records = run_batch(tmp_path, defaults, [
        {"name": "own-kwargs", "env_name": "stride/x", "overrides": {"env_kwargs": {}}},
        {"name": "arena-kwargs", "arena_env_args": {"environment": "stride/x", "speed": 1.0}},
        {"name": "defaults-kwargs", "env_name": "stride/x"}])
    successes = {name: [e["success"] for e in sorted(job["results"]["per_episode"], key=lambda e: e["seed"])]
                 for name, job in records.items()}
    slow = [expected_success("walkto/slow", seed, 4) for seed in range(7)]
    assert successes == {"own-kwargs": slow, "arena-kwargs": slow,
                         "defaults-kwargs": [expected_success("walkto/fast", seed, 4) for seed in range(7)]}
    assert [records[name]["job_config"]["env_kwargs"] for name in successes] == [{}, {"speed": 1.0}, {"speed": 2.0}]


def test_settings_in_defaults_overrides_lose_to_a_jobs_top_level_fields(servers, tmp_path):
    a, _ = servers
    defaults = {"policy_server": {"port": a.port},
                "overrides": {**SMALL["overrides"], "n_episodes": 5, "seed": 7, "max_episode_steps": 1, "n_envs": 2}}
    records = run_batch(tmp_path, defaults, [
        {"name": "own", "env_name": "walkto/fast", "n_episodes": 2, "seed": 0, "max_episode_steps": 6, "n_envs": 1}])
    job = records["own"]
    assert job["status"] == "done" and seeds_run(job) == [0, 1]
    assert {k: job["results"]["config"][k] for k in ("n_episodes", "seed", "max_episode_steps", "n_envs")} == \
        {"n_episodes": 2, "seed": 0, "max_episode_steps": 6, "n_envs": 1}
    assert job["results"]["overall"]["pc_success"] == 100.0  # 1-step episodes would all have failed


def test_a_job_giving_n_episodes_and_a_different_overrides_n_episodes_fails_naming_both(servers, tmp_path):
    a, _ = servers
    records = run_batch(tmp_path, {**SMALL, "policy_server": {"port": a.port}}, [
        {"name": "two-counts", "env_name": "walkto/fast", "n_episodes": 3, "overrides": {"n_episodes": 7}}],
        expected_code=1)
    assert records["two-counts"]["reason"] == (
        "invalid job: job 'two-counts': 'n_episodes' (3) and 'overrides.n_episodes' (7) both given with different "
        "values; give one of them")


@pytest.mark.parametrize("defaults_field, job_field", [("num_episodes", "n_episodes"), ("n_episodes", "num_episodes")])
def test_a_jobs_episode_count_beats_the_defaults_one_whatever_field_names_it(servers, tmp_path, defaults_field, job_field):
    a, _ = servers
    records = run_batch(tmp_path, {**SMALL, defaults_field: 1, "policy_server": {"port": a.port}},
                        [{"name": "two", "env_name": "walkto/fast", job_field: 2}])
    assert records["two"]["status"] == "done" and seeds_run(records["two"]) == [0, 1]


def test_two_values_for_one_setting_in_defaults_refuse_the_job_file_naming_defaults(servers, tmp_path, capsys):
    a, _ = servers
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"defaults": {**SMALL, "num_episodes": 1, "n_episodes": 2, "policy_server": {"port": a.port}},
                                "jobs": [{"name": "j", "env_name": "walkto/fast"}]}))
    assert cli.main(["batch", "--jobs", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    assert (f"{path}: 'defaults.n_episodes' (2) and 'defaults.num_episodes' (1) both given with different values; "
            "give one of them") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
