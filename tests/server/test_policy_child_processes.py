"""The policy's own code on the worker (its calls, a registered endpoint's handler) runs with the signal mask of the
thread that ran the server: a helper process it starts (a simulator, a planner, a camera driver) inherits that mask,
so terminate(), Ctrl-C and `kill PID` end it as they end one the program starts itself. The worker blocks the stop
signals only while it waits for work, which leaves them to the main thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from serving import running_server

from gr00t_client import BasePolicy, PolicyClient
from gr00t_server.server import PolicyServer

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status") or not hasattr(signal, "pthread_sigmask"),
                                reason="needs per-thread signal masks and /proc (Linux)")

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
WORKER = "gr00t-policy-worker"
HELPER = [sys.executable, "-c", "import time; time.sleep(60)"]
TERMINATE_WAIT_S = 10.0  # a bound for a helper that ends; one that ignores SIGTERM never ends


def blocked_in(status_text: str) -> set:
    """The stop signals the SigBlk line of a /proc/.../status text has blocked."""
    line = next(line for line in status_text.splitlines() if line.startswith("SigBlk:"))
    mask = int(line.split()[1], 16)
    return {signum for signum in STOP_SIGNALS if mask & (1 << (signum - 1))}


def blocked_in_a_child() -> set:
    """The stop signals a child process started from the calling thread starts with blocked."""
    status = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True, check=True).stdout
    return blocked_in(status)


def terminate_a_helper() -> str:
    """Start a helper process, terminate() it and say how it ended: 'ended by SIGTERM' or 'ignored SIGTERM'."""
    helper = subprocess.Popen(HELPER)
    helper.terminate()
    try:
        helper.wait(timeout=TERMINATE_WAIT_S)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait()
        return "ignored SIGTERM"
    return "ended by SIGTERM" if helper.returncode == -signal.SIGTERM else f"ended with {helper.returncode}"


class HelperStartingPolicy(BasePolicy):
    """Starts a child process in reset() and get_action(), noting what it blocked and how terminate() ended it."""

    def __init__(self):
        super().__init__(strict=False)
        self.reset_child_blocked = None
        self.reset_masks = []
        self.helper_ending = None

    def _get_action(self, observation, options=None):
        self.helper_ending = terminate_a_helper()
        return {"x": np.zeros((1, 1, 1), np.float32)}, {}

    def reset(self, options=None):
        self.reset_masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        self.reset_child_blocked = blocked_in_a_child()
        return {}


def test_a_child_process_the_policy_starts_in_reset_has_no_stop_signal_blocked():
    policy = HelperStartingPolicy()
    with running_server(policy, inline_below_ms=0) as server:
        with PolicyClient(port=server.port, timeout_ms=20000) as client:
            client.reset({})
    assert policy.reset_child_blocked == set()


def test_a_helper_process_the_policy_starts_in_get_action_is_ended_by_terminate():
    policy = HelperStartingPolicy()
    with running_server(policy, inline_below_ms=0) as server:
        with PolicyClient(port=server.port, timeout_ms=30000) as client:
            client.get_action({})
    assert policy.helper_ending == "ended by SIGTERM"


def test_a_child_process_a_registered_endpoint_starts_has_no_stop_signal_blocked():
    server = PolicyServer(HelperStartingPolicy(), host="127.0.0.1", port=0, inline_below_ms=0).start()
    server.register_endpoint("run_tool", lambda: {"blocked": sorted(blocked_in_a_child())}, requires_input=False)
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    try:
        with PolicyClient(port=server.port, timeout_ms=20000) as client:
            reply = client.call_endpoint("run_tool", requires_input=False)
    finally:
        server.stop()
        serving.join(10)
    assert list(reply["blocked"]) == []


def test_the_policy_runs_with_the_mask_of_the_thread_that_ran_the_server():
    """A host thread that blocks SIGTERM itself before run() keeps it blocked in the policy; SIGINT it leaves free."""
    policy = HelperStartingPolicy()
    server = PolicyServer(policy, host="127.0.0.1", port=0, inline_below_ms=0).start()

    def run_blocking_sigterm() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
        server.run()

    serving = threading.Thread(target=run_blocking_sigterm, daemon=True)
    serving.start()
    try:
        with PolicyClient(port=server.port, timeout_ms=20000) as client:
            client.reset({})
    finally:
        server.stop()
        serving.join(10)
    assert signal.SIGTERM in policy.reset_masks[0]
    assert signal.SIGINT not in policy.reset_masks[0]
    assert policy.reset_child_blocked == {signal.SIGTERM}


def test_the_worker_blocks_stop_signals_while_it_waits_for_work():
    """Between calls the worker leaves SIGINT, SIGTERM and SIGHUP to the main thread (read from /proc, as the
    kernel sees the thread)."""
    policy = HelperStartingPolicy()
    with running_server(policy, inline_below_ms=0) as server:
        with PolicyClient(port=server.port, timeout_ms=20000) as client:
            client.reset({})  # the reply is sent after the call's mask was put back
            worker = next(thread for thread in threading.enumerate() if thread.name == WORKER)
            with open(f"/proc/self/task/{worker.native_id}/status") as status:
                waiting_blocked = blocked_in(status.read())
    assert waiting_blocked == STOP_SIGNALS
