"""PolicyServer shutdown: kill, SIGINT, SIGTERM, stop() and context exit all end run() and free the port."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from reference_peer import EchoPolicy, running_server

from gr00t_client import PolicyClient
from gr00t_server.server import PolicyServer

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SERVER_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from reference_peer import EchoPolicy
    from gr00t_server.server import PolicyServer
    with PolicyServer(EchoPolicy(), host="127.0.0.1", port=0) as server:
        server.run()
    print("run returned", flush=True)
    """
)


def assert_port_is_free(port):
    """The port can be bound again by a new server."""
    server = PolicyServer(EchoPolicy(), host="127.0.0.1", port=port)
    server.start()
    server.close()


def start_server_process():
    process = subprocess.Popen(
        [sys.executable, "-u", "-c", _SERVER_SCRIPT, TESTS_DIR],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = process.stdout.readline()
    match = re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", line)
    if not match:
        process.kill()
        pytest.fail(f"server did not start: {line!r}")
    return process, int(match.group(1))


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "kill"])
def test_server_process_shuts_down_cleanly_and_frees_the_port(how):
    process, port = start_server_process()
    try:
        with PolicyClient(host="127.0.0.1", port=port, timeout_ms=5000) as client:
            assert client.ping()
            if how == "kill":
                client.kill_server()
            else:
                process.send_signal(getattr(signal, how))
        output, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "run returned" in output and "Traceback" not in output
    assert_port_is_free(port)


def test_kill_ends_run_in_a_thread_and_frees_the_port():
    server = PolicyServer(EchoPolicy(), port=0).start()
    thread = threading.Thread(target=server.run)
    thread.start()
    with PolicyClient(port=server.port, timeout_ms=5000) as client:
        assert client.kill_server() is None  # the ack arrives before the socket closes
    thread.join(5)
    assert not thread.is_alive()
    assert_port_is_free(server.port)


def test_context_exit_stops_a_run_in_another_thread_and_frees_the_port():
    with PolicyServer(EchoPolicy(), port=0) as server:
        thread = threading.Thread(target=server.run)
        thread.start()
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            assert client.ping()
    thread.join(5)
    assert not thread.is_alive()
    assert_port_is_free(server.port)


def test_context_exit_without_run_frees_the_port():
    with PolicyServer(EchoPolicy(), port=0) as server:
        port = server.port
    assert_port_is_free(port)


def test_stop_before_run_starts_is_not_lost():
    server = PolicyServer(EchoPolicy(), port=0).start()
    server.stop()
    started = time.monotonic()
    server.run()
    assert time.monotonic() - started < 2.0
    assert_port_is_free(server.port)


def test_stop_returns_run_within_a_poll_interval():
    with running_server(EchoPolicy(), poll_interval_ms=50) as server:
        port = server.port
    assert_port_is_free(port)
