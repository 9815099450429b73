"""Servers for the tests: a PolicyServer in a thread (running_server), one restarted on its port (RestartableServer) and
`gr00t-server` subprocesses (served)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import zmq

from gr00t_client import BasePolicy
from gr00t_server.policies.replay import ReplayPolicy
from gr00t_server.server import PolicyServer


@contextlib.contextmanager
def running_server(policy: BasePolicy, **kwargs: Any) -> Iterator[PolicyServer]:
    """Start a PolicyServer on a random loopback port, serve it in a thread, and always stop it."""
    server = PolicyServer(policy, **{"host": "127.0.0.1", "port": 0, **kwargs})
    server.start()
    thread = threading.Thread(target=server.run, name="policy-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(10)
        assert not thread.is_alive(), "PolicyServer.run() did not return after stop()"


@contextlib.contextmanager
def stopped_while_it_hangs(policy: Any) -> Iterator[PolicyServer]:
    """A served `policy` whose `hanging` event stops the server (as Ctrl-C would) while that call runs: the call is
    answered 'server is shutting down' after 0.3 s. `policy.release` is set at the end, ending the hung call."""
    try:
        with running_server(policy, inline_below_ms=0, shutdown_timeout_s=0.3) as server:
            def stop_while_it_hangs() -> None:
                if policy.hanging.wait(30):
                    server.stop()

            threading.Thread(target=stop_while_it_hangs, daemon=True).start()
            yield server
    finally:
        policy.release.set()


class ReplayOfAnyCopy(ReplayPolicy):
    """A replay whose identity names no dataset hashes (a server that does not say which dataset it serves): open-loop
    cannot refuse another or a damaged copy of its dataset before the run, and checks each trajectory on its own."""

    def identity(self):
        return {k: v for k, v in super().identity().items() if not k.startswith("dataset_")}


READY = "Server is ready and listening on tcp://"
SERVER_CLI = [sys.executable, "-c", "import sys; from gr00t_server.cli import main; sys.exit(main())"]



class NoServer:
    """Stands in for PolicyServer (monkeypatched over `gr00t_server.server.PolicyServer`): records the policy and
    arguments `serve` built it with in `NoServer.built`, binds nothing."""

    built: Dict[str, Any] = {}
    left_policy_call_running = False  # read by serve after run()

    def __init__(self, policy: Any, **kwargs: Any) -> None:
        NoServer.built = {"policy": policy, **kwargs}
        self.batching_enabled = kwargs.get("max_batch_size", 1) > 1 and getattr(policy, "supports_batching", False)

    def start(self) -> None:
        pass

    def run(self) -> None:
        pass

def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(*args: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """`gr00t-server ARGS...` in a subprocess, stdout and stderr merged into one text pipe."""
    return subprocess.Popen([*SERVER_CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env or os.environ.copy())


def wait_ready(proc: subprocess.Popen, timeout_s: float = 60.0) -> List[str]:
    """The lines a server printed up to and including its ready line; kills it and fails if that never comes."""
    lines: List[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith(READY):
            return lines
    proc.kill()
    raise AssertionError("server never printed the ready line:\n" + "\n".join(lines))


@contextlib.contextmanager
def served(*args: str, timeout_s: float = 120.0) -> Iterator[subprocess.Popen]:
    """A `gr00t-server` subprocess that is ready on entry and terminated (then killed) on exit; its further
    output is drained in a thread so a chatty server never blocks on a full pipe. `proc.ready_lines`: its start-up
    block, up to and including the ready line."""
    proc = start_serve(*args)
    proc.ready_lines = wait_ready(proc, timeout_s)
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


class RestartableServer:
    """A PolicyServer in a thread that can be restarted on the same port with a fresh policy (no sessions kept)."""

    def __init__(self, make_policy):
        self.make_policy = make_policy
        self.port = 0
        self.restarts = 0
        self._start()

    def _start(self):
        self.server = PolicyServer(self.make_policy(), host="127.0.0.1", port=self.port)
        self.server.start()
        self.port = self.server.port
        # Connections accepted, read by restart(): set up before run() owns the socket, closed before close() ends
        # the context (which waits for every socket of it).
        self._accepted = self.server._transport.socket.get_monitor_socket(zmq.EVENT_ACCEPTED)
        self.thread = threading.Thread(target=self.server.run, name="policy-server", daemon=True)
        self.thread.start()

    def stop(self):
        self._accepted.close(linger=0)
        self.server.close()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def restart(self, reconnecting: int = 0, while_down=None):
        """What a supervisor does after a crash: the same server again on the same port, its sessions gone.

        With `reconnecting` clients connected to the old server, returns once that many have connected to the new
        one: a request sent before a client's ZeroMQ has seen the old connection close goes into it and is lost, and
        the client rightly raises ReplyLostError, which is not what a test of the restarted server is about.
        `while_down` is called between the stop and the start (what clients do while no server is up)."""
        self.stop()
        if while_down is not None:
            while_down()
        self._start()
        self.restarts += 1
        for _ in range(reconnecting):
            if not self._accepted.poll(10_000):
                raise AssertionError(f"no client connected to the restarted server within 10 s (awaited {reconnecting})")
            self._accepted.recv_multipart()


def forward_until_closed(frontend, backend):
    """zmq.proxy (a ROUTER-DEALER broker in front of the server) until its context is terminated."""
    try:
        zmq.proxy(frontend, backend)
    except zmq.ContextTerminated:
        pass
    frontend.close(0)
    backend.close(0)


@contextlib.contextmanager
def router_dealer_broker() -> Iterator[Tuple[int, int]]:
    """A ROUTER-DEALER broker on loopback (zmq.proxy in a thread): (the port clients connect to, the port a server
    behind it binds). The server behind it can be restarted or replaced unseen by the clients' sockets."""
    front, back = free_port(), free_port()
    context = zmq.Context()
    frontend, backend = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    for sock in (frontend, backend):
        sock.setsockopt(zmq.LINGER, 0)
    frontend.bind(f"tcp://127.0.0.1:{front}")
    backend.connect(f"tcp://127.0.0.1:{back}")
    threading.Thread(target=forward_until_closed, args=(frontend, backend), daemon=True).start()
    try:
        yield front, back
    finally:
        context.term()  # ends the proxy, which then closes its sockets

