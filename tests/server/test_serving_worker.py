"""The socket loop never waits for the policy: built-in endpoints answer during a call, expired requests are
dropped before the policy, errors are bounded, internal ones hidden and logged, refusal logs rate-limited."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from reference_peer import EchoPolicy, raw_round_trip
from serving import running_server
from serving_ports import free_port

from gr00t_client import BasePolicy, ClientClosedError, PolicyClient, PolicyServerError, PolicyTimeoutError, codec

CALL_S = 1.5


class SlowPolicy(BasePolicy):
    """Sleeps `delay_s` per call and counts the calls it ran."""

    def __init__(self, delay_s: float = CALL_S):
        super().__init__(strict=False)
        self.delay_s = delay_s
        self.calls = 0
        self.started = threading.Event()

    def _get_action(self, observation, options=None):
        self.calls += 1
        self.started.set()
        time.sleep(self.delay_s)
        return {"x": np.zeros((1, 2, 1), np.float32)}, {}

    def reset(self, options=None):
        return {}


def call_in_background(port: int, timeout_ms: int = 10000) -> threading.Thread:
    def run():
        with PolicyClient(port=port, timeout_ms=timeout_ms) as client:
            try:
                client.get_action({})
            except (PolicyTimeoutError, PolicyServerError, ConnectionError):
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_ping_and_server_info_answer_within_milliseconds_while_a_policy_call_runs():
    policy = SlowPolicy()
    with running_server(policy) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            client.get_server_info()  # negotiate first, so the timed calls below are single round trips
            busy = call_in_background(server.port)
            assert policy.started.wait(5)
            started = time.monotonic()
            assert client.ping()
            ping_s = time.monotonic() - started
            info = client.get_server_info()
        busy.join(10)
    assert ping_s < 0.5  # well under the 1.5 s call it would wait out; not a latency figure (a busy CI box)
    assert info["policy_busy"] is True


def test_a_request_whose_client_gave_up_is_never_run():
    policy = SlowPolicy()
    with running_server(policy) as server:
        busy = call_in_background(server.port)
        assert policy.started.wait(5)
        with PolicyClient(port=server.port, timeout_ms=300) as impatient:
            with pytest.raises(PolicyTimeoutError):
                impatient.call_endpoint("get_action", {"observation": {}, "options": None})
        busy.join(10)
        time.sleep(0.2)
        assert server.stats.expired == 1
    assert policy.calls == 1


def test_kill_during_a_long_call_is_answered_at_once_and_the_server_stops_after_the_call():
    policy = SlowPolicy()
    with running_server(policy) as server:
        busy = call_in_background(server.port)
        assert policy.started.wait(5)
        started = time.monotonic()
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            client.kill_server()
        assert time.monotonic() - started < 0.5
        assert server._run_done.wait(CALL_S + 2)
        busy.join(5)


def test_an_internal_error_is_answered_with_its_type_only_and_logged_with_its_traceback(caplog):
    class BuggyPolicy(SlowPolicy):
        def _get_action(self, observation, options=None):
            return sorted([1, "a"]), {}  # TypeError: '<' not supported ...

    with running_server(BuggyPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with caplog.at_level(logging.ERROR), pytest.raises(PolicyServerError) as caught:
            client.get_action({})
    assert caught.value.server_message == "internal error in get_action: TypeError"
    assert any(record.exc_info and "not supported" in str(record.exc_info[1]) for record in caplog.records)


def test_an_error_reply_is_bounded_whatever_the_policy_says():
    class VerbosePolicy(SlowPolicy):
        def _get_action(self, observation, options=None):
            raise ValueError("x" * 100_000)

    with running_server(VerbosePolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError) as caught:
            client.get_action({})
    assert len(caught.value.server_message) <= 1000 and "more characters" in caught.value.server_message  # as documented


def test_an_error_reply_echoes_at_most_100_characters_of_the_endpoint_name():
    """The reply's `endpoint` field echoed the client's whole name, so an error grew with the request."""
    import zmq

    from gr00t_client import codec

    with running_server(SlowPolicy()) as server:
        context = zmq.Context()
        socket = context.socket(zmq.REQ)
        socket.connect(f"tcp://127.0.0.1:{server.port}")
        socket.send(codec.encode({"endpoint": "E" * 3000, "data": {}}))
        assert socket.poll(5000)
        reply = codec.decode(socket.recv())
        socket.close(linger=0)
        context.term()
    assert len(reply["endpoint"]) <= 100 and reply["endpoint"].startswith("EEEE") and "more characters" in reply["endpoint"]
    assert len(reply["error"]) <= 1000


def test_refusal_logs_are_rate_limited(caplog):
    # each server has its own limiter: a fresh window
    with running_server(EchoPolicy()) as server, caplog.at_level(logging.WARNING, logger="gr00t_server"):
        for _ in range(60):
            raw_round_trip(server.port, b"\xc1")  # never valid msgpack
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 20


def test_a_bad_timeout_field_is_refused_clearly():
    request = codec.encode({"endpoint": "ping", "timeout_ms": "soon"})
    with running_server(EchoPolicy()) as server:
        reply = codec.decode(raw_round_trip(server.port, request)[0])
    assert "'timeout_ms' must be a positive number of milliseconds" in reply["error"]


@pytest.mark.parametrize("timeout_ms", [np.float32(2000), np.int64(2000), np.uint16(2000)],
                         ids=lambda value: type(value).__name__)
def test_a_numpy_scalar_timeout_is_a_number_of_milliseconds(timeout_ms):
    """msgpack-numpy sends a numpy scalar as one: it was refused as "must be a positive number ..., got '2000.0'"."""
    request = codec.encode({"endpoint": "get_action", "data": {"observation": {}}, "timeout_ms": timeout_ms})
    with running_server(EchoPolicy()) as server:
        reply = codec.decode(raw_round_trip(server.port, request)[0])
    assert isinstance(reply, list), reply


def test_a_bool_timeout_is_refused_whichever_kind():
    request = codec.encode({"endpoint": "ping", "timeout_ms": np.bool_(True)})
    with running_server(EchoPolicy()) as server:
        reply = codec.decode(raw_round_trip(server.port, request)[0])
    assert "'timeout_ms' must be a positive number of milliseconds" in reply["error"]
    assert "got bool" in reply["error"] and "True" in reply["error"]  # numpy's bool: "bool_ True" or "bool np.True_"


@pytest.mark.parametrize("timeout_ms, shown", [("250", "str '250'"), (0, "int 0"), ([250], "list")],
                         ids=["str", "zero", "list"])
def test_a_refused_timeout_names_its_type_and_how_to_ask_for_no_deadline(timeout_ms, shown):
    """A JS peer's "250" was answered "got '250'", as if 250 were no positive number, and 0 as "got '0'", as if a str:
    the type, what was wrong, went unnamed, and so did the way to ask for no deadline."""
    request = codec.encode({"endpoint": "ping", "timeout_ms": timeout_ms})
    with running_server(EchoPolicy()) as server:
        reply = codec.decode(raw_round_trip(server.port, request)[0])
    assert reply["error"].endswith(f"'timeout_ms' must be a positive number of milliseconds (omit it, or send nil, for "
                                   f"no deadline), got {shown}"), reply["error"]


def test_client_close_from_another_thread_ends_an_in_flight_call_promptly():
    policy = SlowPolicy(delay_s=3.0)
    outcome = {}
    with running_server(policy) as server:
        client = PolicyClient(port=server.port, timeout_ms=10000)
        client.get_server_info()

        def call():
            try:
                client.get_action({})
            except ConnectionError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=call)
        thread.start()
        assert policy.started.wait(5)
        started = time.monotonic()
        client.close()
        closed_s = time.monotonic() - started
        thread.join(5)
    assert closed_s < 1.0  # the call had 1.5 s to go
    assert isinstance(outcome.get("error"), ClientClosedError) and "closed while waiting" in str(outcome["error"])


@pytest.mark.slow
def test_sigterm_during_a_long_call_exits_within_a_second_after_the_call(tmp_path):
    script = textwrap.dedent(
        """
        import sys, time
        import numpy as np
        from gr00t_client import BasePolicy
        from gr00t_server import PolicyServer

        class Slow(BasePolicy):
            def _get_action(self, observation, options=None):
                print("CALL", flush=True)
                time.sleep(2.0)
                return {"x": np.zeros((1, 1, 1), np.float32)}, {}
            def reset(self, options=None):
                return {}

        PolicyServer(Slow(strict=False), port=int(sys.argv[1])).run()
        """
    )
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", script, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert "ready" in process.stdout.readline()
        call_in_background(port)
        assert process.stdout.readline().strip() == "CALL"
        call_started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        exited_after_call_s = time.monotonic() - call_started - 2.0
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0 and exited_after_call_s < 1.0


def test_a_job_abandoned_at_a_stop_is_not_answered_a_second_time_when_it_finishes_after_all():
    """shut_down answers the call it gave up on itself; should the call end later, its replies are dropped, not
    sent behind the refusal as a second answer to the same request."""
    from gr00t_server.serving.worker import PolicyWorker

    release = threading.Event()

    def execute(job):
        release.wait(10)
        return [(request, ["late reply"]) for request in job]

    worker = PolicyWorker(execute, notify=lambda: None)
    worker.start()
    assert worker.abandon_running() is None  # nothing runs yet
    job = ["request"]
    worker.submit(job)
    deadline = time.monotonic() + 5
    abandoned = None
    while abandoned is None and time.monotonic() < deadline:
        abandoned = worker.abandon_running()
        time.sleep(0.01)
    assert abandoned is job
    assert worker.abandon_running() is None  # given up once, answered once
    release.set()
    worker.finish()
    assert worker.join(5)
    assert not worker.outbox and not worker.busy
