"""A simulator that crashes once the run has started, before any episode has ended, is a run that stopped, not a
refused command line: results.json (incomplete, its episodes counted as not run), the --resume line, exit 1, and the
resume completes it. Real spawned env workers, a real loopback server, real files."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from eval.scale_fixtures import ConstantPolicy, WalkToEnv, run_cli
from gr00t_client import EmbodimentTag
from gr00t_eval.rollout.envs import register_env_prefix
from serving import running_server


class DiesOnceWalkEnv(WalkToEnv):
    """walkto whose worker dies at the third step of the episode with seed 6 (a simulator's crash), once: the
    `marks`/died file says it did."""

    def __init__(self, marks: str):
        super().__init__(1.0)
        self.marks = Path(marks)
        self.steps, self.dies = 0, False

    def reset(self, *, seed=None, options=None):
        self.steps, self.dies = 0, seed == 6 and not (self.marks / "died").exists()
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.steps += 1
        if self.dies and self.steps == 3 and multiprocessing.current_process().name != "MainProcess":
            (self.marks / "died").touch()
            os._exit(3)
        return super().step(action)


@pytest.mark.timeout(120)
def test_a_worker_that_dies_before_any_episode_ended_leaves_results_and_the_resume_line_exit_1(tmp_path, capsys):
    """It was 'error: no episode was scored' and exit 2, the status of a refused command line, with no results.json
    and no --resume line: a simulator crash minutes into a run's first (long) episodes read as bad flags."""
    register_env_prefix("diesonce", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: DiesOnceWalkEnv(**kwargs))
    run = tmp_path / "run"
    # seeds 5 and 6: goals 7 and 8 steps away, so episode 0 is still running when episode 1's worker dies at step 3
    argv = ["rollout", "--env-name", "diesonce/walk", "--n-episodes", "2", "--n-envs", "2", "--n-action-steps", "2",
            "--max-episode-steps", "10", "--seed", "5", "--no-video", "--env-kwarg", f"marks={tmp_path}"]
    with running_server(ConstantPolicy()) as server:
        code = run_cli([*argv, "--policy-client-port", str(server.port), "--output-dir", str(run)])
        captured = capsys.readouterr()
        assert (tmp_path / "died").is_file()
        assert code == 1, captured.err
        assert "error: no episode was scored" not in captured.err
        results = json.loads((run / "results.json").read_text())
        assert results["status"] == "incomplete" and results["per_episode"] == [] and results["n_not_run"] == 2
        assert "an env worker process died: env 1 (episode 1, seed 6) exited with code 3" in results["failed_tasks"][
            "diesonce/walk"]
        assert f"2 episodes did not run (continue with: gr00t-eval rollout --resume {run}" in captured.out
        assert multiprocessing.active_children() == []

        assert run_cli(["rollout", "--resume", str(run), "--policy-client-port", str(server.port)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "complete" and [e["success"] for e in results["per_episode"]] == [True, True]
