"""A file this user may not open is named as what it is: one the command reads (a dataset's file, a --jobs file) as
'cannot read'/'cannot open', never as a failure writing it with write-access advice; a run's own folder turned
read-only mid-run is named with the command that continues it (--resume), not 'the same command again', which is
refused. Real files with real modes, the real CLI in a child process (run without root's override of file modes), a
real server on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eval.dataset_factory import make_dataset
from eval.scale_fixtures import ConstantPolicy, policy_server
from gr00t_server.policies.replay import ReplayPolicy
from serving import running_server

TESTS = str(Path(__file__).resolve().parents[1])
# the walkto test envs registered, as --env-import eval.scale_fixtures does for rollout (batch has no such flag)
EVAL_MAIN = "import sys\nimport eval.scale_fixtures\nfrom gr00t_eval.cli import main\nsys.exit(main(sys.argv[1:]))\n"
# root opens any file whatever its mode: the child runs without that override, so the modes apply
NO_MODE_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []


def gr00t_eval(*args: str) -> subprocess.CompletedProcess:
    if NO_MODE_OVERRIDE and shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to run the command without root's override of file modes")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([*NO_MODE_OVERRIDE, sys.executable, "-c", EVAL_MAIN, *args], capture_output=True, text=True,
                          timeout=240, env=env)


def last_line(run: subprocess.CompletedProcess) -> str:
    return (run.stderr.strip().splitlines() or [""])[-1]


def test_open_loop_names_an_unreadable_dataset_file_as_one_it_cannot_read(tmp_path):
    served = make_dataset(tmp_path / "served", lengths=(6, 4))
    local = tmp_path / "local"
    shutil.copytree(served, local)
    data = local / "data"
    with running_server(ReplayPolicy(served, execution_horizon=4)) as server:
        os.chmod(data, 0)
        try:
            run = gr00t_eval("open-loop", "--dataset-path", str(local), "--port", str(server.port), "--no-plots",
                             "--execution-horizon", "4", "--output-dir", str(tmp_path / "out"))
        finally:
            os.chmod(data, 0o755)
    line = last_line(run)
    assert run.returncode == 2, run.stderr
    assert f"cannot read {data}" in line and "Permission denied" in line, line
    assert "writing" not in line and "write access" not in line, line


def test_a_jobs_file_this_user_may_not_read_is_not_called_a_write_failure(tmp_path):
    jobs = tmp_path / "jobs.json"
    jobs.write_text("[]\n")
    os.chmod(jobs, 0)
    try:
        run = gr00t_eval("batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "out"))
    finally:
        os.chmod(jobs, 0o644)
    line = last_line(run)
    assert run.returncode == 2, run.stderr
    assert f"cannot open {jobs}: Permission denied" in line, line
    assert "writing" not in line and "write access" not in line, line


class TurnsFolderReadOnly(ConstantPolicy):
    """A policy whose `call`-th action first makes `folder` read-only (mode 555: this user may no longer write it)."""

    def __init__(self, folder: Path, call: int):
        super().__init__()
        self.folder, self.call, self.calls = folder, call, 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls == self.call:
            os.chmod(self.folder, 0o555)
        return super()._get_action(observation, options)


def test_a_rollout_whose_folder_turns_read_only_mid_run_is_told_to_resume_not_to_run_again(tmp_path):
    out = tmp_path / "run"
    with policy_server(TurnsFolderReadOnly(out, 4)) as server:
        try:
            run = gr00t_eval("rollout", "--env-name", "walkto/fast", "--policy-client-port", str(server.port),
                             "--output-dir", str(out), "--seed", "3", "--n-episodes", "3", "--n-envs", "1",
                             "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video", "--vectorization",
                             "sync", "--timeout-ms", "5000", "--env-import", "eval.scale_fixtures")
        finally:
            os.chmod(out, 0o755)
    line = last_line(run)
    assert run.returncode == 2, run.stderr
    assert f"Permission denied writing {out}" in line and "Give this user write access to the folder" in line, line
    assert f"continue with: gr00t-eval rollout --resume {out}" in line, line
    assert "run the same command again" not in line, line


def test_a_batch_whose_folder_turns_read_only_mid_run_is_told_to_resume_not_to_run_again(tmp_path):
    out, jobs = tmp_path / "batch", tmp_path / "jobs.json"
    with policy_server(TurnsFolderReadOnly(out, 4)) as server:
        jobs.write_text(json.dumps({
            "defaults": {"policy_server": {"port": server.port}, "n_episodes": 3, "seed": 0, "max_episode_steps": 6,
                         "overrides": {"n_action_steps": 2, "vectorization": "sync", "n_envs": 1}},
            "jobs": [{"name": "fast", "env_name": "walkto/fast"}, {"name": "slow", "env_name": "walkto/slow"}]}))
        try:
            run = gr00t_eval("batch", "--jobs", str(jobs), "--output-dir", str(out))
        finally:
            if out.exists():
                os.chmod(out, 0o755)
    line = last_line(run)
    assert run.returncode == 2, run.stderr
    assert "Permission denied writing " in line and "give this user write access to the folder" in line, line
    assert f"continue with: gr00t-eval batch --resume {out}" in line, line
    assert "run the same command again" not in line, line
