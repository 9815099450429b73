"""ActionChunker across a policy server restarted on its port, and across a full reset(): what it learnt of the old
server (its action horizon for real-time chunking, a replay's inferred advance per call, the execution_horizon checked
against n_action_steps) was kept for its whole life, so an RTC prefetch sent more steps than the new server's horizon
(refused at every other step), a reference replay's every second reply was refused as if one were lost, and a replay
now advancing 4 steps where 8 were executed repeated steps without the warning a fresh chunker gives."""

from __future__ import annotations

import logging
import socket
import time

import numpy as np
import pytest
from eval.dataset_factory import expected_actions, make_dataset
from reference_peer import ReferenceServer
from serving import RestartableServer

from gr00t_client import ActionChunker, BasePolicy, ModalityConfig, PolicyClient, PolicyPositionError
from gr00t_server.policies import ReplayPolicy

LENGTH = 60


class HorizonPolicy(BasePolicy):
    """Chunks of `horizon` steps of one action key; like Gr00tPolicy it refuses an rtc previous_action of more steps."""

    def __init__(self, horizon: int) -> None:
        super().__init__(strict=False)
        self.horizon = horizon
        self.rtc_steps = []  # the previous_action steps of every request with options["rtc"]

    def get_modality_config(self):
        return {"action": ModalityConfig(delta_indices=list(range(self.horizon)), modality_keys=["x"])}

    def _get_action(self, observation, options=None):
        rtc = (options or {}).get("rtc")
        if rtc is not None:
            steps = np.shape(rtc["previous_action"]["x"])[1]
            self.rtc_steps.append(steps)
            if not 1 <= steps <= self.horizon:
                raise ValueError(f"options['rtc']['previous_action']['x'] must have 1 <= T <= {self.horizon}; "
                                 f"got T={steps}")
        return {"x": np.zeros((1, self.horizon, 1), np.float32)}, {}

    def reset(self, options=None):
        return {}


def test_an_rtc_prefetch_after_a_restart_with_a_shorter_action_horizon_sends_at_most_that_many_steps():
    horizons, served = iter([16, 6]), []
    server = RestartableServer(lambda: served.append(HorizonPolicy(next(horizons))) or served[-1])
    observation = {"state": {"s": np.zeros((1, 1, 1), np.float32)}}
    try:
        with PolicyClient(port=server.port, timeout_ms=10000, strict=False) as client, \
                ActionChunker(client, asynchronous=True, rtc_frozen_steps=2) as chunker:
            for _ in range(2):  # a 16-step chunk is running
                chunker.get_action(observation)
            server.restart(reconnecting=1)  # now serving a 6-step action horizon
            for _ in range(18):  # raised PolicyServerError at every other step while 9..6 old steps were left
                chunker.get_action(observation)
                assert chunker.wait_for_prefetch(10)
    finally:
        server.stop()
    assert served[1].rtc_steps and max(served[1].rtc_steps) <= 6, served[1].rtc_steps


def test_an_rtc_prefetch_cut_before_the_client_saw_the_restart_is_cut_again_and_sent_once_more():
    """A prefetch asked for while the server is down is cut to the old server's horizon (the client cannot see the
    restart yet) and sent to the new one once it is up: refused there once (9 steps for a 6-step horizon), it is cut
    to the new horizon and asked again. It raised PolicyServerError in the robot's next call; the same race, the new
    connection not yet noticed when the prefetch was cut, made the test above fail now and then under load."""
    horizons, served = iter([16, 6]), []
    server = RestartableServer(lambda: served.append(HorizonPolicy(next(horizons))) or served[-1])
    observation = {"state": {"s": np.zeros((1, 1, 1), np.float32)}}

    def ask_for_a_prefetch():  # buffered steps are handed out until one starts a prefetch; it waits for a server
        while chunker.stats.prefetches == 0:
            chunker.get_action(observation)
        time.sleep(0.3)  # its request was cut and is waiting to be sent

    try:
        with PolicyClient(port=server.port, timeout_ms=10000, strict=False) as client, \
                ActionChunker(client, asynchronous=True, rtc_frozen_steps=2) as chunker:
            chunker.get_action(observation)  # a 16-step chunk is running
            server.restart(reconnecting=1, while_down=ask_for_a_prefetch)
            for _ in range(12):
                assert chunker.wait_for_prefetch(10)
                chunker.get_action(observation)
    finally:
        server.stop()
    assert served[1].rtc_steps[0] > 6 and max(served[1].rtc_steps[1:]) <= 6, served[1].rtc_steps


class PassThroughWrapper:
    """A user's wrapper: it keeps the client as `.policy` and forwards get_action and reset only."""

    def __init__(self, policy) -> None:
        self.policy = policy

    def get_action(self, observation, options=None):
        return self.policy.get_action(observation, options)

    def reset(self, options=None):
        return self.policy.reset(options)


def _position_checked(client):
    from gr00t_eval.rollout.policy_io import PolicyRowCursor, PositionCheckedPolicy

    return PositionCheckedPolicy(client, PolicyRowCursor(1, 1), asynchronous=True, n_action_steps=1)


@pytest.mark.parametrize("wrap", [PassThroughWrapper, _position_checked], ids=["user wrapper", "PositionCheckedPolicy"])
def test_an_rtc_prefetch_through_a_wrapper_of_the_client_is_cut_to_the_restarted_servers_action_horizon(wrap):
    """A wrapper without get_modality_config (gr00t-eval's rollout wraps the client in PositionCheckedPolicy): the
    horizon is asked of the client it wraps, not taken as "no configs" (nothing cut, every other prefetch refused)."""
    horizons, served = iter([16, 6]), []
    server = RestartableServer(lambda: served.append(HorizonPolicy(next(horizons))) or served[-1])
    observation = {"state": {"s": np.zeros((1, 1, 1), np.float32)}}
    try:
        with PolicyClient(port=server.port, timeout_ms=10000, strict=False) as client, \
                ActionChunker(wrap(client), asynchronous=True, rtc_frozen_steps=2) as chunker:
            for _ in range(2):  # a 16-step chunk is running
                chunker.get_action(observation)
            server.restart(reconnecting=1)  # now serving a 6-step action horizon
            for _ in range(18):
                chunker.get_action(observation)
                assert chunker.wait_for_prefetch(10)
    finally:
        server.stop()
    assert served[1].rtc_steps and max(served[1].rtc_steps) <= 6, served[1].rtc_steps


class AdvancingReplay:
    """The reference's ReplayPolicy (no execution_horizon in its info) advancing `advance` steps per call: recorded
    step i is the value i."""

    def __init__(self, advance: int) -> None:
        self.advance, self.current_step = advance, 0

    def get_action(self, observation=None, options=None):
        steps = np.minimum(np.arange(self.current_step, self.current_step + 16), LENGTH - 1)
        info = {"current_step": self.current_step, "episode_length": LENGTH, "episode_index": 0}
        self.current_step += self.advance
        return {"x": steps.astype(np.float32)[None, :, None]}, info

    def reset(self, options=None):
        self.current_step = (options or {}).get("step_index", 0)
        return {"episode_index": 0, "episode_length": LENGTH, "current_step": self.current_step}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served(replay: AdvancingReplay, port: int) -> ReferenceServer:
    return ReferenceServer({"get_action": replay.get_action, "reset": replay.reset}, port=port)


def play(chunker: ActionChunker, steps: int) -> list:
    """The recorded step handed to the robot at each of `steps` control steps."""
    return [int(chunker.get_action({"state": {"s": np.zeros((1, 1, 1), np.float32)}})[0]["x"][0, 0])
            for _ in range(steps)]


def test_a_reset_chunker_follows_a_reference_replay_restarted_with_another_advance():
    port = free_port()
    with PolicyClient(port=port, timeout_ms=5000, strict=False) as client, \
            ActionChunker(client, n_action_steps=4) as chunker:
        with served(AdvancingReplay(advance=4), port):
            chunker.reset(options={"episode_index": 0, "step_index": 0})
            assert play(chunker, 12) == list(range(12))  # the advance 4 inferred
        with served(AdvancingReplay(advance=8), port):  # restarted on the port, advancing 8
            chunker.n_action_steps = 8
            chunker.reset(options={"episode_index": 0, "step_index": 0})
            assert play(chunker, 24) == list(range(24))


def test_a_full_reset_forgets_the_advance_inferred_before_it():
    replay = AdvancingReplay(advance=4)
    with served(replay, free_port()) as server, \
            PolicyClient(port=server.port, timeout_ms=5000, strict=False) as client, \
            ActionChunker(client, n_action_steps=4) as chunker:
        chunker.reset(options={"episode_index": 0, "step_index": 0})
        assert play(chunker, 12) == list(range(12))
        replay.advance = chunker.n_action_steps = 8  # the next episode's replay advances 8
        chunker.reset(options={"episode_index": 0, "step_index": 0})
        assert play(chunker, 24) == list(range(24))


def test_a_reply_past_the_inferred_advance_is_refused_naming_the_advance_as_inferred():
    replay = AdvancingReplay(advance=8)
    with served(replay, free_port()) as server, \
            PolicyClient(port=server.port, timeout_ms=5000, strict=False) as client, \
            ActionChunker(client, n_action_steps=8) as chunker:
        chunker.reset(options={"episode_index": 0, "step_index": 0})
        assert play(chunker, 16) == list(range(16))  # replies at 0 and 8: the advance 8 inferred
        replay.get_action()  # another caller moved the replay on: step 16 is gone
        with pytest.raises(PolicyPositionError, match=r"current_step 24 for env row 0; expected 16 \(its last reply's "
                                                      r"step \+ inferred advance 8\)"):
            play(chunker, 1)


@pytest.fixture(scope="module")
def replay_dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("restart") / "ds", lengths=(LENGTH,), cameras=())


def test_a_replay_restarted_with_another_execution_horizon_is_checked_against_n_action_steps_again(replay_dataset,
                                                                                                  caplog):
    recorded = expected_actions(0, LENGTH)["arm"][:, 0]
    horizons = iter([8, 4])
    server = RestartableServer(lambda: ReplayPolicy(replay_dataset, execution_horizon=next(horizons), strict=False))
    try:
        with PolicyClient(port=server.port, timeout_ms=10000, strict=False) as client, \
                ActionChunker(client, n_action_steps=8) as chunker, \
                caplog.at_level(logging.WARNING, logger="gr00t_client.chunking"):
            def play_arm(steps):
                return [int(np.flatnonzero(np.isclose(recorded, chunker.get_action(
                    {"state": {"x": np.zeros((1, 1, 1), np.float32)}})[0]["arm"][0, 0]))[0]) for _ in range(steps)]

            chunker.reset(options={"episode_index": 0})
            assert play_arm(16) == list(range(16))
            assert [r for r in caplog.records if r.name == "gr00t_client.chunking"] == []
            server.restart(reconnecting=1)  # now advancing 4 per call; the session is gone, so the robot resets
            chunker.reset(options={"episode_index": 0})
            play_arm(16)
    finally:
        server.stop()
    warnings = [r.getMessage() for r in caplog.records if r.name == "gr00t_client.chunking"]
    assert len(warnings) == 1 and ("the policy advances 4 steps per call (its info's execution_horizon: a replay "
                                   "server), but this ActionChunker executes 8 steps of each chunk: steps will repeat; "
                                   "pass n_action_steps=4") in warnings[0], warnings


def test_an_advance_mismatch_is_warned_once_across_resets(caplog):
    with served(AdvancingReplay(advance=4), free_port()) as server, \
            PolicyClient(port=server.port, timeout_ms=5000, strict=False) as client, \
            ActionChunker(client, n_action_steps=8) as chunker, \
            caplog.at_level(logging.WARNING, logger="gr00t_client.chunking"):
        for _ in range(3):  # three episodes
            chunker.reset(options={"episode_index": 0, "step_index": 0})
            play(chunker, 16)
    warnings = [r.getMessage() for r in caplog.records if r.name == "gr00t_client.chunking"]
    assert len(warnings) == 1 and "the policy advances 4 steps per call" in warnings[0], warnings
