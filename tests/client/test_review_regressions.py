"""Review regressions: requests, policies and addresses that once stopped the server loop or escaped the
client's documented error types (server cases live here too: two test files may not share a basename)."""

from typing import Any, Dict, Optional

import numpy as np
import pytest

from gr00t_client import BasePolicy, PolicyClient, PolicyServerError
from serving import running_server


class ConstantPolicy(BasePolicy):
    """Answers every observation with one (1, 2, 2) action; declares batching support."""

    supports_batching = True

    def __init__(self) -> None:
        super().__init__(strict=False)

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        return {"arm": np.zeros((1, 2, 2), dtype=np.float32)}, {}

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {}


class UnprintableError(Exception):
    """An exception whose message cannot be formatted."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class UnprintableErrorPolicy(ConstantPolicy):
    """Raises an exception that str() cannot format."""

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        raise UnprintableError()


def deeply_nested_observation(depth: int) -> Dict[str, Any]:
    observation: Dict[str, Any] = {"joints": np.zeros((1, 1, 3), dtype=np.float32)}
    for _ in range(depth):
        observation = {"nested": observation}
    return observation


def test_deeply_nested_observation_on_a_batching_server_gets_a_reply_and_the_server_keeps_serving():
    with running_server(ConstantPolicy(), max_batch_size=4, batch_timeout_ms=5.0) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            with pytest.raises(PolicyServerError, match="more than 32 levels deep"):  # refused by the decoder
                client.get_action({"state": deeply_nested_observation(400)})
            action, _ = client.get_action({"state": deeply_nested_observation(20)})
            assert action["arm"].shape == (1, 2, 2)
            assert client.ping()


def test_policy_error_that_cannot_be_formatted_gets_an_error_reply_and_the_server_keeps_serving():
    with running_server(UnprintableErrorPolicy()) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            with pytest.raises(PolicyServerError, match="UnprintableError"):
                client.get_action({"state": {"joints": np.zeros((1, 1, 3), dtype=np.float32)}})
            assert client.ping()


def test_ping_returns_false_when_the_address_cannot_be_connected():
    with PolicyClient(host="not a host", port=5555, timeout_ms=200) as client:
        assert client.ping() is False


def test_call_endpoint_raises_connection_error_when_the_address_cannot_be_connected():
    with PolicyClient(host="not a host", port=5555, timeout_ms=200) as client:
        with pytest.raises(ConnectionError, match="not a host"):
            client.call_endpoint("ping", requires_input=False)


def test_run_closes_the_socket_when_the_previous_signal_handler_was_not_installed_from_python(monkeypatch):
    import signal
    import threading

    from gr00t_server import server as server_module

    real_signal = signal.signal
    installs = []

    def signal_reporting_a_c_handler(signum, handler):
        previous = real_signal(signum, handler)
        installs.append(signum)
        # The first install of each signal reports what Python reports for a handler set from C: None.
        return None if installs.count(signum) == 1 else previous

    monkeypatch.setattr(server_module.signal, "signal", signal_reporting_a_c_handler)
    previous_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    policy_server = server_module.PolicyServer(ConstantPolicy(), port=0, poll_interval_ms=10)
    threading.Timer(0.2, policy_server.stop).start()
    try:
        policy_server.run()  # in the main thread, so it installs its signal handlers
    finally:
        for sig, handler in previous_handlers.items():
            real_signal(sig, handler)
    assert policy_server._socket is None and policy_server._context is None


class BufferReusingPolicy(BasePolicy):
    """Writes every chunk into one preallocated (1, 4, 1) array, stamped with the call number."""

    def __init__(self) -> None:
        super().__init__(strict=False)
        self.calls = 0
        self.output = np.zeros((1, 4, 1), dtype=np.float32)

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        self.calls += 1
        self.output[:] = self.calls
        return {"arm": self.output}, {}

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {}


def test_chunker_keeps_its_chunk_when_the_policy_reuses_its_output_buffer_for_the_prefetch():
    from gr00t_client.chunking import ActionChunker

    observation = {"state": {"joints": np.zeros((1, 1, 3), dtype=np.float32)}}
    with ActionChunker(BufferReusingPolicy(), asynchronous=True, prefetch_steps=4, merge="oldest") as chunker:
        first, _ = chunker.get_action(observation)  # chunk 1, and the prefetch of chunk 2 starts
        assert chunker.wait_for_prefetch(timeout=5.0)
        second, _ = chunker.get_action(observation)  # "oldest" keeps chunk 1's step 1
    assert first["arm"].tolist() == [[1.0]]
    assert second["arm"].tolist() == [[1.0]]
