"""The figures a run prints and writes say what its episodes did: a success percentage never rounds a run with a
failure up to 100.0 (or one with a success down to 0.0), and a task whose every episode errored is named, left out of
the mean of the tasks' rates and fails the run even with --allow-errors."""

from __future__ import annotations

import json
import string

import gymnasium as gym
import numpy as np
import pytest

from eval.scale_fixtures import policy_server
from gr00t_client import BasePolicy, EmbodimentTag, ModalityConfig
from gr00t_eval.batch import format_table
from gr00t_eval.cli import main as run_cli
from gr00t_eval.rollout.envs import register_env_prefix
from gr00t_eval.run_summary import format_summary, percent_text

LANGUAGE = "annotation.human.task_description"


@pytest.mark.parametrize(("value", "shown"), [
    (99.95002, "99.95"), (0.04997, "0.05"), (100.0, "100.0"), (0.0, "0.0"), (66.666, "66.7"),
    (100 - 1e-9, ">99.999999"), (1e-9, "<0.000001"), (None, "-"), (float("nan"), "-")])
def test_a_success_percentage_keeps_the_decimals_that_tell_it_from_all_or_none(value, shown):
    assert percent_text(value) == shown


def test_the_rollout_and_batch_tables_show_one_failure_in_2001_episodes_as_99_95():
    overall = {"n_episodes": 2001, "n_errors": 0, "pc_success": 2000 / 2001 * 100, "avg_sum_reward": 1.0,
               "avg_max_reward": 1.0, "eval_s": 1.0}
    table = format_summary({"per_task": {"t": overall}, "per_group": {"g": overall}, "overall": overall})
    assert "100.0" not in table and "99.95" in table
    batch = format_table({"jobs": [{"name": "j", "status": "done", "results": {"overall": overall, "tasks": ["t"]}}]})
    assert "100.0" not in batch and "99.95" in batch


class OneStepEnv(gym.Env):
    """Succeeds on its first step; the `broken` task raises in every step."""

    def __init__(self, broken: bool):
        self.broken = broken
        self.observation_space = gym.spaces.Dict({
            "state.position": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
            LANGUAGE: gym.spaces.Text(max_length=64, charset=string.printable)})
        self.action_space = gym.spaces.Dict({"action.push": gym.spaces.Box(-1, 1, (1,), np.float32)})

    def _observation(self):
        return {"state.position": np.zeros(1, np.float32), LANGUAGE: "go"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._observation(), {}

    def step(self, action):
        if self.broken:
            raise RuntimeError("this task's simulator is broken")
        return self._observation(), 1.0, True, False, {"success": True}


class PushPolicy(BasePolicy):
    def __init__(self):
        super().__init__(strict=False)

    def get_modality_config(self):
        return {"state": ModalityConfig([0], ["position"]), "action": ModalityConfig([0, 1], ["push"]),
                "language": ModalityConfig([0], [LANGUAGE])}

    def _get_action(self, observation, options=None):
        rows = np.asarray(observation["state.position"]).shape[0]
        return {"action.push": np.ones((rows, 2, 1), np.float32)}, {}

    def reset(self, options=None):
        return {}


register_env_prefix("onestep", EmbodimentTag.NEW_EMBODIMENT, lambda task, **_: OneStepEnv(task == "broken"))


def test_a_task_whose_every_episode_errored_is_named_left_out_of_the_mean_and_fails_the_run(tmp_path, capsys):
    with policy_server(PushPolicy()) as server:
        code = run_cli(["rollout", "--env-name", "onestep/broken,onestep/good", "--n-episodes", "2", "--n-envs", "1",
                        "--seed", "0", "--n-action-steps", "1", "--no-video", "--allow-errors", "--policy-client-port", str(server.port),
                        "--output-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    overall = json.loads((tmp_path / "run" / "results.json").read_text())["overall"]
    assert (overall["n_tasks"], overall["n_tasks_averaged"], overall["avg_task_pc_success"]) == (2, 1, 100.0)
    assert code == 1, out
    assert "exit status 1 because every episode of onestep/broken errored: that task has no result" in out
