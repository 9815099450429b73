"""Ray runner: shards as Ray tasks on a local runtime, two policy servers round-robin, same numbers as one run."""

import _thread
import json
import os
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from eval.scale_fixtures import ConstantPolicy, SlowPolicy, policy_server  # noqa: E402
from gr00t_client import PolicyClient  # noqa: E402
from gr00t_eval.ray_runner import ServerAddress, default_shard_count, parse_servers, run_with_ray  # noqa: E402
from gr00t_eval.rollout.runner import RolloutConfig  # noqa: E402
from gr00t_eval.shard import run_suite  # noqa: E402
from serving import running_server  # noqa: E402

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV_SPEC = "walkto/fast,walkto/slow"


def test_policy_client_hosts_parse_with_and_without_ports():
    assert parse_servers("h1, h2:5556", 5555) == [ServerAddress("h1", 5555), ServerAddress("h2", 5556)]
    # IPv6: a port only in brackets ('::1' was host ':' port 1), and written back bracketed
    assert parse_servers("::1, 2001:db8::1, [::1]:5556", 5555) == [
        ServerAddress("::1", 5555), ServerAddress("2001:db8::1", 5555), ServerAddress("[::1]", 5556)]
    assert str(ServerAddress("::1", 5555)) == "[::1]:5555"
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
    assert merged["merged_servers"] == [str(servers[0]), str(servers[1]), str(servers[0])]  # shard i: server i % 2
    assert served[1]["policy_calls"] > 0  # the second server (used by Ray shard 1 only) answered


def test_a_shard_whose_server_is_gone_is_reported_and_the_rest_is_kept(local_ray):
    from eval.scale_fixtures import free_port

    config = RolloutConfig(env_name=ENV_SPEC, n_episodes=2, n_envs=1, n_action_steps=2, max_episode_steps=6, seed=0,
                           vectorization="sync")
    with policy_server() as alive:
        servers = [ServerAddress("127.0.0.1", alive.port), ServerAddress("127.0.0.1", free_port())]
        merged = run_with_ray(ENV_SPEC, config, servers, address="local", n_shards=2, timeout_ms=500)
    assert list(merged["failed_shards"]) == ["1/2"] and "did not answer 'ping'" in merged["failed_shards"]["1/2"]
    assert merged["overall"]["n_episodes"] == 2 and len(merged["missing_episodes"]) == 2


def test_a_shard_that_failed_before_scoring_is_not_blamed_for_recording_no_policy(local_ray, caplog):
    """It was warned of as a shard that "record[s] no policy (an older gr00t-eval, or a server that did not say)"."""
    from eval.scale_fixtures import free_port

    config = RolloutConfig(env_name=ENV_SPEC, n_episodes=2, n_envs=1, n_action_steps=2, max_episode_steps=6, seed=0,
                           vectorization="sync")
    with policy_server() as alive:
        servers = [ServerAddress("127.0.0.1", alive.port), ServerAddress("127.0.0.1", free_port())]
        merged = run_with_ray(ENV_SPEC, config, servers, address="local", n_shards=2, timeout_ms=500)
    assert list(merged["failed_shards"]) == ["1/2"]
    assert "record no policy" not in caplog.text
    assert merged["policy"] is not None


def test_shards_whose_server_goes_away_mid_run_are_listed_in_failed_shards_with_why(local_ray):
    config = RolloutConfig(env_name="walkto/fast", n_episodes=8, n_envs=1, n_action_steps=2, max_episode_steps=6,
                           seed=0, vectorization="sync")
    shards_heard_from = set()
    with policy_server(SlowPolicy(0.1)) as server:
        def stop_the_server_once_both_shards_scored_an_episode(outcome):  # shard 0 runs episodes 0-3, shard 1 4-7
            shards_heard_from.add(outcome.episode_index // 4)
            if len(shards_heard_from) == 2:
                threading.Thread(target=server.stop, daemon=True).start()

        merged = run_with_ray("walkto/fast", config, [ServerAddress("127.0.0.1", server.port)], address="local",
                              n_shards=2, timeout_ms=500, on_episode=stop_the_server_once_both_shards_scored_an_episode)
    assert merged["status"] == "aborted" and merged["missing_episodes"]
    # each shard ran on until its server was gone and ended aborted (it raised nothing): failed all the same
    assert sorted(merged["failed_shards"]) == ["0/2", "1/2"]
    assert all(reason.startswith("aborted: ") for reason in merged["failed_shards"].values()), merged["failed_shards"]


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


def test_servers_no_shard_uses_are_named_as_unused_not_recorded_as_the_runs(local_ray, tmp_path, ray_progress):
    from eval.scale_fixtures import run_cli

    with policy_server() as first, policy_server() as second:
        hosts = f"127.0.0.1:{first.port},127.0.0.1:{second.port}"
        code = run_cli(["rollout", "--env-name", "walkto/fast", "--n-episodes", "2", *SMALL, "--seed", "0", "--ray-address",
                        "local", "--policy-client-host", hosts, "--ray-shards", "1", "--output-dir", str(tmp_path / "run")])
    assert code == 0
    assert f"1 shards use only 1 of the 2 servers; unused: 127.0.0.1:{second.port}" in ray_progress()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["config"]["policy_servers"] == [f"127.0.0.1:{first.port}"]


def test_a_ray_run_records_the_policy_its_servers_serve_and_a_resume_against_another_is_refused(local_ray, tmp_path, capsys):
    """Ray runs recorded no policy: a resume against another checkpoint was accepted, with or without Ray."""
    from eval.scale_fixtures import Checkpoint, run_cli
    from gr00t_eval.cli_errors import UsageError

    out = tmp_path / "run"
    argv = ["rollout", "--env-name", "walkto/fast", "--n-episodes", "2", *SMALL, "--seed", "0", "--ray-address", "local"]
    with running_server(Checkpoint("a")) as first, running_server(Checkpoint("a")) as second:
        hosts = f"127.0.0.1:{first.port},127.0.0.1:{second.port}"
        assert run_cli([*argv, "--policy-client-host", hosts, "--ray-shards", "2", "--output-dir", str(out)]) == 0
    saved = json.loads((out / "run.json").read_text())["policy"]
    assert saved["identity"] == {"kind": "test", "checkpoint": "a"}
    assert json.loads((out / "results.json").read_text())["policy"] == saved
    (out / "results.json").unlink()  # as if the run had been killed
    with running_server(Checkpoint("b")) as other:
        for ray_flags in (["--ray-address", "local"], []):
            with pytest.raises(UsageError, match="and this run started against Checkpoint .kind test, checkpoint a"):
                run_cli(["rollout", "--resume", str(out), "--policy-client-port", str(other.port), *ray_flags])


def test_a_resume_is_held_to_the_policy_the_results_name_when_the_run_file_names_none(tmp_path):
    """A Ray run whose driver could not ask one server records no policy in run.json, while its results name the one
    its shards ran: a resume against another checkpoint pooled both into one complete result (a warning said the
    run recorded no policy)."""
    from eval.scale_fixtures import Checkpoint, run_cli
    from gr00t_eval.cli_errors import UsageError

    out = tmp_path / "run"
    with running_server(Checkpoint("a")) as first:
        assert run_cli(["rollout", "--env-name", "walkto/fast", "--n-episodes", "2", *SMALL, "--seed", "0",
                        "--policy-client-port", str(first.port), "--output-dir", str(out)]) == 0
    run_file = json.loads((out / "run.json").read_text())
    run_file["policy"] = None  # as that Ray run's driver left it
    (out / "run.json").write_text(json.dumps(run_file))
    lines = (out / "episodes.jsonl").read_text().splitlines()
    (out / "episodes.jsonl").write_text(lines[0] + "\n")  # one episode kept, one to run
    with running_server(Checkpoint("b")) as other:
        with pytest.raises(UsageError, match="and this run started against Checkpoint .kind test, checkpoint a"):
            run_cli(["rollout", "--resume", str(out), "--policy-client-port", str(other.port)])
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 1  # nothing ran


def test_a_ray_run_over_servers_of_two_policies_is_refused_before_any_episode(local_ray, tmp_path):
    """Their episodes were pooled into one success rate, status complete, exit 0."""
    from eval.scale_fixtures import Checkpoint, run_cli
    from gr00t_eval.cli_errors import UsageError

    with running_server(Checkpoint("a")) as first, running_server(Checkpoint("b")) as second:
        hosts = f"127.0.0.1:{first.port},127.0.0.1:{second.port}"
        with pytest.raises(UsageError, match="the policy servers of this Ray run serve different policies"):
            run_cli(["rollout", "--env-name", "walkto/fast", "--n-episodes", "2", *SMALL, "--seed", "0", "--ray-address",
                     "local", "--policy-client-host", hosts, "--ray-shards", "2", "--output-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "episodes.jsonl").exists() or not (tmp_path / "run" / "episodes.jsonl").read_text()


def test_shards_that_served_two_policies_unknown_to_the_driver_are_an_aborted_run_not_one_success_rate(local_ray):
    """A server the driver could not ask (policy=None) left each shard pinning its own: two checkpoints were pooled
    into one success rate, status complete."""
    from eval.scale_fixtures import Checkpoint

    config = RolloutConfig(env_name="walkto/fast", n_episodes=2, n_envs=1, n_action_steps=2, max_episode_steps=6, seed=0,
                           vectorization="sync")
    with running_server(Checkpoint("a")) as first, running_server(Checkpoint("b")) as second:
        servers = [ServerAddress("127.0.0.1", first.port), ServerAddress("127.0.0.1", second.port)]
        mixed = run_with_ray("walkto/fast", config, servers, address="local", n_shards=2, timeout_ms=5000, policy=None)
    assert mixed["status"] == "aborted" and mixed["policy"] is None and mixed["policy_conflict"] is True
    assert mixed["stop_reason"].startswith("shard 1/2 ran against another policy than shard 0/2: ")
    for server, name in ((servers[1], "checkpoint b"), (servers[0], "checkpoint a")):
        assert f"{name}, fingerprint" in mixed["stop_reason"] and f"at {server}" in mixed["stop_reason"]
    with running_server(Checkpoint("a")) as first, running_server(Checkpoint("a")) as second:
        servers = [ServerAddress("127.0.0.1", first.port), ServerAddress("127.0.0.1", second.port)]
        agreed = run_with_ray("walkto/fast", config, servers, address="local", n_shards=2, timeout_ms=5000, policy=None)
    assert agreed["status"] == "complete" and agreed["policy"]["identity"] == {"kind": "test", "checkpoint": "a"}
    assert "policy_conflict" not in agreed


def test_a_run_whose_shards_served_two_policies_is_not_resumed_into_one(tmp_path, capsys):
    """Its episodes are two policies' (and record none): a resume, once the servers agreed, pooled them into one
    complete result. Its results say so, its ABORTED line gives no --resume command, and a resume is refused."""
    from eval.scale_fixtures import run_cli
    from gr00t_eval.cli import main

    out = tmp_path / "run"
    with policy_server() as server:
        argv = ["--policy-client-port", str(server.port)]
        assert run_cli(["rollout", "--env-name", "walkto/fast", "--n-episodes", "2", *SMALL, "--seed", "0", *argv,
                        "--output-dir", str(out)]) == 0
        results = json.loads((out / "results.json").read_text())
        results.update(status="aborted", policy_conflict=True,
                       stop_reason="shard 1/2 ran against another policy than shard 0/2: ...")
        (out / "results.json").write_text(json.dumps(results))  # as the Ray run of test above leaves it
        lines = (out / "episodes.jsonl").read_text().splitlines()
        (out / "episodes.jsonl").write_text(lines[0] + "\n")
        assert main(["rollout", "--resume", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert f"--resume {out}: its shards served different policies (shard 1/2 ran against another policy" in err
    assert "start a new run" in err
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 1  # nothing ran

    import argparse

    from gr00t_eval.scale_cli import _report_rollout

    args = argparse.Namespace(ray_address="local", allow_errors=False, env_import=[], env_prefix=[], env_adapter=[])
    assert _report_rollout(args, results, out, None) == 1
    printed = capsys.readouterr().out
    assert "ABORTED: shard 1/2 ran against another policy" in printed and "continue with" not in printed
    assert "cannot be resumed: serve one checkpoint or dataset on every server and start a new run" in printed


# --- resume -----------------------------------------------------------------------------------------


SMALL = ["--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video", "--vectorization", "sync"]


class FailSecondCall(ConstantPolicy):
    """Raises on its second call only: the episode(s) in that batch error, the rest finish."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("policy blew up")
        return super()._get_action(observation, options)


def _log_entries(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _outcomes(results):
    keep = ("task", "episode_index", "seed", "success", "sum_reward", "max_reward", "length", "error")
    return [{k: e.get(k) for k in keep} for e in results["per_episode"]]


def _assert_same_result_as_one_uninterrupted_run(out, port):
    """results.json of `out` equals a fresh single-process run of the plan saved in its run.json."""
    resumed = json.loads((out / "results.json").read_text())
    config = RolloutConfig(**json.loads((out / "run.json").read_text())["config"])
    with PolicyClient("127.0.0.1", port, timeout_ms=5000) as client:
        whole = run_suite(client, ENV_SPEC, config)
    assert resumed["status"] == "complete" and resumed["missing_episodes"] == []
    assert _outcomes(resumed) == _outcomes(whole)
    for key in ("pc_success", "avg_sum_reward", "avg_max_reward", "n_episodes", "n_errors"):
        assert resumed["overall"][key] == whole["overall"][key]
        for task in ("walkto/fast", "walkto/slow"):
            assert resumed["per_task"][task][key] == whole["per_task"][task][key]
    return resumed


@pytest.mark.slow
def test_an_interrupted_ray_run_resumes_to_the_result_of_an_uninterrupted_run(local_ray, tmp_path):
    from gr00t_eval.cli import main

    out, n_planned = tmp_path / "run", 20
    returned = threading.Event()

    def interrupt_after_three_episodes():  # Ctrl-C in the driver once three episodes are in its log
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not returned.is_set():
            log = out / "episodes.jsonl"
            if log.is_file() and len(log.read_text().splitlines()) >= 3:
                _thread.interrupt_main()
                return
            time.sleep(0.05)

    with policy_server(SlowPolicy(0.1)) as slow:
        watcher = threading.Thread(target=interrupt_after_three_episodes, daemon=True)
        watcher.start()
        try:
            code = main(["rollout", "--env-name", ENV_SPEC, "--n-episodes", "10", "--seed", "4", *SMALL,
                         "--policy-client-port", str(slow.port), "--ray-address", "local", "--ray-shards", "2",
                         "--output-dir", str(out)])
        finally:
            returned.set()
        watcher.join()
    interrupted = json.loads((out / "results.json").read_text())
    assert code == 130 and interrupted["status"] == "interrupted"
    kept = _log_entries(out / "episodes.jsonl")
    assert 3 <= len(kept) < n_planned and len(interrupted["per_episode"]) == len(kept)

    # Connection flags come from the resuming command line; the server must serve the same policy (SlowPolicy).
    with policy_server(SlowPolicy(0.0)) as fast:
        assert main(["rollout", "--resume", str(out), "--policy-client-port", str(fast.port), "--ray-address", "local",
                     "--ray-shards", "2", "--timeout-ms", "5000"]) == 0
        _assert_same_result_as_one_uninterrupted_run(out, fast.port)
    logged = [(e["task"], e["episode_index"]) for e in _log_entries(out / "episodes.jsonl")]
    assert len(logged) == len(set(logged)) == n_planned  # no finished episode ran twice


def test_a_resumed_shard_whose_episodes_all_finished_keeps_the_runs_policy_and_server(local_ray, caplog):
    """It was merged without them: a false 'shard 0/2 record no policy' warning, and merged_servers [None, ...]."""
    from gr00t_eval.policy_identity import policy_record
    from gr00t_eval.shard import ShardSpec

    config = RolloutConfig(env_name="walkto/fast", n_episodes=4, n_envs=1, n_action_steps=2, max_episode_steps=6, seed=0,
                           vectorization="sync")
    with policy_server() as server:
        done = []
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            policy = policy_record(client)
            run_suite(client, "walkto/fast", config, ShardSpec(0, 2), on_episode=done.append)
        merged = run_with_ray("walkto/fast", config, [ServerAddress("127.0.0.1", server.port)], n_shards=2,
                              timeout_ms=5000, done=done, policy=policy)
    assert "record no policy" not in caplog.text
    assert merged["status"] == "complete" and merged["overall"]["n_episodes"] == 4
    assert merged["merged_servers"] == [f"127.0.0.1:{server.port}"] * 2
    assert merged["policy"] == policy


def test_a_resumed_sync_chunking_ray_run_with_auto_n_envs_merges_its_finished_and_its_new_shards(local_ray):
    """n_envs 0 became a number in the shards that ran but stayed 0 in the shard an earlier run finished, and with
    client chunking n_envs is part of the plan merge holds shards to."""
    from gr00t_eval.shard import ShardSpec

    config = RolloutConfig(env_name="walkto/fast", n_episodes=4, n_envs=0, n_action_steps=2, max_episode_steps=6, seed=0,
                           vectorization="sync", client_chunking="sync")
    with policy_server() as server:
        done = []
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            run_suite(client, "walkto/fast", config, ShardSpec(0, 2), on_episode=done.append)
        merged = run_with_ray("walkto/fast", config, [ServerAddress("127.0.0.1", server.port)], n_shards=2,
                              timeout_ms=5000, done=done)
    assert merged["status"] == "complete" and merged["overall"]["n_episodes"] == 4
    assert merged["plan"]["settings"]["n_envs"] == merged["config"]["n_envs"] > 0


@pytest.mark.slow
def test_a_ray_run_resume_reruns_the_errored_episodes_and_the_failed_shard_only(local_ray, tmp_path, capsys):
    from eval.scale_fixtures import free_port
    from gr00t_eval.cli import main

    out = tmp_path / "run"
    with policy_server(FailSecondCall()) as flaky:
        hosts = f"127.0.0.1:{flaky.port},127.0.0.1:{free_port()}"  # shard 1's server is not there
        code = main(["rollout", "--env-name", ENV_SPEC, "--n-episodes", "2", "--seed", "0", *SMALL, "--timeout-ms", "500",
                     "--policy-client-host", hosts, "--ray-address", "local", "--ray-shards", "2", "--output-dir", str(out)])
    first = json.loads((out / "results.json").read_text())
    assert code == 1 and first["status"] == "aborted" and list(first["failed_shards"]) == ["1/2"]
    assert first["overall"]["n_errors"] == 1 and len(first["missing_episodes"]) == 2
    assert "--resume" in capsys.readouterr().out
    finished_before = {(e["task"], e["episode_index"]) for e in _log_entries(out / "episodes.jsonl") if not e["error"]}

    mended = FailSecondCall()
    mended.calls = 2  # the same policy, past its failing call: a resume is held to the policy the run started with
    with policy_server(mended) as healthy:
        assert main(["rollout", "--resume", str(out), "--policy-client-port", str(healthy.port), "--ray-address", "local",
                     "--ray-shards", "2", "--timeout-ms", "5000"]) == 0
        _assert_same_result_as_one_uninterrupted_run(out, healthy.port)
    rerun = [(e["task"], e["episode_index"]) for e in _log_entries(out / "episodes.jsonl")][len(first["per_episode"]):]
    assert len(rerun) == 3 and not finished_before & set(rerun)  # the errored one and shard 1's two, nothing else


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
        # Each call takes a while, so both shards run at once (on a loaded machine, one shard of instant calls could
        # end before the other was placed, which then took the same node)
        with policy_server(SlowPolicy(0.2)) as server:
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


def test_the_drivers_env_registrations_reach_every_shard(local_ray, monkeypatch):
    """--env-adapter/--env-prefix/--env-import were applied in the driver only: a shard (a fresh worker) built the
    built-in env of a prefix the user had replaced, or failed on a new one, telling the user to pass the flag given."""
    config = RolloutConfig(env_name="walkback/fast", n_episodes=2, n_envs=1, n_action_steps=2, max_episode_steps=6,
                           seed=7, vectorization="sync")
    registrations = {"env_import": [], "env_prefix": [],
                     "env_adapter": [("walkback", "eval.scale_fixtures:make_walkto_env")]}
    import argparse

    from gr00t_eval.cli import apply_env_registrations

    apply_env_registrations(argparse.Namespace(**registrations))  # the driver's, as the CLI does
    # The module the adapter names must be importable in the workers (a runtime started by an earlier test of this
    # module inherits the driver's environment)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")]))
    with policy_server() as server:
        merged = run_with_ray("walkback/fast", config, [ServerAddress("127.0.0.1", server.port)], address="local",
                              n_shards=2, timeout_ms=5000, registrations=registrations)
    assert merged["failed_shards"] == {} and merged["overall"]["n_episodes"] == 2
    assert merged["overall"]["n_errors"] == 0


def test_more_cpus_per_shard_than_any_node_has_is_refused_instead_of_waiting_for_ever(local_ray):
    from gr00t_eval.cli_errors import UsageError

    config = RolloutConfig(env_name=ENV_SPEC, n_episodes=2, n_envs=1, n_action_steps=2, max_episode_steps=6, seed=7,
                           vectorization="sync")
    with pytest.raises(UsageError, match="--ray-cpus-per-shard 4: the largest node of this Ray cluster has 2 CPUs"):
        run_with_ray(ENV_SPEC, config, [ServerAddress("127.0.0.1", 1)], address="local", cpus_per_shard=4.0,
                     timeout_ms=2000)


def test_a_ray_run_is_refused_up_front_like_a_plain_one_for_too_many_action_steps_or_a_wrong_token(local_ray, tmp_path,
                                                                                                   capsys):
    """Under Ray every shard failed (and the run advised a --resume that would fail the same way), or aborted with
    'Server error: Server error: Unauthorized'; a plain run refuses both before anything runs."""
    from eval.scale_fixtures import run_cli
    from gr00t_client import PolicyServerError
    from gr00t_eval.cli_errors import UsageError

    argv = ["rollout", "--env-name", "walkto/fast", "--n-episodes", "2", "--n-envs", "1", "--max-episode-steps", "6",
            "--no-video", "--vectorization", "sync", "--seed", "0", "--ray-address", "local", "--ray-shards", "2"]
    with policy_server(api_token="s3cret") as server:
        hosts = f"127.0.0.1:{server.port}"
        with pytest.raises(UsageError, match="the policy server cannot run this rollout: .*n_action_steps"):
            run_cli([*argv, "--n-action-steps", "64", "--api-token", "s3cret", "--policy-client-host", hosts,
                     "--output-dir", str(tmp_path / "steps")])
        with pytest.raises(PolicyServerError, match="^Server error: Unauthorized"):
            run_cli([*argv, "--n-action-steps", "2", "--api-token", "wrong", "--policy-client-host", hosts,
                     "--output-dir", str(tmp_path / "token")])
    assert not (tmp_path / "steps" / "results.json").exists() and not (tmp_path / "token" / "results.json").exists()


def test_a_server_error_survives_pickling_with_its_prefix_once():
    import pickle

    from gr00t_client import PolicyServerError

    error = pickle.loads(pickle.dumps(PolicyServerError("Unauthorized: Invalid API token", "get_action")))
    assert str(error) == "Server error: Unauthorized: Invalid API token" and error.endpoint == "get_action"


def test_ray_address_auto_without_a_cluster_names_gr00t_evals_flag_not_rays(tmp_path):
    """Ray's words told the user to set an `--address` flag gr00t-eval does not have."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(tmp_path)  # no ray/ray_current_cluster there: a stale one in /tmp/ray is another case
    code = ("from gr00t_eval.ray_connect import init_ray\nimport ray\n"
            "init_ray('auto')\nprint('CONNECTED')\nray.shutdown()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                            cwd=tmp_path)
    if "CONNECTED" in result.stdout:
        pytest.skip("a Ray cluster runs on this machine: auto found it")
    if "the Ray GCS process running on this machine" in result.stderr:  # another run's Ray, going or gone: not "none"
        pytest.skip("a Ray GCS process runs on this machine: auto tried it")
    assert "RayConnectError: --ray-address auto: no running Ray cluster was found" in result.stderr, result.stderr
    assert "pass --ray-address local" in result.stderr
