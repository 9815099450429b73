"""A --resume stopped early (Ctrl-C, a server gone mid-task or at the ping before a task) still reports every finished
episode it kept from the log, of every task, and counts as not run only the episodes that really did not run."""

import json
import os
import signal
import threading

from eval import scale_fixtures
from eval.scale_fixtures import ConstantPolicy, WalkToEnv, policy_server
from gr00t_client import EmbodimentTag, PolicyClient
from gr00t_eval import cli
from gr00t_eval.metrics import EpisodeOutcome
from gr00t_eval.rollout.config import RolloutConfig
from gr00t_eval.rollout.envs import register_env_prefix
from gr00t_eval.suites import ABORTED, Task, run_tasks

FLAKY = {"on": False}  # while on, episode 1 (seed 1) of flakywalk/a raises in the env


class FlakyWalkEnv(WalkToEnv):
    """walkto whose episode of seed 1 raises in task a (speed 1) while FLAKY is on."""

    def reset(self, *, seed=None, options=None):
        self.seed_now = seed
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if FLAKY["on"] and self.speed == 1.0 and self.seed_now == 1:
            raise RuntimeError("flaky env")
        return super().step(action)


register_env_prefix("flakywalk", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kw: FlakyWalkEnv({"a": 1.0, "b": 2.0}[task]))

TASKS = "flakywalk/a,flakywalk/b"
SMALL = ["--n-episodes", "3", "--n-envs", "1", "--vectorization", "sync", "--n-action-steps", "2",
         "--max-episode-steps", "6", "--seed", "0", "--no-video"]


class StopsOnFirstCall(ConstantPolicy):
    """Once armed (`stop` "sigint" or "hang"), its first get_action sends this process a real SIGINT, or sets
    `hanging` and waits for `release` (stopped_while_it_hangs stops the server then); one class for every attempt,
    as a resume must be served the policy its run started with."""

    def __init__(self, stop=None):
        super().__init__()
        self.stop, self.hanging, self.release = stop, threading.Event(), threading.Event()

    def _get_action(self, observation, options=None):
        stop, self.stop = self.stop, None
        if stop == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
        elif stop == "hang":
            self.hanging.set()
            self.release.wait(30)
        return super()._get_action(observation, options)


def _first_attempt_with_one_errored_episode(run, port):
    """Both tasks' 3 episodes run; episode 1 of flakywalk/a errors, the other 5 finish."""
    FLAKY["on"] = True
    try:
        assert cli.main(["rollout", "--env-name", TASKS, *SMALL, "--allow-errors", "--output-dir", str(run),
                         "--policy-client-port", str(port)]) == 0
    finally:
        FLAKY["on"] = False
    first = json.loads((run / "results.json").read_text())
    assert first["overall"]["n_episodes"] == 5 and first["overall"]["n_errors"] == 1


def _assert_keeps_the_later_tasks_episodes(run, status):
    results = json.loads((run / "results.json").read_text())
    info = json.loads((run / "eval_info.json").read_text())
    assert results["status"] == status, results["stop_reason"]
    assert results["per_task"]["flakywalk/b"]["n_episodes"] == 3, results["per_task"]
    assert results["per_task"]["flakywalk/a"]["n_episodes"] == 2, results["per_task"]
    assert results["overall"]["n_episodes"] == 5
    assert results["n_not_run"] == 1  # only the re-run episode 1 of flakywalk/a
    kept = sorted((e["task"], e["episode_index"]) for e in results["per_episode"] if not e["error"])
    assert kept == [("flakywalk/a", 0), ("flakywalk/a", 2), ("flakywalk/b", 0), ("flakywalk/b", 1), ("flakywalk/b", 2)]
    assert len(info["per_episode"]) == len(results["per_episode"]) and info["n_not_run"] == 1


def test_an_interrupted_resume_keeps_the_finished_episodes_of_the_tasks_after_the_one_it_was_running(tmp_path):
    run = tmp_path / "run"
    with policy_server(StopsOnFirstCall()) as server:
        _first_attempt_with_one_errored_episode(run, server.port)
    with policy_server(StopsOnFirstCall("sigint")) as server:  # Ctrl-C while episode 1 of flakywalk/a runs again
        assert cli.main(["rollout", "--resume", str(run), "--policy-client-port", str(server.port)]) == 130
    _assert_keeps_the_later_tasks_episodes(run, "interrupted")


def test_a_resume_aborted_by_a_server_gone_mid_task_keeps_the_finished_episodes_of_the_later_tasks(tmp_path):
    from serving import stopped_while_it_hangs

    run = tmp_path / "run"
    with policy_server(StopsOnFirstCall()) as server:
        _first_attempt_with_one_errored_episode(run, server.port)
    with stopped_while_it_hangs(StopsOnFirstCall("hang")) as server:  # the server stops during the re-run of episode 1
        assert cli.main(["rollout", "--resume", str(run), "--policy-client-port", str(server.port),
                         "--timeout-ms", "5000"]) == 1
    _assert_keeps_the_later_tasks_episodes(run, "aborted")


def test_run_tasks_keeps_the_finished_episodes_of_a_task_whose_ping_failed():
    """Task a has nothing left to run; the ping before task b finds no server: b's kept episodes still count."""
    config = RolloutConfig(env_name="unused", n_episodes=2, n_envs=1, n_action_steps=2, max_episode_steps=6, seed=0,
                           vectorization="sync")
    done = [EpisodeOutcome(i, i, True, 1.0, 1.0, 3, extras={"task": task, "group": "flakywalk"})
            for task in ("flakywalk/a", "flakywalk/b") for i in range(2)]
    done[3] = EpisodeOutcome(1, 1, False, 0.0, 0.0, 1, error="flaky env", extras={"task": "flakywalk/b"})  # runs again
    tasks = [Task("flakywalk/a", "flakywalk"), Task("flakywalk/b", "flakywalk")]
    with PolicyClient("127.0.0.1", scale_fixtures.free_port(), timeout_ms=500) as gone:
        suite_run = run_tasks(gone, tasks, config, done=done)
    assert suite_run.status == ABORTED and "did not answer a ping before task flakywalk/b" in suite_run.stop_reason
    kept = {run.task.env_name: [o.episode_index for o in run.outcomes] for run in suite_run.runs}
    assert kept == {"flakywalk/a": [0, 1], "flakywalk/b": [0]}
