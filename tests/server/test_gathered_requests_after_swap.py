"""get_action requests gathered for a merged call are merged only if batching still holds when their job runs: a
policy swapped in (`server.policy = ...`) or a get_action registered in place of the built-in one while they wait
serves each of them alone, as a request arriving then would be served. Real servers on loopback, real clients."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from eval.dataset_factory import make_dataset
from gr00t_client import PolicyClient
from gr00t_client.policy import BasePolicy
from gr00t_server.policies.replay import ReplayPolicy
from serving import running_server

pytest.importorskip("av")

ROBOTS = ("A", "B")


class HeldBatchingPolicy(BasePolicy):
    """A batching policy whose calls wait for `release` (a slow model call), answering 5.0 for every action value."""

    supports_batching = True

    def __init__(self) -> None:
        super().__init__(strict=False)
        self.entered = threading.Event()
        self.release = threading.Event()

    def get_modality_config(self):
        return {}

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        self.entered.set()
        assert self.release.wait(30), "the test never released the held call"
        rows = observation["state"]["x"].shape[0]
        return {"x": np.full((rows, 4, 1), 5.0, np.float32)}, {}


def observation():
    return {"state": {"x": np.zeros((1, 1, 1), np.float32)}}


def client(server, session_id):
    return PolicyClient("127.0.0.1", server.port, timeout_ms=20000, strict=False, session_id=session_id)


def ask(server, session_id, answers, calls=1):
    with client(server, session_id) as robot:
        answers[session_id] = [robot.get_action(observation()) for _ in range(calls)]


def wait_until(condition, what):
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition(), f"timed out waiting until {what}"


def gather_then(server, policy, change, calls=1):
    """Hold the worker in a call, let robots A and B be gathered for the next merged call, apply `change` to the
    server, release the held call; returns each robot's answers."""
    answers = {}
    threads = [threading.Thread(target=ask, args=(server, "warm", answers), daemon=True)]
    threads[0].start()
    assert policy.entered.wait(10), "the first call never started"
    threads += [threading.Thread(target=ask, args=(server, name, answers, calls), daemon=True) for name in ROBOTS]
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: len(server._loop.pending) == len(ROBOTS), "both robots' requests were gathered")
    change()
    policy.release.set()
    for thread in threads:
        thread.join(30)
    return answers


def test_requests_gathered_before_a_session_keeping_policy_is_swapped_in_are_each_served_from_their_own_session(
        tmp_path):
    """Were merged into one call of the swapped-in replay without a session: both served from its shared default
    session (per-row info lists), their own sessions never advanced (each robot replayed step 0 twice)."""
    dataset = make_dataset(tmp_path / "ds", lengths=(6, 9), cameras=())
    policy = HeldBatchingPolicy()
    with running_server(policy, max_batch_size=8, batch_timeout_ms=20, inline_below_ms=0) as server:
        def swap():
            server.policy = ReplayPolicy(dataset, execution_horizon=2, strict=False)

        answers = gather_then(server, policy, swap, calls=2)
    for name in ROBOTS:
        infos = [info for _, info in answers[name]]
        assert [(info["episode_index"], info["current_step"]) for info in infos] == [(0, 0), (0, 2)], (name, infos)


def test_requests_gathered_before_get_action_is_replaced_are_served_by_the_replacement(tmp_path):
    """Were merged into one call of the policy itself, skipping the clamp registered in place of get_action while
    they waited, which a request queued at the same moment ran."""
    policy = HeldBatchingPolicy()

    def clamped(observation=None, options=None):  # the operator's safety clamp: |action| <= 1
        action, info = policy.get_action(observation, options)
        return [{key: np.clip(value, -1.0, 1.0) for key, value in action.items()}, info]

    with running_server(policy, max_batch_size=8, batch_timeout_ms=20, inline_below_ms=0) as server:
        answers = gather_then(server, policy, lambda: server.register_endpoint("get_action", clamped))
    for name in ROBOTS:
        (action, _), = answers[name]
        assert action["x"].ravel().tolist() == [1.0] * 4, name
