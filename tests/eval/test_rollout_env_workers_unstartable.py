"""Env worker processes that cannot be started (too many open files, too many processes) stop a rollout with that
cause and the limit to raise, never with an AssertionError "can only join a started process": gymnasium lists each
worker before starting it, and the one whose start failed was joined while the run cleaned up."""

import os
import resource
import subprocess
import sys

from eval.scale_fixtures import policy_server

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS_DIR)
SOURCES = [os.path.join(REPO, "packages", package, "src") for package in ("gr00t-client", "gr00t-server", "gr00t-eval")]

# Enough for the rollout to import, reach the policy server and start a few of its 8 workers (each takes a pipe pair
# and spawn's own descriptors), too few for all 8: a worker's start fails with EMFILE.
OPEN_FILE_LIMIT = 40


def _low_open_file_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILE_LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def test_env_workers_that_run_out_of_open_files_name_the_limit_to_raise(tmp_path):
    with policy_server() as server:
        command = [sys.executable, "-m", "gr00t_eval.cli", "rollout", "--env-name", "walkto/fast", "--env-import",
                   "eval.scale_fixtures", "--n-episodes", "8", "--n-envs", "8", "--n-action-steps", "2",
                   "--max-episode-steps", "6", "--no-video", "--seed", "0", "--policy-client-port", str(server.port),
                   "--output-dir", str(tmp_path / "run")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*SOURCES, TESTS_DIR])}
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                             preexec_fn=_low_open_file_limit)
    text = run.stdout + run.stderr
    last = text.strip().splitlines()[-1]
    assert run.returncode == 2, text
    assert "AssertionError" not in text and "can only join" not in text, text
    assert "Too many open files" in last and f"open-file limit {OPEN_FILE_LIMIT}" in last, last
    assert "ulimit -n" in last and "--n-envs" in last, last
