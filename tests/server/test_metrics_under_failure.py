"""What operators read stays true when things go wrong: active clients are counted without batching, every policy
call that ran is counted whatever it returned, a policy's unencodable result is an internal error, queued bytes
have a server-wide budget, and an idle metrics connection does not hold a thread for ever. Real HTTP scrapes and
real ZeroMQ clients on loopback."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import zmq
import pytest

from gr00t_client import BasePolicy, ObservationError, PolicyClient, PolicyServerError, codec
from gr00t_server.server import PolicyServer, ServerLimits
from reference_peer import raw_round_trip
from serving import running_server

prometheus_parser = pytest.importorskip("prometheus_client.parser")
from test_prometheus_metrics import requests_count, scrape  # noqa: E402 - needs prometheus_client


class FaultyPolicy(BasePolicy):
    """State 0: a good action; 7: NaN actions; 13: raises; 3: an info the wire cannot carry; 5: sleeps 0.5 s."""

    def __init__(self, batching: bool = False) -> None:
        super().__init__(strict=False)
        self.supports_batching = batching
        self.calls = 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        value = float(np.asarray(observation["state"]["x"]).reshape(-1)[0])
        rows = np.asarray(observation["state"]["x"]).shape[0]
        if value == 13:
            raise RuntimeError("the model broke")
        if value == 5:
            time.sleep(0.5)
        action = np.full((rows, 4, 1), np.nan if value == 7 else 0.0, np.float32)
        return {"x": action}, ({"odd": object()} if value == 3 else {})

    def reset(self, options=None):
        return {}


def observation(value, rows=1):
    return {"state": {"x": np.full((rows, 1, 1), value, np.float32)}}


def test_active_clients_counts_clients_of_a_server_that_does_not_batch():
    """The gauge read 0 whenever get_action was not gathered for batching: the default --max-batch-size 1, every
    replay server."""
    with running_server(FaultyPolicy(), metrics_port=0) as server:
        clients = [PolicyClient(port=server.port, timeout_ms=5000) for _ in range(3)]
        try:
            for client in clients:
                client.get_action(observation(0))
            assert scrape(server)[("gr00t_active_clients", ())] == 3
            time.sleep(1.2)  # the window is one second
            assert scrape(server)[("gr00t_active_clients", ())] == 0
        finally:
            for client in clients:
                client.close()


def test_active_clients_counts_clients_whose_get_action_was_refused_on_arrival():
    """Three robots sending NaN states read as 0 active clients: a client was noted only once its get_action passed
    the limit checks and the queue budgets."""
    with running_server(FaultyPolicy(), metrics_port=0) as server:
        clients = [PolicyClient(port=server.port, timeout_ms=5000) for _ in range(3)]
        try:
            for client in clients:
                with pytest.raises(PolicyServerError, match="non-finite"):
                    client.get_action({"state": {"x": np.full((1, 1, 1), np.nan, np.float32)}})
            assert scrape(server)[("gr00t_active_clients", ())] == 3
        finally:
            for client in clients:
                client.close()


@pytest.mark.parametrize("field, value", [("timeout_ms", 0), ("session_id", 5), ("session_continues", "yes")])
def test_active_clients_counts_clients_whose_get_action_had_a_bad_envelope_field(field, value):
    """Three robots whose client sends timeout_ms 0 ("no deadline" to some C++ and Go clients) read as 0 active
    clients: a get_action refused for its envelope's fields was never noted, though decoded and with the token."""
    request = codec.encode({"endpoint": "get_action", "data": {"observation": observation(0)}, field: value})
    with running_server(FaultyPolicy(), metrics_port=0) as server:
        for _ in range(3):  # three robots: a fresh connection each
            reply = codec.decode(raw_round_trip(server.port, request)[0])
            assert f"'{field}' must be" in reply["error"], reply
        assert scrape(server)[("gr00t_active_clients", ())] == 3


def test_every_policy_call_that_ran_is_counted_whatever_it_returned():
    policy = FaultyPolicy()
    with running_server(policy, metrics_port=0, inline_below_ms=0) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            client.get_action(observation(0))
            with pytest.raises(PolicyServerError, match="non-finite"):
                client.get_action(observation(7))
            with pytest.raises(PolicyServerError, match="internal error in get_action: RuntimeError"):
                client.get_action(observation(13))
            stats = client.get_server_info()["stats"]
        samples = scrape(server)
    assert policy.calls == 3
    assert stats["policy_calls"] == 3 and stats["batch_sizes"] == {"1": 3}
    assert samples[("gr00t_batch_size_count", ())] == 3


def test_a_failed_batch_counts_its_merged_call_and_each_retry():
    policy = FaultyPolicy(batching=True)
    # batch_timeout_ms 0: the slow call goes at once, alone; the pair gathers while it runs (the worker is busy)
    with running_server(policy, max_batch_size=8, batch_timeout_ms=0, inline_below_ms=0) as server:
        def call(value, outcome):
            with PolicyClient(port=server.port, timeout_ms=10000) as client:
                try:
                    client.get_action(observation(value))
                    outcome.append("ok")
                except PolicyServerError as exc:
                    outcome.append(str(exc))

        busy = threading.Thread(target=call, args=(5, []))  # holds the worker while the two below gather
        busy.start()
        time.sleep(0.1)
        outcomes = []
        pair = [threading.Thread(target=call, args=(13, outcomes)) for _ in range(2)]
        for thread in pair:
            thread.start()
        for thread in [busy, *pair]:
            thread.join(20)
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            stats = client.get_server_info()["stats"]
    assert all("internal error" in outcome for outcome in outcomes), outcomes
    assert policy.calls == stats["policy_calls"] == 4  # the slow call, the merged pair, and each of the pair alone
    assert stats["batch_sizes"] == {"1": 3, "2": 1}


def test_a_result_the_wire_cannot_carry_is_an_internal_error_logged_with_its_traceback(caplog):
    with running_server(FaultyPolicy(), metrics_port=0) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            with caplog.at_level("ERROR", logger="gr00t_server.serving"):
                with pytest.raises(PolicyServerError, match="could not encode the result of 'get_action'"):
                    client.get_action(observation(3))
            client.get_action(observation(0))  # and the server goes on
            stats = client.get_server_info()["stats"]
        samples = scrape(server)
    assert requests_count(samples, "get_action", "internal_error") == 1
    assert requests_count(samples, "get_action", "error") == 0
    assert stats["internal_errors"] == 1
    assert any(record.exc_info for record in caplog.records if "internal error in" in record.getMessage()), caplog.text


def test_queued_bytes_have_a_budget_across_connections():
    """Each connection's first request is always taken: without a server-wide budget, 16 connections of 64 MiB
    held 588 MB."""
    limits = ServerLimits(max_queued_bytes=3 * 1024 * 1024)
    big = {"state": {"x": np.full((1, 1, 1), 5.0, np.float32), "pad": np.zeros((1, 1, 1024 * 1024), np.uint8)}}
    with running_server(FaultyPolicy(), limits=limits, inline_below_ms=0) as server:
        outcomes, lock = [], threading.Lock()

        def call():
            with PolicyClient(port=server.port, timeout_ms=15000) as client:
                try:
                    client.get_action(big)
                    result = "ok"
                except PolicyServerError as exc:
                    result = str(exc)
                with lock:
                    outcomes.append(result)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
            time.sleep(0.02)
        for thread in threads:
            thread.join(30)
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            info = client.get_server_info()
    refused = [o for o in outcomes if "bytes of requests are waiting for the policy" in o]
    assert refused and "(--max-queued-mb)" in refused[0], outcomes
    assert outcomes.count("ok") >= 2 and len(outcomes) == 8
    assert info["limits"]["max_queued_bytes"] == 3 * 1024 * 1024
    assert info["stats"]["refused"] == len(refused)


def test_an_idle_metrics_connection_is_closed_after_its_timeout_without_a_traceback(monkeypatch, capfd):
    """Each idle connection closed by its timeout printed socketserver's 17-line traceback to stderr (545 dropped
    connections: 600 KB of log)."""
    from gr00t_server.serving import metrics

    monkeypatch.setattr(metrics, "METRICS_CONNECTION_TIMEOUT_S", 0.5)
    server = PolicyServer(FaultyPolicy(), host="127.0.0.1", port=0, metrics_port=0).start()
    try:
        idle = socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5)
        idle.sendall(b"GET /metr")  # half a request line, then nothing
        started = time.monotonic()
        assert idle.recv(1024) == b""  # the server hung up
        assert time.monotonic() - started < 4
        idle.close()
        time.sleep(0.2)  # the handler thread's error report, if any, comes after the close
    finally:
        server.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err


def test_metrics_connections_are_capped_and_a_trickling_one_is_cut_at_its_deadline(monkeypatch):
    """A peer sending a byte every few seconds kept each connection (and its thread) for as long as it liked, and
    any number of them: 200 such peers held 206 threads."""
    from gr00t_server.serving import metrics

    monkeypatch.setattr(metrics, "METRICS_MAX_CONNECTIONS", 3)
    monkeypatch.setattr(metrics, "METRICS_CONNECTION_DEADLINE_S", 2.0)
    server = PolicyServer(FaultyPolicy(), host="127.0.0.1", port=0, metrics_port=0).start()
    tricklers = []
    try:
        for _ in range(3):
            trickler = socket.create_connection(("127.0.0.1", server.metrics_port), timeout=10)
            trickler.sendall(b"G")
            tricklers.append(trickler)
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5)
        assert extra.recv(1024) == b""  # over the cap: closed at once
        extra.close()
        started = time.monotonic()
        for _ in range(20):  # a byte every 0.25 s: never idle for the 10 s read timeout
            for trickler in tricklers:
                try:
                    trickler.sendall(b"E")
                except OSError:
                    pass
            time.sleep(0.25)
            if all(t.recv(1024, socket.MSG_DONTWAIT) == b"" if _readable(t) else False for t in tricklers):
                break
        assert time.monotonic() - started < 4.5, "the trickling connections were not cut at their deadline"
        time.sleep(0.3)
        assert scrape(server)  # slots free again: scrapes are served
    finally:
        for trickler in tricklers:
            trickler.close()
        server.close()


def _readable(sock):
    import select

    return bool(select.select([sock], [], [], 0)[0])


def test_bad_queued_budgets_are_refused_by_serve(tmp_path):
    import subprocess
    import sys

    for flag, value in (("--max-queued-mb", "0"), ("--max-queued-mb", "nan"), ("--max-client-queued-mb", "-5")):
        done = subprocess.run([sys.executable, "-m", "gr00t_server.cli", "serve", "--dataset-path", str(tmp_path),
                               flag, value], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert f"{flag} must be a number of MiB > 0 and below 8796093022208 (2**63 bytes), got" in done.stderr


def test_a_reply_whose_reference_client_gave_up_is_counted_undelivered_not_ok():
    """A reference client sends no deadline; on its timeout it closes its REQ socket and opens another (the upstream
    PolicyClient's lazy-pirate path). The replies it never received were counted `ok`: a timeout storm of reference
    clients read as 100% success. ZeroMQ now reports the vanished peer (ROUTER_MANDATORY), and they are counted
    `undelivered`, beside the `ok` of a client that waited."""
    from reference_peer import ReferenceClient

    policy = FaultyPolicy()
    with running_server(policy, metrics_port=0, inline_below_ms=0) as server:
        for _ in range(3):
            with ReferenceClient(server.port, timeout_ms=50) as impatient:
                with pytest.raises(zmq.Again):
                    impatient.get_action(observation(5))  # the policy sleeps 0.5 s; it gives up after 50 ms
        with PolicyClient(port=server.port, timeout_ms=30000) as patient:
            patient.get_action(observation(0))  # queued behind the three abandoned calls: it ran after them
            stats = patient.get_server_info()["stats"]
        samples = scrape(server)
    assert policy.calls == 4
    assert stats["undelivered"] == 3 and stats["late"] == 0 and stats["errors"] == 0
    assert requests_count(samples, "get_action", "undelivered") == 3
    assert requests_count(samples, "get_action", "ok") == 1


class InputRefusingPolicy(BasePolicy):
    """Notes each call's rows; a state of 99 is refused with an ObservationError once the call ran (as a model's
    processing finds a bad input), or, `strict`, by its own check_observation before anything is computed."""

    supports_batching = True

    def __init__(self, strict: bool = False) -> None:
        super().__init__(strict=strict)
        self.rows = []
        self._lock = threading.Lock()

    def check_observation(self, observation):
        if (np.asarray(observation["state"]["x"]) == 99).any():
            raise ObservationError("state 'x' holds 99, out of range")

    def _get_action(self, observation, options=None):
        state = np.asarray(observation["state"]["x"])
        with self._lock:
            self.rows.append(state.shape[0])
        self.check_observation(observation)
        return {"x": np.zeros((state.shape[0], 4, 1), np.float32)}, {}

    def reset(self, options=None):
        return {}


def test_a_batch_bisected_for_one_clients_bad_input_counts_every_call_that_ran():
    """The merged call one client's input failed, and the merged and lone calls that isolated it, were not counted."""
    policy = InputRefusingPolicy()
    with running_server(policy, max_batch_size=4, batch_timeout_ms=10000.0, metrics_port=0) as server:
        clients = [PolicyClient(port=server.port, timeout_ms=15000) for _ in range(4)]
        barrier = threading.Barrier(4)
        outcomes = {}

        def call(index):
            clients[index].get_server_info()
            barrier.wait()
            try:
                clients[index].get_action(observation(99 if index == 3 else 0))
                outcomes[index] = "ok"
            except PolicyServerError as exc:
                outcomes[index] = str(exc)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for client in clients:
            client.close()
        stats = server.stats.snapshot()
        samples = scrape(server)
    assert "out of range" in outcomes.pop(3) and set(outcomes.values()) == {"ok"}
    assert policy.rows[0] == 4 and len(policy.rows) > 2, policy.rows  # the batch failed, then was bisected
    assert stats["policy_calls"] == len(policy.rows)
    assert samples[("gr00t_batch_size_count", ())] == len(policy.rows)
    assert samples[("gr00t_batch_size_sum", ())] == sum(policy.rows)


def test_a_lone_call_refused_inside_counts_but_one_its_own_checks_refused_first_does_not():
    for strict, calls in ((False, 1), (True, 0)):
        policy = InputRefusingPolicy(strict=strict)
        with running_server(policy) as server:
            with PolicyClient(port=server.port, timeout_ms=5000) as client:
                with pytest.raises(PolicyServerError, match="out of range"):
                    client.get_action(observation(99))
            stats = server.stats.snapshot()
        assert (len(policy.rows), stats["policy_calls"]) == (calls, calls), strict


class SlowlyFailingPolicy(BasePolicy):
    """A merged call takes 1 s (a lone one none), and fails whole when any row's state is 13 (one client's input)."""

    supports_batching = True

    def __init__(self) -> None:
        super().__init__(strict=False)

    def _get_action(self, observation, options=None):
        state = np.asarray(observation["state"]["x"])
        if state.shape[0] > 1:
            time.sleep(1.0)
        if (state == 13).any():
            raise RuntimeError("the model broke on one row")
        return {"x": np.zeros((state.shape[0], 4, 1), np.float32)}, {}

    def reset(self, options=None):
        return {}


def test_a_batch_mate_whose_deadline_passed_in_a_failed_merged_call_is_told_its_call_ran():
    """Robot B's merged call ran 1 s and failed on robot A's row, by when B's 500 ms had passed: B was answered
    "'get_action' was not run" and counted `expired`, and its policy time was dropped (1 policy stage for the 2
    requests of the call)."""
    from gr00t_client.client_errors import DeadlineNotRunError, server_error

    # the gather window waits for both: the two requests run as one merged call
    with running_server(SlowlyFailingPolicy(), max_batch_size=2, batch_timeout_ms=10000.0, metrics_port=0,
                        inline_below_ms=0) as server:
        context = zmq.Context()
        replies = []
        try:
            robots = []
            for value, deadline in ((13, {}), (0, {"timeout_ms": 500})):
                robot = context.socket(zmq.DEALER)
                robot.setsockopt(zmq.LINGER, 0)
                robot.connect(f"tcp://127.0.0.1:{server.port}")
                robot.send_multipart([b"", codec.encode({"endpoint": "get_action",
                                                         "data": {"observation": observation(value)}, **deadline})])
                robots.append(robot)
            for robot in robots:
                assert robot.poll(10000), "no reply"
                replies.append(codec.decode(robot.recv_multipart()[-1]))
                robot.close()
        finally:
            context.term()
        stats = server.stats.snapshot()
        samples = scrape(server)
    assert stats["batch_sizes"] == {"2": 1, "1": 1}, stats  # the merged call, then robot A's alone
    assert "internal error in get_action: RuntimeError" in replies[0]["error"], replies[0]
    told = replies[1]["error"]
    assert "was not run" not in told and "ran in a batched policy call that failed" in told, told
    assert isinstance(server_error(told, "get_action"), DeadlineNotRunError)  # our client asks again, as for expired
    assert requests_count(samples, "get_action", "expired") == 0 and stats["expired"] == 0
    assert requests_count(samples, "get_action", "error") == 1
    assert samples[("gr00t_request_stage_seconds_count", (("stage", "policy"),))] == 2  # each request's call that ran
