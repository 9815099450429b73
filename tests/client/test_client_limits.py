"""PolicyClient limits: requests over the server's size cap are refused before sending; IPv6 hosts work."""

import socket
import subprocess
import sys

import numpy as np
import pytest
from descriptor_limits import run_near_the_descriptor_limit
from reference_peer import EchoPolicy, ReferenceServer, libero_like_observation, running_server

from gr00t_client import PolicyClient, PolicyServerError
from gr00t_client.client import MessageTooLargeError

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


def small_observation():
    return libero_like_observation(height=8, width=8)


def big_observation():
    """One 196 KB camera frame: a single array frame over CAP, which the server's ZeroMQ would drop unanswered."""
    return libero_like_observation(height=256, width=256, cameras=["image"])


@pytest.fixture
def capped_server():
    with running_server(EchoPolicy(), max_message_bytes=CAP) as server:
        yield server


def test_the_client_learns_the_servers_limit_when_it_negotiates(capped_server):
    with PolicyClient(port=capped_server.port, timeout_ms=5000) as client:
        assert client.server_max_message_bytes is None  # nothing asked yet
        client.get_modality_config()
        assert client.server_max_message_bytes == CAP


@pytest.mark.parametrize("wire", ["auto", "reference"])
def test_an_oversize_request_is_refused_before_sending_with_size_limit_and_remedy(capped_server, wire):
    with PolicyClient(port=capped_server.port, timeout_ms=5000, wire=wire) as client:
        client.get_modality_config()
        received = capped_server.stats.requests
        with pytest.raises(MessageTooLargeError) as caught:
            client.get_action(big_observation())
        error = caught.value
        assert error.limit == CAP and error.size > CAP and error.endpoint == "get_action"
        message = str(error)
        assert f"of {error.size} bytes" in message and f"limit of {CAP} bytes" in message
        assert "--max-message-mb" in message and "smaller" in message
        # The request was not sent; the limit was asked for once more first (a restarted server may allow it now)
        assert capped_server.stats.requests == received + 1
        assert capped_server.policy.calls == 0


def test_the_refusal_is_a_policy_server_error(capped_server):
    with PolicyClient(port=capped_server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match=f"exceeds this server's limit of {CAP} bytes"):
            client.get_action(big_observation())  # the first call negotiates, then refuses


def test_the_client_stays_usable_after_a_refused_request(capped_server):
    with PolicyClient(port=capped_server.port, timeout_ms=5000) as client:
        with pytest.raises(MessageTooLargeError):
            client.get_action(big_observation())
        action, _ = client.get_action(small_observation())
        assert action["x"].shape == (1, 16, 1)
        assert client.ping()


def test_requests_within_the_limit_are_sent_in_both_wire_formats(capped_server):
    for wire in ("auto", "reference"):
        with PolicyClient(port=capped_server.port, timeout_ms=5000, wire=wire) as client:
            observation = libero_like_observation(height=64, width=64)  # 2 x 12 KB of images
            assert client.get_action(observation)[0]["x"].shape == (1, 16, 1)


def test_a_server_that_does_not_report_a_limit_is_sent_everything():
    with running_server(EchoPolicy(), max_message_bytes=CAP) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as probe:
            info = probe.get_server_info()
        del info["max_message_bytes"]  # as an older gr00t-server answers
        server.register_endpoint("get_server_info", lambda: info, requires_input=False)
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            observation = libero_like_observation(height=120, width=120)  # frames fit, their total does not
            with pytest.raises(PolicyServerError, match=f"limit of {CAP} bytes") as caught:
                client.get_action(observation)
            assert not isinstance(caught.value, MessageTooLargeError)  # the server's refusal, not ours
            assert client.server_max_message_bytes is None


def test_a_reference_server_has_no_limit_and_gets_large_requests():
    def get_action(observation, options=None):
        return {"x": np.zeros((1, 16, 1), np.float32)}, {"pixels": int(observation["video"]["image"].size)}

    with ReferenceServer({"get_action": get_action}) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            _, info = client.get_action(libero_like_observation(height=512, width=512))
            assert info["pixels"] == 512 * 512 * 3
            assert client.server_max_message_bytes is None


# --- IPv6 hosts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_host_is_bracketed_in_the_address(host):
    client = PolicyClient(host=host, port=5555)
    try:
        assert client.host == "::1"
        assert client.address == "tcp://[::1]:5555"
    finally:
        client.close()


def test_ipv4_hosts_and_names_are_left_as_they_are():
    for host in ("127.0.0.1", "localhost", "robot.local"):
        client = PolicyClient(host=host, port=5555)
        try:
            assert client.address == f"tcp://{host}:5555"
        finally:
            client.close()


def test_an_ipv6_host_with_a_zone_id_is_taken():
    client = PolicyClient(host="fe80::1%eth0", port=5555)
    try:
        assert client.address == "tcp://[fe80::1%eth0]:5555"
    finally:
        client.close()


@pytest.mark.parametrize("written", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}"])
def test_a_host_holding_a_port_is_refused_at_once_and_told_to_pass_port(written):
    # Before, any colon made an IPv6 literal: tcp://[127.0.0.1:5555]:5555 waited out the timeout, blaming the port.
    with running_server(EchoPolicy()) as server:
        host = written.format(port=server.port)
        with pytest.raises(ValueError) as error:
            PolicyClient(host=host, port=server.port, timeout_ms=1500)
        assert f"host {host!r} is not a host name or an IP address: it holds a ':port'" in str(error.value)
        assert f"port={server.port}" in str(error.value)


@pytest.mark.parametrize("url, advice", [
    ("tcp://127.0.0.1:5555", "(host='127.0.0.1', port=5555)"),  # what the server prints at start-up
    ("tcp://127.0.0.1", "(host='127.0.0.1')"),
    ("tcp://[::1]:5555", "(host='::1', port=5555)"),
    ("TCP://robot-server.local:6000", "(host='robot-server.local', port=6000)"),
])
def test_a_tcp_endpoint_url_as_host_is_refused_with_advice_that_works(url, advice):
    # The advice kept the scheme (host='tcp://127.0.0.1', which the same check refused again); without a port, or
    # for another transport, the URL was said to hold a ':port'.
    with pytest.raises(ValueError) as error:
        PolicyClient(host=url, port=5555)
    assert str(error.value) == (f"host {url!r} is an endpoint URL, not a host name or an IP address: pass the host "
                                f"alone (no scheme) and the port as port= {advice}")


@pytest.mark.parametrize("url, scheme", [("ipc:///tmp/gr00t.sock", "ipc"), ("inproc://policy", "inproc")])
def test_an_endpoint_url_of_another_transport_is_refused_as_not_tcp(url, scheme):
    with pytest.raises(ValueError) as error:
        PolicyClient(host=url, port=5555)
    assert str(error.value) == (f"host {url!r} is an endpoint URL of the {scheme}:// transport, which is not taken: "
                                "only TCP is, as a host name or an IP address and the port as port= (e.g. "
                                "host='127.0.0.1', port=5555)")


@needs_ipv6
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_a_round_trip_over_ipv6_loopback(host):
    with running_server(EchoPolicy(), host="::1") as server:
        with PolicyClient(host=host, port=server.port, timeout_ms=5000) as client:
            assert client.ping()
            action, info = client.get_action(small_observation(), {"tag": "v6"})
            assert action["x"].shape == (1, 16, 1) and info["tag"] == "v6"
            assert client.get_server_info()["server"] == "gr00t-server"


@needs_ipv6
def test_a_timeout_on_an_ipv6_host_names_the_bracketed_address():
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]  # bound but not listening: nothing answers
        with PolicyClient(host="::1", port=port, timeout_ms=200) as client:
            with pytest.raises(TimeoutError, match=rf"\[::1\]:{port}"):
                client.get_action(small_observation())


def test_the_clients_of_a_process_share_one_zeromq_context():
    """A context per client cost 2 native threads and ~9 descriptors each (300 clients: 606 threads)."""
    clients = [PolicyClient("127.0.0.1", 1, timeout_ms=100) for _ in range(3)]
    try:
        assert len({id(client._context) for client in clients}) == 1
        clients[0].close()
        assert not clients[1]._context.closed  # closing one client leaves the others' context alone
    finally:
        for client in clients:
            client.close()


FD_EXHAUSTION = r"""
import os, resource, sys
from gr00t_client import PolicyClient
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
port = int(sys.argv[1])
first = PolicyClient("127.0.0.1", port, timeout_ms=2000)
assert first.ping()
held = []
while True:  # the rest of the descriptor table used up (other code, a leak, many cameras)
    try:
        held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        break
for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 2):  # descriptors left free
    os.close(held.pop())
second = PolicyClient("127.0.0.1", port, timeout_ms=300)
try:
    second.get_modality_config()
    print("served")
except (ConnectionError, TimeoutError) as exc:
    print("refused:", exc)
print("alive")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux descriptor limits")
def test_a_new_client_out_of_file_descriptors_is_refused_and_the_process_lives(tmp_path):
    """Its own new context's I/O thread could not get a descriptor: libzmq aborted the process (SIGABRT, exit 134,
    no Python error) at the 114th live client under a 1024 limit (audit12 footprint note)."""
    script = tmp_path / "exhaust.py"
    script.write_text(FD_EXHAUSTION)
    with running_server(EchoPolicy()) as server:
        done = subprocess.run([sys.executable, str(script), str(server.port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.rstrip().endswith("alive")
    assert "refused: cannot connect to" in done.stdout and "Too many open files" in done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux descriptor limits")
def test_a_client_out_of_file_descriptors_says_which_limit_to_raise_and_how(tmp_path):
    """'cannot connect to ...: Too many open files' blamed the connection; 500 clients under the usual soft limit of
    1024 failed without saying that each holds about 4 descriptors, nor which limit to raise."""
    script = tmp_path / "exhaust.py"
    script.write_text(FD_EXHAUSTION)
    with running_server(EchoPolicy()) as server:
        done = subprocess.run([sys.executable, str(script), str(server.port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    refusal = next(line for line in done.stdout.splitlines() if line.startswith("refused:"))
    assert "(soft limit 256, hard limit 256)" in refusal and "each PolicyClient holds about 4" in refusal
    assert "ulimit -n" in refusal and "resource.setrlimit" in refusal


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux descriptor limits")
def test_connects_that_found_no_descriptor_say_so_not_that_nothing_listens(tmp_path):
    """With 3 descriptors free the socket was made but not its TCP connection: the timeout blamed a server that was up
    ('connection refused (nothing listening on that port?)') and said nothing of the descriptor limit."""
    script = tmp_path / "exhaust.py"
    script.write_text(FD_EXHAUSTION)
    with running_server(EchoPolicy()) as server:
        done = subprocess.run([sys.executable, str(script), str(server.port), "3"], capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    refusal = next(line for line in done.stdout.splitlines() if line.startswith("refused:"))
    assert "did not answer 'get_modality_config'" in refusal and "no descriptor was left to connect with" in refusal
    assert "(soft limit 256, hard limit 256)" in refusal and "ulimit -n" in refusal


MANY_CLIENTS = r"""
import resource, sys
from gr00t_client import PolicyClient
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
clients = [PolicyClient("127.0.0.1", int(sys.argv[1]), timeout_ms=10000) for _ in range(400)]
served = sum(bool(client.ping()) for client in clients)
for client in clients:
    client.close()
print("served", served)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux descriptor limits")
def test_four_hundred_live_clients_in_one_process_are_served(tmp_path):
    """The shared context kept ZeroMQ's default of 1023 sockets, 3 per client: the 342nd client was refused 'Too many
    open files' whatever the descriptor limit (each client's own context had its own 1023 before; audit12 review)."""
    resource = pytest.importorskip("resource")
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4096:
        pytest.skip("the hard open-file limit leaves no room for 400 clients")
    script = tmp_path / "many.py"
    script.write_text(MANY_CLIENTS)
    with running_server(EchoPolicy()) as server:
        done = subprocess.run([sys.executable, str(script), str(server.port)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "served 400", done.stdout


FIRST_CALL_NEAR_THE_LIMIT = r"""
from gr00t_client import PolicyClient
held = leave_free_descriptors(int(sys.argv[2]))
try:
    PolicyClient("127.0.0.1", int(sys.argv[1]), timeout_ms=300).get_modality_config()
    print("served")
except (ConnectionError, TimeoutError) as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("free", range(1, 9))
def test_the_first_call_of_a_process_near_its_descriptor_limit_is_refused_in_words_not_aborted(free):
    """The process's first call starts the shared context's threads: with fewer than 4 descriptors free, libzmq
    aborted the process in its I/O thread (SIGABRT, exit 134, no Python error)."""
    with running_server(EchoPolicy()) as server:
        done = run_near_the_descriptor_limit(FIRST_CALL_NEAR_THE_LIMIT, server.port, free)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    if done.stdout.strip() != "served":
        assert done.stdout.startswith("refused:") and "soft limit 64" in done.stdout and "ulimit -n" in done.stdout
