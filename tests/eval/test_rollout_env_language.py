"""What a rollout hands the policy from an env's language and which env keys it finds: bytes and one-string arrays
reach the policy as their text (str() gave it "b'pick ...'" or "['pick ...']"), a language key the env sends by
the policy's own name is found whether or not it is `annotation.*`, and a key the env returns without declaring it
in its observation_space is refused saying so."""

from __future__ import annotations

import logging
import string

import numpy as np
import pytest

pytest.importorskip("gymnasium")

import gymnasium as gym  # noqa: E402

from gr00t_client import BasePolicy, ModalityConfig  # noqa: E402
from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout  # noqa: E402
from gr00t_eval.rollout.policy_io import HorizonSpec, ObservationMapper  # noqa: E402

TASK = "pick up the red cube"


def language_env(key, language, declared=True):
    """A flat env that returns `language` under `key` (declared in its observation_space when `declared`)."""
    spaces = {"video.front": gym.spaces.Box(0, 255, (4, 4, 3), np.uint8),
              "state.arm": gym.spaces.Box(-1, 1, (3,), np.float32)}
    if declared:
        spaces[key] = gym.spaces.Text(64, charset=string.printable)

    class LanguageEnv(gym.Env):
        observation_space = gym.spaces.Dict(spaces)
        action_space = gym.spaces.Dict({"action.arm": gym.spaces.Box(-1, 1, (3,), np.float32)})

        def _obs(self):
            return {"video.front": np.zeros((4, 4, 3), np.uint8), "state.arm": np.zeros(3, np.float32), key: language}

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return self._obs(), {}

        def step(self, action):
            return self._obs(), 0.0, True, False, {"success": True}

    return LanguageEnv()


class LanguageRecorder(BasePolicy):
    """A flat-form policy that keeps the language rows it is given."""

    def __init__(self, language_key):
        super().__init__(strict=False)
        self.language_key = language_key
        self.seen = []

    def get_modality_config(self):
        return {"video": ModalityConfig([0], ["front"]), "state": ModalityConfig([0], ["arm"]),
                "action": ModalityConfig([0, 1], ["arm"]), "language": ModalityConfig([0], [self.language_key])}

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        self.seen.append(observation[self.language_key])
        return {"action.arm": np.zeros((len(observation[self.language_key]), 2, 3), np.float32)}, {}


def roll_out(prefix, policy, env_key, language, declared=True):
    register_env_prefix(prefix, "new_embodiment", lambda task, **_: language_env(env_key, language, declared))
    config = RolloutConfig(f"{prefix}/task", n_episodes=1, n_envs=1, seed=0, max_episode_steps=2, n_action_steps=2)
    return run_rollout(policy, config, progress=False)


@pytest.mark.parametrize("name, language", [("bytes", TASK.encode()), ("numpy_bytes", np.bytes_(TASK.encode())),
                                            ("one_string_array", np.array([TASK]))])
def test_the_policy_gets_an_env_language_of_bytes_or_a_one_string_array_as_its_text(name, language):
    key = "annotation.human.task_description"
    policy = LanguageRecorder(key)
    result = roll_out(f"lang{name}", policy, key, language)
    assert result.n_errors == 0
    assert policy.seen[0] == [TASK]


@pytest.mark.parametrize("name, language", [("number", 7), ("two_strings", np.array(["pick", "place"])),
                                            ("not_utf8", b"\xff\xfe")])
def test_an_env_language_that_is_not_one_text_errors_the_episode_naming_the_key(name, language):
    key = "annotation.human.task_description"
    policy = LanguageRecorder(key)
    result = roll_out(f"badlang{name}", policy, key, language)
    assert result.n_errors == 1 and not policy.seen
    assert key in result.outcomes[0].error


def test_a_language_key_the_env_sends_by_the_policys_name_is_found_outside_annotation():
    policy = LanguageRecorder("task")
    result = roll_out("tasklang", policy, "task", TASK)
    assert result.n_errors == 0
    assert policy.seen[0] == [TASK]


def test_task_is_read_from_the_legacy_language_key_by_name_among_other_annotations(caplog):
    spec = HorizonSpec.from_modality_config({"action": ModalityConfig([0, 1], ["arm"]),
                                             "language": ModalityConfig([0], ["task"])})
    with caplog.at_level(logging.WARNING, logger="gr00t_eval.rollout.policy_io"):
        mapper = ObservationMapper(spec, ["annotation.human.action.task_description", "annotation.human.coarse_action"])
    assert mapper.sources == {"task": "annotation.human.coarse_action"}
    assert "by position" not in caplog.text


@pytest.mark.parametrize("env_key", ["annotation.human.task_description", "state.arm"])
def test_a_key_the_env_returns_but_does_not_declare_is_refused_naming_the_observation_space(env_key):
    spec = HorizonSpec.from_modality_config({"video": ModalityConfig([0], ["front"]), "state": ModalityConfig([0], ["arm"]),
                                             "action": ModalityConfig([0, 1], ["arm"]),
                                             "language": ModalityConfig([0], ["annotation.human.task_description"])})
    declared = [key for key in ("video.front", "state.arm", "annotation.human.task_description") if key != env_key]
    with pytest.raises(ValueError, match=rf"returns \['{env_key}'\].*observation_space does not declare"):
        ObservationMapper(spec, declared, undeclared=[env_key])


def test_a_rollout_of_an_env_that_returns_an_undeclared_language_key_says_to_declare_it():
    key = "annotation.human.task_description"
    with pytest.raises(ValueError, match=rf"the env returns \['{key}'\].*observation_space does not declare"):
        roll_out("undeclaredlang", LanguageRecorder(key), key, TASK, declared=False)


class LanguageTurnsToNumberEnv(gym.Env):
    """Ends its episodes with success at step 6; in the episode with seed 1 its language is an int from step 2 on."""

    observation_space = gym.spaces.Dict({
        "video.front": gym.spaces.Box(0, 255, (4, 4, 3), np.uint8), "state.arm": gym.spaces.Box(-1, 1, (3,), np.float32),
        "annotation.human.task_description": gym.spaces.Text(64, charset=string.printable)})
    action_space = gym.spaces.Dict({"action.arm": gym.spaces.Box(-1, 1, (3,), np.float32)})

    broken_language = 12345

    def _obs(self):
        broken = self.seed == 1 and self.steps >= 2
        return {"video.front": np.zeros((4, 4, 3), np.uint8), "state.arm": np.zeros(3, np.float32),
                "annotation.human.task_description": self.broken_language if broken else TASK}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed, self.steps = seed, 0
        return self._obs(), {}

    def step(self, action):
        self.steps += 1
        return self._obs(), 0.0, self.steps >= 6, False, {"success": self.steps >= 6}


@pytest.mark.parametrize("n_episodes", [2, 3], ids=["its_row_then_idles", "its_row_starts_the_next_episode"])
def test_one_rows_bad_language_errors_only_its_episode_and_the_episode_beside_it_is_scored(n_episodes):
    key = "annotation.human.task_description"
    register_env_prefix("numberlang", "new_embodiment", lambda task, **_: LanguageTurnsToNumberEnv())
    config = RolloutConfig("numberlang/task", n_episodes=n_episodes, n_envs=2, seed=0, max_episode_steps=6,
                           n_action_steps=2, vectorization="sync")
    policy = LanguageRecorder(key)
    outcomes = {outcome.episode_index: outcome for outcome in run_rollout(policy, config, progress=False).outcomes}
    assert outcomes[1].error == (f"the env's language key {key!r} must be a str or UTF-8 bytes in each env row; "
                                 "got int 12345")
    assert outcomes[0].error is None and outcomes[0].success
    assert all(outcomes[i].error is None and outcomes[i].success for i in range(2, n_episodes))
    assert all(texts == [TASK, TASK] for texts in policy.seen)


class LanguageGainsALoneSurrogateEnv(LanguageTurnsToNumberEnv):
    """LanguageTurnsToNumberEnv whose seed-1 language holds a lone surrogate (what os.fsdecode makes of a non-UTF-8
    byte) from step 2 on."""

    broken_language = "pick \udcff up"


def test_one_rows_language_holding_a_lone_surrogate_errors_only_its_episode_naming_the_row_and_position():
    """No wire carries a lone surrogate (a str goes as UTF-8): the batch died in the client's encoder with the codec's
    words ('surrogates not allowed'), which named no remedy and errored the episode beside it too."""
    key = "annotation.human.task_description"
    register_env_prefix("surrogatelang", "new_embodiment", lambda task, **_: LanguageGainsALoneSurrogateEnv())
    config = RolloutConfig("surrogatelang/task", n_episodes=2, n_envs=2, seed=0, max_episode_steps=6,
                           n_action_steps=2, vectorization="sync")
    policy = LanguageRecorder(key)
    outcomes = {outcome.episode_index: outcome for outcome in run_rollout(policy, config, progress=False).outcomes}
    assert outcomes[1].error == (f"the env's language key {key!r} row 1: the text 'pick \\udcff up' holds a lone "
                                 "surrogate at position 5, which is not text: it has no UTF-8 encoding, so no wire "
                                 "format can carry it as a str; send valid Unicode text")
    assert outcomes[0].error is None and outcomes[0].success
    assert all(texts == [TASK, TASK] for texts in policy.seen)
