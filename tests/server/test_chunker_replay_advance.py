"""ActionChunker against a policy that advances its own position per call (a replay server, whose info carries its
execution_horizon): executing the whole 16-step chunk while the replay advanced 8 played recorded steps 8-15 twice,
with no error anywhere (audit 11). The chunker now warns once, naming the n_action_steps that fits, resets the replay
when every env is reset, and refuses a reply whose position skipped the steps of a lost one."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from eval.dataset_factory import expected_actions, make_dataset
from serving import running_server

from tcp_proxy import TcpProxy

from gr00t_client import ActionChunker, PolicyClient, PolicyPositionError, PolicyTimeoutError
from gr00t_server.policies import ReplayPolicy

LENGTH = 40


@pytest.fixture(scope="module")
def replay_dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("advance") / "ds", lengths=(LENGTH,), cameras=())


def played_arm_steps(dataset, caplog, **chunker_options):
    """The recorded step index of each of 24 steps the chunker hands out, and the chunker's warnings."""
    recorded = expected_actions(0, LENGTH)["arm"][:, 0]
    with running_server(ReplayPolicy(dataset, execution_horizon=8, strict=False)) as server:
        with PolicyClient(port=server.port, timeout_ms=10000, strict=False) as client:
            client.reset({"episode_index": 0})
            with caplog.at_level(logging.WARNING, logger="gr00t_client.chunking"):
                with ActionChunker(client, **chunker_options) as chunker:
                    steps = []
                    for _ in range(24):
                        step, _ = chunker.get_action({"state": {"x": np.zeros((1, 1, 1), np.float32)}})
                        steps.append(int(np.flatnonzero(np.isclose(recorded, step["arm"][0, 0]))[0]))
    warnings = [r.getMessage() for r in caplog.records if r.name == "gr00t_client.chunking"]
    return steps, warnings


def test_a_chunker_executing_more_steps_than_the_replay_advances_warns_once(replay_dataset, caplog):
    steps, warnings = played_arm_steps(replay_dataset, caplog)
    assert steps[8:16] == steps[16:24] == list(range(8, 16))  # the harm itself: steps 8-15 played twice
    assert len(warnings) == 1
    assert ("the policy advances 8 steps per call (its info's execution_horizon: a replay server), but this "
            "ActionChunker executes 16 steps of each chunk: steps will repeat; pass n_action_steps=8") in warnings[0]


def test_a_chunker_matching_the_replays_advance_follows_the_recording_silently(replay_dataset, caplog):
    steps, warnings = played_arm_steps(replay_dataset, caplog, n_action_steps=8)
    assert steps == list(range(24)) and warnings == []


def test_a_prefetching_chunker_is_told_its_calls_cannot_follow_a_replay(replay_dataset, caplog):
    _, warnings = played_arm_steps(replay_dataset, caplog, n_action_steps=8, asynchronous=True)
    assert len(warnings) == 1 and "prefetches, so its calls do not follow the steps executed" in warnings[0]


def two_env_steps(dataset, caplog, per_env, reset_env0_at=None):
    """Env 1's recorded step index at each of 16 steps of a 2-env chunker (env 0 reset alone at `reset_env0_at`)."""
    recorded = expected_actions(0, LENGTH)["arm"][:, 0]
    observation = {"state": {"x": np.zeros((2, 1, 1), np.float32)}}
    with running_server(ReplayPolicy(dataset, execution_horizon=8, strict=False)) as server:
        with PolicyClient(port=server.port, timeout_ms=10000, strict=False) as client:
            client.reset({"episode_index": 0})
            with caplog.at_level(logging.WARNING, logger="gr00t_client.chunking"):
                with ActionChunker(client, n_action_steps=8, per_env=per_env) as chunker:
                    steps = []
                    for t in range(16):
                        if t == reset_env0_at:
                            chunker.reset(env_ids=[0])  # env 0's episode ended early; env 1 runs on
                        step, _ = chunker.get_action(observation)
                        steps.append(int(np.flatnonzero(np.isclose(recorded, step["arm"][1, 0]))[0]))
    return steps, [r.getMessage() for r in caplog.records if r.name == "gr00t_client.chunking"]


def test_one_env_reset_alone_against_a_replay_warns_that_the_others_will_skip_steps(replay_dataset, caplog):
    """The replay keeps one cursor per session: env 0's reset alone is not the policy's, and env 1, never reset,
    skipped recorded steps 6 and 7 without a word."""
    steps, warnings = two_env_steps(replay_dataset, caplog, per_env=False, reset_env0_at=6)
    assert steps != list(range(16))  # the harm itself
    assert len(warnings) == 1 and warnings[0].startswith(
        "a reset of envs [0] alone is not passed to the policy, which advances its own cursor per call (a replay "
        "server): the other envs will skip the steps the reset ones replay again; reset every env together")
    assert two_env_steps(replay_dataset, caplog, per_env=False)[0] == list(range(16))  # without the reset, in step


def test_a_per_env_chunker_against_a_replay_is_told_its_envs_take_turns_at_one_cursor(replay_dataset, caplog):
    _, warnings = two_env_steps(replay_dataset, caplog, per_env=True)
    assert len(warnings) == 1 and "fetches some envs at a time (per_env=True): the envs take turns at the one cursor" \
        in warnings[0]


ONE_ENV = {"state": {"x": np.zeros((1, 1, 1), np.float32)}}


def recorded_step(recorded, step):
    """The index of the recorded step whose arm value env 0's step carries."""
    return int(np.flatnonzero(np.isclose(recorded, step["arm"][0, 0]))[0])


@pytest.mark.parametrize("every_env", [np.array([True]), [0]], ids=["done-mask", "indices"])
def test_a_reset_naming_every_env_restarts_the_replay(replay_dataset, every_env):
    """A 1-env robot's done-mask [True] after an early episode end: the replay was not reset, and the new episode
    began with the old one's recorded steps 8, 9, 10."""
    recorded = expected_actions(0, LENGTH)["arm"][:, 0]
    with running_server(ReplayPolicy(replay_dataset, execution_horizon=8, strict=False)) as server:
        with PolicyClient(port=server.port, timeout_ms=10000, strict=False) as client, \
                ActionChunker(client, n_action_steps=8) as chunker:
            chunker.reset(options={"episode_index": 0})
            before = [recorded_step(recorded, chunker.get_action(ONE_ENV)[0]) for _ in range(4)]
            chunker.reset(env_ids=every_env)
            after = [recorded_step(recorded, chunker.get_action(ONE_ENV)[0]) for _ in range(3)]
    assert before == [0, 1, 2, 3] and after == [0, 1, 2]


def test_a_reply_lost_to_a_timeout_is_refused_instead_of_skipping_the_steps_it_held(replay_dataset):
    """The replay advanced its cursor for a request whose reply came after timeout_ms; the robot's retry played
    recorded steps 16..23 where 8..15 were due, silently."""
    recorded = expected_actions(0, LENGTH)["arm"][:, 0]
    with running_server(ReplayPolicy(replay_dataset, execution_horizon=8, strict=False)) as server, \
            TcpProxy(server.port) as proxy:
        with PolicyClient(port=proxy.port, timeout_ms=1000, strict=False) as client, \
                ActionChunker(client, n_action_steps=8) as chunker:
            chunker.reset(options={"episode_index": 0})
            played = [recorded_step(recorded, chunker.get_action(ONE_ENV)[0]) for _ in range(8)]
            proxy.spike_s = 1.5  # the next reply comes after the client gave up on it
            with pytest.raises(PolicyTimeoutError):
                chunker.get_action(ONE_ENV)
            for _ in range(2):  # the robot retries: refused each time, until a reset
                with pytest.raises(PolicyPositionError, match=r"current_step (16|24) for env row 0; expected 8 .*"
                                   r"a timed-out or lost get_action\), so recorded steps 8\.\.(15|23) would be skipped"):
                    chunker.get_action(ONE_ENV)
            chunker.reset()
            restarted = [recorded_step(recorded, chunker.get_action(ONE_ENV)[0]) for _ in range(9)]
    assert played == list(range(8)) and restarted == list(range(9))


def test_the_advance_warning_offers_a_server_horizon_only_where_the_chunk_holds_that_many_steps(replay_dataset, caplog):
    _, warnings = played_arm_steps(replay_dataset, caplog)
    assert warnings[0].endswith("pass n_action_steps=8 (or serve with --execution-horizon 16)")
    caplog.clear()
    with running_server(ReplayPolicy(replay_dataset, execution_horizon=8, strict=False)) as server:
        with PolicyClient(port=server.port, timeout_ms=10000, strict=False) as client:
            client.reset({"episode_index": 0})
            with caplog.at_level(logging.WARNING, logger="gr00t_client.chunking"):
                with ActionChunker(client, n_action_steps=17) as chunker, pytest.raises(ValueError):
                    chunker.get_action({"state": {"x": np.zeros((1, 1, 1), np.float32)}})  # 17 of a 16-step chunk
    [warning] = [r.getMessage() for r in caplog.records if r.name == "gr00t_client.chunking"]
    assert warning.endswith("steps will repeat; pass n_action_steps=8"), warning  # a 17-step horizon is refused
