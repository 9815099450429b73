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
