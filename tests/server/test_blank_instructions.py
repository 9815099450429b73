"""An instruction with nothing in it once formalized (an env's missing task field sent as "") is a client's mistake:
refused naming the language key and row, not served as a task-free action."""

from __future__ import annotations

import re

import pytest

from gr00t_client import ObservationError

pytest.importorskip("torch")

from gr00t_server.policies.gr00t_policy import Gr00tPolicy  # noqa: E402
from gr00t_server.policies.sim_wrapper import Gr00tSimPolicyWrapper  # noqa: E402
from gr00t_server.test_checkpoint import example_observation, make_test_checkpoint  # noqa: E402

BLANK = ["", "   ", "?!."]  # the last formalizes to nothing


@pytest.fixture(scope="module")
def observation(tiny_checkpoint):
    return example_observation(tiny_checkpoint, "new_embodiment", batch_size=2, image_size=(32, 32))


@pytest.fixture(scope="module")
def policies(tiny_checkpoint):
    """{strict: Gr00tPolicy}: a strict policy and a lenient one."""
    return {strict: Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", strict=strict)
            for strict in (True, False)}


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("text", BLANK)
def test_a_blank_instruction_is_refused_naming_the_key_the_row_and_what_was_given(policies, observation, strict, text):
    policy = policies[strict]
    key = policy.language_key
    blank_second_row = {**observation, "language": {key: [["pick up the cube"], [text]]}}
    with pytest.raises(ObservationError, match=re.escape(f"language['{key}'] rows [1]: {text!r} is")) as caught:
        policy.get_action(blank_second_row)
    assert "a task instruction is expected" in str(caught.value)
    assert "missing" in str(caught.value)  # the likely cause: an env's missing task field


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("text", BLANK)
def test_a_blank_instruction_in_the_sim_wrappers_flat_form_is_refused_naming_the_key(policies, observation, strict,
                                                                                     text):
    wrapper = Gr00tSimPolicyWrapper(policies[strict], strict=strict)
    key = wrapper.policy.language_key
    flat = {**{f"video.{k}": v[:1] for k, v in observation["video"].items()},
            **{f"state.{k}": v[:1] for k, v in observation["state"].items()}, key: (text,)}
    # the wrapper names the flat key as its caller sent it ("Language key '...'")
    expected = re.escape(f"key '{key}' rows [0]: {text!r} is") + ".*a task instruction is expected"
    with pytest.raises(ObservationError, match=expected):
        wrapper.get_action(flat)


def test_an_instruction_with_words_among_punctuation_is_served(policies, observation):
    policy = policies[True]
    key = policy.language_key
    action, _ = policy.get_action({**observation, "language": {key: [["Pick up the cube!"], ["  go  "]]}})
    assert action


def test_the_droid_embodiment_takes_an_empty_instruction_as_its_training_data_holds_them(tmp_path):
    """DROID's data has episodes without an instruction (the reference's droid_sample: task 0 is the empty string),
    so its embodiment was trained on empty instructions: the refusal does not apply to it."""
    tag = "oxe_droid_relative_eef_relative_joint"
    checkpoint = make_test_checkpoint(tmp_path / "droid", size="tiny", embodiment_tags=(tag,), seed=0)
    policy = Gr00tPolicy(checkpoint, tag, device="cpu")
    observation = example_observation(checkpoint, tag, batch_size=1, image_size=(32, 32))
    action, _ = policy.get_action({**observation, "language": {policy.language_key: [[""]]}})
    assert action


def test_a_blank_instruction_in_one_env_of_a_rollout_errors_only_that_envs_episode(tiny_checkpoint):
    """The refusal names the row as `rows [N]`, the form gr00t-eval's rollout reads (refused_rows): a batch-mate with
    a real instruction is asked again, not errored with the blank row's reason."""
    import json
    import string

    import gymnasium as gym
    import numpy as np
    from serving import running_server

    from gr00t_client import PolicyClient
    from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout

    key = "annotation.human.task_description"
    stats = json.loads((tiny_checkpoint / "statistics.json").read_text())["new_embodiment"]["state"]
    middle = {name: ((np.array(s["q01"]) + np.array(s["q99"])) / 2).astype(np.float32) for name, s in stats.items()}
    middle["eef_9d"][3:9] = [1, 0, 0, 0, 1, 0]  # a valid rot6d reference state

    class TaskEnv(gym.Env):
        """Odd seeds' task has no description: they send ""."""

        def __init__(self, **_):
            self.observation_space = gym.spaces.Dict({
                "video.front": gym.spaces.Box(0, 255, (32, 32, 3), np.uint8),
                **{f"state.{name}": gym.spaces.Box(-np.inf, np.inf, (len(value),), np.float32)
                   for name, value in middle.items()},
                key: gym.spaces.Text(64, charset=string.printable)})
            self.action_space = gym.spaces.Dict({f"action.{name}": gym.spaces.Box(-np.inf, np.inf, (len(value),),
                                                                                  np.float32)
                                                 for name, value in middle.items()})
            self.seed_value, self.steps = 0, 0

        def _observation(self):
            return {"video.front": np.full((32, 32, 3), 100, np.uint8),
                    **{f"state.{name}": value.copy() for name, value in middle.items()},
                    key: "" if self.seed_value % 2 else "pick up the cube"}

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.seed_value, self.steps = int(seed), 0
            return self._observation(), {}

        def step(self, action):
            self.steps += 1
            return self._observation(), 0.0, self.steps >= 3, False, {"success": False}

    register_env_prefix("blank_row", "new_embodiment", adapter=lambda task, **kwargs: TaskEnv(**kwargs))
    policy = Gr00tSimPolicyWrapper(Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu"))
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        result = run_rollout(client, RolloutConfig(env_name="blank_row/task", n_episodes=2, n_envs=2, n_action_steps=1,
                                                   max_episode_steps=5, seed=0, vectorization="sync"), progress=False)
    outcomes = {outcome.seed: outcome for outcome in result.outcomes}
    assert outcomes[0].failure_reason is None and outcomes[0].length == 3, outcomes[0]
    assert "rows [1]: '' is empty" in outcomes[1].failure_reason, outcomes[1].failure_reason


@pytest.mark.parametrize("strict", [True, False])
def test_the_refusal_names_the_setting_that_serves_empty_instructions(policies, observation, strict):
    policy = policies[strict]
    blank = {**observation, "language": {policy.language_key: [["pick up the cube"], [""]]}}
    with pytest.raises(ObservationError) as caught:
        policy.get_action(blank)
    assert "--allow-empty-instruction" in str(caught.value) and "allow_empty_instruction=True" in str(caught.value)


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("text", BLANK)
def test_allow_empty_instruction_serves_a_blank_instruction_for_any_embodiment(tiny_checkpoint, observation, strict,
                                                                               text):
    """A fine-tune trained on episodes without task text (the reference serves it) takes them with the setting."""
    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", strict=strict, allow_empty_instruction=True)
    action, _ = policy.get_action({**observation, "language": {policy.language_key: [[text], ["pick up the cube"]]}})
    assert all(value.shape[0] == 2 for value in action.values())


def test_allow_empty_instruction_must_be_a_bool(tiny_checkpoint):
    with pytest.raises(ValueError, match="allow_empty_instruction"):
        Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", allow_empty_instruction="false")


def test_serve_allow_empty_instruction_serves_an_empty_instruction_over_the_wire(tiny_checkpoint, observation):
    """`gr00t-server serve --allow-empty-instruction` builds a policy whose PolicyServer answers "" with an action;
    without the flag the reply is the refusal, naming the flag."""
    from serving import running_server

    from gr00t_client import PolicyClient
    from gr00t_client.embodiment import EmbodimentTag
    from gr00t_server import cli

    def served(*flags):
        args = cli.build_parser().parse_args(["serve", "--model-path", str(tiny_checkpoint), "--device", "cpu",
                                              "--no-warmup", *flags])
        return cli._model_policy(args, EmbodimentTag.resolve("new_embodiment"))

    empty = {**observation, "language": {"annotation.human.task_description": [[""], [""]]}}
    with running_server(served("--allow-empty-instruction")) as server, \
            PolicyClient(port=server.port, timeout_ms=60000) as client:
        action, _ = client.get_action(empty)
    assert all(value.shape[0] == 2 for value in action.values())
    with running_server(served()) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(Exception, match=re.escape("rows [0]: '' is empty") + ".*--allow-empty-instruction"):
            client.get_action(empty)
