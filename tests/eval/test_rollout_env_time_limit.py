"""A gym id's own step limit: the run's max_episode_steps is the limit, and an env that still cuts an episode short
of it is named in a warning and marked in results.json.

The env is registered as most gym envs are, with gym.register(..., max_episode_steps=10), and succeeds at its 15th
step whatever the action: `rollout --max-episode-steps 20` used to end every episode at gym's TimeLimit of 10 and
score it a failure, with no word (0%, exit 0).
"""

import json
import logging
import string

import gymnasium as gym
import numpy as np
import pytest

from eval.scale_fixtures import LANGUAGE_KEY, ConstantPolicy, policy_server, run_cli
from gr00t_client import PolicyClient
from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout

ENV_ID = "timelimited/Reach-v0"
REGISTERED_LIMIT = 10
SUCCESS_STEP = 15
BUDGET = 20


class ReachAtStep15Env(gym.Env):
    """Flat-GR00T env that succeeds (and terminates) at step SUCCESS_STEP."""

    def __init__(self):
        self.observation_space = gym.spaces.Dict({
            "state.position": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
            LANGUAGE_KEY: gym.spaces.Text(max_length=64, charset=string.printable),
        })
        self.action_space = gym.spaces.Dict({"action.push": gym.spaces.Box(-1.0, 1.0, (1,), np.float32)})
        self.t = 0

    def _obs(self):
        return {"state.position": np.array([self.t], np.float32), LANGUAGE_KEY: "reach"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        success = self.t >= SUCCESS_STEP
        return self._obs(), float(success), success, False, {"success": success}


register_env_prefix("timelimited", "new_embodiment")
gym.register(ENV_ID, entry_point=ReachAtStep15Env, max_episode_steps=REGISTERED_LIMIT)


@pytest.fixture(scope="module")
def server():
    with policy_server(ConstantPolicy()) as running:
        yield running


def test_a_gym_ids_registered_step_limit_does_not_cut_episodes_short_of_max_episode_steps(server):
    config = RolloutConfig(env_name=ENV_ID, n_episodes=2, n_envs=1, n_action_steps=4, max_episode_steps=BUDGET, seed=0)
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        result = run_rollout(client, config, progress=False)
    assert [(o.length, o.success) for o in result.outcomes] == [(SUCCESS_STEP, True), (SUCCESS_STEP, True)]


def test_an_env_limit_below_max_episode_steps_is_warned_once_and_marked_in_results(server, tmp_path, caplog):
    argv = ["rollout", "--env-name", ENV_ID, "--env-kwarg", f"max_episode_steps={REGISTERED_LIMIT}",
            "--n-episodes", "2", "--n-envs", "1", "--n-action-steps", "4", "--max-episode-steps", str(BUDGET),
            "--seed", "0", "--no-video", "--policy-client-port", str(server.port), "--output-dir", str(tmp_path)]
    with caplog.at_level(logging.WARNING, logger="gr00t_eval.rollout.runner"):
        assert run_cli(argv) == 0
    episodes = json.loads((tmp_path / "results.json").read_text())["per_episode"]
    assert [(e["length"], e["success"], e["truncated_by_env"]) for e in episodes] == [(REGISTERED_LIMIT, False, True)] * 2
    warnings = [r.getMessage() for r in caplog.records if "truncated episode" in r.getMessage()]
    assert warnings == [f"the env of {ENV_ID} truncated episode 0 at step {REGISTERED_LIMIT}, its own step limit, before "
                        f"the run's max_episode_steps of {BUDGET}: such episodes are scored as they stand (a failure "
                        "unless they succeeded) and marked truncated_by_env; raise the env's limit (for a gym id, "
                        "--env-kwarg max_episode_steps=N) or lower --max-episode-steps"]
