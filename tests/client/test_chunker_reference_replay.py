"""ActionChunker against the reference's replay server (server-eval.md §3.2/§3.3: info {current_step, episode_length,
episode_index}, no execution_horizon): executing 16 steps per chunk while the replay advanced 8 played recorded steps
8-15 twice, and a reply lost to a timeout skipped steps 8-15, both silently. The chunker now infers the replay's
advance from two consecutive replies, warns as against a gr00t-server replay, and refuses a reply that skipped steps."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from reference_peer import ReferenceServer

from gr00t_client import ActionChunker, PolicyClient, PolicyPositionError, PolicyTimeoutError

HORIZON, ADVANCE, LENGTH = 16, 8, 40
PORTS = iter(range(29550, 29600))


class ReferenceReplay:
    """The reference's ReplayPolicy for one action key (recorded step i is the value i), one cursor for the batch."""

    def __init__(self, slow_call: int = 0, slow_s: float = 0.0) -> None:
        self.current_step = 0
        self.calls = 0
        self.slow_call, self.slow_s = slow_call, slow_s

    def get_action(self, observation=None, options=None):
        self.calls += 1
        if self.calls == self.slow_call:
            time.sleep(self.slow_s)  # the client gives up on this reply; the cursor moves on all the same
        batch = next(iter(observation["state"].values())).shape[0]
        steps = np.minimum(np.arange(self.current_step, self.current_step + HORIZON), LENGTH - 1)
        info = {"current_step": self.current_step, "episode_length": LENGTH, "episode_index": 0}
        self.current_step += ADVANCE
        return {"x": np.tile(steps.astype(np.float32)[None, :, None], (batch, 1, 1))}, info

    def reset(self, options=None):
        self.current_step = (options or {}).get("step_index", 0)
        return {"episode_index": 0, "episode_length": LENGTH, "current_step": self.current_step}


def observation(n_envs: int) -> dict:
    return {"state": {"s": np.zeros((n_envs, 1, 1), np.float32)}}


def play(replay: ReferenceReplay, steps: int, n_envs: int = 1, **chunker_options) -> list:
    """The recorded step env 0 is handed at each of `steps` control steps."""
    with ReferenceServer({"get_action": replay.get_action, "reset": replay.reset}, port=next(PORTS)) as server, \
            PolicyClient(port=server.port, timeout_ms=5000, strict=False) as client, \
            ActionChunker(client, **chunker_options) as chunker:
        chunker.reset(options={"episode_index": 0, "step_index": 0})
        return [int(chunker.get_action(observation(n_envs))[0]["x"][0, 0]) for _ in range(steps)]


def chunker_warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.name == "gr00t_client.chunking"]


@pytest.mark.parametrize("n_envs", [1, 2])
def test_a_chunker_executing_more_steps_than_a_reference_replay_advances_warns_once(caplog, n_envs):
    with caplog.at_level(logging.WARNING, logger="gr00t_client.chunking"):
        played = play(ReferenceReplay(), 32, n_envs)
    assert played[16:24] == list(range(8, 16))  # the harm itself: steps 8-15 played twice
    warnings = chunker_warnings(caplog)
    assert len(warnings) == 1
    assert ("the policy advances 8 steps per call (its current_step advanced 8 between two calls: a replay server), "
            "but this ActionChunker executes 16 steps of each chunk: steps will repeat; pass n_action_steps=8") \
        in warnings[0]


def test_a_chunker_matching_a_reference_replay_follows_it_past_the_episode_end_silently(caplog):
    with caplog.at_level(logging.WARNING, logger="gr00t_client.chunking"):
        played = play(ReferenceReplay(), LENGTH + 16, n_action_steps=ADVANCE)
    assert played == [min(step, LENGTH - 1) for step in range(LENGTH + 16)]
    assert chunker_warnings(caplog) == []


def test_a_reply_lost_to_a_timeout_from_a_reference_replay_is_refused_instead_of_skipping_its_steps():
    """The replay advanced for the second request, whose reply came after timeout_ms; the robot's retry played
    recorded steps 16..23 where 8..15 were due, silently."""
    replay = ReferenceReplay(slow_call=2, slow_s=0.6)
    with ReferenceServer({"get_action": replay.get_action, "reset": replay.reset}, port=next(PORTS)) as server, \
            PolicyClient(port=server.port, timeout_ms=300, strict=False) as client, \
            ActionChunker(client, n_action_steps=ADVANCE) as chunker:
        chunker.reset(options={"episode_index": 0, "step_index": 0})
        played = [int(chunker.get_action(observation(1))[0]["x"][0, 0]) for _ in range(ADVANCE)]
        with pytest.raises(PolicyTimeoutError):
            chunker.get_action(observation(1))
        time.sleep(0.4)  # the late reply is dropped by the client
        for _ in range(2):  # the robot retries: refused each time, until a reset
            with pytest.raises(PolicyPositionError, match=r"current_step (16|24) for env row 0; expected 8 \(its last "
                               r"reply's step \+ the 8 steps executed since\).*recorded steps 8\.\.(15|23) would be "
                               r"skipped"):
                chunker.get_action(observation(1))
        chunker.reset(options={"episode_index": 0, "step_index": 0})
        restarted = [int(chunker.get_action(observation(1))[0]["x"][0, 0]) for _ in range(2 * ADVANCE + 1)]
    assert played == list(range(ADVANCE)) and restarted == list(range(2 * ADVANCE + 1))


def test_a_reset_between_two_replies_is_not_taken_for_the_replays_advance(caplog):
    replay = ReferenceReplay()
    with ReferenceServer({"get_action": replay.get_action, "reset": replay.reset}, port=next(PORTS)) as server, \
            PolicyClient(port=server.port, timeout_ms=5000, strict=False) as client, \
            ActionChunker(client, n_action_steps=ADVANCE) as chunker, \
            caplog.at_level(logging.WARNING, logger="gr00t_client.chunking"):
        chunker.reset(options={"episode_index": 0, "step_index": 0})
        played = [int(chunker.get_action(observation(1))[0]["x"][0, 0]) for _ in range(4)]
        chunker.reset(options={"episode_index": 0, "step_index": 24})
        played += [int(chunker.get_action(observation(1))[0]["x"][0, 0]) for _ in range(12)]
    assert played == [0, 1, 2, 3] + list(range(24, 36)) and chunker_warnings(caplog) == []
