"""Cheap get_action calls run on the socket thread (worker.InlineGate): only after a streak of fast calls, only
while the worker is idle, never for other endpoints, back to the worker after one slow call, and with every check
(finite actions, errors, batching) as on the worker."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest
from serving import running_server
from serving_ports import free_port

from gr00t_client import BasePolicy, ClientClosedError, PolicyClient, PolicyServerError, ServerStoppingError
from gr00t_server.server import PolicyServer
from gr00t_server.serving.limits import ServerLimits
from gr00t_server.serving.worker import INLINE_STREAK, InlineGate

WORKER = "gr00t-policy-worker"
SOCKET = "policy-server"  # the thread tests/serving.running_server runs PolicyServer.run() on
LIMIT_MS = 50.0  # far above a fast call here (~0.05 ms), so a busy CI machine does not break a streak by chance
SLOW_S = 0.25


class ThreadNotingPolicy(BasePolicy):
    """Answers at once (or after `delays[i]` seconds for call i) and notes which thread ran each call."""

    supports_batching = True

    def __init__(self, delays=None):
        super().__init__(strict=False)
        self.delays = dict(delays or {})
        self.threads = []
        self.reset_threads = []
        self.nan_on = set()

    def _get_action(self, observation, options=None):
        call = len(self.threads)
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delays.get(call, 0.0))
        rows = np.asarray(observation["state"]["x"]).reshape(-1, 1)
        action = np.repeat(rows[:, None, :], 4, axis=1).astype(np.float32)  # each row's state, repeated
        if call in self.nan_on:
            action[:] = np.nan
        return {"x": action}, {}

    def reset(self, options=None):
        self.reset_threads.append(threading.current_thread().name)
        return {}


def observation(value: float, rows: int = 1):
    return {"state": {"x": np.full((rows, 1, 1), value, np.float32)}}


def test_after_a_streak_of_fast_calls_the_socket_thread_runs_get_action_and_counts_it():
    policy = ThreadNotingPolicy()
    with running_server(policy, inline_below_ms=LIMIT_MS) as server, PolicyClient(port=server.port, timeout_ms=10000) as client:
        for i in range(INLINE_STREAK + 5):
            action, _ = client.get_action(observation(float(i)))
            np.testing.assert_array_equal(action["x"], np.full((1, 4, 1), float(i), np.float32))
        client.reset()  # never inline: only get_action is
        stats = client.get_server_info()["stats"]
    assert policy.threads[:INLINE_STREAK] == [WORKER] * INLINE_STREAK  # nothing is known about the policy yet
    assert policy.threads[INLINE_STREAK:] == [SOCKET] * 5
    assert policy.reset_threads == [WORKER]
    assert stats["inline_jobs"] == 5
    assert stats["policy_calls"] == INLINE_STREAK + 5


def test_zero_turns_it_off():
    policy = ThreadNotingPolicy()
    with running_server(policy, inline_below_ms=0) as server, PolicyClient(port=server.port, timeout_ms=10000) as client:
        for i in range(INLINE_STREAK + 5):
            client.get_action(observation(1.0))
        assert client.get_server_info()["stats"]["inline_jobs"] == 0
    assert set(policy.threads) == {WORKER}


def test_a_policy_slower_than_the_limit_always_runs_on_the_worker():
    policy = ThreadNotingPolicy(delays={i: 1.5 * LIMIT_MS / 1000 for i in range(100)})
    with running_server(policy, inline_below_ms=LIMIT_MS) as server, PolicyClient(port=server.port, timeout_ms=10000) as client:
        for _ in range(INLINE_STREAK + 3):
            client.get_action(observation(1.0))
    assert set(policy.threads) == {WORKER}


def test_one_slow_call_sends_the_next_ones_back_to_the_worker_until_a_new_streak():
    slow = INLINE_STREAK + 2  # the third call after the gate opened is slow
    policy = ThreadNotingPolicy(delays={slow: SLOW_S})
    calls = slow + 1 + INLINE_STREAK + 2
    with running_server(policy, inline_below_ms=LIMIT_MS) as server, PolicyClient(port=server.port, timeout_ms=10000) as client:
        for i in range(calls):
            client.get_action(observation(float(i)))
    assert policy.threads[slow] == SOCKET  # it was not known to be slow: it ran inline, once
    assert policy.threads[slow + 1 : slow + 1 + INLINE_STREAK] == [WORKER] * INLINE_STREAK
    assert policy.threads[slow + 1 + INLINE_STREAK :] == [SOCKET] * 2


def test_a_ping_during_a_slow_call_is_answered_once_the_streak_is_broken():
    """The gate's promise: a slow call holds up the socket thread at most once; after it, slow calls are on the
    worker and a ping arriving during one is answered at once."""
    policy = ThreadNotingPolicy(delays={INLINE_STREAK: SLOW_S, INLINE_STREAK + 1: 1.0})
    with running_server(policy, inline_below_ms=LIMIT_MS) as server, PolicyClient(port=server.port, timeout_ms=10000) as client:
        for i in range(INLINE_STREAK + 1):
            client.get_action(observation(1.0))
        background = threading.Thread(target=client.get_action, args=(observation(2.0),), daemon=True)
        background.start()
        with PolicyClient(port=server.port, timeout_ms=5000) as pinger:
            time.sleep(0.2)  # the 1 s call is running
            started = time.monotonic()
            assert pinger.ping()
            ping_s = time.monotonic() - started
        background.join(5)
    assert policy.threads[INLINE_STREAK] == SOCKET and policy.threads[INLINE_STREAK + 1] == WORKER
    assert ping_s < 0.5


class SlowRefusingPolicy(ThreadNotingPolicy):
    """Takes SLOW_S per call, but refuses an observation without state 'x' at once (a strict model's own check)."""

    def _get_action(self, observation, options=None):
        if "x" not in observation.get("state", {}):
            raise ValueError("state key 'x' is missing")
        self.delays[len(self.threads)] = SLOW_S
        return super()._get_action(observation, options)


def test_fast_refusals_do_not_open_the_gate_for_a_slow_policy():
    """A streak of requests the policy refused at once counted as fast calls: the slow policy's next call ran on the
    socket thread and a ping waited for it (401 ms behind a 0.5 s call; audit12 style note)."""
    policy = SlowRefusingPolicy()
    with running_server(policy, inline_below_ms=LIMIT_MS) as server, PolicyClient(port=server.port, timeout_ms=10000) as client:
        for _ in range(2 * INLINE_STREAK):
            with pytest.raises(PolicyServerError, match="state key 'x' is missing"):
                client.get_action({"state": {"y": np.zeros((1, 1, 1), np.float32)}})
        client.get_action(observation(1.0))
        assert server.stats.inline_jobs == 0
    assert policy.threads == [WORKER]


class FailingPolicy(ThreadNotingPolicy):
    """Fails its first call after the streak: with a NaN action, or by raising `failure`."""

    def __init__(self, failure):
        super().__init__()
        self.failure = failure
        if failure == "nan":
            self.nan_on.add(INLINE_STREAK + 1)

    def _get_action(self, observation, options=None):
        if len(self.threads) == INLINE_STREAK + 1 and self.failure != "nan":
            self.threads.append(threading.current_thread().name)
            raise self.failure
        return super()._get_action(observation, options)


@pytest.mark.parametrize(
    "failure, message",
    [
        ("nan", r"non-finite values \(NaN or inf\) in action key 'x'"),  # never sent to the robot, inline or not
        (RuntimeError("boom in the policy"), "internal error in get_action: RuntimeError"),
        (SystemExit(3), "internal error in get_action: SystemExit"),  # the worker survives it; so does the socket thread
    ],
    ids=["nan-action", "RuntimeError", "SystemExit"],
)
def test_a_failed_inline_call_is_answered_and_the_next_one_served(failure, message):
    policy = FailingPolicy(failure)
    with running_server(policy, inline_below_ms=LIMIT_MS) as server, PolicyClient(port=server.port, timeout_ms=10000) as client:
        for _ in range(INLINE_STREAK + 1):
            client.get_action(observation(1.0))
        with pytest.raises(PolicyServerError, match=message):
            client.get_action(observation(1.0))
        action, _ = client.get_action(observation(5.0))
        assert client.ping()
    assert policy.threads[INLINE_STREAK + 1] == SOCKET
    np.testing.assert_array_equal(action["x"], np.full((1, 4, 1), 5.0, np.float32))


def test_batched_rounds_run_inline_and_every_client_gets_its_own_rows():
    policy = ThreadNotingPolicy()
    clients = 4
    rounds = INLINE_STREAK + 8
    results = {c: [] for c in range(clients)}
    with running_server(policy, max_batch_size=clients, batch_timeout_ms=20, inline_below_ms=LIMIT_MS) as server:
        barrier = threading.Barrier(clients)

        def run(c):
            with PolicyClient(port=server.port, timeout_ms=10000) as client:
                client.get_server_info()
                for r in range(rounds):
                    barrier.wait(10)
                    action, _ = client.get_action(observation(c * 1000 + r))
                    results[c].append(float(action["x"][0, 0, 0]))

        threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        stats = server.stats.snapshot()
    for c in range(clients):
        assert results[c] == [float(c * 1000 + r) for r in range(rounds)]
    assert SOCKET in policy.threads and stats["inline_jobs"] > 0
    assert stats["mean_batch_rows"] > 1  # gathering still batches


def test_gate_counts_a_streak_and_refuses_a_negative_limit():
    gate = InlineGate(1.0, streak=3)
    for _ in range(2):
        gate.observe(0.0001)
    assert not gate.open
    gate.observe(0.0001)
    assert gate.open
    gate.observe(0.002)
    assert not gate.open
    for _ in range(5):  # a job that served no action (refused, expired): fast, it leaves the streak as it was
        gate.observe(0.0001, served=False)
    assert not gate.open
    for _ in range(3):
        gate.observe(0.0001)
    gate.observe(0.002, served=False)  # slow, it still ends it
    assert not gate.open
    assert not InlineGate(0.0, streak=1).open
    with pytest.raises(ValueError, match="inline_below_ms must be a finite number of milliseconds from 0"):
        PolicyServer(ThreadNotingPolicy(), port=0, inline_below_ms=-1)
    with pytest.raises(ValueError, match="inline_below_ms must be >= 0"):
        InlineGate(float("nan"))


SERVER_SCRIPT = textwrap.dedent(
    """
    import faulthandler, signal, sys, threading, time
    import numpy as np
    from gr00t_client import BasePolicy
    from gr00t_server import PolicyServer

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test dumps the stacks of a server that hangs

    class FastThenHanging(BasePolicy):
        calls = 0
        def _get_action(self, observation, options=None):
            FastThenHanging.calls += 1
            if FastThenHanging.calls > int(sys.argv[2]):
                print("HANG", threading.current_thread().name, flush=True)
                if sys.argv[4] == "stop":  # another thread of the program calls stop(), as an embedding app would
                    threading.Timer(0.1, SERVER.stop).start()
                time.sleep(1000)
            return {"x": np.zeros((1, 1, 1), np.float32)}, {}
        def reset(self, options=None):
            return {}

    SERVER = PolicyServer(FastThenHanging(strict=False), port=int(sys.argv[1]), inline_below_ms=float(sys.argv[3]),
                          shutdown_timeout_s=1.0)
    SERVER.run()
    print("RUN RETURNED", flush=True)
    """
)


def _ignoring(signals, blocked=()):
    """A preexec_fn that starts the child with `signals` ignored, as a shell starts `cmd &` in a script (SIGINT), and
    `blocked` blocked (a mask is inherited through fork and exec: a launcher's thread that blocked them)."""
    def ignore():
        for signum in signals:
            signal.signal(signum, signal.SIG_IGN)
        if blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    return ignore


def _serve_in_a_process(fast_calls: int, inline_below_ms: float = LIMIT_MS, stop_from_a_thread: bool = False,
                        ignored=(), blocked=()):
    """`PolicyServer.run()` on a process's main thread, as `gr00t-server serve` runs it, with a policy that answers
    at once `fast_calls` times and then hangs (having had a thread call stop(), with `stop_from_a_thread`), in a
    process started with the signals `ignored` ignored and `blocked` blocked; (process, port) once it is ready."""
    port = free_port()
    errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server never blocks on it
    process = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(port), str(fast_calls), str(inline_below_ms),
                                "stop" if stop_from_a_thread else "-"],
                               stdout=subprocess.PIPE, stderr=errors, text=True, preexec_fn=_ignoring(ignored, blocked))
    process.errors = errors
    assert "ready" in process.stdout.readline()
    return process, port


def _wait_or_dump(process: subprocess.Popen, timeout_s: float) -> None:
    """Wait for the server to exit; should it hang, fail with the stacks of its threads and what it printed."""
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        process.kill()
        out, _ = process.communicate()
        process.errors.seek(0)
        err = process.errors.read()
        pytest.fail(f"the server did not exit within {timeout_s:g} s of the stop\n--- stdout:\n{out}\n--- stderr "
                    f"(thread stacks last):\n{err}")


@pytest.mark.parametrize("where, how, ignored, blocked", [
    ("inline", "SIGTERM", (), ()), ("worker", "SIGTERM", (), ()), ("inline", "stop()", (), ()),
    ("inline", "SIGTERM", (signal.SIGINT,), ()), ("inline", "stop()", (signal.SIGINT,), ()),
    ("inline", "SIGTERM", (), (signal.SIGINT,)),
], ids=["inline", "worker", "inline-stop-from-a-thread", "inline-sigint-ignored", "inline-stop-sigint-ignored",
        "inline-sigint-blocked"])
def test_sigterm_during_a_hung_call_exits_after_the_shutdown_timeout_and_answers_the_request(where, how, ignored,
                                                                                             blocked):
    """A stop waits shutdown_timeout_s for the running call, then the server exits, and the client of the abandoned
    call is answered that it did not finish, not left to time out or to see the connection drop; a call on the
    socket thread (inline) and one on the worker alike, and a stop() from another thread as a stop signal (it held
    run() for the whole of an inline call). Also in a process that ignores SIGINT (a script's `cmd &`): the inline
    call was interrupted with a SIGINT the kernel discarded, and run() waited for the call to return, for ever; and
    in one started with SIGINT blocked, where that SIGINT stayed pending for ever."""
    fast_calls = INLINE_STREAK + 2
    process, port = _serve_in_a_process(fast_calls, inline_below_ms=LIMIT_MS if where == "inline" else 0,
                                        stop_from_a_thread=how == "stop()", ignored=ignored, blocked=blocked)
    outcome = {}
    try:
        with PolicyClient(port=port, timeout_ms=20000) as client:
            for _ in range(fast_calls):
                client.get_action({})
            inline_jobs = client.get_server_info()["stats"]["inline_jobs"]
            assert inline_jobs >= 2 if where == "inline" else inline_jobs == 0

            def hung_call():
                try:
                    client.get_action({})
                except Exception as exc:  # noqa: BLE001 - the test looks at what came back
                    outcome["error"] = exc

            caller = threading.Thread(target=hung_call, daemon=True)
            caller.start()
            hang = process.stdout.readline().split()
            assert hang[0] == "HANG"
            stopped = time.monotonic()
            if how == "SIGTERM":
                process.send_signal(signal.SIGTERM)
            _wait_or_dump(process, 15)
            exit_s = time.monotonic() - stopped
            caller.join(10)
        rest = process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0 and "RUN RETURNED" in rest
    assert 0.9 < exit_s < 5.0
    assert isinstance(outcome.get("error"), PolicyServerError), outcome
    assert "server is shutting down; 'get_action' did not finish within 1 s" in str(outcome["error"])
    # its own class, a ConnectionError too, so an evaluation stops instead of scoring the request's episode
    assert isinstance(outcome["error"], ServerStoppingError) and isinstance(outcome["error"], ConnectionError)


def test_a_hung_inline_call_in_a_process_ignoring_every_stop_signal_is_said_to_be_uninterruptible():
    """With SIGINT, SIGTERM and SIGHUP all ignored no signal can reach the server's handler: the log said "shutting
    down without it" while run() went on waiting for the call; it says the call cannot be interrupted, and what to do."""
    fast_calls = INLINE_STREAK + 2
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    process, port = _serve_in_a_process(fast_calls, stop_from_a_thread=True, ignored=stop_signals)
    try:
        with PolicyClient(port=port, timeout_ms=20000) as client:
            for _ in range(fast_calls):
                client.get_action({})

            def hung_call():
                try:
                    client.get_action({})
                except ClientClosedError:  # the test closes the client under it
                    pass

            threading.Thread(target=hung_call, daemon=True).start()
            assert process.stdout.readline().split()[0] == "HANG"
            log = _stderr_once_it_holds(process, "cannot be interrupted")
    finally:
        process.kill()
        process.wait()
    assert "shutting down without it" not in log
    assert "run() returns when the call does" in log and "close() from another thread frees the port" in log


def _stderr_once_it_holds(process: subprocess.Popen, text: str, wait_s: float = 30.0) -> str:
    """What the server process wrote to stderr, once that holds `text` (or `wait_s` passed)."""
    deadline = time.monotonic() + wait_s
    while True:
        process.errors.seek(0)
        written = process.errors.read()
        if text in written or time.monotonic() > deadline:
            return written
        time.sleep(0.1)


def test_threads_the_server_starts_leave_stop_signals_to_the_main_thread():
    """SIGINT and SIGTERM are blocked on the frame pool (and on the policy worker while it waits:
    test_policy_child_processes), so the kernel delivers them to the main thread: one delivered elsewhere would not
    wake a call running inline there, and the stop would go unseen. The policy's own call on the worker has the mask
    of the thread that ran the server, which does not block them (its helper processes must stop on SIGTERM)."""
    if not hasattr(signal, "pthread_sigmask"):
        pytest.skip("no per-thread signal masks on this platform")
    from gr00t_server.processing.image import _frame_pool

    masks = {}

    class MaskNotingPolicy(BasePolicy):
        def _get_action(self, observation, options=None):
            masks[threading.current_thread().name] = signal.pthread_sigmask(signal.SIG_BLOCK, [])
            return {"x": np.zeros((1, 1, 1), np.float32)}, {}

        def reset(self, options=None):
            return {}

    with running_server(MaskNotingPolicy(strict=False), inline_below_ms=0) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            client.get_action({})
    pool_mask = _frame_pool().submit(signal.pthread_sigmask, signal.SIG_BLOCK, []).result()
    assert not {signal.SIGINT, signal.SIGTERM} & masks[WORKER]
    assert {signal.SIGINT, signal.SIGTERM} <= pool_mask
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # this thread's mask is untouched


def _hammer(port: int, stop: threading.Event, served: list, sent=None) -> threading.Thread:
    """A client sending get_action back to back until `stop` or an error; counts what it was served."""

    def run():
        with PolicyClient(port=port, timeout_ms=3000) as client:
            while not stop.is_set():
                try:
                    client.get_action({} if sent is None else sent)
                except Exception:  # noqa: BLE001 - the server is going away
                    return
                served.append(1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_cheap_calls_run_inline_stops_the_server_at_once(how):
    process, port = _serve_in_a_process(fast_calls=10**9)  # never hangs
    stop, served = threading.Event(), []
    try:
        hammer = _hammer(port, stop, served)
        deadline = time.monotonic() + 10
        while len(served) < 200 and time.monotonic() < deadline:  # well past the streak: calls run inline
            time.sleep(0.01)
        assert len(served) >= 200
        stopped = time.monotonic()
        process.send_signal(how)
        _wait_or_dump(process, 10)
        exit_s = time.monotonic() - stopped
        stop.set()
        hammer.join(10)
        rest = process.stdout.read()
    finally:
        stop.set()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0 and "RUN RETURNED" in rest and exit_s < 2.0


def test_close_from_another_thread_while_calls_run_inline_ends_run_and_frees_the_port():
    server = PolicyServer(ThreadNotingPolicy(), host="127.0.0.1", port=0, inline_below_ms=LIMIT_MS).start()
    port = server.port
    runner = threading.Thread(target=server.run, name=SOCKET, daemon=True)
    runner.start()
    stop, served = threading.Event(), []
    hammer = _hammer(port, stop, served, observation(1.0))
    deadline = time.monotonic() + 10
    while len(served) < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    closed = time.monotonic()
    server.close()
    runner.join(5)
    close_s = time.monotonic() - closed
    stop.set()
    hammer.join(10)
    assert not runner.is_alive() and close_s < 2.0 and SOCKET in server.policy.threads
    PolicyServer(ThreadNotingPolicy(), host="127.0.0.1", port=port).start().close()  # the port is free again


def test_close_frees_the_port_when_a_call_on_the_serving_thread_never_returns():
    """run() on a thread of its own (as an app embeds it) cannot be interrupted inside a policy call running there:
    close() waited 30 s and returned with the port still bound for good. Now, once shutdown_timeout_s has passed,
    close() closes the socket itself; run() returns when the call does."""
    release = threading.Event()
    hang_at = INLINE_STREAK + 1

    class HangingPolicy(ThreadNotingPolicy):
        def _get_action(self, observation, options=None):
            if len(self.threads) == hang_at:
                self.threads.append(threading.current_thread().name)
                release.wait()  # blocked in C, as a stuck driver or lock would be: nothing can interrupt it
                return {"x": np.zeros((1, 4, 1), np.float32)}, {}
            return super()._get_action(observation, options)

    policy = HangingPolicy()
    server = PolicyServer(policy, host="127.0.0.1", port=0, inline_below_ms=LIMIT_MS, shutdown_timeout_s=0.5).start()
    port = server.port
    runner = threading.Thread(target=server.run, name=SOCKET, daemon=True)
    runner.start()
    outcome = {}
    try:
        with PolicyClient(port=port, timeout_ms=10000) as client:
            for i in range(hang_at):
                client.get_action(observation(float(i)))
        with PolicyClient(port=port, timeout_ms=4000) as hung:
            caller = threading.Thread(target=lambda: outcome.setdefault("error", _error_of(hung.get_action, observation(9.0))),
                                      daemon=True)
            caller.start()
            deadline = time.monotonic() + 10
            while len(policy.threads) <= hang_at and time.monotonic() < deadline:
                time.sleep(0.01)
            assert policy.threads[hang_at] == SOCKET  # the stuck call runs on run()'s own thread
            closed = time.monotonic()
            server.close()
            close_s = time.monotonic() - closed
            PolicyServer(ThreadNotingPolicy(), host="127.0.0.1", port=port).start().close()  # the port is free
            assert runner.is_alive()  # still inside the call
            caller.join(10)
    finally:
        release.set()
        runner.join(10)
    assert 0.5 <= close_s < 3.0, close_s
    assert not runner.is_alive()  # it ended once the call returned, without touching the closed socket
    assert isinstance(outcome["error"], Exception)  # its socket went with the call: no reply, a timeout


def _error_of(call, *args):
    try:
        call(*args)
    except Exception as exc:  # noqa: BLE001 - the test looks at what came back
        return exc
    return None


def test_a_request_received_in_the_burst_after_a_stop_is_answered_not_run():
    """stop() from another thread while the socket thread was still working through a burst of received messages: a
    get_action later in that burst ran anyway, inline, and held run() for its whole call (20 s against a
    shutdown_timeout_s of 1). The rest of the burst is now answered "shutting down" and never reaches the policy."""
    stopping = threading.Event()

    class StopsWhileCountingTokens(ThreadNotingPolicy):
        def count_language_tokens(self, text, where=None):  # runs on the socket thread, checking a request's language
            if stopping.is_set():
                stopper = threading.Thread(target=server.stop)  # an app's thread calls stop()
                stopper.start()
                stopper.join()
                time.sleep(0.3)  # the other client's get_action arrives meanwhile: it is in this burst
            return 1

    policy = StopsWhileCountingTokens(delays={INLINE_STREAK + 2: 20.0})
    server = PolicyServer(policy, host="127.0.0.1", port=0, inline_below_ms=LIMIT_MS, shutdown_timeout_s=1.0,
                          limits=ServerLimits(max_language_tokens=4)).start()
    runner = threading.Thread(target=server.run, name=SOCKET, daemon=True)
    runner.start()
    outcome = {}
    with PolicyClient(port=server.port, timeout_ms=10000) as first, PolicyClient(port=server.port, timeout_ms=10000) as second:
        for i in range(INLINE_STREAK + 2):
            first.get_action(observation(float(i)))
        second.get_server_info()  # the session is known before the burst
        stopping.set()
        instructed = {**observation(0.0), "language": {"task": [["pick up the cube"]]}}  # over 4 characters: counted
        asker = threading.Thread(target=lambda: outcome.setdefault("first", _error_of(first.get_action, instructed)),
                                 daemon=True)
        asker.start()
        time.sleep(0.1)
        started = time.monotonic()
        error = _error_of(second.get_action, observation(99.0))
        asker.join(10)
    runner.join(10)
    stopped_s = time.monotonic() - started
    server.close()
    assert isinstance(error, ServerStoppingError) and "'get_action' was not run" in str(error), error
    assert len(policy.threads) == INLINE_STREAK + 2  # the get_action after the stop never ran
    assert not runner.is_alive() and stopped_s < 5.0


def test_a_second_clients_wait_behind_a_cheap_call_shows_as_its_queue_wait():
    """Run on the socket thread, a call left the other client's request unread: a 42 ms round trip of which
    server_timing accounted 20.5 ms, queue_wait_ms 0.1."""
    call_s = 0.02  # under LIMIT_MS: the gate opens
    policy = ThreadNotingPolicy(delays={call: call_s for call in range(1000)})
    unexplained_ms = []
    with running_server(policy, inline_below_ms=LIMIT_MS) as server:
        clients = [PolicyClient(port=server.port, timeout_ms=10000, return_server_timing=True) for _ in range(2)]
        for _ in range(INLINE_STREAK + 2):  # alone, the first client's calls open the gate and run inline
            clients[0].get_action(observation(1.0))
        inline_alone = server.stats.snapshot()["inline_jobs"]

        def back_to_back(client):
            for _ in range(12):
                started = time.monotonic()
                timing = client.get_action(observation(1.0))[1]["server_timing"]
                round_trip_ms = (time.monotonic() - started) * 1000.0
                stages_ms = sum(timing[key] for key in ("queue_wait_ms", "decode_ms", "policy_ms", "encode_ms"))
                unexplained_ms.append(round_trip_ms - stages_ms)

        threads = [threading.Thread(target=back_to_back, args=(client,)) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for client in clients:
            client.close()
    assert inline_alone > 0
    assert sorted(unexplained_ms)[len(unexplained_ms) // 2] < call_s * 1000.0 / 2, unexplained_ms


def test_a_get_action_registered_in_place_of_the_built_in_one_always_runs_on_the_worker():
    """The gate looked only at the endpoint's name: after a streak a replaced get_action (a clamp, a logging wrapper
    holding a connection made on the worker) ran on the socket thread, though registered handlers run on the worker."""
    policy = ThreadNotingPolicy()
    handler_threads = []

    def logged_get_action(observation=None, options=None):
        handler_threads.append(threading.current_thread().name)
        return policy.get_action(observation, options)

    with running_server(policy, inline_below_ms=LIMIT_MS) as server, PolicyClient(port=server.port, timeout_ms=10000) as client:
        server.register_endpoint("get_action", logged_get_action)
        for i in range(2 * INLINE_STREAK + 5):
            action, _ = client.get_action(observation(float(i)))
            np.testing.assert_array_equal(action["x"], np.full((1, 4, 1), float(i), np.float32))
        stats = client.get_server_info()["stats"]
    assert handler_threads == [WORKER] * (2 * INLINE_STREAK + 5)
    assert stats["inline_jobs"] == 0
