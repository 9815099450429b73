"""Rollouts while the policy side goes wrong: errored episodes in the Python API's numbers, a server
answering with the wrong batch size.

The replay tests serve a dataset_factory dataset (no cameras) with a real ReplayPolicy behind the sim wrapper in a
real PolicyServer. The probe env knows the recording it must receive (from the seed the server reports): an episode
succeeds iff every action it executed is the recorded one, so replaying anything else fails it.
"""

from __future__ import annotations

import threading

import gymnasium as gym
import numpy as np
import pytest

from dataset_factory import expected_actions, make_dataset
from gr00t_client import BasePolicy, EmbodimentTag, ModalityConfig, PolicyClient
from gr00t_eval.metrics import rollout_aggregates
from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout
from gr00t_server.server import PolicyServer

LENGTHS = (5, 8, 3, 6)  # recorded episode lengths; recorded seeds are 100 + episode (dataset_factory)
PAST_END = 2  # the probe runs this many steps past its recording: the replay repeats the last row (and is clamped)
CHUNK = 2  # n_action_steps and the server's execution horizon
HORIZON = 4  # the action horizon


class ReplayProbeEnv(gym.Env):
    """Episode e (seed 100 + e) lasts LENGTHS[e] + PAST_END steps and succeeds iff step t got recorded row min(t, L-1).

    `on_step` (module level, sync vectorisation only) is called after every step with the steps taken so far.
    """

    on_step = None
    steps_taken = 0

    def __init__(self):
        self.observation_space = gym.spaces.Dict({
            "state.arm": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
            "state.gripper": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
        })
        self.action_space = gym.spaces.Dict({
            "action.arm": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
            "action.gripper": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
        })

    def _obs(self):
        return {"state.arm": np.zeros(3, np.float32), "state.gripper": np.zeros(1, np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode = int(seed) - 100
        self.recorded = expected_actions(self.episode, LENGTHS[self.episode])
        self.t, self.all_matched = 0, True
        return self._obs(), {}

    def step(self, action):
        row = min(self.t, LENGTHS[self.episode] - 1)
        for key in ("arm", "gripper"):
            self.all_matched &= bool(np.allclose(action[f"action.{key}"], self.recorded[key][row]))
        self.t += 1
        ReplayProbeEnv.steps_taken += 1
        if ReplayProbeEnv.on_step is not None:
            ReplayProbeEnv.on_step(ReplayProbeEnv.steps_taken)
        done = self.t >= LENGTHS[self.episode] + PAST_END
        return self._obs(), float(self.all_matched), done, False, {"success": done and self.all_matched}


register_env_prefix("replaycheck", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: ReplayProbeEnv())


class RestartableServer:
    """A PolicyServer in a thread that can be restarted on the same port with a fresh policy (no sessions kept)."""

    def __init__(self, make_policy):
        self.make_policy = make_policy
        self.port = 0
        self.restarts = 0
        self._start()

    def _start(self):
        self.server = PolicyServer(self.make_policy(), host="127.0.0.1", port=self.port)
        self.server.start()
        self.port = self.server.port
        self.thread = threading.Thread(target=self.server.run, name="policy-server", daemon=True)
        self.thread.start()

    def stop(self):
        self.server.close()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def restart(self):
        """What a supervisor does after a crash: the same server again on the same port, its sessions gone."""
        self.stop()
        self._start()
        self.restarts += 1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("replay_faults") / "ds", lengths=LENGTHS, cameras=())


def replay_policy(dataset, execution_horizon=CHUNK):
    from gr00t_server.policies import Gr00tSimPolicyWrapper, ReplayPolicy

    configs = {"state": ModalityConfig([0], ["arm", "gripper"]), "action": ModalityConfig(list(range(HORIZON)), ["arm", "gripper"])}
    return Gr00tSimPolicyWrapper(ReplayPolicy(dataset, configs, execution_horizon=execution_horizon))


@pytest.fixture
def replay_server(dataset):
    server = RestartableServer(lambda: replay_policy(dataset))
    ReplayProbeEnv.steps_taken, ReplayProbeEnv.on_step = 0, None
    yield server
    ReplayProbeEnv.on_step = None
    server.stop()


def restart_after(server, steps):
    """Restart `server` once, right after the envs have taken `steps` steps in all (between two requests)."""
    def on_step(taken):
        if taken == steps:
            server.restart()
    ReplayProbeEnv.on_step = on_step


def replay(server, n_episodes=len(LENGTHS), **overrides):
    settings = dict(n_episodes=n_episodes, n_envs=1, n_action_steps=CHUNK, max_episode_steps=50, vectorization="sync",
                    seed=100)  # the seeds dataset_factory records, for policies that report none
    settings.update(overrides)
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        return run_rollout(client, RolloutConfig(env_name="replaycheck/any", **settings), progress=False)


class ConstantPushPolicy(BasePolicy):
    """A stateless model: the same chunk for every row, and no position in its info."""

    def __init__(self, rows=None):
        super().__init__(strict=False)
        self.rows = rows

    def get_modality_config(self):
        return {"state": ModalityConfig([0], ["arm", "gripper"]), "action": ModalityConfig(list(range(HORIZON)), ["arm", "gripper"])}

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        rows = self.rows or len(observation["state.arm"])
        return {"action.arm": np.zeros((rows, HORIZON, 3), np.float32), "action.gripper": np.zeros((rows, HORIZON, 1), np.float32)}, {}


# -- the Python API's numbers -------------------------------------------------------------------------------

def test_the_api_success_rate_leaves_errored_episodes_out_like_results_json(replay_server):
    # A fifth episode has no recording: the server refuses its reset, so it errors.
    result = replay(replay_server, n_episodes=len(LENGTHS) + 1)
    assert result.success_rate == 1.0 == rollout_aggregates(result.outcomes, result.eval_s)["pc_success"] / 100
    assert result.successes == [True] * len(LENGTHS) and [o.episode_index for o in result.finished] == list(range(len(LENGTHS)))
    assert result.errored_episodes == [len(LENGTHS)] and result.n_errors == 1


def test_the_api_success_rate_is_none_when_every_episode_errored(replay_server):
    result = replay(replay_server, n_episodes=2, first_episode=len(LENGTHS))
    assert result.success_rate is None and result.successes == [] and result.n_errors == 2


# -- a server answering with the wrong batch size -----------------------------------------------------------

def test_a_chunk_with_the_wrong_batch_size_errors_the_episodes_naming_key_and_shapes():
    server = RestartableServer(lambda: ConstantPushPolicy(rows=1))
    try:
        result = replay(server, n_episodes=2, n_envs=2)
    finally:
        server.stop()
    assert result.n_errors == 2
    for outcome in result.outcomes:
        assert "action.arm has shape (1, 4, 3); expected (2, 4, 3), one row per env" in outcome.error
