"""One env's instruction over the server's request limits (--max-language-chars) errors that env's episodes only:
the limit's refusal names the row as "in row N", which the rollout did not read ("rows [N]" only), so every env's
episode of that step was errored with the long instruction's reason. A real server on loopback."""

from __future__ import annotations

import re
import string

import gymnasium as gym
import pytest

pytest.importorskip("gymnasium")

from eval.scale_fixtures import LANGUAGE_KEY, ConstantPolicy, WalkToEnv  # noqa: E402
from gr00t_client import PolicyClient, PolicyServerError  # noqa: E402
from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout  # noqa: E402
from gr00t_eval.rollout.policy_io import refused_rows  # noqa: E402
from gr00t_server.serving import ServerLimits  # noqa: E402
from serving import running_server  # noqa: E402

LONG = "walk to the goal, then " * 10  # 230 characters


class InstructedWalk(WalkToEnv):
    """walkto sending an instruction: odd seeds' is LONG."""

    def __init__(self):
        super().__init__(1.0)
        self.observation_space = gym.spaces.Dict({**self.observation_space.spaces, LANGUAGE_KEY: gym.spaces.Text(
            min_length=0, max_length=1000, charset=string.printable)})
        self.text = ""

    def reset(self, *, seed=None, options=None):
        self.text = LONG if (seed or 0) % 2 else "walk to the goal"
        return super().reset(seed=seed, options=options)

    def _obs(self):
        return {**super()._obs(), LANGUAGE_KEY: self.text}


def outcomes_by_seed(env, n_episodes, n_envs, seed, max_episode_steps):
    """{seed: EpisodeOutcome} of a rollout of `n_episodes` episodes of `env` (an Env class) on `n_envs` envs from
    `seed`, against a real server accepting instructions of at most 100 characters."""
    register_env_prefix(env.__name__.lower(), "new_embodiment", lambda task, **kwargs: env())
    config = RolloutConfig(f"{env.__name__.lower()}/walk", n_episodes=n_episodes, n_envs=n_envs,
                           seed=seed, max_episode_steps=max_episode_steps, n_action_steps=1, vectorization="sync")
    with running_server(ConstantPolicy(), limits=ServerLimits(max_language_chars=100)) as server, \
            PolicyClient("127.0.0.1", server.port) as client:
        result = run_rollout(client, config, progress=False)
    return {outcome.seed: outcome for outcome in result.outcomes}


def test_an_instruction_over_the_servers_limit_errors_only_its_own_envs_episodes():
    by_seed = outcomes_by_seed(InstructedWalk, n_episodes=4, n_envs=2, seed=100, max_episode_steps=6)
    assert sorted(by_seed) == [100, 101, 102, 103]
    for seed in (101, 103):
        refusal = r"in row \d has 230 characters; this server accepts at most 100"
        assert re.search(refusal, by_seed[seed].error or ""), seed
    for seed in (100, 102):
        assert by_seed[seed].error is None and by_seed[seed].success, (seed, by_seed[seed].error)


class GrowingInstructionWalk(InstructedWalk):
    """Seed 103's instruction becomes LONG from its third step on (its goal is 7 away); 104's goal is 8 away and 105's
    2, so 105's row is idle, a copy of 103's (with_idle_rows_mirrored), once 103's instruction is long."""

    def reset(self, *, seed=None, options=None):
        self.seed_value = seed
        return super().reset(seed=seed, options=options)

    def _obs(self):
        text = LONG if self.seed_value == 103 and self.position >= 3 else "walk to the goal"
        return {**WalkToEnv._obs(self), LANGUAGE_KEY: text}


def test_a_refusal_naming_an_idle_rows_copy_of_the_long_instruction_errors_only_the_row_it_copies():
    """The server named the idle copy ("in row 2"), no active row was named, and the other running env's episode was
    errored with the long instruction's reason."""
    by_seed = outcomes_by_seed(GrowingInstructionWalk, n_episodes=3, n_envs=3, seed=103, max_episode_steps=10)
    assert "has 230 characters" in (by_seed[103].error or "")
    assert by_seed[104].error is None and by_seed[104].success, by_seed[104].error
    assert by_seed[105].error is None and by_seed[105].success, by_seed[105].error


@pytest.mark.parametrize("message, rows", [
    ("language 'annotation.human.task_description' in row 1 has 230 characters", [1]),
    ("language 'language.task' in row 2, item 0 has 11 tokens", [2]),
    ("action 'x' holds NaN in rows [0, 2]", [0, 2]),
    ("something in no row", [0, 1, 2]),
    ("language 'language.task' in row 3 has 230 characters", [0]),  # idle row 3 holds a copy of row 0's observation
])
def test_refused_rows_reads_both_forms_the_server_names_a_row_in(message, rows):
    assert refused_rows(PolicyServerError(message), [0, 1, 2]) == rows
