"""PolicyClient: the reference API, timeouts that always fire, fresh sockets after a timeout, no hangs."""

import contextlib
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import zmq
from reference_peer import EchoPolicy, libero_like_observation, running_server

from gr00t_client import ObservationError, PolicyClient, PolicyServerError, PolicyTimeoutError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SilentServer:
    """A ROUTER that accepts requests and never answers: a wedged server."""

    def __enter__(self):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        return self

    def __exit__(self, *exc_info):
        self.socket.close(linger=0)
        self.context.term()


@pytest.fixture
def server():
    policy = EchoPolicy()
    with running_server(policy) as server:
        server.register_endpoint("slow", lambda: time.sleep(0.6) or {"which": "slow"}, requires_input=False)
        server.register_endpoint("fast", lambda: {"which": "fast"}, requires_input=False)
        server.register_endpoint("echo", lambda **kwargs: kwargs)
        server.register_endpoint("looks_like_error", lambda: {"error": "just a field", "value": 1}, requires_input=False)
        yield server


def test_constructor_signature_matches_the_reference():
    params = inspect.signature(PolicyClient).parameters
    defaults = {name: params[name].default for name in ("host", "port", "timeout_ms", "api_token", "strict")}
    assert defaults == {"host": "localhost", "port": 5555, "timeout_ms": 15000, "api_token": None, "strict": False}


def test_ping_get_action_reset_and_modality_config(server):
    with PolicyClient(port=server.port, timeout_ms=5000) as client:
        assert client.ping() is True
        action, info = client.get_action(libero_like_observation(), {"tag": "a"})
        assert action["x"].shape == (1, 16, 1) and info["tag"] == "a"
        assert client.reset() == {"resets": 1}
        assert client.get_modality_config()["video"].modality_keys == ["image", "wrist_image"]


def test_call_endpoint_sends_data_as_keyword_arguments(server):
    with PolicyClient(port=server.port, timeout_ms=5000) as client:
        assert client.call_endpoint("echo", {"a": 1, "b": np.arange(3)})["b"].tolist() == [0, 1, 2]
        assert client.call_endpoint("fast", requires_input=False) == {"which": "fast"}


def test_error_reply_raises_policy_server_error_with_the_server_message(server):
    with PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match="Unknown endpoint: nope") as excinfo:
            client.call_endpoint("nope")
    assert isinstance(excinfo.value, RuntimeError)
    assert excinfo.value.endpoint == "nope" and excinfo.value.server_message.startswith("Unknown endpoint: nope")


@pytest.mark.parametrize("wire", ["auto", "reference"])
def test_result_with_an_error_key_from_our_server_is_not_an_error(server, wire):
    with PolicyClient(port=server.port, timeout_ms=5000, wire=wire) as client:
        assert client.call_endpoint("looks_like_error", requires_input=False) == {"error": "just a field", "value": 1}


def test_timeout_raises_a_timeout_error_naming_host_port_and_timeout():
    with SilentServer() as silent, PolicyClient(host="127.0.0.1", port=silent.port, timeout_ms=300) as client:
        started = time.monotonic()
        with pytest.raises(PolicyTimeoutError) as excinfo:
            client.get_action(libero_like_observation())
        elapsed = time.monotonic() - started
    assert isinstance(excinfo.value, TimeoutError)
    assert f"127.0.0.1:{silent.port}" in str(excinfo.value) and "300 ms" in str(excinfo.value)
    assert 0.25 <= elapsed < 3.0


@pytest.mark.parametrize("call", ["reset", "get_modality_config", "kill_server", "call_endpoint"])
def test_every_call_honours_the_timeout(call):
    with SilentServer() as silent, PolicyClient(port=silent.port, timeout_ms=200) as client:
        started = time.monotonic()
        with pytest.raises(PolicyTimeoutError):
            getattr(client, call)(*(["x"] if call == "call_endpoint" else []))
        assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("timeout_ms", [1, 2, 3, 5])
def test_a_timeout_is_never_raised_before_timeout_ms_has_passed(timeout_ms):
    # Each wait was cut to whole milliseconds twice: a 2 ms budget gave up after 0.5 ms, 5 ms after 3.9 ms.
    with SilentServer() as silent, PolicyClient(host="127.0.0.1", port=silent.port, timeout_ms=timeout_ms) as client:
        for _ in range(5):  # the first on a fresh socket, the rest on one that connected while the test slept
            started = time.perf_counter()
            with pytest.raises(PolicyTimeoutError):
                client.call_endpoint("ping", requires_input=False)
            assert (time.perf_counter() - started) * 1000 >= timeout_ms
            time.sleep(0.02)


def test_ping_on_a_dead_server_returns_false_within_the_timeout():
    with PolicyClient(port=free_port(), timeout_ms=300) as client:
        started = time.monotonic()
        assert client.ping() is False
        assert client.ping() is False
        assert time.monotonic() - started < 3.0


def test_timed_out_socket_is_closed_and_the_next_call_uses_a_fresh_one():
    with SilentServer() as silent, PolicyClient(port=silent.port, timeout_ms=200) as client:
        with pytest.raises(PolicyTimeoutError):
            client.call_endpoint("fast", requires_input=False)
        timed_out = client._socket
        with pytest.raises(PolicyTimeoutError):
            client.call_endpoint("fast", requires_input=False)
        assert timed_out is not client._socket and timed_out.closed  # discarded with linger 0, replaced at once
        with pytest.raises(PolicyTimeoutError):  # a stuck REQ socket would raise EFSM instead
            client.call_endpoint("fast", requires_input=False)


def test_a_late_reply_is_never_returned_for_a_later_request(server):
    with PolicyClient(port=server.port, timeout_ms=5000) as client:
        client.ping()
        client.timeout_ms = 200
        with pytest.raises(PolicyTimeoutError):
            client.call_endpoint("slow", requires_input=False)
        client.timeout_ms = 5000
        assert client.call_endpoint("fast", requires_input=False) == {"which": "fast"}
        assert client.call_endpoint("fast", requires_input=False) == {"which": "fast"}


def test_a_call_interrupted_by_ctrl_c_leaves_the_client_usable_at_once(server):
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    with PolicyClient(port=server.port, timeout_ms=5000) as client:
        client.ping()
        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with pytest.raises(KeyboardInterrupt):
                client.call_endpoint("slow", requires_input=False)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        started = time.monotonic()
        assert client.call_endpoint("fast", requires_input=False) == {"which": "fast"}
        assert time.monotonic() - started < 2.0  # not a full timeout on a stuck socket


@contextlib.contextmanager
def ctrl_c_between_monitor_event_frames():
    """A real SIGINT, sent once a socket monitor (a PAIR socket) has read the first of a ZeroMQ event's two frames."""
    armed = [True]

    def in_recv_multipart(frame, event, arg):
        if (armed[0] and event == "line" and len(frame.f_locals.get("parts", ())) == 1
                and frame.f_locals["self"].type == zmq.PAIR):
            armed[0] = False
            os.kill(os.getpid(), signal.SIGINT)
        return in_recv_multipart

    def tracer(frame, event, arg):
        return in_recv_multipart if frame.f_code.co_name == "recv_multipart" else None

    previous_handler, previous_trace = signal.signal(signal.SIGINT, signal.default_int_handler), sys.gettrace()
    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(previous_trace)
        signal.signal(signal.SIGINT, previous_handler)


def test_ctrl_c_while_a_connection_event_is_half_read_leaves_the_next_call_working(server):
    # The event's second frame was left unread: every later call raised pyzmq's "Invalid event message format".
    with PolicyClient(port=server.port, timeout_ms=100) as client:
        client.ping()
        with pytest.raises(PolicyTimeoutError):
            client.call_endpoint("slow", requires_input=False)
        time.sleep(0.7)  # the fresh socket has connected: its monitor holds the connection's events, unread
        client.timeout_ms = 5000
        with pytest.raises(KeyboardInterrupt), ctrl_c_between_monitor_event_frames():
            client.call_endpoint("fast", requires_input=False)
        assert client.call_endpoint("fast", requires_input=False) == {"which": "fast"}


def test_dead_server_times_out_and_a_restarted_server_on_the_same_port_is_used():
    port = free_port()
    with PolicyClient(host="127.0.0.1", port=port, timeout_ms=400) as client:
        with running_server(EchoPolicy(), port=port):
            assert client.get_action(libero_like_observation())[1]["tag"] is None
        started = time.monotonic()
        with pytest.raises(PolicyTimeoutError):
            client.get_action(libero_like_observation())
        assert time.monotonic() - started < 3.0
        with running_server(EchoPolicy(), port=port):
            client.timeout_ms = 5000
            assert client.get_action(libero_like_observation(), {"tag": "back"})[1]["tag"] == "back"


def test_strict_client_validates_the_observation_before_sending(server):
    with PolicyClient(port=server.port, timeout_ms=5000, strict=True) as client:
        observation = libero_like_observation()
        observation["video"]["image"] = observation["video"]["image"].astype(np.float32)
        with pytest.raises(ObservationError, match="Video key 'image' must have dtype uint8"):
            client.get_action(observation)
        assert server.policy.calls == 0
        assert client.get_action(libero_like_observation())[0]["x"].dtype == np.float32


def test_calls_after_close_raise_and_close_is_idempotent(server):
    client = PolicyClient(port=server.port, timeout_ms=5000)
    with client:
        assert client.ping()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):  # a ClientClosedError, as a RuntimeError too
        client.call_endpoint("fast", requires_input=False)


def test_a_call_waiting_its_turn_when_another_thread_closes_the_client_is_refused_naming_the_server():
    """It raised a bare RuntimeError('PolicyClient is closed'), naming neither the server nor the call, and ping()
    raised it too instead of returning False."""
    from gr00t_client import ClientClosedError

    with running_server(EchoPolicy(delay_s=1.5)) as server:
        client = PolicyClient("127.0.0.1", server.port, timeout_ms=10000)
        assert client.ping()
        errors = {}

        def robot(name):
            try:
                client.get_action(libero_like_observation())
            except Exception as exc:  # noqa: BLE001 - what each robot thread was raised
                errors[name] = exc

        in_flight = threading.Thread(target=robot, args=("in flight",))
        in_flight.start()
        time.sleep(0.3)
        waiting = threading.Thread(target=robot, args=("waiting its turn",))
        waiting.start()
        time.sleep(0.2)
        client.close()  # a shutdown on the main thread
        in_flight.join(10)
        waiting.join(10)
        ended = errors["in flight"]
        assert isinstance(ended, ClientClosedError) and isinstance(ended, ConnectionError), errors
        assert f"PolicyClient for tcp://127.0.0.1:{server.port} was closed while waiting for 'get_action'" in str(ended)
        refused = errors["waiting its turn"]
        assert isinstance(refused, ClientClosedError) and isinstance(refused, ConnectionError), errors
        assert f"PolicyClient for tcp://127.0.0.1:{server.port} is closed, so 'get_action' was not sent" in str(refused)
        assert client.ping() is False
        assert server.policy.calls == 1  # the waiting call sent nothing


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="timeout_ms"):
        PolicyClient(timeout_ms=0)
    with pytest.raises(ValueError, match="wire"):
        PolicyClient(wire="json")


def test_each_client_has_its_own_session_id():
    with PolicyClient() as first, PolicyClient() as second, PolicyClient(session_id="robot-7") as named:
        assert first.session_id != second.session_id and named.session_id == "robot-7"


@pytest.mark.parametrize("session_id", [7, b"robot-7", "", ["robot-7"]])
def test_a_session_id_that_is_not_a_non_empty_str_is_refused_at_construction(session_id):
    # The server refuses such a session_id; a client that sent it would only fail at its first call.
    with pytest.raises(ValueError, match=r"session_id must be a non-empty str .*got "):
        PolicyClient(session_id=session_id)


def test_calls_from_several_threads_are_serialised(server):
    with PolicyClient(port=server.port, timeout_ms=10000) as client:
        results = []

        def worker(n):
            for i in range(20):
                results.append(client.get_action(libero_like_observation(), {"tag": (n, i)})[1]["tag"] == [n, i])

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert len(results) == 80 and all(results)


_HANG_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from gr00t_client import PolicyClient, PolicyTimeoutError
    client = PolicyClient(host="127.0.0.1", port=int(sys.argv[1]), timeout_ms=200)
    try:
        client.call_endpoint("get_action", {"observation": {}})
    except PolicyTimeoutError:
        pass
    assert client.ping() is False
    if sys.argv[2] == "close":
        started = time.monotonic()
        client.close()
        assert time.monotonic() - started < 1.0
    print("exiting")
    """
)


@pytest.mark.parametrize("ending", ["close", "no-close"])
def test_close_and_interpreter_exit_never_hang_after_a_timeout(ending):
    result = subprocess.run(
        [sys.executable, "-c", _HANG_SCRIPT, str(free_port()), ending],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "exiting" in result.stdout



def test_first_call_including_negotiation_stays_within_one_timeout(server):
    server.register_endpoint("get_server_info", lambda: time.sleep(1.5) or {"server": "gr00t-server", "capabilities": []}, requires_input=False)
    server.register_endpoint("slowish", lambda: time.sleep(1.5) or {"ok": 1}, requires_input=False)
    with PolicyClient(port=server.port, timeout_ms=2000) as client:
        started = time.monotonic()
        with pytest.raises(PolicyTimeoutError):
            client.call_endpoint("slowish", requires_input=False)  # 1.5 s + 1.5 s > 2 s
        # one budget (2 s and the connection's overhead); two take at least 1.5 s + 2 s. Scaled up from 0.4 s naps and
        # a 0.6 s budget, which left a loaded CI box 0.3 s of overhead.
        assert time.monotonic() - started < 3.25


def test_ping_with_a_timeout_of_its_own_keeps_the_clients_timeout_ms():
    with SilentServer() as silent, PolicyClient(host="127.0.0.1", port=silent.port, timeout_ms=10000) as client:
        started = time.monotonic()
        assert client.ping(timeout_ms=300) is False
        assert time.monotonic() - started < 3.0  # the ping's 300 ms, not the client's 10 s
        assert client.timeout_ms == 10000


@pytest.mark.parametrize("value", [0, -5, "500", None, float("nan"), float("inf"), True])
def test_a_timeout_ms_set_after_construction_is_checked_as_the_constructor_checks_it(server, value):
    with PolicyClient(port=server.port, timeout_ms=2000) as client:
        with pytest.raises(ValueError, match=r"timeout_ms must be a whole number of milliseconds from 1 to \d+, got "):
            client.timeout_ms = value
        assert client.timeout_ms == 2000 and client.ping() is True
        client.timeout_ms = 1500.0
        assert client.timeout_ms == 1500


@pytest.mark.parametrize("name", ["strict", "return_server_timing"])
@pytest.mark.parametrize("value", ["false", "no", 0, None])
def test_a_true_false_argument_that_is_no_bool_is_refused_naming_it(server, name, value):
    """bool("false") and bool("no") are True: strict="false" validated, return_server_timing="no" asked for timing."""
    with pytest.raises(ValueError, match=rf"^{name} must be True or False, got {re.escape(repr(value))} "):
        PolicyClient(port=server.port, timeout_ms=2000, **{name: value})
    with PolicyClient(port=server.port, timeout_ms=2000, **{name: np.bool_(False)}) as client:
        _action, info = client.get_action(libero_like_observation(height=8, width=8))
        assert client.strict is False and "server_timing" not in info


@pytest.mark.parametrize("value", [1.9, 2500.7, np.float32(2500.5)])
def test_a_fractional_timeout_ms_is_refused_not_truncated(server, value):
    """1.9 was taken as 1 ms and 2500.7 as 2500: the docs say a whole number of milliseconds, else ValueError."""
    expected = r"timeout_ms must be a whole number of milliseconds from 1 to 2147483647, got "
    with pytest.raises(ValueError, match=expected):
        PolicyClient(port=server.port, timeout_ms=value)
    with PolicyClient(port=server.port, timeout_ms=np.float64(2500.0)) as client:
        assert client.timeout_ms == 2500
        with pytest.raises(ValueError, match=expected):
            client.timeout_ms = value
        with pytest.raises(ValueError, match=expected):
            client.ping(timeout_ms=value)
        assert client.timeout_ms == 2500 and client.ping() is True
