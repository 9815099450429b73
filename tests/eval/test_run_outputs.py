"""Results users can trust: errors counted apart, dead servers stop the run, interrupts keep everything, --resume,
output directories, eval_info.json in lerobot's field names, merge, and one-line errors. Real servers, real CLI."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from eval.scale_fixtures import (ConstantPolicy, CountingPolicy, HangsOnCall, WalkToEnv, free_port, names_in_one_second,
                                 policy_server)
from gr00t_client import EmbodimentTag
from gr00t_eval.cli import main
from gr00t_eval.rollout.envs import register_env_prefix

TESTS_DIR = Path(__file__).resolve().parents[1]
SMALL = ["--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video", "--vectorization", "sync"]
LEROBOT_EPISODE_FIELDS = {"episode_ix", "sum_reward", "max_reward", "success", "seed"}
LEROBOT_OVERALL_FIELDS = {"pc_success", "avg_sum_reward", "avg_max_reward", "n_episodes", "eval_s", "eval_ep_s"}


class SlowPolicy(ConstantPolicy):
    """ConstantPolicy that takes `delay` seconds per call, so a run lasts long enough to be interrupted."""

    def __init__(self, delay: float = 0.05):
        super().__init__()
        self.delay = delay

    def _get_action(self, observation, options=None):
        time.sleep(self.delay)
        return super()._get_action(observation, options)


class FlakyPolicy(ConstantPolicy):
    """Raises on calls number `fail_calls` (1-based): the episodes running then error, the others finish."""

    def __init__(self, fail_calls):
        super().__init__()
        self.fail_calls, self.calls = set(fail_calls), 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls in self.fail_calls:
            raise RuntimeError("policy blew up")
        return super()._get_action(observation, options)


EARLIER_RESULTS = json.dumps({"kind": "rollout", "status": "complete"})  # an earlier run's own results


def rollout_args(port, out, *extra):
    return ["rollout", "--env-name", "walkto/slow", "--policy-client-port", str(port), "--output-dir", str(out),
            "--timeout-ms", "3000", *SMALL, *extra]


def read(path):
    return json.loads(Path(path).read_text())


def outcomes(results):
    keep = ("task", "episode_index", "seed", "success", "sum_reward", "max_reward", "length", "error")
    return [{k: e.get(k) for k in keep} for e in results["per_episode"]]


# --- failure accounting ---------------------------------------------------------------------------


def test_errored_episodes_are_counted_apart_reported_incomplete_and_fail_the_exit_status(tmp_path, capsys):
    with policy_server(FlakyPolicy(fail_calls={2})) as server:
        code = main(rollout_args(server.port, tmp_path / "out", "--n-episodes", "4", "--seed", "0"))
    printed = capsys.readouterr().out
    results = read(tmp_path / "out" / "results.json")
    errored = [e for e in results["per_episode"] if e["error"]]
    assert code == 1
    assert len(errored) == 1 and "get_action failed" in errored[0]["error"] and errored[0]["success"] is None
    assert results["overall"]["n_errors"] == 1 and results["overall"]["n_episodes"] == 3  # metrics over the 3 finished
    assert "INCOMPLETE: 1 of 4 episodes errored" in printed
    with policy_server(FlakyPolicy(fail_calls={2})) as server:
        assert main(rollout_args(server.port, tmp_path / "again", "--n-episodes", "4", "--seed", "0", "--allow-errors")) == 0


def test_a_broken_env_kwarg_gives_no_score_and_leaves_the_folder_to_the_corrected_command(tmp_path, capsys):
    with policy_server() as server:
        code = main(rollout_args(server.port, tmp_path / "out", "--n-episodes", "2", "--env-kwarg", "camera=corner9"))
        err = capsys.readouterr().err
        assert code == 2
        assert "no episode was scored: task walkto/slow failed" in err and "camera" in err, err
        assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == []
        # it used to leave run.json and advise a --resume that repeated the typo; the corrected command was refused
        assert main(rollout_args(server.port, tmp_path / "out", "--n-episodes", "2")) == 0
    assert read(tmp_path / "out" / "results.json")["overall"]["n_episodes"] == 2


class SceneAtReset(WalkToEnv):
    """walkto/slow that reads its scene file `scene` at every reset, as a simulator loading its assets does."""

    def __init__(self, scene=None):
        super().__init__(1.0)
        self.scene = scene

    def reset(self, *, seed=None, options=None):
        if self.scene is not None:
            Path(self.scene).read_bytes()
        return super().reset(seed=seed, options=options)


register_env_prefix("scenewalk", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: SceneAtReset(**kwargs))


def test_a_setting_that_fails_every_first_reset_gives_no_score_and_leaves_the_folder_to_the_corrected_command(
        tmp_path, capsys):
    """The env took the --env-kwarg and every reset raised: results.json said 'complete' (envs_stepped false), and its
    run file refused the corrected command as 'not empty', pointing at a --resume that kept the bad setting."""
    out = tmp_path / "out"
    with policy_server() as server:
        args = ["rollout", "--env-name", "scenewalk/slow", "--policy-client-port", str(server.port), "--output-dir",
                str(out), "--timeout-ms", "3000", *SMALL, "--n-episodes", "2"]
        code = main([*args, "--env-kwarg", f"scene={tmp_path / 'no-such-scene.xml'}"])
        err = capsys.readouterr().err
        assert code == 2
        assert "no episode was scored: every episode errored at its reset, before its envs were sent a step" in err, err
        assert "(the first: episode 0 of scenewalk/slow: reset failed: FileNotFoundError" in err, err
        assert "no-such-scene.xml" in err and "--resume" not in err, err
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []
        assert main(args) == 0
    assert read(out / "results.json")["status"] == "complete"


def test_every_episode_seed_is_recorded_from_a_random_base_seed_saved_in_run_json(tmp_path):
    with policy_server() as server:
        assert main(rollout_args(server.port, tmp_path / "out", "--n-episodes", "3")) == 0
    base = read(tmp_path / "out" / "run.json")["config"]["seed"]
    assert isinstance(base, int)
    assert [e["seed"] for e in read(tmp_path / "out" / "results.json")["per_episode"]] == [base, base + 1, base + 2]


# --- dead server ------------------------------------------------------------------------------------

PORT_LINE = re.compile(r"PORT (\d+)")
SERVER_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from eval.scale_fixtures import ConstantPolicy
from serving import running_server

class Slow(ConstantPolicy):
    def _get_action(self, observation, options=None):
        time.sleep(0.05)
        return super()._get_action(observation, options)

with running_server(Slow()) as server:
    # one write, read back with a search: the server thread's ready line may interleave with this one
    sys.stdout.write("PORT %d\\n" % server.port)
    sys.stdout.flush()
    time.sleep(600)
"""


def _eval_process(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", "import sys; from gr00t_eval.cli import main; sys.exit(main())",
               "--log-level", "WARNING", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _wait_for_episodes(log: Path, count: int, process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) >= count:
            return
        if process.poll() is not None:
            pytest.fail(f"rollout ended early:\n{process.stdout.read()}")
        time.sleep(0.05)
    pytest.fail(f"{log} did not reach {count} episodes")


@pytest.mark.slow
def test_a_server_killed_mid_rollout_stops_the_run_within_the_timeout_keeping_finished_episodes(tmp_path):
    server = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT.format(tests=str(TESTS_DIR))], stdout=subprocess.PIPE, text=True)
    try:
        port = int(next(match for match in map(PORT_LINE.search, server.stdout) if match).group(1))
        out = tmp_path / "out"
        rollout = _eval_process(["rollout", "--env-name", "walkto/slow", "--policy-client-port", str(port), "--output-dir",
                                 str(out), "--timeout-ms", "2000", "--n-episodes", "500", "--env-import", "eval.scale_fixtures",
                                 *SMALL])
        _wait_for_episodes(out / "episodes.jsonl", 3, rollout)
        server.kill()
        killed = time.monotonic()
        output, _ = rollout.communicate(timeout=30)
        took = time.monotonic() - killed
    finally:
        server.kill()
        server.wait()
    assert rollout.returncode == 1, output
    # Generous for a loaded 2-core machine; the bug it guards kept the run going for every remaining episode
    # (hundreds of 2 s timeouts).
    assert took < 2.0 + 13.0, f"the rollout took {took:.1f} s to stop after the server died"
    results = read(out / "results.json")
    assert results["status"] == "aborted" and "did not answer a ping" in results["stop_reason"]
    assert results["overall"]["n_episodes"] >= 3 and results["overall"]["n_errors"] >= 1
    assert results["n_not_run"] > 400
    assert "ABORTED" in output


def test_a_server_shutting_down_mid_rollout_stops_it_at_once_leaving_the_episode_not_run(tmp_path, capsys):
    """The server (stopped with Ctrl-C) answered the request in flight 'server is shutting down': the rollout scored
    that episode errored and went on to wait out its timeout against a server already gone."""
    from serving import stopped_while_it_hangs

    policy = HangsOnCall(call=8)
    out = tmp_path / "out"
    with stopped_while_it_hangs(policy) as server:
        started = time.monotonic()
        code = main(["rollout", "--env-name", "walkto/slow", "--policy-client-port", str(server.port), "--output-dir",
                     str(out), "--timeout-ms", "20000", "--n-episodes", "6", *SMALL])
        took = time.monotonic() - started
    results = read(out / "results.json")
    assert code == 1 and took < 15, f"took {took:.1f} s"
    assert results["status"] == "aborted" and "is shutting down" in results["stop_reason"]
    assert results["overall"]["n_errors"] == 0 and results["n_not_run"] >= 1
    assert results["overall"]["n_episodes"] + results["n_not_run"] == 6


class SlowCalls(CountingPolicy):
    """CountingPolicy whose first `slow_calls` get_action calls (all, when None) take `call_s` seconds."""

    def __init__(self, call_s: float, slow_calls=None):
        super().__init__()
        self.call_s, self.slow_calls = call_s, slow_calls

    def _get_action(self, observation, options=None):
        if self.slow_calls is None or self.calls < self.slow_calls:  # counted by CountingPolicy once answered
            time.sleep(self.call_s)
        return super()._get_action(observation, options)


def test_one_slow_first_get_action_errors_only_its_own_episode(tmp_path, monkeypatch):
    """A cold first call (1.5 s against a 1000 ms timeout): the server refused every later request on its word, the
    rollout errored each episode at once, and the run ended with nothing scored. Now the request it did not run is
    asked once more, and the server runs it as a probe. (The margins leave the reset queued behind the cold call
    half its timeout, on a loaded machine too.)"""
    from gr00t_server.serving import batching

    monkeypatch.setattr(batching, "PROBE_AFTER_IDLE_S", 60.0)  # the rollout never leaves the server idle for a probe
    out = tmp_path / "out"
    with policy_server(SlowCalls(1.5, slow_calls=1)) as server:
        main(["rollout", "--env-name", "walkto/fast", "--policy-client-port", str(server.port), "--output-dir", str(out),
              "--timeout-ms", "1000", "--n-episodes", "4", "--seed", "0", *SMALL])
    results = read(out / "results.json")
    assert results["status"] == "complete"
    assert [e["episode_index"] for e in results["per_episode"] if e["error"]] == [0]
    assert results["overall"]["n_episodes"] == 3


def test_one_slow_first_get_action_with_sync_client_chunking_errors_only_its_own_episode(tmp_path, monkeypatch):
    """The request the server did not run after a cold first call was asked once more only without client chunking:
    with `--client-chunking sync` (no prefetch, its buffers untouched by a failed request) a second episode errored."""
    from gr00t_server.serving import batching

    monkeypatch.setattr(batching, "PROBE_AFTER_IDLE_S", 60.0)  # the rollout never leaves the server idle for a probe
    out = tmp_path / "out"
    with policy_server(SlowCalls(1.5, slow_calls=1)) as server:
        main(["rollout", "--env-name", "walkto/fast", "--policy-client-port", str(server.port), "--output-dir", str(out),
              "--timeout-ms", "1000", "--n-episodes", "4", "--seed", "0", "--client-chunking", "sync", *SMALL])
    results = read(out / "results.json")
    assert results["status"] == "complete"
    assert [e["episode_index"] for e in results["per_episode"] if e["error"]] == [0]
    assert results["overall"]["n_episodes"] == 3


def test_a_policy_too_slow_for_every_request_ends_the_run_aborted_with_its_resume_command(tmp_path, capsys):
    """Every call takes 0.6 s against a 400 ms timeout: each episode's get_action timed out or was refused unrun, but
    the successful reset before each episode zeroed the count of failures in a row, so every episode errored and the
    run ended `complete`, with no --resume. A reset's success says nothing of get_action's."""
    out = tmp_path / "out"
    with policy_server(SlowCalls(0.6)) as server:
        code = main(["rollout", "--env-name", "walkto/fast", "--policy-client-port", str(server.port), "--output-dir",
                     str(out), "--timeout-ms", "400", "--n-episodes", "8", "--seed", "0", *SMALL])
    captured = capsys.readouterr()
    results = read(out / "results.json")
    assert code == 1
    assert results["status"] == "aborted" and "requests in a row failed" in results["stop_reason"], results["stop_reason"]
    assert results["n_not_run"] >= 1
    assert f"gr00t-eval rollout --resume {out}" in captured.out + captured.err


# --- interrupt and resume -----------------------------------------------------------------------------


@pytest.mark.slow
def test_sigint_writes_interrupted_results_and_resume_completes_to_the_uninterrupted_result(tmp_path):
    n_episodes = "12"
    with policy_server(SlowPolicy()) as server:
        out = tmp_path / "interrupted"
        rollout = _eval_process(rollout_args(server.port, out, "--n-episodes", n_episodes, "--seed", "5",
                                             "--env-import", "eval.scale_fixtures"))
        _wait_for_episodes(out / "episodes.jsonl", 3, rollout)
        rollout.send_signal(signal.SIGINT)
        output, _ = rollout.communicate(timeout=30)
        assert rollout.returncode == 130, output
        interrupted = read(out / "results.json")
        assert interrupted["status"] == "interrupted" and 3 <= len(interrupted["per_episode"]) < 12
        assert "--resume" in output

        assert main(["rollout", "--resume", str(out), "--policy-client-port", str(server.port), "--timeout-ms", "3000",
                     "--env-import", "eval.scale_fixtures"]) == 0  # the flags the run was started with
        assert main(rollout_args(server.port, tmp_path / "whole", "--n-episodes", n_episodes, "--seed", "5")) == 0
    resumed, whole = read(out / "results.json"), read(tmp_path / "whole" / "results.json")
    assert resumed["status"] == "complete"
    assert outcomes(resumed) == outcomes(whole)
    for key in ("pc_success", "avg_sum_reward", "avg_max_reward", "n_episodes", "n_errors"):
        assert resumed["overall"][key] == whole["overall"][key]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_end_a_run_like_ctrl_c(tmp_path, how):
    """SIGHUP (the terminal or ssh session closed) killed the run with 129: no results.json, the claim unfinished.
    The run file's claim of an interrupted run said "complete" (the rollout caught its own interrupt)."""
    if not hasattr(signal, how):
        pytest.skip(f"no {how} here")
    with policy_server(SlowPolicy()) as server:
        out = tmp_path / "out"
        rollout = _eval_process(rollout_args(server.port, out, "--n-episodes", "200", "--env-import", "eval.scale_fixtures"))
        _wait_for_episodes(out / "episodes.jsonl", 1, rollout)
        rollout.send_signal(getattr(signal, how))
        output, _ = rollout.communicate(timeout=30)
    assert rollout.returncode == 130, output
    assert read(out / "results.json")["status"] == "interrupted"
    claim = read(out / "run.json")["claim"]
    assert claim["finished"] is True and claim["outcome"] == "interrupted"


class CtrlCWhileTheSummaryPrints(io.StringIO):
    """Standard output that a Ctrl-C (a real SIGINT to this process) lands on as the summary's success rate line is
    printed, after results.json was saved."""

    def write(self, text):
        if text.startswith("success rate") and "success rate" not in self.getvalue():
            os.kill(os.getpid(), signal.SIGINT)
        return super().write(text)


def test_a_ctrl_c_while_the_saved_results_are_summarized_leaves_the_run_complete(tmp_path, monkeypatch):
    """A stop after results.json ("complete") was saved, while its summary was printed, exited 130 without the rest
    of the summary, and run.json's claim said the run was interrupted."""
    stdout = CtrlCWhileTheSummaryPrints()
    monkeypatch.setattr(sys, "stdout", stdout)
    with policy_server(ConstantPolicy()) as server:
        out = tmp_path / "out"
        code = main(rollout_args(server.port, out, "--n-episodes", "2", "--env-import", "eval.scale_fixtures"))
    assert code == 0 and f"Results: {out / 'results.json'}" in stdout.getvalue(), stdout.getvalue()[-800:]
    assert read(out / "results.json")["status"] == "complete"
    claim = read(out / "run.json")["claim"]
    assert claim["finished"] is True and claim["outcome"] == "complete"


def test_a_rollout_whose_stdout_reader_has_gone_finishes_and_exits_0(tmp_path):
    """`gr00t-eval rollout ... | head -1`: the run saved complete results and then exited 2 with "[Errno 32] Broken
    pipe" (and an open-loop failed before its first trajectory)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    with policy_server() as server:
        out = tmp_path / "out"
        rollout = subprocess.Popen([sys.executable, "-c", "import sys; from gr00t_eval.cli import main; sys.exit(main())",
                                    *rollout_args(server.port, out, "--n-episodes", "2", "--env-import", "eval.scale_fixtures")],
                                   env=env, stdout=write_end, stderr=subprocess.PIPE, text=True)
        os.close(write_end)
        _, errors = rollout.communicate(timeout=120)
    assert rollout.returncode == 0, errors
    assert "Broken pipe" not in errors and "Traceback" not in errors
    assert read(out / "results.json")["status"] == "complete"


@pytest.mark.parametrize("sink", ["terminal gone", "full disk"])
def test_a_run_whose_standard_output_fails_saves_its_results_and_says_why_once(tmp_path, sink):
    """`gr00t-eval ... & disown`, then the ssh session ends: every write to the terminal fails with EIO (an open-loop
    lost every trajectory it had scored); stdout on a full disk fails with ENOSPC. The report is discarded from then
    on, one warning on stderr says why, and the run saves its results."""
    import pty

    if sink == "terminal gone":
        master, stdout = pty.openpty()
        os.close(master)  # the terminal is gone before the first line
    else:
        stdout = os.open("/dev/full", os.O_WRONLY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    with policy_server() as server:
        out = tmp_path / "out"
        rollout = subprocess.Popen([sys.executable, "-c", "import sys; from gr00t_eval.cli import main; sys.exit(main())",
                                    *rollout_args(server.port, out, "--n-episodes", "2", "--env-import", "eval.scale_fixtures")],
                                   env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, start_new_session=True)
        os.close(stdout)
        _, errors = rollout.communicate(timeout=120)
    assert rollout.returncode == 0, errors
    assert errors.count("standard output cannot be written") == 1, errors
    assert ("Input/output error" if sink == "terminal gone" else "No space left on device") in errors, errors
    assert "Traceback" not in errors
    assert read(out / "results.json")["status"] == "complete"


# --- output directories ----------------------------------------------------------------------------------


def test_a_non_empty_output_dir_is_refused_unless_overwrite_which_empties_it(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "episode_0000_failure.mp4").write_text("old")
    (out / "results.json").write_text(EARLIER_RESULTS)  # what makes it an earlier run's folder
    with policy_server() as server:
        assert main(rollout_args(server.port, out, "--n-episodes", "1")) == 2
        assert "--overwrite" in capsys.readouterr().err
        assert main(rollout_args(server.port, out, "--n-episodes", "1", "--overwrite")) == 0
    assert not (out / "episode_0000_failure.mp4").exists() and "overall" in json.loads((out / "results.json").read_text())


def test_the_default_output_dir_is_a_new_dated_directory(tmp_path, monkeypatch, capsys):
    from gr00t_eval import rollout_output

    monkeypatch.setattr(rollout_output, "DEFAULT_ROLLOUT_BASE", str(tmp_path / "base"))
    args = ["rollout", "--env-name", "walkto/slow", "--n-episodes", "1", *SMALL]
    with policy_server() as server:
        assert main([*args, "--policy-client-port", str(server.port)]) == 0
        assert main([*args, "--policy-client-port", str(server.port)]) == 0  # maybe in the same second: its own, -2
    runs = sorted((tmp_path / "base").glob("*/*_walkto-slow*"))
    assert len(runs) == 2 and runs[0].parent.name == time.strftime("%Y-%m-%d")
    assert all((run / "results.json").is_file() and (run / "eval_info.json").is_file() for run in runs)


def test_rollouts_started_in_the_same_second_without_output_dir_get_a_directory_each(tmp_path, monkeypatch):
    from gr00t_eval import rollout_output

    n_runs = 3
    dated = names_in_one_second(monkeypatch, n_runs)  # every run picks its first name before any run creates its directory
    monkeypatch.setattr(rollout_output, "DEFAULT_ROLLOUT_BASE", str(tmp_path / "base"))
    codes = []
    with policy_server() as server:
        args = ["rollout", "--env-name", "walkto/slow", "--n-episodes", "1", *SMALL, "--policy-client-port", str(server.port)]
        runs = [threading.Thread(target=lambda: codes.append(main(args))) for _ in range(n_runs)]
        for run in runs:
            run.start()
        for run in runs:
            run.join(60)
    assert codes == [0] * n_runs
    made = sorted((tmp_path / "base").glob("*/*"))
    first = dated(tmp_path / "base", "walkto/slow", now=1_700_000_000.0).name
    assert [p.name for p in made] == sorted([first] + [f"{first}-{n}" for n in range(2, n_runs + 1)])
    assert all(len(read(run / "results.json")["per_episode"]) == 1 for run in made)  # no run wrote into another's


# --- eval_info.json and merge --------------------------------------------------------------------------------


def test_eval_info_json_has_lerobot_eval_field_names(tmp_path):
    with policy_server(FlakyPolicy(fail_calls={3})) as server:
        main(rollout_args(server.port, tmp_path / "out", "--n-episodes", "4", "--seed", "1", "--env-name", "walkto/slow,walkto/fast"))
    info = read(tmp_path / "out" / "eval_info.json")
    assert set(info) >= {"per_episode", "per_task", "per_group", "overall"}
    assert all(LEROBOT_EPISODE_FIELDS <= set(e) and isinstance(e["success"], bool) for e in info["per_episode"])
    assert LEROBOT_OVERALL_FIELDS <= set(info["overall"])
    assert isinstance(info["per_task"], list) and {"task_group", "task_id", "metrics"} <= set(info["per_task"][0])
    assert set(info["per_task"][0]["metrics"]) >= {"sum_rewards", "max_rewards", "successes"}
    for group in info["per_group"].values():
        assert {"pc_success", "avg_sum_reward", "avg_max_reward", "n_episodes"} <= set(group)
    # Only finished episodes are listed and counted; the errored one is reported beside them.
    assert len(info["per_episode"]) == info["overall"]["n_episodes"] == 7
    assert info["n_errors"] == 1 and info["errored_episodes"][0]["error"]


def test_merge_run_twice_into_a_shard_directory_gives_the_same_result_and_names_files(tmp_path, capsys):
    with policy_server() as server:
        for index in range(2):
            assert main(rollout_args(server.port, tmp_path / f"shard{index}", "--n-episodes", "4", "--seed", "0",
                                     "--shard", f"{index}/2")) == 0
    shard0, shard1 = tmp_path / "shard0", tmp_path / "shard1"
    assert (shard0 / "results_shard0of2.json").is_file() and (shard1 / "results_shard1of2.json").is_file()
    assert main(["merge", str(shard0), str(shard1), "--output", f"{shard0}/"]) == 0
    first = read(shard0 / "results.json")
    assert main(["merge", str(shard0), str(shard1), "--output", f"{shard0}/"]) == 0  # its own output is not read back
    second = read(shard0 / "results.json")
    assert outcomes(first) == outcomes(second) and first["overall"]["n_episodes"] == 4
    assert (shard0 / "eval_info.json").is_file()
    (shard1 / "results_copy.json").write_text((shard0 / "results_shard0of2.json").read_text())
    capsys.readouterr()
    assert main(["merge", str(shard0), str(shard1), "--output", str(tmp_path / "merged.json")]) == 2
    err = capsys.readouterr().err
    assert "results_copy.json" in err and "results_shard0of2.json" in err


# --- one-line errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    (["rollout", "--env-name", "nosuch/reach-v3"], "unknown prefix 'nosuch'"),
    (["rollout", "--env-name", "walkto/slow", "--n-episodes", "0"], "--n-episodes must be >= 1"),
    (["rollout", "--env-name", "walkto/slow", "--model-path", "/ckpt"], "gr00t-server serve --model-path"),
    (["rollout", "--env-name", "walkto/slow", "--transition_host", "h"], "--policy-client-host"),
    (["rollout", "--env-name", "walkto/slow", "--policy-client-port", str(free_port()), "--timeout-ms", "200"],
     "no policy server answered"),
    (["rollout", "--resume", "/nonexistent/run"], "no run.json"),
    (["open-loop", "--dataset-path", "/nope"], "not a LeRobot dataset"),
    (["open-loop", "--dataset-path", str(TESTS_DIR), "--steps", "0"], None),
    (["batch"], "--jobs"),
    (["merge", "/nope/results.json", "--output", "/tmp/x.json"], "no such results file"),
])
def test_user_mistakes_are_one_line_with_exit_2(argv, expected, tmp_path, capsys):
    if argv[0] == "open-loop" and "--steps" in argv:
        (tmp_path / "meta").mkdir()
        argv = ["open-loop", "--dataset-path", str(tmp_path), "--steps", "0"]
        expected = "steps must be an int >= 1"
    if argv[0] == "rollout" and "--output-dir" not in argv and "--resume" not in argv:
        argv = [*argv, "--output-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err


def test_abbreviated_flags_are_refused():
    with pytest.raises(SystemExit) as exc:
        main(["rollout", "--env-name", "walkto/slow", "--n-ep", "3"])
    assert exc.value.code == 2


def test_open_loop_config_accepts_auto_like_the_cli_and_refuses_zero_steps():
    from gr00t_eval.open_loop import OpenLoopConfig

    assert OpenLoopConfig(dataset_path="x", observation_format="auto").observation_format == "auto"
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        OpenLoopConfig(dataset_path="x", steps=0)


def test_recorded_seeds_reported_by_the_policy_override_the_base_seed():
    from gr00t_eval.rollout import RolloutConfig, run_rollout

    class SeedReporting(ConstantPolicy):
        def reset(self, options=None):
            return {"seed": [1000 + e for e in options["episode_index"]]}

    result = run_rollout(SeedReporting(), RolloutConfig(env_name="walkto/slow", n_episodes=3, n_envs=2, n_action_steps=2,
                                                        max_episode_steps=6, seed=0, vectorization="sync"), progress=False)
    assert [o.seed for o in result.outcomes] == [1000, 1001, 1002]
    assert np.all([o.error is None for o in result.outcomes])


@pytest.mark.parametrize("n_envs", [1, 2])
def test_an_episode_the_policy_reports_no_recorded_seed_for_among_seeded_ones_is_warned_of(n_envs, caplog):
    """A replay of a dataset whose episode 1 has no usable seed: that episode ran in the rollout's own scene while the
    others replayed theirs, without a word."""
    from gr00t_eval.rollout import RolloutConfig, run_rollout

    class SomeSeedsReporting(ConstantPolicy):
        def reset(self, options=None):  # as a replay server: no "seed" when no row has one
            seeds = [None if e == 1 else 1000 + e for e in options["episode_index"]]
            return {"seed": seeds} if any(seed is not None for seed in seeds) else {}

    config = RolloutConfig(env_name="walkto/slow", n_episodes=3, n_envs=n_envs, n_action_steps=2, max_episode_steps=6,
                           seed=0, vectorization="sync")
    with caplog.at_level(logging.WARNING, logger="gr00t_eval.rollout.replay_recordings"):
        result = run_rollout(SomeSeedsReporting(), config, progress=False)
    assert [o.seed for o in result.outcomes] == [1000, 1, 1002]
    assert "reports recorded seeds (a replay server), but none for episodes [1]: they run with this rollout's " \
           "seeds [1]" in caplog.text


def test_the_resume_command_is_quoted_for_a_shell():
    """A folder with a space gave a command that broke when pasted."""
    from gr00t_eval.run_dir import resume_command

    assert resume_command("/data/my runs/reach", "1/2") == "gr00t-eval rollout --resume '/data/my runs/reach' --shard 1/2"
    assert resume_command("/data/runs/reach") == "gr00t-eval rollout --resume /data/runs/reach"
