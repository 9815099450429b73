"""A peer that names its sockets with the routing ids libzmq generates for clients that set none (b"\\x00" and a 4-byte
counter that started at 0x6b8b4567, glibc's first rand(), in every fresh server) made the server's ROUTER generate
an id already in use, and libzmq's assertion aborted the process: no message or API token was needed. A real
`gr00t-server serve` (a replay) in a subprocess, real sockets on loopback."""

from __future__ import annotations

import struct
import time

import zmq

from eval.dataset_factory import make_dataset
from gr00t_client import PolicyClient
from serving import free_port, served

UNSEEDED_FIRST_ID = 0x6B8B4567  # libzmq's first generated routing id counter in a process that never seeded rand()


def test_sockets_named_with_the_ids_libzmq_would_generate_do_not_abort_the_server(tmp_path):
    dataset = make_dataset(tmp_path / "ds", lengths=(4,), cameras=())
    port = free_port()
    context = zmq.Context()
    sockets = []
    try:
        with served("serve", "--dataset-path", str(dataset), "--port", str(port), "--api-token", "secret") as server:
            for offset in range(4):  # named as the ids the ROUTER would give the next plain clients
                named = context.socket(zmq.DEALER)
                named.setsockopt(zmq.LINGER, 0)
                named.setsockopt(zmq.ROUTING_ID, b"\x00" + struct.pack(">I", UNSEEDED_FIRST_ID + offset))
                named.connect(f"tcp://127.0.0.1:{port}")
                sockets.append(named)
            time.sleep(0.5)
            for _ in range(6):  # plain clients (a robot's PolicyClient is one)
                plain = context.socket(zmq.DEALER)
                plain.setsockopt(zmq.LINGER, 0)
                plain.connect(f"tcp://127.0.0.1:{port}")
                sockets.append(plain)
                time.sleep(0.1)
            with PolicyClient("127.0.0.1", port, timeout_ms=10000, api_token="secret") as client:
                assert client.ping()
            assert server.poll() is None, "the server exited"
    finally:
        for sock in sockets:
            sock.close()
        context.term()
