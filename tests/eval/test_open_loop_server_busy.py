"""An open-loop trajectory whose reset or get_action a server refuses "server busy ... try again" (at its queue's
cap: the request was not run) asks it again after a short, growing wait, as a rollout does, and errors the trajectory
only when the server stays busy past the bound. A real ReplayPolicy server at its byte cap on loopback: as the call is
sent, another peer's large request runs on the server for `hold_s`, so the call cannot fit under the cap."""

from __future__ import annotations

import logging
import threading

import pytest
import zmq

from eval.dataset_factory import make_dataset
from gr00t_client import PolicyClient, codec
from gr00t_eval import open_loop
from gr00t_eval.open_loop import OpenLoopConfig, evaluate_open_loop
from gr00t_server.policies.replay import ReplayPolicy
from gr00t_server.server import ServerLimits
from serving import running_server

HOG = codec.encode({"endpoint": "hold", "data": {"pad": b"x" * 80000}})  # fits under the cap alone, not with a call


class BusyAtOneCall(PolicyClient):
    """The open-loop run's client; as it sends its first reset or second get_action (`busy_call`), another peer's large
    request runs on the server, held `hold_s`."""

    def __init__(self, port: int, busy_call: str, running: threading.Event) -> None:
        super().__init__("127.0.0.1", port, timeout_ms=10000)
        self.busy_call, self.running, self.calls = busy_call, running, {"reset": 0, "get_action": 0}
        self.hog_context = zmq.Context()
        self.hog = self.hog_context.socket(zmq.DEALER)
        self.hog.setsockopt(zmq.LINGER, 0)
        self.hog.connect(f"tcp://127.0.0.1:{port}")

    def _count(self, call: str) -> None:
        self.calls[call] += 1
        if call == self.busy_call and self.calls[call] == (1 if call == "reset" else 2):
            self.hog.send_multipart([b"", HOG])
            assert self.running.wait(10), "the other peer's request never ran"

    def reset(self, options=None):
        self._count("reset")
        return super().reset(options)

    def get_action(self, observation, options=None):
        self._count("get_action")
        return super().get_action(observation, options)

    def close(self) -> None:
        super().close()
        self.hog.close()
        self.hog_context.term()


def open_loop_busy_at(tmp_path, busy_call: str, hold_s: float):
    dataset = make_dataset(tmp_path / "dataset", lengths=(12,))
    running, release = threading.Event(), threading.Event()

    def hold(pad=None):
        running.set()
        release.wait(hold_s)
        return {}

    limits = ServerLimits(max_queued_bytes=len(HOG) + 50)
    with running_server(ReplayPolicy(dataset, execution_horizon=4), inline_below_ms=0, limits=limits) as server:
        server.register_endpoint("hold", hold)
        client = BusyAtOneCall(server.port, busy_call, running)
        try:
            config = OpenLoopConfig(str(dataset), traj_ids=[0], execution_horizon=4, output_dir=str(tmp_path / "out"),
                                    plot=False)
            return evaluate_open_loop(client, config, report=lambda _: None, progress=False), client.calls
        finally:
            release.set()  # before the server stops: it would wait for the held call
            client.close()


@pytest.mark.parametrize("busy_call", ["reset", "get_action"])
def test_an_open_loop_trajectory_asks_again_while_the_server_is_busy(tmp_path, caplog, busy_call):
    with caplog.at_level(logging.WARNING):
        result, calls = open_loop_busy_at(tmp_path, busy_call, hold_s=1.0)
    assert result.errored == {}, f"expected the trajectory scored once the server had room, got {result.errored!r}"
    assert list(result.trajectories) == [0]
    assert result.trajectories[0].errors.mse == pytest.approx(0.0)  # a replay of the recording itself
    assert calls[busy_call] > (1 if busy_call == "reset" else 3)  # the refused call was asked again
    retries = [r.getMessage() for r in caplog.records if "asking again" in r.getMessage()]
    assert retries and all(busy_call in message and "server busy" in message for message in retries), retries


def test_an_open_loop_trajectory_errors_when_the_server_stays_busy_past_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(open_loop, "BUSY_RETRY_TOTAL_S", 0.3)
    result, _ = open_loop_busy_at(tmp_path, "get_action", hold_s=5.0)
    assert list(result.errored) == [0] and "server busy" in result.errored[0], \
        f"expected trajectory 0 errored with the busy refusal, got {result.errored!r}"
    assert result.trajectories == {}
