"""The Prometheus endpoint of PolicyServer (metrics_port), scraped over real HTTP on loopback."""

import logging
import re
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import pytest

from gr00t_client import BasePolicy, PolicyClient, PolicyServerError, PolicyTimeoutError
from gr00t_server.server import PolicyServer, ServerLimits
from serving import running_server

prometheus_parser = pytest.importorskip("prometheus_client.parser")

DOCS_SERVING = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


class NapPolicy(BasePolicy):
    """Sleeps `nap_s` per call (0 by default) and fails on NaN, like a policy refusing bad input."""

    supports_batching = True

    def __init__(self, nap_s: float = 0.0) -> None:
        super().__init__(strict=False)
        self.nap_s = nap_s
        self.napping = threading.Event()  # set once a call has started its nap

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        state = observation["state"]["joints"]
        if np.isnan(state).any():
            raise ValueError("state 'joints' contains NaN")
        self.napping.set()
        time.sleep(self.nap_s)
        return {"arm": np.zeros((state.shape[0], 16, 3), np.float32)}, {}

    def reset(self, options=None):
        return {}


def observation(value: float = 1.0) -> Dict[str, Any]:
    return {"state": {"joints": np.full((1, 1, 3), value, np.float32)}}


def scrape(server: PolicyServer) -> Samples:
    """Every sample of the server's /metrics page, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in prometheus_parser.text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_settled(server: PolicyServer, n_requests: int) -> Samples:
    """scrape() once the server has counted `n_requests` requests (within 5 s): a request's outcome is counted after
    its reply is sent (a reply the client never got is `undelivered`), so a client can read its reply first."""
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(server)
        counted = sum(value for (name, _labels), value in samples.items() if name == "gr00t_requests_total")
        if counted >= n_requests or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def requests_count(samples: Samples, endpoint: str, outcome: str) -> float:
    return samples.get(("gr00t_requests_total", (("endpoint", endpoint), ("outcome", outcome))), 0.0)


def stage_count(samples: Samples, stage: str) -> float:
    return samples.get(("gr00t_request_stage_seconds_count", (("stage", stage),)), 0.0)


def test_requests_are_counted_by_endpoint_and_outcome():
    with running_server(NapPolicy(), metrics_port=0) as server, PolicyClient(port=server.port) as client:
        client.get_action(observation())
        client.get_action(observation())
        with pytest.raises(PolicyServerError, match="NaN"):
            client.get_action(observation(float("nan")))
        with pytest.raises(PolicyServerError, match="Unknown endpoint"):
            client.call_endpoint("no_such_endpoint", requires_input=False)
        samples = scrape_settled(server, 4)
    assert requests_count(samples, "get_action", "ok") == 2
    assert requests_count(samples, "get_action", "error") == 1
    assert requests_count(samples, "other", "error") == 1  # client-chosen names never become labels


def test_stage_histograms_and_batch_sizes_are_exported():
    with running_server(NapPolicy(nap_s=0.01), metrics_port=0) as server, PolicyClient(port=server.port) as client:
        for _ in range(3):
            client.get_action(observation())
        samples = scrape_settled(server, 3)
    for stage in ("decode", "queue_wait", "policy", "encode"):
        assert stage_count(samples, stage) == 3, stage
    assert samples[("gr00t_request_stage_seconds_sum", (("stage", "policy"),))] >= 0.03
    assert stage_count(samples, "model") == 0  # this policy reports no stages of its own
    assert samples[("gr00t_batch_size_count", ())] == 3
    assert samples[("gr00t_batch_size_bucket", (("le", "1.0"),))] == 3


def test_a_replaced_get_action_counts_its_policy_calls_in_the_batch_size_histogram():
    """A clamp calling policy.get_action ran the policy on every request; gr00t_batch_size counted none of them while
    the policy stage histogram counted each."""
    policy = NapPolicy()
    with running_server(policy, metrics_port=0) as server, PolicyClient(port=server.port) as client:
        server.register_endpoint("get_action", lambda observation=None, options=None: policy.get_action(observation))
        for _ in range(3):
            client.get_action(observation())
        samples = scrape_settled(server, 3)
    assert stage_count(samples, "policy") == 3
    assert samples[("gr00t_batch_size_count", ())] == 3


def test_a_replaced_get_action_returning_a_bare_action_counts_every_stage():
    """A handler returning the action alone (no [action, info] pair) was answered and counted a policy call, but none
    of its stages reached gr00t_request_stage_seconds: the histograms read no traffic while the server served."""
    policy = NapPolicy()
    with running_server(policy, metrics_port=0) as server, PolicyClient(port=server.port) as client:
        server.register_endpoint("get_action",
                                 lambda observation=None, options=None: policy.get_action(observation)[0])
        for _ in range(3):
            client.call_endpoint("get_action", {"observation": observation()})
        samples = scrape_settled(server, 3)
    assert requests_count(samples, "get_action", "ok") == 3
    for stage in ("decode", "queue_wait", "policy", "encode"):
        assert stage_count(samples, stage) == 3, stage


@pytest.mark.parametrize("name", ["other", "undecoded"])
def test_an_endpoint_cannot_take_a_name_the_metrics_reserve(name):
    """A registered 'other' was counted under one label with the unknown endpoint names clients sent (and
    'undecoded' with the requests whose name could not be read): neither count could be told apart."""
    server = PolicyServer(NapPolicy(), host="127.0.0.1", port=0)
    with pytest.raises(ValueError, match=f"endpoint name '{name}' is reserved: .*'other' and 'undecoded'"):
        server.register_endpoint(name, lambda: {"fine": True}, requires_input=False)
    assert name not in server.endpoints


def test_queue_depth_is_read_while_the_policy_is_busy():
    policy = NapPolicy(nap_s=1.0)
    with running_server(policy, metrics_port=0) as server:
        caller = threading.Thread(target=lambda: PolicyClient(port=server.port).get_action(observation()))
        caller.start()
        assert policy.napping.wait(10)  # a fixed 0.2 s wait was too short for the call to start on a busy machine
        busy = scrape(server)
        caller.join(10)
        idle = scrape(server)
    assert busy[("gr00t_queue_depth", ())] == 1
    assert idle[("gr00t_queue_depth", ())] == 0
    assert idle[("gr00t_sessions", ())] == 0


def test_refused_and_expired_requests_have_their_own_outcomes():
    limits = ServerLimits(max_queued_requests=2)
    with running_server(NapPolicy(nap_s=0.6), metrics_port=0, limits=limits) as server:
        first = threading.Thread(target=lambda: PolicyClient(port=server.port).get_action(observation()))
        first.start()
        time.sleep(0.2)
        gave_up = []

        def hasty_call() -> None:  # waits behind the first; gives up
            with PolicyClient(port=server.port, timeout_ms=300) as hasty:
                try:
                    hasty.get_action(observation())
                except PolicyTimeoutError as exc:
                    gave_up.append(exc)

        hasty = threading.Thread(target=hasty_call)
        hasty.start()
        time.sleep(0.1)
        # the queue holds two, both live (an expired request would have been dropped to make room): refused
        with PolicyClient(port=server.port) as third:
            with pytest.raises(PolicyServerError, match="server busy"):
                third.get_action(observation())
        hasty.join(10)
        assert gave_up, "expected the hasty client to time out"
        first.join(10)
        deadline = time.monotonic() + 5
        while requests_count(scrape(server), "get_action", "expired") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        samples = scrape_settled(server, 3)
    assert requests_count(samples, "get_action", "expired") == 1
    assert requests_count(samples, "get_action", "refused") == 1
    assert requests_count(samples, "get_action", "ok") == 1


def test_two_servers_in_one_process_keep_separate_metrics():
    with running_server(NapPolicy(), metrics_port=0) as one, running_server(NapPolicy(), metrics_port=0) as two:
        with PolicyClient(port=one.port) as client:
            client.get_action(observation())
        assert one.metrics_port != two.metrics_port
        assert requests_count(scrape_settled(one, 1), "get_action", "ok") == 1
        assert requests_count(scrape(two), "get_action", "ok") == 0


def documented_outcomes() -> set:
    """The outcomes docs/serving.md's gr00t_requests_total row lists (its words in parentheses aside)."""
    row = next(line for line in DOCS_SERVING.read_text(encoding="utf-8").splitlines()
               if line.startswith("| `gr00t_requests_total"))
    listed = row.split("; outcome ", 1)[1].split("; endpoints", 1)[0]
    inner = None
    while inner != listed:  # innermost parentheses first
        inner, listed = listed, re.sub(r"\([^()]*\)", "", listed)
    return set(re.findall(r"`(\w+)`", listed))


def test_the_requests_help_lists_the_outcomes_docs_serving_md_lists():
    with running_server(NapPolicy(), metrics_port=0) as server:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
            families = list(prometheus_parser.text_string_to_metric_families(response.read().decode()))
    help_text = next(family.documentation for family in families if family.name == "gr00t_requests")
    listed = help_text.split("outcome (", 1)[1].rsplit(")", 1)[0]
    help_outcomes = {item.split(":", 1)[0].strip() for item in listed.split(", ")}
    assert "undelivered" in documented_outcomes()
    assert help_outcomes == documented_outcomes()


def test_the_metrics_endpoint_closes_with_the_server():
    with running_server(NapPolicy(), metrics_port=0) as server:
        port = server.metrics_port
        scrape(server)
    server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_closing_the_server_ends_its_open_metrics_connections_and_their_threads():
    """A connection open at close() (a slow or trickling peer) was left served by a live thread of the closed server,
    past the 30 s deadline, which close() had stopped."""
    def handler_threads():
        return [t for t in threading.enumerate() if "serve_one" in t.name]

    before = set(handler_threads())
    server = PolicyServer(NapPolicy(), host="127.0.0.1", port=0, metrics_port=0).start()
    peer = socket.create_connection(("127.0.0.1", server.metrics_port), timeout=2)
    try:
        peer.sendall(b"GET /metrics HTTP/1.1\r\n")  # a request not finished yet
        deadline = time.monotonic() + 5
        while not [t for t in handler_threads() if t not in before] and time.monotonic() < deadline:
            time.sleep(0.02)
        server.close()
        assert [t for t in handler_threads() if t not in before] == [], "close() left a metrics connection's thread"
        assert peer.recv(1024) == b"", "close() left a metrics connection open"
    finally:
        peer.close()


def test_closing_the_endpoint_does_not_wait_for_its_poll_interval(monkeypatch):
    """close() wakes the HTTP server's serve_forever instead of waiting for its next poll (0.5 s in
    prometheus_client, made a minute here so that a close that waits for it cannot pass)."""
    import socketserver

    from gr00t_server.serving.metrics import ServerMetrics

    monkeypatch.setattr(socketserver.BaseServer.serve_forever, "__defaults__", (60.0,))
    for host in ("127.0.0.1", "0.0.0.0"):
        metrics = ServerMetrics(lambda: ["get_action"], lambda: 0, lambda: 0, lambda: 0)
        port = metrics.serve(host, 0)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert b"gr00t_requests" in response.read()
        closer = threading.Thread(target=metrics.close, daemon=True)
        closer.start()
        closer.join(20)
        assert not closer.is_alive(), f"close() of a metrics endpoint on {host} waited for serve_forever's poll"
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_no_metrics_port_serves_no_metrics():
    with running_server(NapPolicy()) as server:
        assert server.metrics_port is None


def test_without_prometheus_client_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    server = PolicyServer(NapPolicy(), host="127.0.0.1", port=0, metrics_port=0)
    with pytest.raises(ImportError, match=r"gr00t-server\[metrics\]"):
        server.start()
    server.close()


def test_serve_metrics_port_flag_exposes_the_endpoint(tmp_path):
    import os
    import socket
    import subprocess

    from eval.dataset_factory import make_dataset

    dataset = make_dataset(tmp_path / "ds", lengths=(6,))
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    port, metrics_port = ports
    proc = subprocess.Popen(
        [sys.executable, "-m", "gr00t_server.cli", "serve", "--dataset-path", str(dataset), "--port", str(port),
         "--metrics-port", str(metrics_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or line.startswith("Server is ready"):
                break
        with PolicyClient(port=port, timeout_ms=5000) as client:
            client.get_action({})
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
                text = response.read().decode()
            client.kill_server()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 'gr00t_requests_total{endpoint="get_action",outcome="ok"} 1.0' in text


def test_gauges_drop_idle_sessions_and_quiet_clients_without_waiting_for_a_request():
    """Idle sessions are forgotten, and quiet clients dropped from the gather, only at the next request; the gauges
    read 100 sessions long past --session-idle-s, and 650 active clients with 4 running, while the server idled."""
    limits = ServerLimits(session_idle_s=0.5)
    with running_server(NapPolicy(), metrics_port=0, limits=limits, max_batch_size=4, batch_timeout_ms=5) as server:
        clients = [PolicyClient(port=server.port) for _ in range(3)]
        try:
            for client in clients:
                client.get_action(observation())
            server.sessions.touch("a-session")  # the table a session-keeping policy fills
            busy = scrape(server)
            time.sleep(1.2)  # past session_idle_s and the active-client window (1 s)
            idle = scrape(server)
        finally:
            for client in clients:
                client.close()
    assert busy[("gr00t_active_clients", ())] == 3
    assert busy[("gr00t_sessions", ())] == 1
    assert idle[("gr00t_active_clients", ())] == 0
    assert idle[("gr00t_sessions", ())] == 0


def test_a_get_action_that_expired_in_the_queue_counts_its_wait_in_the_queue_wait_histogram():
    """Only get_actions answered with an action were observed: the one that waited 0.6 s behind a call and then
    expired added nothing to queue_wait, which so read low exactly under overload."""
    with running_server(NapPolicy(nap_s=0.6), metrics_port=0, inline_below_ms=0) as server:
        first = threading.Thread(target=lambda: PolicyClient(port=server.port).get_action(observation()))
        first.start()
        time.sleep(0.2)
        with PolicyClient(port=server.port, timeout_ms=100) as hasty:  # waits behind the first; gives up
            with pytest.raises(PolicyTimeoutError):
                hasty.get_action(observation())
        first.join(10)
        deadline = time.monotonic() + 5
        while requests_count(scrape(server), "get_action", "expired") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        samples = scrape(server)
    assert requests_count(samples, "get_action", "expired") == 1
    assert (stage_count(samples, "decode"), stage_count(samples, "queue_wait")) == (2, 2)
    assert samples[("gr00t_request_stage_seconds_sum", (("stage", "queue_wait"),))] >= 0.3  # the hasty one's wait
    assert (stage_count(samples, "policy"), stage_count(samples, "encode")) == (1, 1)  # it never ran


class FailingPolicy(BasePolicy):
    """Raises for state 5, returns a NaN action for state 7 (refused by the server after the call ran), zeros
    otherwise."""

    def __init__(self) -> None:
        super().__init__(strict=False)

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        value = float(observation["state"]["joints"].reshape(-1)[0])
        if value == 5:
            raise ValueError("state 'joints' 5 is out of this policy's range")
        return {"arm": np.full((1, 16, 3), np.nan if value == 7 else 0.0, np.float32)}, {}

    def reset(self, options=None):
        return {}


@pytest.mark.parametrize("failing", [5.0, 7.0], ids=["policy raised", "NaN action refused"])
def test_a_policy_call_that_ran_and_failed_counts_in_the_policy_histogram(failing):
    """gr00t_batch_size counted the failed call, the policy stage histogram did not: it read fewer calls than ran."""
    with running_server(FailingPolicy(), metrics_port=0, inline_below_ms=0) as server, \
            PolicyClient(port=server.port) as client:
        client.get_action(observation())
        with pytest.raises(PolicyServerError):
            client.get_action(observation(failing))
        samples = scrape_settled(server, 2)
    assert samples[("gr00t_batch_size_count", ())] == 2
    for stage in ("decode", "queue_wait", "policy"):
        assert stage_count(samples, stage) == 2, stage
    assert stage_count(samples, "encode") == 1  # only the action was encoded


def test_get_server_info_reports_the_metrics_port_it_serves_on():
    with running_server(NapPolicy(), metrics_port=0) as server, PolicyClient(port=server.port) as client:
        assert client.get_server_info()["metrics_port"] == server.metrics_port != 0
    with running_server(NapPolicy()) as server, PolicyClient(port=server.port) as client:
        assert client.get_server_info()["metrics_port"] is None


def test_serve_prints_the_metrics_port_it_picked_whatever_the_log_level(tmp_path):
    """--metrics-port 0 picks a free port, shown only in an INFO log line: at --log-level WARNING nowhere."""
    from eval.dataset_factory import make_dataset
    from serving import served

    dataset = make_dataset(tmp_path / "ds", lengths=(6,))
    with served("serve", "--dataset-path", str(dataset), "--port", "0", "--metrics-port", "0",
                "--log-level", "WARNING") as proc:
        shown = [re.fullmatch(r"Metrics: http://127\.0\.0\.1:(\d+)/metrics", line) for line in proc.ready_lines]
        port = next(int(match.group(1)) for match in shown if match)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert b"gr00t_requests" in response.read()


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_metrics_served_off_loopback_warn_that_they_have_no_authentication(caplog, host, warned):
    """The ZeroMQ side had a token; the metrics endpoint beside it on every interface had none, and nothing said."""
    server = PolicyServer(NapPolicy(), host=host, port=0, api_token="s3cret-token", metrics_port=0)
    with caplog.at_level("WARNING", logger="gr00t_server.serving.server"):
        server.start()
    server.close()
    assert (f"serving metrics on {host} port {server.metrics_port} without authentication" in caplog.text) is warned


def test_serve_help_says_the_metrics_endpoint_has_no_authentication():
    import subprocess

    help_text = subprocess.run([sys.executable, "-m", "gr00t_server.cli", "serve", "--help"], capture_output=True,
                               text=True, check=True).stdout
    flag_help = " ".join(help_text.split("\n  --metrics-port PORT", 1)[1].split("--max-message-mb", 1)[0].split())
    assert "no authentication" in flag_help


@pytest.mark.parametrize("host, shown", [("*", "127.0.0.1"), ("0.0.0.0", "127.0.0.1")])
def test_the_printed_metrics_url_of_a_wildcard_host_names_one_a_client_can_open(host, shown, capsys, caplog):
    """`http://*:PORT/metrics` is no URL (curl refused it): the line exists to find a port picked for the user (and
    the INFO log line beside it named another)."""
    with caplog.at_level(logging.INFO, logger="gr00t_server"), \
            running_server(NapPolicy(), host=host, metrics_port=0) as server:
        deadline = time.monotonic() + 10
        port = server.metrics_port
        printed = ""
        while time.monotonic() < deadline and "Metrics:" not in printed:
            printed += capsys.readouterr().out
            time.sleep(0.05)
        assert f"Metrics: http://{shown}:{port}/metrics" in printed
        with urllib.request.urlopen(f"http://{shown}:{port}/metrics", timeout=5) as response:
            assert response.status == 200
    assert f"metrics at http://{shown}:{port}/metrics" in caplog.text
