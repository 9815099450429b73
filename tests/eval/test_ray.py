"""Ray runner: shards as Ray tasks on a local runtime, two policy servers round-robin, same numbers as one run."""

import os

import pytest

ray = pytest.importorskip("ray")

from eval.scale_fixtures import policy_server  # noqa: E402
from gr00t_client import PolicyClient  # noqa: E402
from gr00t_eval.ray_runner import ServerAddress, default_shard_count, parse_servers, run_with_ray  # noqa: E402
from gr00t_eval.rollout.runner import RolloutConfig  # noqa: E402
from gr00t_eval.shard import run_suite  # noqa: E402

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV_SPEC = "walkto/fast,walkto/slow"


def test_policy_client_hosts_parse_with_and_without_ports():
    assert parse_servers("h1, h2:5556", 5555) == [ServerAddress("h1", 5555), ServerAddress("h2", 5556)]
    with pytest.raises(ValueError, match="at least one host"):
        parse_servers(" , ", 5555)


def test_default_shard_count_is_one_per_cpu_at_least_one_per_server_at_most_one_per_episode():
    assert default_shard_count(n_items=100, n_servers=2, cluster_cpus=8) == 8
    assert default_shard_count(n_items=100, n_servers=4, cluster_cpus=1) == 4
    assert default_shard_count(n_items=3, n_servers=1, cluster_cpus=8) == 3


@pytest.fixture(scope="module")
def local_ray():
    # Ray workers are fresh processes: give them tests/ on the path and the walkto env registration.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])},
                          "worker_process_setup_hook": "eval.scale_fixtures.register"})
    yield
    ray.shutdown()


def test_local_ray_runtime_with_two_servers_gives_the_numbers_of_one_run(local_ray):
    config = RolloutConfig(env_name=ENV_SPEC, n_episodes=4, n_envs=1, n_action_steps=2, max_episode_steps=6, seed=7,
                           vectorization="sync")
    with policy_server() as first, policy_server() as second:
        servers = [ServerAddress("127.0.0.1", first.port), ServerAddress("127.0.0.1", second.port)]
        merged = run_with_ray(ENV_SPEC, config, servers, address="local", n_shards=3, timeout_ms=5000)
        with PolicyClient("127.0.0.1", first.port, timeout_ms=5000) as client:
            single = run_suite(client, ENV_SPEC, config)
        served = [first.stats.snapshot(), second.stats.snapshot()]

    def episodes(results):
        return [{k: v for k, v in e.items() if k not in ("env_index", "video_path")} for e in results["per_episode"]]

    assert episodes(merged) == episodes(single)
    for key in ("pc_success", "avg_sum_reward", "avg_max_reward", "n_episodes"):
        assert merged["overall"][key] == single["overall"][key]
        for task in ("walkto/fast", "walkto/slow"):
            assert merged["per_task"][task][key] == single["per_task"][task][key]
    assert merged["failed_shards"] == {} and merged["config"]["ray_shards"] == 3
    assert merged["config"]["policy_servers"] == [str(s) for s in servers]
    assert served[1]["policy_calls"] > 0  # the second server (used by Ray shard 1 only) answered


def test_a_shard_whose_server_is_gone_is_reported_and_the_rest_is_kept(local_ray):
    from eval.scale_fixtures import free_port

    config = RolloutConfig(env_name=ENV_SPEC, n_episodes=2, n_envs=1, n_action_steps=2, max_episode_steps=6, seed=0,
                           vectorization="sync")
    with policy_server() as alive:
        servers = [ServerAddress("127.0.0.1", alive.port), ServerAddress("127.0.0.1", free_port())]
        merged = run_with_ray(ENV_SPEC, config, servers, address="local", n_shards=2, timeout_ms=500)
    assert list(merged["failed_shards"]) == ["1/2"] and "did not answer ping" in merged["failed_shards"]["1/2"]
    assert merged["overall"]["n_episodes"] == 2 and len(merged["missing_episodes"]) == 2


def test_rollout_cli_runs_on_ray_with_several_hosts_and_writes_one_results_file(local_ray, tmp_path):
    import json

    from eval.scale_fixtures import run_cli

    with policy_server() as first, policy_server() as second:
        hosts = f"127.0.0.1:{first.port},127.0.0.1:{second.port}"
        code = run_cli(["rollout", "--env-name", ENV_SPEC, "--n-episodes", "2", "--n-envs", "1", "--n-action-steps", "2",
                        "--max-episode-steps", "6", "--seed", "0", "--policy-client-host", hosts, "--no-video",
                        "--vectorization", "sync", "--ray-address", "local", "--ray-shards", "2", "--output-dir", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["overall"]["n_episodes"] == 4 and results["config"]["ray_shards"] == 2


@pytest.mark.slow
def test_a_two_node_cluster_spreads_the_shards_over_both_nodes_with_the_numbers_of_one_run():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # Two raylets on this machine, one CPU each: one shard per node, each reserving the node's only CPU.
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])},
           "worker_process_setup_hook": "eval.scale_fixtures.register"}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, runtime_env=env, log_to_driver=False)
        cluster.wait_for_nodes()
        config = RolloutConfig(env_name=ENV_SPEC, n_episodes=2, n_envs=1, n_action_steps=2, max_episode_steps=6, seed=3,
                               vectorization="sync")
        with policy_server() as server:
            merged = run_with_ray(ENV_SPEC, config, [ServerAddress("127.0.0.1", server.port)], address=cluster.address,
                                  n_shards=2, timeout_ms=5000)
            with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
                single = run_suite(client, ENV_SPEC, config)
        alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert len(alive) == 2
    assert merged["failed_shards"] == {} and set(merged["shard_nodes"].values()) == alive  # one shard on each node

    def episodes(results):
        return [{k: v for k, v in e.items() if k not in ("env_index", "video_path")} for e in results["per_episode"]]

    assert episodes(merged) == episodes(single)
    assert merged["overall"]["pc_success"] == single["overall"]["pc_success"]
