"""A server frozen (SIGSTOP, `docker pause`, a stalled socket loop) does not charge the freeze to its sessions' idle
time (docs/protocol.md §7), while a session really idle longer than --session-idle-s is still dropped. A real
`gr00t-server serve` of a replay on loopback, stopped and continued with real signals."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from eval.dataset_factory import make_dataset
from gr00t_client import PolicyClient, PolicyServerError
from gr00t_server.serving.stall_clock import STALL_MARGIN_S, LoopStallClock
from serving import free_port, served

pytest.importorskip("av")

IDLE_S = 1.0
FREEZE_S = 3 * IDLE_S + STALL_MARGIN_S  # well past the idle time, even less the margin


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("frozen") / "ds", lengths=(20, 20), cameras=())


@pytest.fixture
def replay_server(dataset):
    port = free_port()
    with served("serve", "--dataset-path", str(dataset), "--port", str(port), "--execution-horizon", "4",
                "--session-idle-s", str(IDLE_S)) as proc:
        try:
            yield proc, port
        finally:
            os.kill(proc.pid, signal.SIGCONT)  # a failed test must not leave it stopped (terminate would wait)


def robot(port):
    return PolicyClient("127.0.0.1", port, timeout_ms=30000, strict=False, session_id="robot")


def step_of(info):
    return info["episode_index"], info["current_step"]


def test_a_request_sent_while_the_server_is_frozen_is_served_from_its_session_after_it_continues(replay_server):
    """The server stamped the request's arrival when it read it, after SIGCONT, and refused the session as idle for
    more than 1 s: its client had sent it at once, the server was the one stopped."""
    proc, port = replay_server
    with robot(port) as client:
        client.reset({"episode_index": 1})
        assert step_of(client.get_action({})[1]) == (1, 0)
        os.kill(proc.pid, signal.SIGSTOP)
        with ThreadPoolExecutor(1) as calls:
            call = calls.submit(client.get_action, {})  # sent at once: its client is not idle
            time.sleep(FREEZE_S)
            os.kill(proc.pid, signal.SIGCONT)
            assert step_of(call.result()[1]) == (1, 4)


def test_a_session_idle_longer_than_the_idle_time_while_the_server_runs_is_still_dropped(replay_server):
    _, port = replay_server
    with robot(port) as client:
        client.reset({"episode_index": 1})
        client.get_action({})
        time.sleep(2 * IDLE_S)  # of running time: no stall of the server here
        with pytest.raises(PolicyServerError, match=r"idle for more than 1 s \(--session-idle-s\)"):
            client.get_action({})


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_poll_that_returned_far_later_than_it_asked_is_left_out_of_the_clock():
    real = Clock()
    clock = LoopStallClock(real)
    clock.poll_started(asked_s=0.1)
    real.now += 5.1
    clock.poll_returned()
    assert clock() == pytest.approx(100.1)  # 5.1 s later, 5 s of them a stall


def test_a_poll_still_overrunning_is_left_out_at_once():
    """After a freeze the worker may judge sessions before the socket thread's poll has returned (R43: with robots
    keeping the worker busy, one whose request waited in the socket was dropped as idle)."""
    real = Clock()
    clock = LoopStallClock(real)
    clock.poll_started(asked_s=0.1)
    real.now += 5.1
    assert clock() == pytest.approx(100.1)  # 5.1 s later, 5 s of them a stall
    clock.poll_returned()
    assert clock() == pytest.approx(100.1)  # counted once


def test_a_poll_within_the_margin_of_its_wait_and_time_between_polls_leave_the_clock_alone():
    """Only the poll's own overrun is a stall: a slow call run on the socket thread between polls is time the
    sessions were idle (R43: 4 s of such calls kept a session idle for 6 s past a 2 s limit)."""
    real = Clock()
    clock = LoopStallClock(real)
    clock.poll_started(asked_s=0.1)
    real.now += 0.1 + STALL_MARGIN_S
    clock.poll_returned()
    real.now += 7.0  # a call on the socket thread
    clock.poll_started(asked_s=0.1)
    clock.poll_returned()
    assert clock() == pytest.approx(108.1)
