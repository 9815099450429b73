"""A PolicyServer on a random loopback port, served in a thread and always stopped: shared by the tests."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

from gr00t_client import BasePolicy
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
