"""A rollout whose get_action a server refuses "server busy ... try again" (at its queue's cap: the request was not run
and the envs have not moved) asks again after a short, growing wait, and errors the episodes only when the server
stays busy past the bound. A real server at its byte cap on loopback: while the rollout's first reset runs, two other
peers' small get_actions are queued, and the first of them is held until `release`; the rollout's next get_action,
larger than the reset, then meets the cap with nothing that could make room for it."""

from __future__ import annotations

import logging
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
import zmq

pytest.importorskip("gymnasium")

from eval.scale_fixtures import LANGUAGE_KEY, ConstantPolicy, WalkToEnv  # noqa: E402
from gr00t_client import PolicyClient, codec  # noqa: E402
from gr00t_client.client_errors import ServerBusyError, server_error  # noqa: E402
from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout  # noqa: E402
from gr00t_eval.rollout import runner as rollout_runner  # noqa: E402
from gr00t_server.server import ServerLimits  # noqa: E402
from serving import running_server  # noqa: E402

INSTRUCTION = "walk to the goal " * 60  # a get_action of about 1 KB: over the cap the small reset fitted under


class LongInstructionWalk(WalkToEnv):
    """walkto with a long instruction."""

    def __init__(self) -> None:
        super().__init__(1.0)
        self.observation_space = gym.spaces.Dict({**self.observation_space.spaces,
                                                  LANGUAGE_KEY: gym.spaces.Text(max_length=2048)})

    def _obs(self):
        return {**super()._obs(), LANGUAGE_KEY: INSTRUCTION}


def hog_request() -> bytes:
    observation = {"state.position": np.full((1, 1), -1.0, np.float32)}
    return codec.encode({"endpoint": "get_action", "data": {"observation": observation}})


class BusyAtFirstReset(ConstantPolicy):
    """ConstantPolicy whose first reset has two other peers' get_actions queued behind it (`port`'s DEALERs); the call
    of the first is held until `release` (set `release_after_s` after that reset)."""

    def __init__(self, release_after_s: float) -> None:
        super().__init__()
        self.release, self.release_after_s = threading.Event(), release_after_s
        self.port = 0
        self.context = zmq.Context()
        self.hogs = []

    def _get_action(self, observation, options=None):
        if float(np.asarray(observation["state.position"]).reshape(-1)[0]) < 0:
            self.release.wait(30)
        return super()._get_action(observation, options)

    def reset(self, options=None):
        if not self.hogs:
            for _ in range(2):
                hog = self.context.socket(zmq.DEALER)
                hog.setsockopt(zmq.LINGER, 0)
                hog.connect(f"tcp://127.0.0.1:{self.port}")
                hog.send_multipart([b"", hog_request()])
                self.hogs.append(hog)
            time.sleep(0.3)  # both are queued behind this reset
            timer = threading.Timer(self.release_after_s, self.release.set)
            timer.daemon = True
            timer.start()
        return {}

    def close(self) -> None:
        self.release.set()
        for hog in self.hogs:
            hog.close()
        self.context.term()


def busy_rollout(release_after_s: float):
    register_env_prefix("longwalk", "new_embodiment", lambda task, **kwargs: LongInstructionWalk())
    config = RolloutConfig("longwalk/walk", n_episodes=1, n_envs=1, seed=0, max_episode_steps=8, n_action_steps=2)
    policy = BusyAtFirstReset(release_after_s)
    limits = ServerLimits(max_queued_bytes=2 * len(hog_request()) + 700)  # the reset and both hogs fit, not a get_action
    try:
        with running_server(policy, inline_below_ms=0, limits=limits) as server, \
                PolicyClient("127.0.0.1", server.port, timeout_ms=10000) as client:
            policy.port = server.port
            try:
                return run_rollout(client, config, progress=False)
            finally:
                policy.release.set()  # before the server stops: it would wait for the held call
    finally:
        policy.close()


def test_a_server_busy_refusal_is_a_server_busy_error():
    refusal = server_error("server busy: 4 requests are waiting for the policy; this server queues at most 4 in all "
                           "(ServerLimits.max_queued_requests); try again", "get_action")
    assert isinstance(refusal, ServerBusyError)
    assert isinstance(server_error("this connection already has 8 requests waiting for their replies; ...",
                                   "get_action"), ServerBusyError)
    assert not isinstance(server_error("'get_action' was not run: the client's deadline passed while it waited",
                                       "get_action"), ServerBusyError)


def test_a_rollout_asks_again_while_the_server_is_busy(caplog):
    with caplog.at_level(logging.WARNING):
        result = busy_rollout(release_after_s=1.0)
    [outcome] = result.outcomes
    assert outcome.error is None, f"expected the episode to run once the server had room, got {outcome.error!r}"
    assert outcome.success
    retries = [r.getMessage() for r in caplog.records if "asking again" in r.getMessage()]
    assert retries and all("server busy" in message for message in retries), retries


def test_a_rollout_errors_the_episode_when_the_server_stays_busy_past_the_bound(monkeypatch):
    monkeypatch.setattr(rollout_runner, "BUSY_RETRY_TOTAL_S", 0.3)
    result = busy_rollout(release_after_s=5.0)
    [outcome] = result.outcomes
    assert outcome.error is not None and "ServerBusyError" in outcome.error and "server busy" in outcome.error, \
        f"expected the episode errored with the busy refusal, got {outcome.error!r}"


HOG_FLOATS = 20000  # another peer's get_action of 80 KB: alone it fits under the cap below, with any request it does not


class HoldsHogs(ConstantPolicy):
    """ConstantPolicy that holds a get_action of HOG_FLOATS positions (another peer's) until `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.running, self.release = threading.Event(), threading.Event()

    def _get_action(self, observation, options=None):
        if np.asarray(observation["state.position"]).size >= HOG_FLOATS:
            self.running.set()
            self.release.wait(30)
        return super()._get_action(observation, options)


def large_hog_request() -> bytes:
    observation = {"state.position": np.zeros((1, HOG_FLOATS), np.float32)}
    return codec.encode({"endpoint": "get_action", "data": {"observation": observation}})


class BusyAtSecondReset(PolicyClient):
    """The rollout's client; as it sends its second reset another peer's large get_action runs on the server (held
    `release_after_s`), so the server's queue has no room for the reset."""

    def __init__(self, port: int, policy: HoldsHogs, release_after_s: float) -> None:
        super().__init__("127.0.0.1", port, timeout_ms=10000)
        self.served, self.release_after_s, self.resets = policy, release_after_s, 0
        self.hog_context = zmq.Context()
        self.hog = self.hog_context.socket(zmq.DEALER)
        self.hog.setsockopt(zmq.LINGER, 0)
        self.hog.connect(f"tcp://127.0.0.1:{port}")

    def reset(self, options=None):
        self.resets += 1
        if self.resets == 2:
            self.hog.send_multipart([b"", large_hog_request()])
            assert self.served.running.wait(10), "the other peer's get_action never ran"
            timer = threading.Timer(self.release_after_s, self.served.release.set)
            timer.daemon = True
            timer.start()
        return super().reset(options)

    def close(self) -> None:
        super().close()
        self.hog.close()
        self.hog_context.term()


def rollout_busy_at_second_reset(release_after_s: float):
    register_env_prefix("busywalk", "new_embodiment", lambda task, **kwargs: WalkToEnv(1.0))
    config = RolloutConfig("busywalk/walk", n_episodes=2, n_envs=1, seed=0, max_episode_steps=8, n_action_steps=2)
    policy = HoldsHogs()
    limits = ServerLimits(max_queued_bytes=len(large_hog_request()) + 10)
    with running_server(policy, inline_below_ms=0, limits=limits) as server:
        client = BusyAtSecondReset(server.port, policy, release_after_s)
        try:
            return run_rollout(client, config, progress=False), client.resets
        finally:
            policy.release.set()  # before the server stops: it would wait for the held call
            client.close()


def test_a_rollout_asks_a_policy_reset_again_while_the_server_is_busy(caplog):
    with caplog.at_level(logging.WARNING):
        result, resets = rollout_busy_at_second_reset(release_after_s=1.0)
    errors = [outcome.error for outcome in result.outcomes]
    assert errors == [None, None], f"expected both episodes to run once the server had room, got {errors!r}"
    assert resets > 2  # the refused second reset was asked again
    retries = [r.getMessage() for r in caplog.records if "asking again" in r.getMessage()]
    assert retries and all("reset" in message and "server busy" in message for message in retries), retries


def test_a_rollout_errors_the_episode_when_its_reset_stays_busy_past_the_bound(monkeypatch):
    monkeypatch.setattr(rollout_runner, "BUSY_RETRY_TOTAL_S", 0.3)
    result, _ = rollout_busy_at_second_reset(release_after_s=5.0)
    errors = [outcome.error for outcome in result.outcomes]
    assert errors[0] is None and errors[1] is not None and "ServerBusyError" in errors[1], \
        f"expected the second episode errored with the busy refusal of its reset, got {errors!r}"


class AlwaysBusyReset(ConstantPolicy):
    """ConstantPolicy whose every reset is refused busy, as a server that stays at its queue's cap; counts the asks."""

    def __init__(self) -> None:
        super().__init__()
        self.resets = 0

    def reset(self, options=None):
        self.resets += 1
        raise server_error("server busy: 9 requests are waiting for the policy; this server queues at most 9 in all "
                           "(ServerLimits.max_queued_requests); try again", "reset")


class RecordedWaits:
    """Stands in for server_busy's time module: records the busy waits instead of sleeping them."""

    def __init__(self) -> None:
        self.waits = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


def test_a_batched_reset_busy_past_the_bound_errors_its_rows_without_asking_each_row_again(monkeypatch):
    """Each row's reset was asked again with its own round of busy waits: n_envs + 1 rounds (about 230 s with
    --n-envs 8) at one reset of a server that stays busy, where the docs promise one bound."""
    from gr00t_eval import server_busy

    monkeypatch.setattr(server_busy, "time", RecordedWaits())
    monkeypatch.setattr(rollout_runner, "BUSY_RETRY_FIRST_S", 0.001)
    monkeypatch.setattr(rollout_runner, "BUSY_RETRY_TOTAL_S", 0.01)
    one_round = AlwaysBusyReset()
    with pytest.raises(ServerBusyError):
        server_busy.asked_while_busy(one_round.reset, 0.001, 0.01, "a policy reset")
    policy = AlwaysBusyReset()
    config = RolloutConfig("walkto/fast", n_episodes=4, n_envs=4, seed=0, max_episode_steps=6, n_action_steps=2)
    result = run_rollout(policy, config, progress=False)
    assert policy.resets == one_round.resets, \
        f"expected one round of busy asks ({one_round.resets}) for the reset of 4 rows, got {policy.resets}"
    assert all(outcome.error is not None and "ServerBusyError" in outcome.error for outcome in result.outcomes), \
        [outcome.error for outcome in result.outcomes]
