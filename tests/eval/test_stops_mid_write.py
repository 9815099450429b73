"""Stop signals in the instants where a gr00t-eval command puts its files in place: a merge's two files are both of
one merge, and a batch stopped before its job file's copy says how to go on.

Each child process sends the signal to itself at the exact point under test (a wrapped library call), so the window
is hit every time rather than by luck.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys

from eval.scale_fixtures import policy_server, run_cli, two_shards
from stop_signals import stop_at_call

EVAL_MAIN = "import sys\nfrom gr00t_eval.cli import main\nsys.exit(main())\n"  # what the console script runs


def run_program(prelude: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """`python -c PRELUDE + the console script` with ARGS (PYTHONPATH and the rest of the environment inherited)."""
    return subprocess.run([sys.executable, "-c", prelude + EVAL_MAIN, *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_ctrl_c_between_a_merges_two_renames_leaves_both_files_of_the_new_merge(tmp_path):
    """Ctrl-C right after merged.json was renamed in left the earlier (2-episode) merge's eval_info.json beside the
    new 4-episode merged.json, each naming the other as its pair."""
    shards = two_shards(tmp_path / "shards")
    output = tmp_path / "merge" / "merged.json"
    earlier = run_program("", "merge", str(shards / "results_shard0of2.json"), "--allow-missing", "--output",
                          str(output))
    assert json.loads((output.parent / "eval_info.json").read_text())["per_episode"], earlier.stderr
    result = run_program(stop_at_call("os:replace", "merged.json", signal.SIGINT), "merge", str(shards), "--output",
                         str(output))
    assert result.returncode == 130, result.stderr
    merged = json.loads(output.read_text())
    eval_info = json.loads((output.parent / "eval_info.json").read_text())
    assert len(merged["per_episode"]) == 4 and merged["status"] == "complete"
    assert len(eval_info["per_episode"]) == 4 and eval_info["merged_results"] == "merged.json"
    assert not list(output.parent.glob("*.tmp"))


def test_resume_of_a_batch_stopped_before_its_job_file_copy_names_the_command_that_runs_it(tmp_path):
    """Stopped after batch.json and before jobs.json, --resume DIR was refused as 'is it a batch --output-dir?', and no
    line said that the same --jobs command runs the batch."""
    with policy_server() as server:
        (tmp_path / "jobs.json").write_text(json.dumps({
            "defaults": {"n_episodes": 2, "n_envs": 1, "seed": 0, "max_episode_steps": 6,
                         "overrides": {"n_action_steps": 2, "vectorization": "sync"}},
            "jobs": [{"name": "a", "env_name": "walkto/fast", "policy_server": {"port": server.port}}]}))
        out = tmp_path / "batch"
        stopped = run_program(stop_at_call("os:replace", "jobs.json", signal.SIGINT, after=False), "batch", "--jobs",
                              "jobs.json", "--output-dir", str(out), cwd=tmp_path)  # relative: the start dir's
        assert stopped.returncode == 130, stopped.stderr
        assert (out / "batch.json").is_file() and not (out / "jobs.json").exists()
        resumed = run_program("", "batch", "--resume", str(out))
        command = f"gr00t-eval batch --jobs {tmp_path / 'jobs.json'} --output-dir {out}"
        assert resumed.returncode == 2
        assert resumed.stderr == (f"gr00t-eval batch: error: --resume {out}: the batch there stopped before it copied "
                                  f"its job file to {out / 'jobs.json'}, before any job ran: nothing to resume; run it "
                                  f"again with: {command}\n")
        assert run_cli(shlex.split(command)[1:]) == 0
    assert json.loads((out / "batch_results.json").read_text())["jobs"][0]["status"] == "done"
    assert os.path.isfile(out / "jobs.json")


def write_unreachable_batch(folder) -> None:
    """A one-job batch file in `folder` whose server (port 1) never answers: the batch stops before or at its job."""
    (folder / "jobs.json").write_text(json.dumps({
        "defaults": {"n_episodes": 1, "n_envs": 1, "seed": 0, "max_episode_steps": 6},
        "jobs": [{"name": "a", "env_name": "libero_sim/x", "policy_server": {"port": 1}}]}))


def test_resume_of_a_batch_still_running_before_its_job_file_copy_is_refused_as_in_use(tmp_path):
    """A batch alive between its claim and its jobs.json copy (a long --overwrite) was said to have 'stopped before it
    copied its job file', and the rerun command given was then refused as in use."""
    write_unreachable_batch(tmp_path)
    out = tmp_path / "batch"
    # the batch stops itself (SIGSTOP) just before its copy is renamed in: alive, its claim unfinished
    running = subprocess.Popen([sys.executable, "-c", stop_at_call("os:replace", "jobs.json", signal.SIGSTOP,
                                                                   after=False) + EVAL_MAIN,
                                "batch", "--jobs", "jobs.json", "--output-dir", str(out)], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _pid, status = os.waitpid(running.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), f"the batch ended (status {status}) before its job file copy"
        resumed = run_program("", "batch", "--resume", str(out))
    finally:
        running.kill()
        running.wait()
    assert resumed.returncode == 2
    assert f"--resume {out} is in use: the run that claimed it is still running (pid {running.pid}" in resumed.stderr
    assert "stopped before it copied" not in resumed.stderr


def test_ctrl_c_before_a_batchs_first_results_file_says_interrupted_and_how_to_resume(tmp_path):
    """Ctrl-C after the jobs.json copy and before batch_results.json was first written ended with 'error: [Errno 2] No
    such file ... batch_results.json' and exit 2, naming no --resume."""
    write_unreachable_batch(tmp_path)
    out = tmp_path / "batch"
    result = run_program(stop_at_call("gr00t_eval.results:partial_path", "batch_results.json", signal.SIGINT), "batch",
                         "--jobs", "jobs.json", "--output-dir", str(out), cwd=tmp_path)
    assert result.returncode == 130, result.stderr
    assert (out / "jobs.json").is_file() and not (out / "batch_results.json").exists()
    assert result.stdout == f"INTERRUPTED: before any job ran (continue with: gr00t-eval batch --resume {out})\n"
    assert "No such file" not in result.stderr
    assert json.loads((out / "batch.json").read_text())["claim"]["outcome"] == "interrupted"


def test_a_stop_held_during_a_merges_renames_says_the_new_merge_is_in_place(tmp_path):
    """A SIGHUP held while merged.json and eval_info.json were renamed in acted once both were the new merge's, and
    the line said only 'interrupted', as if the earlier merge were untouched."""
    shards = two_shards(tmp_path / "shards")
    output = tmp_path / "merge" / "merged.json"
    earlier = run_program("", "merge", str(shards / "results_shard0of2.json"), "--allow-missing", "--output",
                          str(output))
    assert len(json.loads(output.read_text())["per_episode"]) == 2, earlier.stderr
    result = run_program(stop_at_call("os:replace", "merged.json", signal.SIGHUP), "merge", str(shards), "--output",
                         str(output), "--overwrite")
    assert result.returncode == 130, result.stderr
    assert len(json.loads(output.read_text())["per_episode"]) == 4
    assert result.stderr.endswith(f"gr00t-eval merge: interrupted; {output} and {output.parent / 'eval_info.json'} "
                                  "hold the new merge\n")
