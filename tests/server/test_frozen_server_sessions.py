"""A server frozen (SIGSTOP, `docker pause`, a stalled socket loop) does not charge the freeze to its sessions' idle
time (docs/protocol.md §7), while a session really idle longer than --session-idle-s is still dropped. A real
`gr00t-server serve` of a replay on loopback, stopped and continued with real signals."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from eval.dataset_factory import make_dataset
from gr00t_client import PolicyClient, PolicyServerError
from gr00t_server import PolicyServer
from gr00t_server.serving.stall_clock import STALL_MARGIN_S, WATCHDOG_NAME, StallClock
from reference_peer import EchoPolicy
from serving import free_port, running_server, served

pytest.importorskip("av")

IDLE_S = 1.0
FREEZE_S = 3 * IDLE_S + STALL_MARGIN_S  # well past the idle time, even less the margin
FLOODS = 3  # clients keeping the socket thread busy decoding (two left it in its poll often enough to pass)


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


def assert_served_from_its_session_after_a_freeze(proc, port):
    """A robot's get_action sent while the server is stopped for FREEZE_S (past the idle time) is served from its
    session once the server continues: the replay's next step of its episode."""
    with robot(port) as client:
        client.reset({"episode_index": 1})
        assert step_of(client.get_action({})[1]) == (1, 0)
        os.kill(proc.pid, signal.SIGSTOP)
        with ThreadPoolExecutor(1) as calls:
            call = calls.submit(client.get_action, {})  # sent at once: its client is not idle
            time.sleep(FREEZE_S)
            os.kill(proc.pid, signal.SIGCONT)
            assert step_of(call.result()[1]) == (1, 4)


def test_a_request_sent_while_the_server_is_frozen_is_served_from_its_session_after_it_continues(replay_server):
    """The server stamped the request's arrival when it read it, after SIGCONT, and refused the session as idle for
    more than 1 s: its client had sent it at once, the server was the one stopped."""
    assert_served_from_its_session_after_a_freeze(*replay_server)


@pytest.fixture
def flooded(replay_server):
    """Two clients sending requests slow to decode without pause: the socket thread is mostly out of its poll."""
    _, port = replay_server
    stop = threading.Event()
    answered = [threading.Event() for _ in range(FLOODS)]
    junk = {"state.junk": np.zeros((1, 1, 300_000), np.float32).tolist()}  # a list: slow to decode

    def flood(name, first_answer):
        with PolicyClient("127.0.0.1", port, timeout_ms=30000, strict=False, session_id=name) as client:
            while not stop.is_set():
                try:
                    client.get_action(junk)
                except PolicyServerError:  # refused while the server was stopped: the flood goes on
                    pass
                first_answer.set()

    floods = [threading.Thread(target=flood, args=(f"flood{i}", answered[i]), daemon=True) for i in range(FLOODS)]
    for thread in floods:
        thread.start()
    for first_answer in answered:  # both flooding before the robot starts
        assert first_answer.wait(30)
    try:
        yield replay_server
    finally:
        stop.set()
        for thread in floods:
            thread.join(30)


def test_a_request_sent_while_a_busy_server_is_frozen_is_served_from_its_session_after_it_continues(flooded):
    """Only a freeze inside the socket loop's poll was left out of sessions' idle time: under load that thread is
    mostly receiving and decoding, and the robot whose request waited out the freeze in the socket was dropped."""
    assert_served_from_its_session_after_a_freeze(*flooded)


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


def test_a_watchdog_tick_far_later_than_its_sleep_is_left_out_of_the_clock():
    real = Clock()
    clock = StallClock(real, period_s=0.25)
    clock.tick()
    real.now += 5.25
    clock.tick()
    assert clock() == pytest.approx(100.25)  # 5.25 s later, 5 s of them a stall


def test_a_tick_still_overrunning_is_left_out_at_once():
    """After a freeze the worker may judge sessions before the watchdog has woken (R43: with robots keeping the
    worker busy, one whose request waited in the socket was dropped as idle)."""
    real = Clock()
    clock = StallClock(real, period_s=0.25)
    clock.tick()
    real.now += 5.25
    assert clock() == pytest.approx(100.25)  # 5.25 s later, 5 s of them a stall
    clock.tick()
    assert clock() == pytest.approx(100.25)  # counted once


def test_ticks_within_the_margin_of_their_sleep_leave_the_clock_alone():
    """Only the watchdog's own overrun is a stall: it ticks on through a slow call on the socket thread or the
    worker, time the sessions were idle (R43: 4 s of such calls kept a session idle for 6 s past a 2 s limit)."""
    real = Clock()
    clock = StallClock(real, period_s=0.25)
    clock.tick()
    for _ in range(28):  # 7 s of a call on another thread, the watchdog waking on time
        real.now += 0.25
        clock.tick()
    real.now += 0.25 + STALL_MARGIN_S
    clock.tick()
    assert clock() == pytest.approx(108.25)


def test_no_stall_is_counted_while_the_clock_is_not_watching():
    """Between two run()s no watchdog runs: time then is the sessions' idle time, as it was."""
    real = Clock()
    clock = StallClock(real, period_s=0.25)
    real.now += 5.0
    assert clock() == pytest.approx(105.0)


def watchdogs():
    return [thread for thread in threading.enumerate() if thread.name == WATCHDOG_NAME]


def test_the_watchdog_runs_while_the_server_serves_and_ends_with_it():
    before = len(watchdogs())
    with running_server(EchoPolicy()) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        client.ping()  # run() has started
        assert len(watchdogs()) == before + 1
    assert len(watchdogs()) == before


def test_a_server_closed_without_serving_starts_no_watchdog():
    before = len(watchdogs())
    server = PolicyServer(EchoPolicy(), host="127.0.0.1", port=0)
    server.start()
    server.close()
    assert len(watchdogs()) == before


def test_the_clock_never_runs_back_when_an_overrun_passes_the_margin():
    """The overrun counts whole once past the margin: read just before and just after, the clock stepped back by the
    margin, and a session stamped before read as newer than one stamped after (the wrong one evicted first)."""
    real = Clock()
    clock = StallClock(real, period_s=0.25)
    clock.tick()
    readings = []
    for _ in range(30):  # a freeze that grows past the margin, read every 0.1 s (a thread that was not frozen)
        real.now += 0.1
        readings.append(clock())
    assert readings == sorted(readings)
    assert readings[-1] == pytest.approx(100.25 + STALL_MARGIN_S, abs=0.1)  # the rest of the 3 s left out
