"""The liveness ping (ping_quickly) uses a budget of its own, never the shared client's timeout_ms; a server that
refuses this client's key or token is told apart from one that is gone."""

import threading
import time

import pytest
from reference_peer import EchoPolicy
from serving import free_port, running_server
from tcp_proxy import TcpProxy

from gr00t_client import PolicyClient, PolicyServerError, ReplyLostError
from gr00t_eval.rollout.liveness import ServerWatch, ping_quickly, unanswered_ping_reason
from gr00t_server.curve import generate_certificates

SLOW_S = 0.6
PING_MS = 300  # shorter than the slow call: a call given the ping's budget would time out


def wait_until(condition, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        time.sleep(0.01)


def test_a_quick_ping_leaves_the_shared_clients_timeout_to_the_other_threads_calls():
    with running_server(EchoPolicy()) as server:
        server.register_endpoint("slow", lambda: time.sleep(SLOW_S) or {"which": "slow"}, requires_input=False)
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            client.ping()
            answers = []

            def call_slow():
                try:
                    answers.append(client.call_endpoint("slow", requires_input=False))
                except Exception as exc:  # noqa: BLE001 - recorded: the assertion below names it
                    answers.append(exc)

            holder = threading.Thread(target=call_slow)
            holder.start()
            time.sleep(0.1)  # the holder's call has the client: the ping and the next call wait their turn
            pinger = threading.Thread(target=ping_quickly, args=(client, PING_MS))
            pinger.start()
            time.sleep(0.1)
            seen_while_pinging = client.timeout_ms
            waiter = threading.Thread(target=call_slow)
            waiter.start()
            for thread in (holder, pinger, waiter):
                thread.join(10)
            assert seen_while_pinging == 5000
            assert answers == [{"which": "slow"}, {"which": "slow"}]
            assert client.timeout_ms == 5000


class HeldPolicy(EchoPolicy):
    """EchoPolicy whose reset says it started, then waits until released (a request the link drops meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.released = threading.Event(), threading.Event()

    def reset(self, options=None):
        self.started.set()
        self.released.wait(10)
        return super().reset(options)


class _RemotePolicy:
    """A team's own wrapper around a client: not a PolicyClient, but its ping takes a budget."""

    def __init__(self, client):
        self.client = client
        self.timeout_ms = client.timeout_ms
        self.budgets = []

    def ping(self, timeout_ms=None):
        self.budgets.append(timeout_ms)
        return self.client.ping(timeout_ms=timeout_ms)


def test_a_wrapper_whose_ping_takes_a_budget_gets_the_quick_one_not_its_clients_minute():
    """Only PolicyClient itself got the short budget: a wrapper's ping of a dead server waited its client's 60 s."""
    from serving import free_port

    with PolicyClient("127.0.0.1", free_port(), timeout_ms=60000) as client:
        wrapper = _RemotePolicy(client)
        answers = []
        pinger = threading.Thread(target=lambda: answers.append(ping_quickly(wrapper, PING_MS)), daemon=True)
        pinger.start()
        pinger.join(20)
        assert answers == [False] and wrapper.budgets == [PING_MS]


def test_a_ping_without_a_budget_parameter_is_called_plainly():
    class Plain:
        timeout_ms = 60000
        calls = 0

        def ping(self):
            Plain.calls += 1
            return True

    assert ping_quickly(Plain(), PING_MS) is True and Plain.calls == 1


LOST_REPLY = ConnectionError("the connection closed while this client waited for its reply to 'get_action'")


def test_a_server_restarted_with_another_token_is_reported_as_refusing_this_client_not_as_gone():
    """The ping's 'Unauthorized: Invalid API token' was swallowed: the run stopped as 'stopped answering ... and did
    not answer a ping either', sending the operator to look for a dead server."""
    with running_server(EchoPolicy(), api_token="rotated-token") as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, api_token="old-token") as client:
            reason = ServerWatch(client).unreachable_reason(LOST_REPLY)
    assert reason is not None and f"the server at {client.address} now refuses this client" in reason
    assert "Unauthorized: Invalid API token" in reason


def test_a_server_restarted_with_another_curve_key_is_reported_as_refusing_this_client_not_as_gone(tmp_path):
    """PolicyClient.ping() answers a refused handshake with a bare False: the HandshakeError never reached the reason."""
    old_public, _ = generate_certificates(tmp_path / "old", "server")
    _, new_secret = generate_certificates(tmp_path / "new", "server")
    with running_server(EchoPolicy(), curve_secret_key=str(new_secret)) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, server_public_key=str(old_public)) as client:
            reason = ServerWatch(client).unreachable_reason(LOST_REPLY)
    assert reason is not None and f"the server at {client.address} now refuses this client (HandshakeError:" in reason
    assert "did not answer a ping" not in reason


def test_a_forwarders_server_restarting_is_waited_for_as_a_gone_server_not_reported_as_refusing_this_client(tmp_path):
    """A forwarder (kubectl port-forward) whose CURVE server restarts closes each handshake: ServerWatch read that as
    'now refuses this client ..., as a server restarted with another CURVE key does', and the same keys worked again
    once the server was back."""
    public, secret = generate_certificates(tmp_path, "server")
    upstream = free_port()
    with TcpProxy(upstream) as proxy, \
            PolicyClient("127.0.0.1", proxy.port, timeout_ms=3000, server_public_key=str(public)) as client:
        with running_server(EchoPolicy(), port=upstream, curve_secret_key=str(secret)):
            assert client.ping()
        # The forwarder closes the client's connection once it sees the server's close: a reset sent before that is
        # lost in flight instead (the next test). One sent after it may still meet the forwarder's next connection,
        # accepted and then closed for want of a server: lost too, on a loaded machine (either is a server gone).
        wait_until(lambda: proxy.open_connections() == 0, "the forwarder to close the connection of a stopped server")
        with pytest.raises((ConnectionError, ReplyLostError)) as failed:
            client.reset()
        reason = ServerWatch(client).unreachable_reason(failed.value)
        with running_server(EchoPolicy(), port=upstream, curve_secret_key=str(secret)):
            assert client.ping()
    assert reason is not None and "did not answer a ping either" in reason, reason
    assert "refuses this client" not in reason


def test_a_request_in_flight_when_a_forwarders_server_stops_is_a_lost_reply_waited_for_as_a_gone_server(tmp_path):
    """The same restart with the reset already sent when the server stopped: its reply is lost (ReplyLostError), and
    the reason still names a server that is gone, not one refusing this client."""
    public, secret = generate_certificates(tmp_path, "server")
    upstream = free_port()
    errors = []

    def reset() -> None:
        try:
            client.reset()
        except Exception as exc:  # noqa: BLE001 - recorded: the assertions below name it
            errors.append(exc)

    with TcpProxy(upstream) as proxy, \
            PolicyClient("127.0.0.1", proxy.port, timeout_ms=3000, server_public_key=str(public)) as client:
        with running_server(EchoPolicy(), port=upstream, curve_secret_key=str(secret)):
            assert client.ping()
            proxy.delay_s = 1.0  # the reset, and the server's close after it, pass the forwarder a second late
            sent_before = proxy.bytes_up
            caller = threading.Thread(target=reset)
            caller.start()
            wait_until(lambda: proxy.bytes_up > sent_before, "the reset to reach the forwarder")
        caller.join(10)
        proxy.delay_s = 0.0
        assert len(errors) == 1 and isinstance(errors[0], ReplyLostError), errors
        reason = ServerWatch(client).unreachable_reason(errors[0])
        with running_server(EchoPolicy(), port=upstream, curve_secret_key=str(secret)):
            assert client.ping()
    assert reason is not None and "stopped answering (ReplyLostError: " in reason, reason
    assert "did not answer a ping either" in reason, reason
    assert "refuses this client" not in reason


def test_a_server_restarted_with_another_curve_key_after_the_keys_worked_is_not_reported_as_a_silent_dead_server(
        tmp_path):
    """A server restarted with another key still stops the run (a connection closed mid-handshake after the keys
    worked is otherwise waited for, as a forwarder's restarting server). Before the next task the run stopped with
    just 'did not answer a ping before task B', and ServerWatch said 'stopped answering ... and did not answer a ping
    either': the HandshakeError was dropped for a server that is up."""
    old_public, old_secret = generate_certificates(tmp_path / "old", "server")
    _, new_secret = generate_certificates(tmp_path / "new", "server")
    port = free_port()
    with PolicyClient("127.0.0.1", port, timeout_ms=3000, server_public_key=str(old_public)) as client:
        with running_server(EchoPolicy(), port=port, curve_secret_key=str(old_secret)):
            assert client.ping()
        with running_server(EchoPolicy(), port=port, curve_secret_key=str(new_secret)):
            before_task = unanswered_ping_reason(client, "task B")
            with pytest.raises(ConnectionError) as failed:
                client.reset()
            after_request = ServerWatch(client).unreachable_reason(failed.value)
    for reason in (before_task, after_request):
        assert reason is not None and "(HandshakeError: handshake with the policy server" in reason, reason
        assert "is not this server's key" in reason, reason
        assert reason.endswith("): the server's key changed, or a forwarder's server is restarting"), reason
    assert "did not answer a ping before task B (HandshakeError: " in before_task


@pytest.mark.parametrize("how, timeout_ms", [
    ("suite's ping", 5000),
    ("suite's ping of a wrapped client", 5000),
    ("PolicyClient.ping", 5000),
    ("suite's ping, client timeout 150 ms", 150),  # the loss is seen after a 50 ms poll slice: 100 ms are left
])
def test_a_ping_whose_connection_closes_under_it_is_sent_once_more_before_the_server_counts_as_gone(how, timeout_ms):
    """A suite's ping before its next task, sent as a restarted server's old connection was still being torn down,
    lost its reply (ReplyLostError) and stopped the run as 'did not answer a ping' while the server was up (seen in
    about 1 of 10 restarts under load). Here the forwarder drops the connection with the ping in it. The second ping
    is PolicyClient's own, so a wrapper's ping and a robot's health check get it too."""
    upstream = free_port()
    answers = []
    ping = {"suite's ping of a wrapped client": lambda client: unanswered_ping_reason(_RemotePolicy(client), "task B"),
            "PolicyClient.ping": lambda client: None if client.ping() else "no answer"}.get(
        how, lambda client: unanswered_ping_reason(client, "task B"))
    with running_server(EchoPolicy(), port=upstream), TcpProxy(upstream) as proxy, \
            PolicyClient("127.0.0.1", proxy.port, timeout_ms=timeout_ms) as client:
        assert client.ping()
        proxy.delay_s = 0.5 if timeout_ms > 1000 else 0.05  # the ping waits in the forwarder, where the cut drops it
        sent_before = proxy.bytes_up
        pinger = threading.Thread(target=lambda: answers.append(ping(client)))
        pinger.start()
        wait_until(lambda: proxy.bytes_up > sent_before, "the ping to reach the forwarder")
        proxy.delay_s = 0.0
        proxy.cut()
        pinger.join(10)
        connections = proxy.accepted
    assert answers == [None], answers
    assert connections == 2  # the second ping went over a connection of its own


def test_a_request_refused_as_unauthorized_stops_the_run_with_the_servers_words():
    """An Unauthorized reply to reset was no timeout: every later episode was refused the same way, one by one."""
    with running_server(EchoPolicy(), api_token="rotated-token") as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, api_token="old-token") as client:
            with pytest.raises(PolicyServerError) as refused:
                client.reset()
            reason = ServerWatch(client).unreachable_reason(refused.value)
    assert reason is not None and "now refuses this client (PolicyServerError:" in reason
    assert "Unauthorized: Invalid API token" in reason


def test_the_ping_before_a_suites_next_task_names_a_server_that_now_refuses_this_client():
    """The ping between a suite's tasks said only "did not answer a ping" of a server restarted with another token."""
    with running_server(EchoPolicy(), api_token="rotated-token") as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, api_token="old-token") as client:
            reason = unanswered_ping_reason(client, "task metaworld/reach-v3")
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, api_token="rotated-token") as client:
            assert unanswered_ping_reason(client, "task metaworld/reach-v3") is None
    assert reason is not None and "now refuses this client" in reason and "Unauthorized: Invalid API token" in reason
    assert reason.endswith(", before task metaworld/reach-v3")


def test_a_client_this_process_closed_is_reported_as_closed_not_as_a_server_that_stopped_answering():
    """A closed client's ClientClosedError read as a dead server: 'did not answer a ping before task ...' and 'stopped
    answering ... and did not answer a ping either', while the server was up and answering."""
    from gr00t_client import ClientClosedError

    with running_server(EchoPolicy()) as server:
        client = PolicyClient("127.0.0.1", server.port, timeout_ms=5000)
        assert client.ping()
        client.close()  # a with-block left, or another thread's cleanup
        before_task = unanswered_ping_reason(client, "task libero_10/0")
        with pytest.raises(ClientClosedError) as refused:
            client.reset()
        watch = ServerWatch(client)
        after_request = watch.unreachable_reason(refused.value)
        after_lost_reply = ServerWatch(client).unreachable_reason(LOST_REPLY)  # closed while the reply was awaited
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as fresh:
            assert fresh.ping()  # the server was up all along
    for reason in (before_task, after_request, after_lost_reply):
        assert reason is not None and f"this process closed its PolicyClient for {client.address}" in reason
        assert "did not answer" not in reason and "stopped answering" not in reason
    assert before_task.endswith(", before task libero_10/0")
    assert watch.consecutive_timeouts == 0


FAR_LINK_DELAY_S = 0.4  # each way: a fresh connection's ping takes about 3 round trips (2.4 s), over the 2 s base
FAR_LINK_TIMEOUT_MS = 16000  # the --timeout-ms a far link's run is given: a quarter of it is 4 s


def test_the_ping_after_a_failed_request_on_a_far_link_gets_a_budget_scaled_with_the_clients_timeout():
    """The ping after a failed request had 2 s whatever --timeout-ms: over a 0.8 s round trip its fresh connection
    (TCP, ZMTP greeting and READY, then the ping) took 2.4 s, and the run stopped as 'stopped answering ... and did not
    answer a ping either' while the server answered every request."""
    policy = HeldPolicy()
    with running_server(policy) as server, TcpProxy(server.port) as proxy, \
            PolicyClient("127.0.0.1", proxy.port, timeout_ms=FAR_LINK_TIMEOUT_MS) as client:
        assert client.ping()
        proxy.delay_s = FAR_LINK_DELAY_S
        cutter = threading.Thread(target=lambda: policy.started.wait(10) and proxy.cut(), daemon=True)
        cutter.start()
        try:
            with pytest.raises(ReplyLostError) as lost:  # the link dropped the request: the client connects anew
                client.reset()
        finally:
            policy.released.set()
            cutter.join(10)
        reason = ServerWatch(client).unreachable_reason(lost.value)
    assert reason is None, reason


def test_the_ping_before_a_suites_next_task_on_a_far_link_gets_a_budget_scaled_with_the_clients_timeout():
    with running_server(EchoPolicy()) as server, TcpProxy(server.port) as proxy:
        proxy.delay_s = FAR_LINK_DELAY_S
        with PolicyClient("127.0.0.1", proxy.port, timeout_ms=FAR_LINK_TIMEOUT_MS) as client:  # a fresh connection
            reason = unanswered_ping_reason(client, "task B")
    assert reason is None, reason


def test_an_unanswered_ping_after_a_failed_request_names_its_budget_and_a_slow_link_as_a_cause():
    with PolicyClient("127.0.0.1", free_port(), timeout_ms=8000) as client:
        reason = ServerWatch(client).unreachable_reason(LOST_REPLY)
    assert reason is not None and "did not answer a ping either within 2 s over a fresh connection (a slow link or " \
        "a dead server)" in reason, reason
