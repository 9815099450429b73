"""A replay whose recording ends before --max-episode-steps: its episode errors where the recorded actions end.

A real replay server serves recordings that push the probe 1 per step for 3, 6 and 4 steps; the probe env succeeds
once it has been pushed GOAL times and never ends an episode otherwise. The server repeats a recording's last action
after its end, which pushed every recording onto the goal: a 3-step recording that never reached it scored a success.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from eval.scale_fixtures import policy_server
from gr00t_client import BasePolicy, EmbodimentTag, ModalityConfig, PolicyClient
from gr00t_eval.dataset import DatasetWriter
from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout

CHUNK = 2  # action horizon, execution horizon and n_action_steps
GOAL = 5
RECORDED_LENGTHS = [3, 6, 4]  # short of the goal; past it; short of it, ending on a chunk boundary


def ran_out(length):
    return (f"the replay ran out of recorded actions at step {length} (the recording has {length} steps); a replay "
            "cannot say what the policy would do after it")


class PushProbeEnv(gym.Env):
    """Succeeds (and, with `ends_at_goal`, ends) once the pushes add up to GOAL; never ends an episode by itself
    otherwise."""

    def __init__(self, ends_at_goal=True):
        self.ends_at_goal = ends_at_goal
        self.observation_space = gym.spaces.Dict({"state.position": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)})
        self.action_space = gym.spaces.Dict({"action.push": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)})
        self.position = 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = 0.0
        return {"state.position": np.zeros(1, np.float32)}, {}

    def step(self, action):
        self.position += float(np.asarray(action["action.push"]).reshape(-1)[0])
        success = self.position >= GOAL
        ended = success and self.ends_at_goal
        return {"state.position": np.full(1, self.position, np.float32)}, 0.0, ended, False, {"success": success}


register_env_prefix("pushprobe", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: PushProbeEnv())
register_env_prefix("pushprobeon", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: PushProbeEnv(ends_at_goal=False))

CONFIGS = {"state": ModalityConfig([0], ["position"]), "action": ModalityConfig(list(range(CHUNK)), ["push"])}


class PushOnePolicy(BasePolicy):
    """A model-like policy: pushes 1 every step and reports no place in any recording."""

    def __init__(self):
        super().__init__(strict=False)

    def get_modality_config(self):
        return CONFIGS

    def _get_action(self, observation, options=None):
        rows = len(observation["state.position"])
        return {"action.push": np.ones((rows, CHUNK, 1), np.float32)}, {}

    def reset(self, options=None):
        return {}


@pytest.fixture(scope="module")
def replay_server(tmp_path_factory):
    from gr00t_server.policies import Gr00tSimPolicyWrapper, ReplayPolicy

    root = tmp_path_factory.mktemp("replay_end") / "ds"
    with DatasetWriter(root, 10) as writer:
        for length in RECORDED_LENGTHS:
            writer.add_episode(frames={"image": np.zeros((length, 8, 8, 3), np.uint8)},
                               states={"position": np.zeros((length, 1), np.float32)},
                               actions={"push": np.ones((length, 1), np.float32)}, task="push")
    with policy_server(Gr00tSimPolicyWrapper(ReplayPolicy(root, CONFIGS, execution_horizon=CHUNK))) as running:
        yield running


def rollout(port, **overrides):
    values = dict(env_name="pushprobe/any", n_episodes=len(RECORDED_LENGTHS), n_envs=2, n_action_steps=CHUNK,
                  max_episode_steps=20, seed=0, vectorization="sync")
    values.update(overrides)
    with PolicyClient("127.0.0.1", port, timeout_ms=5000) as client:
        return run_rollout(client, RolloutConfig(**values), progress=False)


@pytest.mark.parametrize("client_chunking", ["off", "sync"])
def test_a_replay_past_its_recordings_end_errors_there_instead_of_being_scored(replay_server, client_chunking):
    result = rollout(replay_server.port, client_chunking=client_chunking)
    got = [(o.success, o.length, o.error) for o in result.outcomes]
    assert got == [(False, 3, ran_out(3)), (True, GOAL, None), (False, 4, ran_out(4))]
    assert result.errored_episodes == [0, 2] and result.success_rate == 1.0


def test_a_replay_run_on_past_success_says_terminate_on_success_is_why_it_ran_out(replay_server):
    """A recording that stops at success (as `record` writes them), rolled out with terminate_on_success false in an
    env that goes on after success: the episode runs past the recording's end and errors there; the error said only
    that the replay ran out (R-roundtrip), not that the setting ran it past the success it reached."""
    result = rollout(replay_server.port, env_name="pushprobeon/any", terminate_on_success=False)
    errors = [o.error for o in result.outcomes]
    assert errors[0] == ran_out(3) and errors[2] == ran_out(4)  # short of the goal: no word of the setting
    assert errors[1].startswith(ran_out(6)) and "terminate_on_success=false runs it on past success" in errors[1]


def test_a_policy_that_reports_no_recording_is_rolled_out_past_any_step_count():
    with policy_server(PushOnePolicy()) as server:
        result = rollout(server.port)
    assert [(o.success, o.length, o.error) for o in result.outcomes] == [(True, GOAL, None)] * len(RECORDED_LENGTHS)
