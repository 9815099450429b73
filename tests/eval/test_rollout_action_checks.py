"""What the rollout hands the env, and what it takes from the policy's reset info, is checked: an action of the
wrong width, a NaN action and float camera images are errors, not a plausible success rate; a policy's scalar
`seed` does not replace every episode's seed. Real vector envs, local policies and a real loopback server."""

from __future__ import annotations

import json
import re

import gymnasium as gym
import numpy as np
import pytest

from eval.scale_fixtures import ACTION_HORIZON, LANGUAGE_KEY, ConstantPolicy, WalkToEnv
from gr00t_client import EmbodimentTag, ModalityConfig
from gr00t_eval.rollout import RolloutConfig
from gr00t_eval.rollout.envs import register_env_prefix
from gr00t_eval.shard import run_suite
from serving import running_server

WALK = dict(n_episodes=4, n_envs=2, n_action_steps=2, max_episode_steps=6, seed=100, vectorization="sync")


class WidePolicy(ConstantPolicy):
    """Two columns for the env's one-wide push: numpy would broadcast or slice them into the env."""

    def _get_action(self, observation, options=None):
        batch = np.asarray(observation["state.position"]).shape[0]
        return {"action.push": np.ones((batch, ACTION_HORIZON, 2), np.float32)}, {}


class NaNPolicy(ConstantPolicy):
    def _get_action(self, observation, options=None):
        batch = np.asarray(observation["state.position"]).shape[0]
        return {"action.push": np.full((batch, ACTION_HORIZON, 1), np.nan, np.float32)}, {}


class HugePolicy(ConstantPolicy):
    """A float64 action finite on the wire and past float32's range: cast to the env's float32, it was inf."""

    def _get_action(self, observation, options=None):
        batch = np.asarray(observation["state.position"]).shape[0]
        return {"action.push": np.full((batch, ACTION_HORIZON, 1), 1e39, np.float64)}, {}


class SeedInInfoPolicy(ConstantPolicy):
    """Reports its own sampling seed in reset info: not a recording's per-row seeds."""

    def reset(self, options=None):
        return {"seed": 7}


def errors_of(results):
    return [entry["error"] for entry in results["per_episode"]]


def test_an_action_of_the_wrong_width_errors_its_episodes():
    results = run_suite(WidePolicy(), "walkto/fast", RolloutConfig(env_name="walkto/fast", **WALK))
    assert results["overall"]["n_errors"] == 4
    assert all("action.push has steps of shape (2,)" in error and "takes steps of shape (1,)" in error
               for error in errors_of(results)), errors_of(results)


@pytest.mark.parametrize("chunking", ["off", "sync"])
def test_a_nan_action_is_an_error_in_every_chunking_mode(chunking):
    """With --client-chunking off a NaN step was executed and the episode scored as a plain success or failure."""
    config = RolloutConfig(env_name="walkto/fast", client_chunking=chunking, **WALK)
    results = run_suite(NaNPolicy(), "walkto/fast", config)
    assert results["overall"]["n_errors"] == 4
    assert all("non-finite values (NaN or inf)" in error for error in errors_of(results)), errors_of(results)


@pytest.mark.parametrize("chunking", ["off", "sync"])
def test_an_action_past_the_envs_dtype_range_is_an_error_not_an_inf_step(chunking):
    """The NaN/inf check ran before the cast to the env's dtype: 1e39 was executed as inf, the episode scored as a
    plain success, with numpy's one RuntimeWarning as the only sign (audit12 actions note)."""
    config = RolloutConfig(env_name="walkto/fast", client_chunking=chunking, **WALK)
    results = run_suite(HugePolicy(), "walkto/fast", config)
    assert results["overall"]["n_errors"] == 4
    assert all("action key 'action.push' has values beyond float32's range" in error for error in errors_of(results))


def test_async_client_chunking_of_one_step_chunks_is_refused_before_any_episode():
    from gr00t_eval.rollout.runner import RolloutRunner

    config = RolloutConfig(env_name="walkto/fast", client_chunking="async", **{**WALK, "n_action_steps": 1})
    with pytest.raises(ValueError, match="client_chunking='async' needs n_action_steps >= 2"):
        RolloutRunner(ConstantPolicy(), config)


def test_actions_for_an_integer_action_space_are_rounded_and_refused_past_its_range():
    from gr00t_eval.rollout.policy_io import _in_env_dtype
    from gr00t_client import ActionError

    steps = np.array([[[0.9], [2.2], [-1.6]]])
    assert _in_env_dtype("action.k", steps, np.dtype(np.int8)).ravel().tolist() == [1, 2, -2]  # 0.9 was truncated to 0
    with pytest.raises(ActionError, match="action key 'action.k' has values beyond int8's range"):
        _in_env_dtype("action.k", np.array([[[70000.0]]]), np.dtype(np.int8))  # it wrapped to 112


def test_actions_for_a_bool_action_space_are_rounded_to_the_nearer_of_false_and_true():
    from gr00t_eval.rollout.policy_io import _in_env_dtype

    steps = np.array([[[0.2], [-0.7], [0.5], [0.9], [1.0]]], np.float32)
    executed = _in_env_dtype("action.grip", steps, np.dtype(np.bool_))
    assert executed.dtype == np.bool_ and executed.ravel().tolist() == [False, False, True, True, True]  # 0.2 was True


def test_a_scalar_seed_in_reset_info_does_not_replace_every_episodes_seed(caplog):
    with running_server(SeedInInfoPolicy()) as server:
        from gr00t_client import PolicyClient

        with PolicyClient(port=server.port, timeout_ms=5000) as client, caplog.at_level("WARNING"):
            results = run_suite(client, "walkto/fast", RolloutConfig(env_name="walkto/fast", **WALK))
    assert [entry["seed"] for entry in results["per_episode"]] == [100, 101, 102, 103]
    assert "is not taken as recorded seeds" in caplog.text


def test_a_scalar_seed_in_reset_info_with_one_env_row_does_not_replace_every_episodes_seed(caplog):
    """With one env row a scalar passed as one seed per row: every episode ran the policy's seed 7, the same scene."""
    with running_server(SeedInInfoPolicy()) as server:
        from gr00t_client import PolicyClient

        with PolicyClient(port=server.port, timeout_ms=5000) as client, caplog.at_level("WARNING"):
            results = run_suite(client, "walkto/fast", RolloutConfig(env_name="walkto/fast", **{**WALK, "n_envs": 1}))
    assert [entry["seed"] for entry in results["per_episode"]] == [100, 101, 102, 103]
    assert caplog.text.count("is not taken as recorded seeds") == 1  # once per run, not at each of the 4 resets


class CameraWalkEnv(WalkToEnv):
    """WalkTo with a float32 camera in [0, 1], as an env author's renderer may return it."""

    def __init__(self):
        super().__init__(2.0)
        self.observation_space = gym.spaces.Dict({**self.observation_space.spaces,
                                                  "video.cam": gym.spaces.Box(0.0, 1.0, (8, 8, 3), np.float32)})

    def _obs(self):
        return {**super()._obs(), "video.cam": np.full((8, 8, 3), 0.8, np.float32)}


class CameraPolicy(ConstantPolicy):
    def get_modality_config(self):
        return {**super().get_modality_config(), "video": ModalityConfig([0], ["cam"])}


def test_float_camera_images_are_refused_not_cast_to_black():
    register_env_prefix("floatcam", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: CameraWalkEnv())
    config = RolloutConfig(env_name="floatcam/walk", **{**WALK, "n_episodes": 2})
    results = run_suite(CameraPolicy(), "floatcam/walk", config)
    assert results["overall"]["n_errors"] == 2
    assert all("'video.cam' images are float32; the policy takes uint8 images" in error
               for error in errors_of(results)), errors_of(results)


class FarWalkEnv(WalkToEnv):
    """WalkTo with a float64 position that reads 1e39 (finite, beyond float32's range) from step `far_from` on."""

    def __init__(self, far_from: int):
        super().__init__(1.0)
        self.far_from, self.steps = far_from, 0
        self.observation_space = gym.spaces.Dict({**self.observation_space.spaces,
                                                  "state.position": gym.spaces.Box(-np.inf, np.inf, (1,), np.float64)})

    def _obs(self):
        position = 1e39 if self.steps >= self.far_from else self.position
        return {**super()._obs(), "state.position": np.array([position], np.float64)}

    def reset(self, *, seed=None, options=None):
        self.steps = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.steps += 1
        return super().step(action)


@pytest.mark.parametrize("far_from", [0, 1], ids=["at_reset", "after_a_step"])
def test_a_state_beyond_float32s_range_errors_its_episode_naming_the_key_not_as_nan(far_from):
    """The rollout's float32 cast made a finite 1e39 inf, which the server refused as a NaN/inf state."""
    register_env_prefix("farwalk", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: FarWalkEnv(far_from))
    config = RolloutConfig(env_name="farwalk/walk", **{**WALK, "n_episodes": 2, "n_action_steps": 1})
    with running_server(ConstantPolicy()) as server:
        from gr00t_client import PolicyClient

        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            results = run_suite(client, "farwalk/walk", config)
    assert results["overall"]["n_errors"] == 2
    assert all("'state.position' holds 1e+39 in row 0, beyond float32's range" in error
               for error in errors_of(results)), errors_of(results)


class BlownUpWalkEnv(WalkToEnv):
    """WalkTo whose position reads `value` (NaN or inf: a simulation that blew up) from step 1 on, in episodes of odd
    seed only."""

    def __init__(self, value: float):
        super().__init__(1.0)
        self.value, self.steps, self.blows_up = value, 0, False

    def _obs(self):
        position = self.value if self.blows_up and self.steps >= 1 else self.position
        return {**super()._obs(), "state.position": np.array([position], np.float32)}

    def reset(self, *, seed=None, options=None):
        self.steps, self.blows_up = 0, bool((seed or 0) % 2)
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.steps += 1
        return super().step(action)


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_one_envs_non_finite_state_errors_only_its_episode_and_the_episode_beside_it_is_scored(value):
    """The server refused the whole request for one NaN row ("non-finite values ... in rows [1]"), and the episode of
    the healthy env beside it was errored too."""
    register_env_prefix("blownwalk", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: BlownUpWalkEnv(value))
    config = RolloutConfig(env_name="blownwalk/walk", **{**WALK, "n_action_steps": 1})
    with running_server(ConstantPolicy()) as server:
        from gr00t_client import PolicyClient

        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            results = run_suite(client, "blownwalk/walk", config)
    errors = {e["seed"]: e["error"] for e in results["per_episode"]}
    assert [seed for seed, error in errors.items() if error is None] == [100, 102], errors
    assert all(f"the env's 'state.position' holds {value} in row " in errors[seed] and "not NaN or inf" in errors[seed]
               for seed in (101, 103)), errors


class OutOfDistributionPolicy(ConstantPolicy):
    """A model that goes NaN on a row whose (finite) state is far from its training data, beside healthy rows."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        far = np.abs(np.asarray(observation["state.position"], np.float64)).reshape(len(action["action.push"]), -1)
        action["action.push"][(far > 100).any(axis=1)] = np.nan
        return action, info


@pytest.mark.parametrize("chunking", ["off", "sync"])
def test_a_refusal_naming_one_row_errors_only_that_envs_episode_and_the_batch_mate_is_asked_again(chunking):
    """The server refused the request for one row's NaN action ("... rows [1]"), and the healthy env beside it lost
    its episode too (dropped from pc_success), although the state was finite for both."""
    register_env_prefix("farwalk", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: BlownUpWalkEnv(500.0))
    config = RolloutConfig(env_name="farwalk/walk", client_chunking=chunking, **{**WALK, "n_action_steps": 1})
    with running_server(OutOfDistributionPolicy()) as server:
        from gr00t_client import PolicyClient

        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            results = run_suite(client, "farwalk/walk", config)
    errors = {e["seed"]: e["error"] for e in results["per_episode"]}
    assert [seed for seed, error in errors.items() if error is None] == [100, 102], errors
    assert all(re.search(r"non-finite values \(NaN or inf\) in action key 'action.push' rows \[\d\]", errors[seed])
               for seed in (101, 103)), errors


def test_the_observation_mapper_refuses_a_state_beyond_float32s_range_naming_key_row_and_value():
    from gr00t_eval.rollout.policy_io import HorizonSpec, ObservationMapper

    spec = HorizonSpec.from_modality_config(ConstantPolicy().get_modality_config())
    env_obs = {"state.position": np.array([[[0.5]], [[-1e39]]], np.float64), LANGUAGE_KEY: ["walk", "walk"]}
    with pytest.raises(ValueError, match=r"'state.position' holds -1e\+39 in row 1, beyond float32's range"):
        ObservationMapper(spec, list(env_obs))(env_obs)


@pytest.mark.parametrize("position", [np.array([[[0.5 + 0.3j]]]), np.array([[["NaT"]]], "datetime64[s]"),
                                      np.array([[["1000"]]])], ids=["complex", "datetime", "str"])
def test_the_observation_mapper_refuses_a_state_that_is_not_real_numbers_naming_key_and_dtype(position):
    """The float32 cast dropped a complex part, read NaT as -9.2e18 and text as the number it spells."""
    from gr00t_eval.rollout.policy_io import HorizonSpec, ObservationMapper

    spec = HorizonSpec.from_modality_config(ConstantPolicy().get_modality_config())
    env_obs = {"state.position": position, LANGUAGE_KEY: ["walk"]}
    with pytest.raises(ValueError, match=re.escape(f"the env's 'state.position' state has dtype {position.dtype}; the "
                                                   "policy takes states of real numbers")):
        ObservationMapper(spec, list(env_obs))(env_obs)


def test_the_observation_mapper_casts_a_state_held_in_an_object_array_of_real_numbers():
    """Envs that build observations from mixed Python values return object arrays; these were cast and sent before
    states that are not real numbers were refused, and then were refused too."""
    from gr00t_eval.rollout.policy_io import HorizonSpec, ObservationMapper

    spec = HorizonSpec.from_modality_config(ConstantPolicy().get_modality_config())
    env_obs = {"state.position": np.array([[[0.25]], [[2]], [[True]]], dtype=object), LANGUAGE_KEY: ["walk"] * 3}
    mapped = ObservationMapper(spec, list(env_obs))(env_obs)
    assert mapped["state.position"].dtype == np.float32
    assert mapped["state.position"].tolist() == [[[0.25]], [[2.0]], [[1.0]]]


@pytest.mark.parametrize("item", ["1000", 0.5 + 0.3j, None], ids=["str", "complex", "None"])
def test_the_observation_mapper_refuses_an_object_array_state_holding_other_than_real_numbers(item):
    from gr00t_eval.rollout.policy_io import HorizonSpec, ObservationMapper

    spec = HorizonSpec.from_modality_config(ConstantPolicy().get_modality_config())
    env_obs = {"state.position": np.array([[[0.5]], [[item]]], dtype=object), LANGUAGE_KEY: ["walk"] * 2}
    with pytest.raises(ValueError, match=re.escape(f"the env's 'state.position' state has dtype object holding a "
                                                   f"{type(item).__name__}; the policy takes states of real numbers")):
        ObservationMapper(spec, list(env_obs))(env_obs)


class DyingWalkEnv(WalkToEnv):
    """WalkTo whose process dies at the first step of the episode with seed 103 (a simulator crash)."""

    def reset(self, *, seed=None, options=None):
        self.dies = seed == 103
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if self.dies:
            import os

            os._exit(1)
        return super().step(action)


def test_a_dead_env_worker_is_named_and_the_episodes_it_cost_are_reported_with_the_resume_command(tmp_path, capsys,
                                                                                                recwarn):
    from eval.scale_fixtures import run_cli

    register_env_prefix("dying", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: DyingWalkEnv(1.0))
    with running_server(ConstantPolicy()) as server:
        code = run_cli(["rollout", "--env-name", "dying/walk", "--n-episodes", "6", "--n-envs", "2", "--vectorization",
                        "async", "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "100", "--no-video",
                        "--policy-client-port", str(server.port), "--output-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 1
    assert "an env worker process died" in out
    assert "INCOMPLETE: 1 of 1 tasks failed (dying/walk);" in out
    assert f"episodes did not run (continue with: gr00t-eval rollout --resume {tmp_path / 'run'}" in out
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "incomplete"
    # the stop is told once, in the run's words: not again by gymnasium's warning about the step left pending
    assert not [w for w in recwarn if "Calling `close` while waiting" in str(w.message)]


class KilledWalkEnv(WalkToEnv):
    """WalkTo whose process is SIGKILLed (as by the OOM killer) at the first step of the episode with seed 102."""

    def reset(self, *, seed=None, options=None):
        self.killed = seed == 102
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if self.killed:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(action)


def test_a_killed_env_worker_is_named_with_its_row_episode_seed_and_signal_in_the_results():
    register_env_prefix("killed", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: KilledWalkEnv(1.0))
    config = RolloutConfig(env_name="killed/walk", **{**WALK, "vectorization": "async"})
    results = run_suite(ConstantPolicy(), "killed/walk", config)
    # rows 0 and 1 start episodes 0 (4 steps) and 1 (5 steps); row 0, free first, starts episode 2 (seed 102)
    assert results["failed_tasks"]["killed/walk"] == (
        "EnvWorkerDiedError: an env worker process died: env 0 (episode 2, seed 102) was killed by SIGKILL (-9: the "
        "OOM killer?); the task's episodes still running and not yet started did not run")


@pytest.mark.parametrize("exitcode, text", [(-11, "was killed by SIGSEGV (-11: a simulator crash?)"),
                                            (-6, "was killed by SIGABRT (-6: a simulator abort?)"),
                                            (-15, "was killed by SIGTERM (-15)"), (3, "exited with code 3")])
def test_a_workers_exit_code_is_told_as_the_signal_that_killed_it(exitcode, text):
    from gr00t_eval.rollout.worker_deaths import exit_text

    assert exit_text(exitcode) == text


def test_an_unwritable_video_dir_is_refused_before_any_episode(tmp_path, capsys):
    from eval.scale_fixtures import run_cli
    from gr00t_eval.cli_errors import UsageError

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError, match=f"--video-dir {blocker / 'videos'} is not writable"):
        run_cli(["rollout", "--env-name", "walkto/fast", "--n-episodes", "1", "--n-envs", "1", "--seed", "0",
                 "--video-dir", str(blocker / "videos"), "--policy-client-port", "1", "--output-dir", str(tmp_path / "run")])


class SilentGoalEnv(WalkToEnv):
    """Ends episodes at the goal (terminated) but never says success: scored 0 % without a word before."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {}


def test_an_env_that_never_reports_success_is_warned_about(caplog):
    register_env_prefix("silentgoal", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: SilentGoalEnv(2.0))
    config = RolloutConfig(env_name="silentgoal/walk", **{**WALK, "n_episodes": 2})
    with caplog.at_level("WARNING"):
        results = run_suite(ConstantPolicy(), "silentgoal/walk", config)
    assert results["overall"]["pc_success"] == 0.0
    assert "reported no 'success' or 'is_success' in any step info" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # an env that does report it is not warned about
        run_suite(ConstantPolicy(), "walkto/fast", RolloutConfig(env_name="walkto/fast", **{**WALK, "n_episodes": 2}))
    assert "is_success" not in caplog.text


def test_more_action_steps_than_the_policy_predicts_is_a_usage_error_before_any_episode(tmp_path, capsys):
    """It was a failed task, 'success rate: nan', status complete and advice to --resume, which re-ran the same
    saved setting and refused another one."""
    from eval.scale_fixtures import run_cli
    from gr00t_eval.cli_errors import UsageError

    with running_server(ConstantPolicy()) as server:
        with pytest.raises(UsageError, match=r"the policy server cannot run this rollout: n_action_steps must be in "
                                             r"\[1, 4\] .* got 5; pass a smaller --n-action-steps"):
            run_cli(["rollout", "--env-name", "walkto/fast", "--n-episodes", "2", "--n-envs", "1", "--n-action-steps", "5",
                     "--max-episode-steps", "6", "--seed", "0", "--no-video", "--policy-client-port", str(server.port),
                     "--output-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "episodes.jsonl").exists() or not (tmp_path / "run" / "episodes.jsonl").read_text()


def test_more_rtc_frozen_steps_than_the_policy_predicts_is_a_usage_error_before_any_episode(tmp_path):
    """A prefetch pins at most its overlap, so K past the chunk ran silently as 'keep the old chunk'."""
    from eval.scale_fixtures import run_cli
    from gr00t_eval.cli_errors import UsageError

    with running_server(ConstantPolicy()) as server:
        with pytest.raises(UsageError, match=r"the policy server cannot run this rollout: rtc_frozen_steps must be in "
                                             r"\[1, 4\] \(the policy's action horizon\), got 1000; pass a smaller "
                                             r"--rtc-frozen-steps"):
            run_cli(["rollout", "--env-name", "walkto/fast", "--n-episodes", "2", "--n-envs", "1", "--n-action-steps", "2",
                     "--client-chunking", "async", "--rtc-frozen-steps", "1000", "--max-episode-steps", "6", "--seed",
                     "0", "--no-video", "--policy-client-port", str(server.port), "--output-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "episodes.jsonl").exists() or not (tmp_path / "run" / "episodes.jsonl").read_text()


def test_more_rtc_frozen_steps_than_a_prefetch_overlaps_is_a_usage_error_before_any_episode(tmp_path):
    """A prefetch is asked once n_action_steps // 2 steps are left, so it overlaps at most 2 // 2 + 1 = 2 steps: K = 3
    (within the horizon of 4) ran every request as 'freeze the whole overlap', recorded as K = 3."""
    from eval.scale_fixtures import run_cli
    from gr00t_eval.cli_errors import UsageError

    with running_server(ConstantPolicy()) as server:
        with pytest.raises(UsageError, match=r"the policy server cannot run this rollout: rtc_frozen_steps must be at "
                                             r"most 2, the most steps a prefetch overlaps with n_action_steps 2 "
                                             r"\(n_action_steps // 2 \+ 1\), got 3; pass a smaller --rtc-frozen-steps"):
            run_cli(["rollout", "--env-name", "walkto/fast", "--n-episodes", "2", "--n-envs", "1", "--n-action-steps", "2",
                     "--client-chunking", "async", "--rtc-frozen-steps", "3", "--max-episode-steps", "6", "--seed",
                     "0", "--no-video", "--policy-client-port", str(server.port), "--output-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "episodes.jsonl").exists() or not (tmp_path / "run" / "episodes.jsonl").read_text()


def test_the_rollout_api_refuses_more_rtc_frozen_steps_than_a_prefetch_overlaps():
    from gr00t_eval.rollout import RolloutRunner

    config = RolloutConfig(env_name="walkto/fast", **{**WALK, "n_action_steps": 4}, client_chunking="async",
                           rtc_frozen_steps=4)
    with pytest.raises(ValueError, match=r"^rtc_frozen_steps must be at most 3, the most steps a prefetch overlaps "
                                         r"with n_action_steps 4 \(n_action_steps // 2 \+ 1\), got 4"):
        RolloutRunner(ConstantPolicy(), config, progress=False).run()
