"""A host name's lookup is shared: one in flight per host, whichever clients wait on it, and a call whose budget went
on an unfinished lookup says so instead of blaming the server. A real server on loopback; the resolver's hang is
simulated by holding getaddrinfo in the client's lookup thread until the test lets it answer."""

from __future__ import annotations

import socket
import threading

import pytest
from reference_peer import EchoPolicy, libero_like_observation
from serving import running_server

from gr00t_client import PolicyClient, PolicyTimeoutError

LOOKUP_THREAD = "gr00t-client-resolve"


@pytest.fixture
def hanging_resolver(monkeypatch):
    """getaddrinfo that hangs in the client's lookup threads until the returned event is set; counts those calls."""
    answer = threading.Event()
    calls = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if threading.current_thread().name == LOOKUP_THREAD:
            calls.append(host)
            answer.wait(30)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        yield answer, calls
    finally:
        answer.set()
        for thread in threading.enumerate():
            if thread.name == LOOKUP_THREAD:
                thread.join(10)


def lookup_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == LOOKUP_THREAD)


def test_clients_made_while_a_hosts_lookup_hangs_share_that_one_lookup(hanging_resolver):
    answer, calls = hanging_resolver
    observation = libero_like_observation(height=8, width=8)
    with running_server(EchoPolicy()) as server:
        for _ in range(5):  # a client per attempt, as a robot's retry loop makes them
            with PolicyClient(host="localhost", port=server.port, timeout_ms=100) as client:
                with pytest.raises(PolicyTimeoutError):
                    client.get_action(observation)
        assert calls == ["localhost"], f"expected one lookup of 'localhost' shared by 5 clients, got {calls}"
        assert lookup_threads() == 1
        answer.set()  # the resolver answers: the clients waiting on it go on, and no lookup is left behind
        with PolicyClient(host="localhost", port=server.port, timeout_ms=5000) as client:
            action, _ = client.get_action(observation)
        assert action


def test_a_timeout_whose_name_lookup_had_not_finished_names_the_lookup_not_the_server(hanging_resolver):
    with running_server(EchoPolicy()) as server:
        with PolicyClient(host="localhost", port=server.port, timeout_ms=100) as client:
            with pytest.raises(PolicyTimeoutError) as info:
                client.get_action(libero_like_observation(height=8, width=8))
    message = str(info.value)
    assert "the name lookup of 'localhost' had not finished after" in message, message
    assert "TCP connection" not in message and "ZeroMQ handshake" not in message, message


def test_a_lookup_that_finished_before_it_was_shared_leaves_no_entry_to_answer_later_lookups(monkeypatch):
    """A name the resolver answers at once (localhost, from /etc/hosts) could finish before its entry was put in the
    table, which its thread then never removed: every later lookup of that host in the process got the old answer
    without asking (a DNS change unseen), and a test whose resolver hangs saw no lookup at all."""
    from gr00t_client import host_lookup

    real_start = threading.Thread.start

    def start_and_finish(thread):  # the lookup thread runs to its end before look_up shares the entry
        real_start(thread)
        if thread.name == LOOKUP_THREAD:
            thread.join(10)

    monkeypatch.setattr(threading.Thread, "start", start_and_finish)
    first = host_lookup.look_up("localhost")
    assert first.finished and "ipv4" in first.outcome
    assert "localhost" not in host_lookup._IN_FLIGHT
    monkeypatch.setattr(threading.Thread, "start", real_start)
    second = host_lookup.look_up("localhost")
    assert second is not first  # asked afresh
    assert second.wait(10) and "ipv4" in second.outcome
