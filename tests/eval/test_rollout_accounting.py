"""Rollout episode accounting: exactly n_episodes scored, per-row policy resets, seeds, failures isolated."""

from __future__ import annotations

import string

import gymnasium as gym
import numpy as np
import pytest

from gr00t_client import BasePolicy, ModalityConfig
from gr00t_eval.rollout import PolicyRowCursor, RolloutConfig, register_env_prefix, run_rollout

ENV_ID = "gr00t_test/Countdown-v0"
FAILING_SEED = 13
FIRST_RESET_FAILS_ID = "gr00t_test/FirstResetFails-v0"


class CountdownEnv(gym.Env):
    """Flat-GR00T toy env: an episode lasts 2 + (seed // 2) % 3 steps and succeeds iff its seed is even.

    Seed 13 raises during its second step. state.seed reports the seed so tests can check who ran what.
    """

    def __init__(self, **_):
        self.observation_space = gym.spaces.Dict({
            "video.cam": gym.spaces.Box(0, 255, (2, 2, 3), np.uint8),
            "state.seed": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
            "annotation.human.action.task_description": gym.spaces.Text(64, charset=string.printable),
        })
        self.action_space = gym.spaces.Dict({"action.move": gym.spaces.Box(-1, 1, (1,), np.float32)})

    def _obs(self):
        return {"video.cam": np.zeros((2, 2, 3), np.uint8), "state.seed": np.array([self.seed_value], np.float32),
                "annotation.human.action.task_description": "count down"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_value = -1 if seed is None else int(seed)
        self.length = 2 + (max(self.seed_value, 0) // 2) % 3
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        if self.seed_value == FAILING_SEED and self.t == 1:
            raise RuntimeError("physics blew up")
        self.t += 1
        done = self.t >= self.length
        return self._obs(), 1.0, done, False, {"success": done and self.seed_value % 2 == 0}


def make_countdown(task: str, **kwargs):
    return CountdownEnv(**kwargs)


class FirstResetFailsEnv(CountdownEnv):
    """CountdownEnv whose first reset raises, as a simulator that fails once while it starts up."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.resets = 0

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        if self.resets == 1:
            raise RuntimeError("simulator not ready yet")
        return super().reset(seed=seed, options=options)


gym.register(ENV_ID, entry_point=CountdownEnv)
gym.register(FIRST_RESET_FAILS_ID, entry_point=FirstResetFailsEnv)
register_env_prefix("gr00t_test", "new_embodiment")  # a gym id already in the flat format: prefix -> embodiment only
register_env_prefix("countdown", "new_embodiment", adapter=make_countdown)


class RecordingPolicy(BasePolicy):
    """Returns zero chunks; records every reset's options and the seeds it saw per call."""

    def __init__(self, horizon=4, fail_on_call=None, n_dataset_episodes=None):
        super().__init__(strict=False)
        self.horizon, self.fail_on_call, self.n_dataset_episodes = horizon, fail_on_call, n_dataset_episodes
        self.resets, self.seen_seeds, self.calls = [], [], 0

    def get_modality_config(self):
        return {
            "video": ModalityConfig([0], ["cam"]),
            "state": ModalityConfig([-1, 0], ["seed"]),
            "action": ModalityConfig(list(range(self.horizon)), ["move"]),
            "language": ModalityConfig([0], ["annotation.human.action.task_description"]),
        }

    def reset(self, options=None):
        if self.n_dataset_episodes is not None and max(options["episode_index"]) >= self.n_dataset_episodes:
            raise IndexError(f"episode_index out of range: the dataset has {self.n_dataset_episodes} episodes")
        self.resets.append(options)
        return {}

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise RuntimeError("server fell over")
        assert observation["state.seed"].shape[1:] == (2, 1)  # history stacked from the modality config
        assert isinstance(observation["annotation.human.action.task_description"], list)
        self.seen_seeds.append(observation["state.seed"][:, -1, 0].tolist())
        batch = observation["state.seed"].shape[0]
        return {"action.move": np.zeros((batch, self.horizon, 1), np.float32)}, {}


def rollout(policy, env_name=ENV_ID, **kwargs):
    settings = dict(n_episodes=6, n_envs=2, n_action_steps=1, max_episode_steps=50, seed=0, vectorization="sync")
    settings.update(kwargs)
    return run_rollout(policy, RolloutConfig(env_name=env_name, **settings), progress=False)


def test_exactly_n_episodes_are_scored_each_once_with_seed_plus_index():
    result = rollout(RecordingPolicy(), n_episodes=7, n_envs=3, seed=20)
    assert [o.episode_index for o in result.outcomes] == list(range(7))
    assert [o.seed for o in result.outcomes] == [20 + i for i in range(7)]
    assert [o.length for o in result.outcomes] == [2 + ((20 + i) // 2) % 3 for i in range(7)]


def test_short_episodes_are_not_over_represented():
    # Seeds 0..5: lengths 2,2,3,3,4,4; even seeds succeed. The reference would keep collecting the
    # quick episodes on free rows until the count is reached; here each index runs exactly once.
    result = rollout(RecordingPolicy(), n_episodes=6, n_envs=2, seed=0)
    assert result.successes == [True, False, True, False, True, False]
    assert result.success_rate == 0.5


def test_envs_finishing_on_the_same_step_start_distinct_episodes_and_no_extra_one():
    # Seeds 0 and 1 both last 2 steps, so both rows finish on the same step; only episode 2 remains.
    policy = RecordingPolicy()
    result = rollout(policy, n_episodes=3, n_envs=2, seed=0)
    assert [o.episode_index for o in result.outcomes] == [0, 1, 2]
    assert [o.env_index for o in result.outcomes] == [0, 1, 0]
    assert [o.length for o in result.outcomes] == [2, 2, 3]
    assert policy.resets[1] == {"episode_index": [2, 1], "step_index": [0, 2]}  # row 1 is idle, not restarted
    assert len(policy.resets) == 2


def test_more_envs_than_episodes_uses_only_as_many_envs_as_episodes():
    policy = RecordingPolicy()
    result = rollout(policy, n_episodes=1, n_envs=4)
    assert len(result.outcomes) == 1
    assert policy.resets[0] == {"episode_index": [0], "step_index": [0]}


def test_the_policy_is_reset_per_row_when_a_new_episode_starts():
    policy = RecordingPolicy()
    rollout(policy, n_episodes=4, n_envs=2, seed=1)  # seeds 1..4: lengths 2, 3, 3, 4
    assert policy.resets[0] == {"episode_index": [0, 1], "step_index": [0, 0]}
    # Row 0 finished episode 0 after 2 calls; it restarts with episode 2 while row 1 stays at its step.
    assert policy.resets[1] == {"episode_index": [2, 1], "step_index": [0, 2]}
    # Then row 1 finishes episode 1 (3 steps) and starts episode 3; row 0 keeps its place in episode 2.
    assert policy.resets[2] == {"episode_index": [2, 3], "step_index": [1, 0]}
    assert len(policy.resets) == 3


def test_each_row_runs_the_seed_of_its_episode():
    policy = RecordingPolicy()
    rollout(policy, n_episodes=3, n_envs=2, seed=40)  # lengths 4, 4, 2
    assert policy.seen_seeds[0] == [40.0, 41.0]
    # row 0 runs episode 2 (seed 42) while row 1, with no episode left, carries a copy of row 0's observation
    assert [40.0, 41.0] in policy.seen_seeds and [42.0, 42.0] in policy.seen_seeds


def test_a_failing_episode_is_scored_as_failed_with_its_reason_and_the_run_goes_on():
    result = rollout(RecordingPolicy(), n_episodes=5, n_envs=2, seed=10)  # episode 3 has seed 13
    assert len(result.outcomes) == 5
    failed = result.outcomes[3]
    assert not failed.success and "physics blew up" in failed.failure_reason
    assert all(o.failure_reason is None for i, o in enumerate(result.outcomes) if i != 3)
    assert result.outcomes[4].success  # seed 14 ran after the failure


def test_an_env_whose_first_reset_failed_runs_its_later_episodes():
    result = rollout(RecordingPolicy(), env_name=FIRST_RESET_FAILS_ID, n_episodes=3, n_envs=1, seed=0)
    assert "simulator not ready yet" in result.outcomes[0].error
    assert [(o.episode_index, o.error) for o in result.outcomes[1:]] == [(1, None), (2, None)]


def test_a_policy_error_fails_the_running_episodes_and_the_run_goes_on():
    result = rollout(RecordingPolicy(fail_on_call=2), n_episodes=4, n_envs=2, seed=0)
    assert len(result.outcomes) == 4
    reasons = [o.failure_reason for o in result.outcomes]
    assert reasons[0] and "server fell over" in reasons[0] and "server fell over" in reasons[1]
    assert reasons[2] is None and reasons[3] is None


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_an_episode_errored_between_steps_reports_the_steps_and_rewards_its_env_ran(vectorization):
    result = rollout(RecordingPolicy(fail_on_call=5), n_episodes=4, n_envs=2, seed=0, vectorization=vectorization)
    errored = [o for o in result.outcomes if o.failure_reason]
    # episodes 0 and 1 end after 2 steps (calls 1-2); 2 and 3 (3-step episodes) ran 2 steps before call 5 failed
    assert [o.episode_index for o in errored] == [2, 3]
    assert [(o.length, o.sum_reward, o.max_reward) for o in errored] == [(2, 2.0, 1.0), (2, 2.0, 1.0)]
    first_call = rollout(RecordingPolicy(fail_on_call=1), n_episodes=2, n_envs=2, seed=0)
    assert [(o.length, o.sum_reward) for o in first_call.outcomes] == [(0, 0.0), (0, 0.0)]  # no env step ran


def test_a_rejected_policy_reset_fails_only_the_episodes_it_would_start():
    # Like a replay server with 3 recorded episodes asked for 5: episodes 3 and 4 cannot be replayed.
    policy = RecordingPolicy(n_dataset_episodes=3)
    result = rollout(policy, n_episodes=5, n_envs=2, seed=0)
    assert len(result.outcomes) == 5
    assert [o.failure_reason is None for o in result.outcomes] == [True, True, True, False, False]
    assert "policy reset failed" in result.outcomes[3].failure_reason and "out of range" in result.outcomes[4].failure_reason
    assert all(max(r["episode_index"]) < 3 for r in policy.resets)


def test_n_action_steps_beyond_the_action_horizon_is_refused():
    with pytest.raises(ValueError, match="action horizon"):
        rollout(RecordingPolicy(horizon=4), n_action_steps=5)


def test_adapters_gym_ids_and_async_subprocess_envs_give_the_same_outcomes():
    # The async run builds ENV_ID, registered only in this process, in spawned workers.
    sync = rollout(RecordingPolicy(), env_name="countdown/any", n_episodes=4, n_envs=2, seed=5)
    asynchronous = rollout(RecordingPolicy(), env_name=ENV_ID, n_episodes=4, n_envs=2, seed=5, vectorization="async")
    assert [o.to_json_dict() for o in sync.outcomes] == [o.to_json_dict() for o in asynchronous.outcomes]


def test_videos_are_written_per_episode_with_the_outcome_in_the_name(tmp_path):
    result = rollout(RecordingPolicy(), n_episodes=2, n_envs=2, seed=0, video_dir=str(tmp_path))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["episode_0000_success.mp4", "episode_0001_failure.mp4"]
    assert result.outcomes[0].video_path == str(tmp_path / "episode_0000_success.mp4")


def test_the_row_cursor_follows_a_replay_servers_info_and_clamps_to_the_episode():
    cursor = PolicyRowCursor(2, n_action_steps=8)
    cursor.commit({0: 4, 1: 5})
    cursor.after_get_action({"current_step": [40, 8], "execution_horizon": 8, "episode_length": [44, 51]})
    # Row 0 is past its 44-step episode: its position is clamped to the last step, which replays the same action.
    assert cursor.reset_options({1: 6}) == {"episode_index": [4, 6], "step_index": [43, 0]}


class InterruptedOnCall(RecordingPolicy):
    """RecordingPolicy whose get_action call `call` is stopped by Ctrl-C (KeyboardInterrupt)."""

    def __init__(self, call):
        super().__init__()
        self.interrupt_on = call

    def _get_action(self, observation, options=None):
        if self.calls + 1 == self.interrupt_on:
            self.calls += 1
            raise KeyboardInterrupt
        return super()._get_action(observation, options)


def test_a_runner_interrupted_mid_episode_refuses_to_run_again_rather_than_drop_that_episode():
    from gr00t_eval.rollout import RolloutRunner

    # One env row, one step per call: episode 0 (seed 0) takes calls 1-2, so call 3 is in episode 1.
    config = RolloutConfig(env_name=ENV_ID, n_episodes=3, n_envs=1, n_action_steps=1, max_episode_steps=50, seed=0,
                           vectorization="sync")
    scored = []
    runner = RolloutRunner(InterruptedOnCall(3), config, progress=False, on_episode=scored.append)
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    assert [o.episode_index for o in scored] == [0]
    with pytest.raises(RuntimeError, match="a RolloutRunner runs once; make a new one"):
        runner.run()
