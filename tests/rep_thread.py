"""A scripted ZeroMQ REP peer in a thread, for client tests: it answers every request with answer(frames)."""

from __future__ import annotations

import threading
from typing import Any, Callable, List

import zmq


class RepThread:
    """A REP socket on a random loopback port whose thread replies to each request's frames with answer(frames)."""

    def __init__(self, answer: Callable[[List[Any]], List[Any]]) -> None:
        self.answer = answer
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self.socket.poll(20):
                self.socket.send_multipart(self.answer(self.socket.recv_multipart(copy=False)))

    def __enter__(self) -> "RepThread":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self.socket.close(linger=0)
        self.context.term()
