"""One PolicyClient shared by threads: a get_action's budget is its own, and close() from another thread ends a call
wherever it waits (a name lookup, a first question), naming the call its caller made. Real servers and sockets on
loopback; a resolver's hang is simulated by holding getaddrinfo in the client's lookup thread."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from serving import running_server

from gr00t_client import BasePolicy, ClientClosedError, PolicyClient

LOOKUP_THREAD = "gr00t-client-resolve"
OBSERVATION = {"state": {"t": np.zeros((1, 1), np.float32)}, "language": {"task": [["go"]]}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call_in_thread(call) -> tuple:
    """Run `call` on a thread; returns (thread, outcome), outcome["error"] being what it raised (None: nothing)."""
    outcome = {}

    def run():
        try:
            call()
            outcome["error"] = None
        except Exception as exc:  # noqa: BLE001 - what the caller's thread was raised
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_until(condition, what: str) -> None:
    end = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < end, f"expected {what} within 10 s"
        time.sleep(0.001)


@pytest.fixture
def hanging_resolver(monkeypatch):
    """getaddrinfo that hangs in the client's lookup threads until the returned event is set (then answers as a DNS
    server that failed for now); `calls` counts the hung lookups."""
    answer = threading.Event()
    calls = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if threading.current_thread().name == LOOKUP_THREAD:
            calls.append(host)
            answer.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        yield answer, calls
    finally:
        answer.set()
        for thread in threading.enumerate():
            if thread.name == LOOKUP_THREAD:
                thread.join(10)


def test_close_from_another_thread_ends_a_call_waiting_on_a_name_lookup(hanging_resolver):
    """close() waited for the call's lookup (up to 5 s) under the client's lock, and the call was not ended by it."""
    answer, calls = hanging_resolver
    client = PolicyClient("localhost", free_port(), timeout_ms=20000)
    thread, outcome = call_in_thread(lambda: client.get_action(OBSERVATION))
    wait_until(lambda: calls, "the call's name lookup to start")
    client.close()
    thread.join(10)
    error = outcome.get("error")
    assert isinstance(error, ClientClosedError), f"expected ClientClosedError, got {error!r}"
    assert (f"PolicyClient for {client.address} was closed while 'get_action' (asking 'get_server_info' first) "
            "waited for the name lookup of 'localhost'") in str(error), str(error)
    assert not answer.is_set()  # ended by close(), not by the lookup's answer


def test_a_call_ended_by_close_while_its_first_question_waits_names_the_callers_call():
    """It named 'get_server_info', a question the caller never asked."""
    client = PolicyClient("127.0.0.1", free_port(), timeout_ms=10000)  # nothing listens: the question waits to be sent
    thread, outcome = call_in_thread(lambda: client.get_action(OBSERVATION))
    wait_until(lambda: client._awaiting == "get_server_info", "the first question to be waiting")
    client.close()
    thread.join(10)
    error = outcome.get("error")
    assert isinstance(error, ClientClosedError), f"expected ClientClosedError, got {error!r}"
    assert (f"PolicyClient for {client.address} was closed while waiting for 'get_action' (asking 'get_server_info' "
            "first)") in str(error), str(error)


def test_interrupt_calls_ends_a_call_in_flight_and_leaves_the_client_open_for_the_next():
    """A relay's stop ends its upstream call so (a close() would leave the caller's client unusable after the stop)."""
    port = free_port()
    client = PolicyClient("127.0.0.1", port, timeout_ms=30000)  # nothing listens yet: the question waits to be sent
    thread, outcome = call_in_thread(lambda: client.get_action(OBSERVATION))
    wait_until(lambda: client._awaiting == "get_server_info", "the first question to be waiting")
    client.interrupt_calls()
    thread.join(10)
    error = outcome.get("error")
    assert isinstance(error, ClientClosedError), f"expected ClientClosedError, got {error!r}"
    assert f"PolicyClient for {client.address} was interrupted (interrupt_calls()" in str(error), str(error)
    with running_server(SlowResetPolicy(), port=port):
        assert client.ping_or_raise(timeout_ms=5000) is None  # a later call connects anew
    client.close()


class SlowResetPolicy(BasePolicy):
    """get_action takes 50 ms; reset takes longer than the control thread's whole budget."""

    def __init__(self):
        super().__init__(strict=False)

    def _get_action(self, observation, options=None):
        time.sleep(0.05)
        return {"action.x": np.zeros((1, 1), np.float32)}, {}

    def reset(self, options=None):
        time.sleep(0.8)
        return {}


@pytest.mark.parametrize("setting", ["return_server_timing", "strict"])
def test_a_get_action_is_not_charged_for_another_threads_call_between_its_questions(setting):
    """Its first question started the budget, then it let go of the lock: another thread's slow reset ran in between,
    and the get_action raised PolicyTimeoutError without sending, blaming the server."""
    with running_server(SlowResetPolicy(), inline_below_ms=0) as server:
        for _ in range(3):
            client = PolicyClient("127.0.0.1", server.port, timeout_ms=500, **{setting: True})
            # The other thread queues its call on the lock once the get_action's first question is on the wire.
            other, other_outcome = call_in_thread(lambda: (
                wait_until(lambda: client._awaiting is not None, "the get_action's first question"),
                client.call_endpoint("reset", {"options": None}, timeout_ms=5000)))
            try:
                action, _ = client.get_action(OBSERVATION)
            finally:
                other.join(10)
                client.close()
            assert action["action.x"].shape == (1, 1)
            assert other_outcome["error"] is None, other_outcome


@pytest.mark.parametrize("call", [
    lambda client: client.get_action(OBSERVATION),
    lambda client: client.call_endpoint("reset", {"options": None}, timeout_ms=3000),
    lambda client: client.call_endpoint("get_action", {"observation": OBSERVATION, "options": None}, timeout_ms=3000),
], ids=["get_action", "reset with its own timeout", "get_action with its own timeout"])
def test_a_new_server_check_may_ask_the_client_from_another_thread_after_the_call(call):
    """get_action, and call_endpoint(..., timeout_ms=N), held the client's lock while their on_new_server check ran: a
    check asking the same client from a helper thread waited for a lock its own caller held (for ever, or until the
    check gave up)."""
    with running_server(SlowResetPolicy(), inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=500) as client:
            answers = []

            def check(current):  # on a helper thread; the join's limit only keeps a deadlock from hanging the test
                helper, outcome = call_in_thread(lambda: answers.append(current.get_server_info()["policy_class"]))
                helper.join(10)
                assert not helper.is_alive(), "the check's get_server_info on another thread never got the client"
                assert outcome["error"] is None, outcome

            client.on_new_server(check)
            with pytest.raises(TimeoutError):
                client.reset()  # slower than the timeout: the socket is replaced, so a new-server check is due
            wait_until(lambda: client.ping(), "the server to answer again")
            call(client)
    assert answers == ["SlowResetPolicy"]


def test_a_new_server_check_that_fails_replaces_the_get_actions_reply_and_runs_again_next_call():
    """What the check raises is raised from the get_action it follows, now that it runs once the lock is let go."""
    with running_server(SlowResetPolicy(), inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=500) as client:
            verdicts = [RuntimeError("another model is served now"), None]

            def check(_):
                verdict = verdicts.pop(0)
                if verdict is not None:
                    raise verdict

            client.on_new_server(check)
            with pytest.raises(TimeoutError):
                client.reset()
            wait_until(lambda: client.ping(), "the server to answer again")
            with pytest.raises(RuntimeError, match="another model is served now"):
                client.get_action(OBSERVATION)
            action, _ = client.get_action(OBSERVATION)  # the check was still due: it ran again, and passed
    assert verdicts == [] and action["action.x"].shape == (1, 1)


@pytest.mark.parametrize("setting,question", [("strict", "get_modality_config"),
                                              ("return_server_timing", "get_server_info")])
def test_a_get_action_on_a_closed_client_that_must_ask_first_names_the_callers_call(setting, question):
    """strict named only 'get_modality_config', a question the caller never asked; return_server_timing named no call
    at all ('is closed; make a new PolicyClient')."""
    client = PolicyClient("127.0.0.1", free_port(), timeout_ms=500, **{setting: True})
    client.close()
    with pytest.raises(ClientClosedError) as refused:
        client.get_action(OBSERVATION)
    assert (f"PolicyClient for {client.address} is closed, so 'get_action' (asking '{question}' first) was not "
            "sent; make a new PolicyClient") in str(refused.value), str(refused.value)
