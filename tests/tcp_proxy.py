"""A TCP forwarder on 127.0.0.1 for tests of the network between a client and a server: it adds a fixed delay each
way, can hold back one reply (a latency spike), and, while its server is down, accepts connections and closes them
at once, as docker -p, ssh -L or kubectl port-forward do."""

from __future__ import annotations

import heapq
import socket
import threading
import time
from typing import List, Optional, Tuple


class TcpProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`upstream_port`.

    `delay_s`: every chunk read is written on this long after it was read, in order, both ways. `spike_s`: the next
    chunk from the server is held this much longer (once). `accepted`: connections accepted so far; `bytes_up`: bytes
    read from the clients so far."""

    def __init__(self, upstream_port: int, delay_s: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.spike_s = 0.0
        self.accepted = 0
        self.bytes_up = 0  # bytes read from clients so far
        self._lock = threading.Lock()
        self._sockets: List[socket.socket] = []
        self._shut: List[socket.socket] = []  # forwarded sockets a pipe has shut down (its peer closed)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stopped = True
        self._listener.close()
        self.cut()

    def cut(self) -> None:
        """Close every forwarded connection and keep listening (a network blip: the clients' ZeroMQ reconnects)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
            for sock in sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def open_connections(self) -> int:
        """Forwarded connections neither end has closed yet."""
        with self._lock:
            return sum(1 for sock in self._sockets if sock not in self._shut) // 2

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:  # the server is down: accepted, then closed, as a port forwarder does
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            self._pipe(client, server, down=False)
            self._pipe(server, client, down=True)

    def _pipe(self, source: socket.socket, sink: socket.socket, down: bool) -> None:
        due: List[Tuple[float, int, Optional[bytes]]] = []  # (when, order, chunk; None: the source closed)
        ready = threading.Condition()

        def read() -> None:
            order = 0
            while True:
                try:
                    chunk: Optional[bytes] = source.recv(65536)
                except OSError:
                    chunk = None
                chunk = chunk or None
                if not down and chunk is not None:
                    self.bytes_up += len(chunk)
                extra = 0.0
                if down and chunk is not None and self.spike_s:
                    extra, self.spike_s = self.spike_s, 0.0
                with ready:
                    when = time.monotonic() + self.delay_s + extra
                    if due:  # order is kept: a chunk is never written before the one read before it
                        when = max(when, max(item[0] for item in due))
                    heapq.heappush(due, (when, order, chunk))
                    order += 1
                    ready.notify()
                if chunk is None:
                    return

        def write() -> None:
            while True:
                with ready:
                    while not due or due[0][0] > time.monotonic():
                        ready.wait(None if not due else max(0.0, due[0][0] - time.monotonic()))
                    _when, _order, chunk = heapq.heappop(due)
                if chunk is None:
                    break
                try:
                    sink.sendall(chunk)
                except OSError:
                    break
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._shut += [source, sink]

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()
