"""Audit 13b (mutation testing, rollout runner and policy I/O): behaviour no earlier test pinned down."""

from __future__ import annotations

import pytest

from eval.scale_fixtures import ConstantPolicy
from gr00t_eval.rollout import PolicyRowCursor, RolloutConfig, run_rollout
from gr00t_eval.rollout.liveness import PolicyServerUnreachableError

WALK = dict(n_envs=2, n_action_steps=2, max_episode_steps=6, seed=100, vectorization="sync")


def walk(policy, on_episode=None, **kwargs):
    settings = {**WALK, "n_episodes": 4, **kwargs}
    return run_rollout(policy, RolloutConfig(env_name="walkto/fast", **settings), progress=False, on_episode=on_episode)


def test_a_scalar_position_in_a_batched_reply_applies_to_every_row():
    """A replay server's info giving one current_step and episode_length for all rows moves every row's held step."""
    cursor = PolicyRowCursor(2, n_action_steps=8)
    cursor.commit({0: 4, 1: 5})
    cursor.after_get_action({"current_step": 40, "execution_horizon": 8, "episode_length": 44})
    # both rows are at step 48 of a 44-step episode: held at its last step, not counted on from 0 in n_action_steps
    assert cursor.reset_options({1: 6}) == {"episode_index": [4, 6], "step_index": [43, 0]}


@pytest.mark.parametrize("episodes", [[1, 1], [0, -1]])
def test_an_episode_list_with_a_repeat_or_a_negative_index_is_refused_up_front(episodes):
    """run_rollout's `episodes` must be distinct indices >= 0: a repeat would score one episode twice."""
    with pytest.raises(ValueError, match="episodes must be distinct indices >= 0"):
        run_rollout(ConstantPolicy(), RolloutConfig(env_name="walkto/slow", **WALK, n_episodes=2), progress=False,
                    episodes=episodes)


class DiesAfter(ConstantPolicy):
    """Answers `calls` get_action requests, then fails every request with `error` (a server gone or stopping)."""

    def __init__(self, calls, error):
        super().__init__()
        self.calls, self.error, self.dead = calls, error, False

    def reset(self, options=None):
        if self.dead:
            raise self.error
        return {}

    def _get_action(self, observation, options=None):
        self.calls -= 1
        if self.calls < 0:
            self.dead = True
            raise self.error
        return super()._get_action(observation, options)

    def ping(self):
        return not self.dead


def test_a_server_that_stops_answering_stops_the_run_keeping_the_finished_episodes():
    """A timeout the ping confirms (server gone) raises PolicyServerUnreachableError instead of erroring every
    remaining episode in turn; the episodes finished before it were handed to on_episode."""
    scored = []
    with pytest.raises(PolicyServerUnreachableError, match="stopping the run"):
        walk(DiesAfter(2, TimeoutError("no reply")), n_episodes=8, on_episode=scored.append)
    finished = [o for o in scored if o.error is None]
    assert finished and len(scored) < 8  # the rest are left not run, for --resume
    assert all("no reply" in o.error for o in scored if o.error is not None)


def test_a_server_shutting_down_leaves_its_running_episodes_not_run_rather_than_errored():
    """ServerStoppingError (the server did not run the request) stops the run without scoring the rows it was asked
    for: they are left for --resume, not counted as errored episodes."""
    from gr00t_client import ServerStoppingError

    scored = []
    with pytest.raises(PolicyServerUnreachableError, match="shutting down"):
        walk(DiesAfter(2, ServerStoppingError("server shutting down")), n_episodes=8, on_episode=scored.append)
    assert scored and all(o.error is None for o in scored)


@pytest.mark.parametrize("setting, message", [({"seed": -1}, "seed must be >= 0"),
                                              ({"first_episode": -1}, "first_episode must be >= 0")])
def test_a_negative_seed_or_first_episode_is_refused_by_the_python_api(setting, message):
    """run_rollout refuses a negative base seed or first episode before any env is made (each episode would error
    at its env reset, or replay a negative episode index)."""
    with pytest.raises(ValueError, match=message):
        walk(ConstantPolicy(), **setting)
