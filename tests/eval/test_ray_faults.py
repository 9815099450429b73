"""Ray runs that go wrong: a task failing in a worker, SIGTERM, a second Ctrl-C, an unreachable cluster, progress lines.

Each Ray run here starts (and shuts down) its own local runtime inside run_with_ray, as `--ray-address local`
does, because ray.init's own SIGTERM handler is part of what is tested; `ray.init` only gets the test's
worker setup (tests/ on the path, the walkto env registered) and 2 CPUs added.
"""

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from eval.scale_fixtures import SlowPolicy, free_port, policy_server  # noqa: E402
from gr00t_eval import ray_connect  # noqa: E402
from gr00t_eval.cli import main  # noqa: E402
from gr00t_eval.shard import ShardSpec, merge_results, results_from_outcomes  # noqa: E402
from gr00t_eval.metrics import EpisodeOutcome  # noqa: E402
from gr00t_eval.rollout.runner import RolloutConfig  # noqa: E402

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video", "--vectorization", "sync",
         "--seed", "0"]


@pytest.fixture
def ray_started_by_the_run(monkeypatch):
    """Ray is down; the run's own ray.init starts it with the walkto env available in its workers."""
    if ray.is_initialized():
        ray.shutdown()
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])},
           "worker_process_setup_hook": "eval.scale_fixtures.register"}
    monkeypatch.setattr(ray, "init", functools.partial(ray.init, num_cpus=2, runtime_env=env))
    yield
    if ray.is_initialized():
        ray.shutdown()


def _rollout(env_spec, port, out, *extra):
    return main(["rollout", "--env-name", env_spec, "--n-episodes", "2", *SMALL, "--policy-client-port", str(port),
                 "--ray-address", "local", "--ray-shards", "2", "--output-dir", str(out), *extra])


def _results(out):
    return json.loads((out / "results.json").read_text())


def _when_episodes_logged(out, n, act):
    """Call `act()` from a thread once `n` episodes are in out/episodes.jsonl."""

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            log = out / "episodes.jsonl"
            if log.is_file() and len(log.read_text().splitlines()) >= n:
                act()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# --- a task that fails inside a Ray worker ------------------------------------------------------------


def _shard_results(env_spec, config, shard, outcomes, failed_task=None):
    results = results_from_outcomes(env_spec, config, shard, outcomes)
    if failed_task:
        results["per_task"][failed_task]["error"] = "ValueError: unknown walkto task 'nope'"
    return results


def test_merging_shards_keeps_a_task_that_failed_in_its_shard_as_a_failed_task_not_a_missing_shard():
    config = RolloutConfig(env_name="walkto/fast,walkto/nope", n_episodes=2, seed=0)
    done = [EpisodeOutcome(episode_index=i, success=True, sum_reward=1.0, max_reward=1.0, length=2, seed=i,
                           extras={"task": "walkto/fast"}) for i in range(2)]
    merged = merge_results([_shard_results(config.env_name, config, ShardSpec(0, 2), done),
                            _shard_results(config.env_name, config, ShardSpec(1, 2), [], failed_task="walkto/nope")])
    assert merged["missing_episodes"] == []  # a failed task, not a missing shard; but not a complete run either
    assert merged["status"] == "incomplete" and "1 of 2 tasks failed (walkto/nope)" in merged["stop_reason"]
    assert "unknown walkto task" in merged["failed_tasks"]["walkto/nope"]
    assert merged["overall"]["n_episodes"] == 2 and merged["n_not_run"] == 2


def test_a_ray_suite_whose_task_fails_in_a_worker_reports_the_failed_task_and_keeps_the_others(
        ray_started_by_the_run, tmp_path, ray_progress):
    out = tmp_path / "run"
    with policy_server() as server:
        code = _rollout("walkto/fast,walkto/nope", server.port, out)
    results = _results(out)
    assert code == 1 and (out / "eval_info.json").is_file()
    assert "unknown walkto task" in results["failed_tasks"]["walkto/nope"]
    assert [e["task"] for e in results["per_episode"]] == ["walkto/fast", "walkto/fast"]
    assert results["missing_episodes"] == [] and results["n_not_run"] == 2
    progress = ray_progress()
    assert "shard 1/2 done; 0 episodes; task walkto/nope FAILED: ValueError: unknown walkto task" in progress


# --- signals ----------------------------------------------------------------------------------------


def test_sigterm_to_a_ray_run_writes_interrupted_results_and_exits_130(ray_started_by_the_run, tmp_path):
    out = tmp_path / "run"
    watcher = _when_episodes_logged(out, 1, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with policy_server(SlowPolicy(0.3)) as slow:
        code = _rollout("walkto/fast,walkto/slow", slow.port, out)
    watcher.join()
    results = _results(out)
    assert code == 130 and results["status"] == "interrupted"
    assert 1 <= len(results["per_episode"]) < 4 and results["n_not_run"] == 4 - len(results["per_episode"])
    assert results["overall"]["eval_s"] > 0  # the cancelled shards' time is kept
    assert "shard 0/2 interrupted" in results["stop_reason"] and "--allow-missing" not in results["stop_reason"]
    assert not ray.is_initialized()


def test_a_second_ctrl_c_while_the_ray_shards_are_cancelled_still_writes_the_results(
        ray_started_by_the_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cancel = ray.cancel

    def cancel_and_press_ctrl_c_again(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return cancel(*args, **kwargs)

    monkeypatch.setattr(ray, "cancel", cancel_and_press_ctrl_c_again)
    watcher = _when_episodes_logged(out, 1, lambda: os.kill(os.getpid(), signal.SIGINT))
    with policy_server(SlowPolicy(0.3)) as slow:
        code = _rollout("walkto/fast,walkto/slow", slow.port, out)
    watcher.join()
    assert code == 130 and _results(out)["status"] == "interrupted"
    assert not ray.is_initialized()


def test_ctrl_c_while_the_first_shard_is_submitted_is_an_interrupted_run_with_every_episode_not_run(
        ray_started_by_the_run, tmp_path, monkeypatch):
    """Ray's first .remote() exports the task (a second): a Ctrl-C there left no shard to merge, and the run ended
    'error: MergeError: nothing to merge', exit 2."""
    remote = ray.remote

    def remote_pressing_ctrl_c_on_submit(*args, **kwargs):
        task = remote(*args, **kwargs)

        class Submit:
            def __call__(self, function):
                submitted = task(function)

                class Pressed:
                    def remote(self, *task_args, **task_kwargs):
                        os.kill(os.getpid(), signal.SIGINT)
                        time.sleep(0.1)  # the Ctrl-C lands here, as within Ray's own export
                        return submitted.remote(*task_args, **task_kwargs)

                return Pressed()

        return Submit()

    monkeypatch.setattr(ray, "remote", remote_pressing_ctrl_c_on_submit)
    out = tmp_path / "run"
    with policy_server() as server:
        code = _rollout("walkto/fast,walkto/slow", server.port, out)
    results = _results(out)
    assert code == 130 and results["status"] == "interrupted"
    assert results["per_episode"] == [] and results["n_not_run"] == 4
    assert "shard 1/2 interrupted: not started" in results["stop_reason"]
    assert not ray.is_initialized()


def test_sigterm_while_ray_starts_stops_the_run_as_interrupted_with_130(monkeypatch, tmp_path, capsys):
    """ray.init's own SIGTERM handler (sys.exit(15)) ended the run with status 15 and no word."""
    import ray

    def init_hit_by_sigterm(*args, **kwargs):
        raise SystemExit(signal.SIGTERM)  # what Ray's handler does when SIGTERM lands during ray.init

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init_hit_by_sigterm)
    with policy_server() as server:
        code = _rollout("walkto/fast", server.port, tmp_path / "run")
    assert code == 130 and "interrupted" in capsys.readouterr().err


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_ray_init_connects_the_driver_ends_the_run_as_interrupted_with_130(tmp_path, stop):
    """Raised inside ray.init (the driver's CoreWorker half made), Ctrl-C or SIGTERM killed the driver at exit:
    SIGSEGV/SIGABRT, not 130, and no results."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}
    with policy_server() as server:
        proc = subprocess.Popen([sys.executable, "-u", "-m", "gr00t_eval.cli", "rollout", "--env-name", "walkto/fast",
                                 "--n-episodes", "2", *SMALL, "--policy-client-port", str(server.port), "--env-import",
                                 "eval.scale_fixtures", "--ray-address", "local", "--ray-shards", "2", "--output-dir",
                                 str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, start_new_session=True)
        output = []
        try:
            for line in proc.stdout:
                output.append(line)
                if "Started a local Ray instance" in line:  # ray.init goes on to connect the driver
                    time.sleep(0.3)
                    proc.send_signal(stop)
            code = proc.wait(120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert code == 130, "".join(output)[-3000:]
    assert "interrupted" in "".join(output)


# --- an unreachable cluster ---------------------------------------------------------------------------


def test_an_unreachable_ray_address_fails_in_seconds_with_one_line_and_exit_2(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gr00t_eval.cli", "rollout", "--env-name", "metaworld/reach-v3",
                           "--n-episodes", "1", "--seed", "0", "--ray-address", address, "--output-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and time.monotonic() - started < 30
    assert f"--ray-address {address}: no Ray cluster answers there" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing to --overwrite on the next try


def test_a_missing_ray_is_named_before_the_output_directory_is_made(tmp_path):
    """The error came after run.json was written, so the same command after `pip install` was refused: not empty."""
    fake = tmp_path / "site" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray (this test hides it)')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "gr00t_eval.cli", "rollout", "--env-name", "walkto/fast", "--n-episodes",
                           "1", "--seed", "0", "--ray-address", "local", "--output-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "--ray-address needs Ray" in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


def test_check_ray_address_leaves_auto_without_an_address_local_and_malformed_addresses_to_ray(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no ray/ray_current_cluster there
    for address in ("auto", "local", "no-port-here", "127.0.0.1:6\u00b2"):  # int() took the superscript for a digit
        ray_connect.check_ray_address(address, timeout_s=0.1)


def test_a_ray_client_address_where_nothing_listens_is_refused_in_seconds():
    pytest.importorskip("grpc")  # without Ray Client the missing dependency is named first
    with pytest.raises(ConnectionError, match="no Ray cluster answers"):
        ray_connect.check_ray_address(f"ray://127.0.0.1:{free_port()}", timeout_s=1.0)


def _without_grpc(tmp_path):
    """The environment of a process in which `import grpc` fails, as where Ray was installed without ray[client]."""
    fake = tmp_path / "site" / "grpc"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named grpc (this test hides it)')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}


def test_a_ray_client_address_without_ray_client_installed_is_refused_before_the_output_directory_is_made(tmp_path):
    """ray.init failed with "Ray Client requires pip package `ray[client]`" after run.json was written."""
    address = f"ray://127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, "-m", "gr00t_eval.cli", "rollout", "--env-name", "walkto/fast", "--n-episodes",
                           "1", "--seed", "0", "--ray-address", address, "--output-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120, env=_without_grpc(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert f"--ray-address {address}: a ray:// address needs Ray Client" in proc.stderr
    assert 'pip install "ray[client]"' in proc.stderr
    assert not (tmp_path / "run").exists()


def test_auto_with_ray_address_where_nothing_listens_fails_in_seconds_naming_it_before_the_output_directory(tmp_path):
    """auto was not checked: ray.init retried RAY_ADDRESS for minutes with Ctrl-C held back."""
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    env = {**os.environ, "RAY_ADDRESS": address,
           "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "gr00t_eval.cli", "rollout", "--env-name", "walkto/fast", "--env-import",
                           "eval.scale_fixtures", "--n-episodes", "1", "--seed", "0", "--ray-address", "auto",
                           "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 2 and time.monotonic() - started < 30, proc.stderr
    assert f"--ray-address auto ({address}, from RAY_ADDRESS): no Ray cluster answers there" in proc.stderr
    assert not (tmp_path / "run").exists()


def _gcs_processes_here():
    from ray._private.services import find_gcs_addresses

    return find_gcs_addresses()


def test_auto_with_the_address_file_of_a_gone_ray_head_is_refused_with_ray_stop_as_the_remedy(monkeypatch, tmp_path):
    if _gcs_processes_here():
        pytest.skip("a Ray head runs on this machine: ray.init('auto') joins it, whatever the file says")
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(address + "\n")
    with pytest.raises(ConnectionError, match="no Ray cluster answers there") as refused:
        ray_connect.check_ray_address("auto", timeout_s=1.0)
    assert f"auto ({address}, from {tmp_path / 'ray' / 'ray_current_cluster'})" in str(refused.value)
    assert "left by a Ray head that is gone: run `ray stop`" in str(refused.value)


@pytest.fixture
def ray_head():
    """A `ray start --head` of this machine (its own RAY_TMPDIR, ports the OS picked), stopped by its process group."""
    import shutil
    import socket
    import tempfile

    if _gcs_processes_here():
        pytest.skip("another Ray head runs on this machine: ray.init('auto') then follows the address file")
    # Fixed ports (42930-42960 once) made the head fail to start wherever one of them was taken, and the test then
    # failed 90 s later as if the code were wrong. Ports free now, all bound at once so no two are the same.
    holders = [socket.socket() for _ in range(7)]
    for holder in holders:
        holder.bind(("127.0.0.1", 0))
    free = [str(holder.getsockname()[1]) for holder in holders]
    for holder in holders:
        holder.close()
    flags = ["--port", "--node-manager-port", "--object-manager-port", "--metrics-export-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port"]
    ports = [arg for flag, port in zip(flags, free) for arg in (flag, port)]
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    live = tempfile.mkdtemp(prefix="rh")  # short: Ray's socket paths under it have a length limit
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", "--num-cpus", "1", "--include-dashboard", "false",
                             "--disable-usage-stats", *ports], env={**os.environ, "RAY_TMPDIR": live},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _gcs_processes_here() and time.monotonic() < deadline and head.poll() is None:
            time.sleep(0.5)
        assert _gcs_processes_here(), f"`ray start --head` did not start (exit {head.poll()})"
        yield
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(20)
        except ProcessLookupError:  # it never started: the assertion above says so
            pass
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(live, ignore_errors=True)


@pytest.mark.slow
def test_auto_joins_the_running_ray_head_ray_itself_joins_though_a_gone_heads_address_file_is_left(ray_head, monkeypatch,
                                                                                                  tmp_path):
    """`ray.init("auto")` joins the one GCS process running here; the stale file made gr00t-eval refuse the run and
    advise `ray stop`, which stops that live head too."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "stale"))
    (tmp_path / "stale" / "ray").mkdir(parents=True)
    (tmp_path / "stale" / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}\n")
    deadline = time.monotonic() + 30
    while True:  # the GCS answers a moment after its process starts
        try:
            ray_connect.check_ray_address("auto", timeout_s=1.0)
            break
        except ConnectionError as refused:
            assert "ray stop" not in str(refused) and time.monotonic() < deadline, refused
            time.sleep(0.5)


def test_an_open_port_that_answers_but_not_as_ray_is_refused_in_seconds_not_retried_for_minutes():
    """A policy server's port: the TCP check passed, and ray.init then retried the 'GCS' there for minutes."""
    import zmq

    context = zmq.Context()
    zmq_socket = context.socket(zmq.REP)
    zmq_port = zmq_socket.bind_to_random_port("tcp://127.0.0.1")
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="something listens there, but not Ray"):
            ray_connect.check_ray_address(f"127.0.0.1:{zmq_port}", timeout_s=1.0)
        assert time.monotonic() - started < 10
    finally:
        zmq_socket.close(linger=0)
        context.term()


def test_a_port_that_accepts_and_never_answers_is_reported_as_a_silent_head_not_as_something_other_than_ray():
    """A hung or stopped Ray head (its kernel still accepts) was called "not Ray", sending the user to another port."""
    import socket

    silent = socket.create_server(("127.0.0.1", 0))
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionError) as refused:
            ray_connect.check_ray_address(f"127.0.0.1:{silent.getsockname()[1]}", timeout_s=1.0)
        assert time.monotonic() - started < 10
    finally:
        silent.close()
    assert "accepted the connection but did not answer within 1 s (a hung or overloaded Ray head?)" in str(refused.value)
    assert "not Ray" not in str(refused.value)


# --- progress lines and labels -----------------------------------------------------------------------


def test_a_failed_shard_is_labelled_by_shard_and_its_time_is_kept(ray_started_by_the_run, tmp_path, capsys, ray_progress):
    out = tmp_path / "run"
    with policy_server(SlowPolicy(0.1)) as alive:
        hosts = f"127.0.0.1:{alive.port},127.0.0.1:{free_port()}"
        code = main(["rollout", "--env-name", "walkto/fast", "--n-episodes", "2", *SMALL, "--timeout-ms", "500",
                     "--policy-client-host", hosts, "--ray-address", "local", "--ray-shards", "2", "--output-dir", str(out)])
    results = _results(out)
    assert code == 1 and list(results["failed_shards"]) == ["1/2"]
    assert results["merged_servers"] == hosts.split(",")  # the failed shard's server too (they were null)
    assert results["stop_reason"].startswith("shard 1/2 aborted: failed: ConnectionError")
    assert "results #" not in results["stop_reason"] and "--allow-missing" not in results["stop_reason"]
    captured = capsys.readouterr()
    progress = ray_progress()
    assert "Ray: shard 1/2 FAILED: ConnectionError" in progress and "shard 0/2 done; 1 episodes" in progress
    assert "Ray: " not in captured.err  # logged once, not printed beside the log line as well
    [aborted] = [line for line in captured.out.splitlines() if line.startswith("ABORTED:")]
    assert aborted.count("episodes did not run") == 1, aborted  # it was said twice, the count in each


def test_a_ray_run_whose_shards_reach_no_server_leaves_no_run_behind(ray_started_by_the_run, tmp_path, capsys):
    """A plain run against a dead port exits 2 and leaves no run file; on Ray every shard failed its ping, the run
    wrote 0-episode aborted results and kept run.json, and the same command once the server was up was refused as
    'not empty'."""
    out = tmp_path / "run"
    assert _rollout("walkto/fast", free_port(), out, "--seed", "0", "--timeout-ms", "1000") == 2
    err = capsys.readouterr().err
    assert "no episode was scored: " in err and "shard 0/2" in err, err
    assert not (out / "run.json").exists() and not (out / "results.json").exists()
    with policy_server() as server:
        assert _rollout("walkto/fast", server.port, out, "--seed", "0") == 0  # not refused as "not empty"
    assert json.loads((out / "results.json").read_text())["overall"]["n_episodes"] == 2


@pytest.mark.parametrize("kwargs, config_change, refused", [
    ({"servers": []}, {}, r"^servers must list at least one ServerAddress"),
    ({"cpus_per_shard": 0}, {}, r"^cpus_per_shard must be a finite number > 0, got 0$"),
    ({"cpus_per_shard": float("nan")}, {}, r"^cpus_per_shard must be a finite number > 0, got nan$"),
    ({"n_shards": 1.5}, {}, r"^n_shards must be a whole number >= 0, got float 1.5$"),
    ({"n_shards": True}, {}, r"^n_shards must be a whole number >= 0, got bool True$"),  # ran, then merge lost it
    ({}, {"n_episodes": 2.5}, r"^n_episodes must be a whole number >= 1, got float 2.5$"),
    ({}, {"terminate_on_success": "false"}, r"^terminate_on_success must be a bool"),
], ids=["no_servers", "zero_cpus", "nan_cpus", "float_shards", "bool_shards", "float_episodes", "text_bool"])
def test_run_with_ray_refuses_arguments_no_run_can_take_before_ray_starts(kwargs, config_change, refused):
    """servers=[] and cpus_per_shard=0 divided by zero, a float count was a bare TypeError, and n_shards=True ran its
    shard and then lost its episodes to a MergeError: each is refused naming it, and Ray is never started."""
    from gr00t_eval.ray_runner import ServerAddress, run_with_ray

    if ray.is_initialized():
        ray.shutdown()
    with policy_server() as server:
        settings = dict(n_episodes=2, n_envs=1, n_action_steps=2, max_episode_steps=6, seed=7, vectorization="sync")
        config = RolloutConfig(env_name="walkto/slow", **{**settings, **config_change})
        arguments = {"servers": [ServerAddress("127.0.0.1", server.port)], **kwargs}
        with pytest.raises(ValueError, match=refused):
            run_with_ray("walkto/slow", config, address="local", **arguments)
    assert not ray.is_initialized()


def test_run_with_ray_refuses_done_outcomes_of_another_seed_before_ray_starts():
    """A shard all of whose episodes were in `done` never ran, so run_suite's check never saw them: a seed-100 run
    kept seed-11 outcomes and reported them as its own."""
    from gr00t_eval.policy_identity import policy_record
    from gr00t_eval.ray_runner import ServerAddress, run_with_ray
    from gr00t_eval.shard import run_suite
    from gr00t_client import PolicyClient

    if ray.is_initialized():
        ray.shutdown()
    settings = dict(n_episodes=2, n_envs=1, n_action_steps=2, max_episode_steps=6, vectorization="sync")
    with policy_server() as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            earlier = run_suite(client, "walkto/slow", RolloutConfig(env_name="walkto/slow", seed=11, **settings))
            record = policy_record(client)
        done = [EpisodeOutcome.from_json_dict(entry) for entry in earlier["per_episode"]][:1]
        with pytest.raises(ValueError, match=r"^done has episode 0 of walkto/slow with seed 11, but this run gives it "
                                             r"seed 100"):
            run_with_ray("walkto/slow", RolloutConfig(env_name="walkto/slow", seed=100, **settings),
                         [ServerAddress("127.0.0.1", server.port)], address="local", done=done, policy=record)
    assert not ray.is_initialized()
