"""`gr00t-server serve` holds its port from before the load (minutes for a 3B model) until it binds it: a second serve
is refused at once, while a client started meanwhile is refused at connect (ZeroMQ retries every 100 ms) and answered
once the server is up. A listening placeholder took those clients' connects and dropped later ones, which the kernel
retried only after 1, 3, 7, 15 s...; a port left in TIME_WAIT by a server just stopped still serves. Real sockets and a
real serve on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from eval.dataset_factory import make_dataset
from gr00t_client import PolicyClient
from gr00t_server.cli_errors import CliError
from gr00t_server.serve_checks import _hold_bind_address
from serving import READY, free_port, wait_ready

# serve, its load held until the file argv[2] exists (argv[3] is written once the port is held and the load began)
_SERVE_WITH_A_HELD_LOAD = """
import os, sys, time
from pathlib import Path
import gr00t_server.serve_cli as serve_cli, gr00t_server.cli as cli
load = serve_cli._load_policy
def held_load(*args, **kwargs):
    Path(sys.argv[3]).touch()
    while not Path(sys.argv[2]).exists():
        time.sleep(0.05)
    return load(*args, **kwargs)
serve_cli._load_policy = held_load
sys.exit(cli.main(["serve", "--dataset-path", sys.argv[1], "--port", sys.argv[4]]))
"""


def test_a_connect_to_a_held_port_is_refused_and_a_second_hold_is_refused_naming_the_port():
    port = free_port()
    held = _hold_bind_address("127.0.0.1", port)
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        with pytest.raises(CliError, match=f"--port {port}: the port is in use on 127.0.0.1 \\(another server\\?\\)"):
            _hold_bind_address("127.0.0.1", port)
    finally:
        held.close()


def test_a_port_a_listener_holds_is_refused():
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ's
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(CliError, match=f"--port {port}: the port is in use"):
            _hold_bind_address("127.0.0.1", port)


def test_a_port_left_in_time_wait_by_a_stopped_server_is_not_refused():
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ's: its TIME_WAIT ends let it bind
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        accepted, _ = listener.accept()
        accepted.close()  # the server side closes first: its end of the connection stays in TIME_WAIT on `port`
        client.recv(1)
        client.close()
    held = _hold_bind_address("127.0.0.1", port)
    if held is not None:
        held.close()


def test_a_client_started_while_serve_loads_is_refused_at_connect_then_answered_and_a_second_serve_is_refused(
        tmp_path):
    dataset = make_dataset(tmp_path / "ds", lengths=(12, 9))
    port, go, loading = free_port(), tmp_path / "go", tmp_path / "loading"
    proc = subprocess.Popen([sys.executable, "-c", _SERVE_WITH_A_HELD_LOAD, str(dataset), str(go), str(loading),
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while not loading.exists():
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):  # so ZeroMQ retries every 100 ms, not at the kernel's SYN retries
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        second = subprocess.run([sys.executable, "-m", "gr00t_server.cli", "serve", "--dataset-path", str(dataset),
                                 "--port", str(port)], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f"--port {port}: the port is in use on" in second.stderr, \
            second.stdout + second.stderr
        answers = []
        with PolicyClient(port=port, timeout_ms=60000) as client:
            asking = threading.Thread(target=lambda: answers.append(client.ping()))
            asking.start()  # started while the server loads
            go.touch()
            wait_ready(proc)
            asking.join(60)
        assert answers == [True]
    finally:
        go.touch()
        proc.terminate()
        proc.wait(timeout=30)
