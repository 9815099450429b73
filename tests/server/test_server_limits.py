"""PolicyServer limits: the message size cap (reported, enforced, survivable) and IPv6 binds, on real sockets."""

import socket

import pytest
import zmq
from reference_peer import EchoPolicy, ReferenceClient, libero_like_observation, raw_round_trip, ref_packb, ref_unpackb, running_server

from gr00t_client import PolicyClient, PolicyServerError, codec
from gr00t_server.server import PolicyServer, is_loopback_host

CAP = 64 * 1024


def has_ipv6_loopback() -> bool:
    """True when this machine can bind ::1 (containers often have IPv6 switched off)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except (OSError, AttributeError):
        return False


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")


def ipv6_round_trip(port, frames, timeout_ms=5000):
    """Send raw frames from a fresh IPv6 REQ socket to [::1]:port; the reply frames, or None on timeout."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IPV6, 1)
    try:
        sock.connect(f"tcp://[::1]:{port}")
        sock.send_multipart([frames] if isinstance(frames, bytes) else list(frames))
        return sock.recv_multipart() if sock.poll(timeout_ms) else None
    finally:
        sock.close(linger=0)


def ping_of_exactly(size):
    """A reference-format ping request padded (with an ignored field) to exactly `size` bytes."""
    for pad in range(size - 64, size):
        message = ref_packb({"endpoint": "ping", "pad": b"\x00" * pad})
        if len(message) == size:
            return message
    raise AssertionError(f"cannot build a ping of exactly {size} bytes")


def small_observation():
    return libero_like_observation(height=8, width=8)


# --- message size cap -------------------------------------------------------------------------------


def test_get_server_info_reports_the_size_limit():
    with running_server(EchoPolicy(), max_message_bytes=CAP) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            assert client.get_server_info()["max_message_bytes"] == CAP


def test_a_message_of_exactly_the_limit_is_served():
    with running_server(EchoPolicy(), max_message_bytes=CAP) as server:
        reply = raw_round_trip(server.port, ping_of_exactly(CAP))
        assert reply is not None and ref_unpackb(reply[0])["status"] == "ok"


def test_a_frame_over_the_limit_gets_an_error_reply_naming_it_up_to_twice_the_limit():
    """A reference client's oversized request was dropped by ZeroMQ unanswered: its user saw only a timeout."""
    with running_server(EchoPolicy(), max_message_bytes=CAP) as server:
        for size in (CAP + 1, 2 * CAP):
            reply = raw_round_trip(server.port, ping_of_exactly(size), timeout_ms=5000)
            assert reply is not None
            error = ref_unpackb(reply[0])["error"]
            assert f"message of {size} bytes exceeds this server's limit of {CAP} bytes" in error
            assert "--max-message-mb" in error
        assert server.policy.calls == 0


def test_oversize_frames_from_raw_senders_are_dropped_and_every_other_client_is_still_served():
    with running_server(EchoPolicy(), max_message_bytes=CAP) as server:
        for _ in range(3):  # several offenders in a row, each dropped with its connection
            assert raw_round_trip(server.port, ping_of_exactly(2 * CAP + 1), timeout_ms=300) is None
        with ReferenceClient(server.port) as reference:
            assert reference.call_endpoint("ping", requires_input=False)["status"] == "ok"
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            assert client.get_action(small_observation())[0]["x"].shape == (1, 16, 1)
        assert server.policy.calls == 1


def test_a_multipart_message_over_the_limit_in_total_gets_an_error_reply_and_is_not_decoded():
    with running_server(EchoPolicy(), max_message_bytes=CAP) as server:
        half = b"\x00" * (CAP // 2)  # every frame fits; the three together do not
        reply = raw_round_trip(server.port, [codec.MULTIPART_MAGIC, ref_packb({"endpoint": "ping"}), half, half])
        assert reply is not None
        message = codec.decode_multipart(reply)
        assert message["ok"] is False
        assert f"exceeds this server's limit of {CAP} bytes" in message["error"]
        assert "--max-message-mb" in message["error"]
        assert raw_round_trip(server.port, ref_packb({"endpoint": "ping"})) is not None


# --- IPv6 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host,loopback",
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("::10", False),
        ("192.0.2.7", False),
        ("robot.example.com", False),
    ],
)
def test_loopback_host_detection(host, loopback):
    assert is_loopback_host(host) is loopback


@needs_ipv6
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_server_binds_ipv6_loopback_in_either_spelling(host):
    with running_server(EchoPolicy(), host=host) as server:
        assert server.host == "::1"
        assert server.bound_endpoint == f"tcp://[::1]:{server.port}"
        reply = ipv6_round_trip(server.port, ref_packb({"endpoint": "ping"}))
        assert reply is not None and ref_unpackb(reply[0])["status"] == "ok"


@needs_ipv6
def test_our_client_round_trips_over_ipv6_and_kill_from_ipv6_loopback_is_honoured():
    with running_server(EchoPolicy(), host="::1") as server:
        with PolicyClient(host="::1", port=server.port, timeout_ms=5000) as client:
            action, _ = client.get_action(small_observation())
            assert action["x"].shape == (1, 16, 1)
            client.kill_server()  # the peer address is ::1, a loopback peer
        assert server._run_done.wait(5)


@needs_ipv6
def test_binding_a_taken_ipv6_port_raises_os_error_naming_the_endpoint():
    with running_server(EchoPolicy(), host="::1") as server:
        with pytest.raises(OSError, match=rf"tcp://\[::1\]:{server.port}"):
            PolicyServer(EchoPolicy(), host="::1", port=server.port).start()


@needs_ipv6
def test_a_taken_metrics_port_on_an_ipv6_host_is_named_bracketed():
    """'cannot serve metrics on ::1:PORT' read as another address; the server's own bind error brackets its host."""
    pytest.importorskip("prometheus_client")
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = PolicyServer(EchoPolicy(), host="::1", port=0, metrics_port=port)
        try:
            with pytest.raises(OSError, match=rf"cannot serve metrics on \[::1\]:{port}: "):
                server.start()
        finally:
            server.stop()


@needs_ipv6
def test_gr00t_eval_names_an_ipv6_server_that_did_not_answer_as_an_address_it_reads_back():
    """'no policy server answered at tcp://::1:PORT': pasted back into --policy-client-host, host '::1:PORT' on 5555."""
    from gr00t_eval.cli import build_parser
    from gr00t_eval.connection import open_client
    from gr00t_eval.ray_runner import parse_servers

    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as closed:
        closed.bind(("::1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections to it are refused
        args = build_parser().parse_args(["rollout", "--env-name", "x", "--timeout-ms", "500"])
        with pytest.raises(SystemExit) as failed:
            open_client("::1", port, args)
    address = str(failed.value).split("no policy server answered at ")[1].split(" ")[0]
    assert address == f"tcp://[::1]:{port}"
    assert [(s.host.strip("[]"), s.port) for s in parse_servers(address, 5555)] == [("::1", port)]


@needs_ipv6
def test_an_ipv6_server_refuses_oversize_requests_like_an_ipv4_one():
    with running_server(EchoPolicy(), host="::1", max_message_bytes=CAP) as server:
        with PolicyClient(host="[::1]", port=server.port, timeout_ms=5000) as client:
            with pytest.raises(PolicyServerError, match=f"limit of {CAP} bytes"):
                client.get_action(libero_like_observation(height=256, width=256))
            assert client.ping()
