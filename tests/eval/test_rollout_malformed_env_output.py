"""An env step or reset that returns an observation without a key its observation space declares, an observation of
None, or an info of None errors that episode, naming the env row, the episode, the step and what was wrong; the
episodes beside it are scored. Before, the whole task failed with a bare `KeyError: 'state.position'` or
`AttributeError: 'NoneType' object has no attribute 'items'`. Real vector envs and a local policy."""

from __future__ import annotations

import pytest

pytest.importorskip("gymnasium")

from eval.scale_fixtures import LANGUAGE_KEY, ConstantPolicy, WalkToEnv  # noqa: E402
from gr00t_client import EmbodimentTag  # noqa: E402
from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout  # noqa: E402

BROKEN_SEED = 2  # episode 2 of a run with seed 0


class MalformedWalk(WalkToEnv):
    """walkto whose episode with seed 2 returns `malformed` ("missing_key", "none_obs", "none_info") at its second
    step, or, for "reset_missing_key", from its reset."""

    def __init__(self, malformed):
        super().__init__(1.0)
        self.malformed = malformed

    def reset(self, *, seed=None, options=None):
        self.broken, self.steps = seed == BROKEN_SEED, 0
        obs, info = super().reset(seed=seed, options=options)
        if self.broken and self.malformed == "reset_missing_key":
            obs = {LANGUAGE_KEY: "walk to the goal"}
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.steps += 1
        if self.broken and self.steps == 2:
            if self.malformed == "missing_key":
                obs = {LANGUAGE_KEY: "walk to the goal"}  # a sensor dropped out
            elif self.malformed == "none_obs":
                obs = None
            elif self.malformed == "none_info":
                info = None
        return obs, reward, terminated, truncated, info


def roll_out(malformed, vectorization="sync"):
    prefix = f"malformed{malformed.replace('_', '')}{vectorization}"
    register_env_prefix(prefix, EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: MalformedWalk(malformed))
    config = RolloutConfig(f"{prefix}/walk", n_episodes=4, n_envs=2, seed=0, max_episode_steps=16, n_action_steps=2,
                           vectorization=vectorization, env_timeout_s=None if vectorization == "sync" else 30)
    result = run_rollout(ConstantPolicy(), config, progress=False)
    return {outcome.episode_index: outcome for outcome in result.outcomes}


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_an_observation_without_a_declared_key_errors_its_episode_naming_env_episode_step_and_key(vectorization):
    outcomes = roll_out("missing_key", vectorization)
    assert sorted(outcomes) == [0, 1, 2, 3]
    broken = outcomes[BROKEN_SEED]
    assert broken.error is not None
    assert (f"step 1: env {broken.env_index} (episode 2) returned an observation without ['state.position'], which "
            "its observation space declares") in broken.error, broken.error
    assert all(outcomes[i].error is None and outcomes[i].success for i in (0, 1, 3))


def test_an_observation_of_none_errors_its_episode_saying_so():
    outcomes = roll_out("none_obs")
    broken = outcomes[BROKEN_SEED]
    assert (f"step 1: env {broken.env_index} (episode 2) returned the observation None (NoneType), not a dict"
            in broken.error), broken.error
    assert all(outcomes[i].error is None and outcomes[i].success for i in (0, 1, 3))


def test_a_step_info_of_none_errors_its_episode_saying_so():
    outcomes = roll_out("none_info")
    assert "step 1: the env returned the step info None (NoneType), not a dict" in outcomes[BROKEN_SEED].error
    assert all(outcomes[i].error is None and outcomes[i].success for i in (0, 1, 3))


def test_a_reset_observation_without_a_declared_key_errors_its_episode_and_the_next_one_runs():
    outcomes = roll_out("reset_missing_key")
    broken = outcomes[BROKEN_SEED]
    assert broken.error == (f"reset: env {broken.env_index} (episode 2) returned an observation without "
                            "['state.position'], which its observation space declares")
    assert all(outcomes[i].error is None and outcomes[i].success for i in (0, 1, 3))
