"""What a line-by-line review of gr00t-client found: a NaN from a gr00t-server whose get_action was replaced reached the
caller, a newer gr00t-server (a modality config field this client does not know) failed every call, and
merge="average" overflowed float16 steps to inf. Real servers on loopback, a real chunker."""

from __future__ import annotations

import numpy as np
import pytest

from gr00t_client import ActionChunker, ActionError, BasePolicy, ModalityConfig, PolicyClient, merge_overlap
from reference_peer import EchoPolicy, libero_like_configs, libero_like_observation
from serving import running_server


class NanPolicy(BasePolicy):
    def __init__(self):
        super().__init__(strict=False)

    def _get_action(self, observation, options=None):
        return {"x": np.full((1, 16, 1), np.nan, np.float32)}, {}

    def reset(self, options=None):
        return {}


def test_a_nan_from_a_gr00t_server_whose_get_action_was_replaced_never_reaches_the_caller(monkeypatch):
    """The client trusted any gr00t-server to check; a registered get_action's output was never checked by either."""
    with running_server(NanPolicy()) as server:
        server.register_endpoint("get_action", lambda observation=None, options=None: server.policy.get_action(observation))
        # As an older gr00t-server answers: without the server's own check of a replaced handler.
        monkeypatch.setattr("gr00t_server.serving.execution._checked_replaced_action", lambda result, request: result,
                            raising=False)
        for wire in ("auto", "reference"):
            with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, wire=wire) as client:
                with pytest.raises(ActionError, match="Action key 'x' from the server at .* has non-finite values"):
                    client.get_action(libero_like_observation(height=8, width=8))


class NewerModalityConfig(ModalityConfig):
    """A later release's config: one field more in its JSON form."""

    def to_json_dict(self):
        return {**super().to_json_dict(), "state_dims": None}


def test_a_newer_gr00t_server_whose_configs_this_client_cannot_read_still_serves_get_action(caplog):
    """get_server_info carries the configs: its reply could not be decoded, and every get_action failed for good
    (a WireDecodeError naming neither the question nor the server), while ping said True."""
    configs = {k: NewerModalityConfig(v.delta_indices, v.modality_keys) for k, v in libero_like_configs().items()}
    with running_server(EchoPolicy(configs)) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            with caplog.at_level("WARNING", logger="gr00t_client.client"):
                for _ in range(2):
                    action, _ = client.get_action(libero_like_observation(height=8, width=8))
                    assert set(action)
    assert "answered get_server_info with what this client cannot read" in caplog.text
    assert "state_dims" in caplog.text and caplog.text.count("a newer gr00t-server?") == 1


def test_average_merges_large_float16_steps_without_overflow():
    old = new = np.array([40000.0], np.float16)
    assert merge_overlap(old, new, "average")[0] == np.float16(40000.0)


class Constant(BasePolicy):
    def __init__(self, value, dtype):
        super().__init__(strict=False)
        self.value, self.dtype = value, dtype

    def _get_action(self, observation, options=None):
        return {"a": np.full((1, 8, 1), self.value, self.dtype)}, {}

    def reset(self, options=None):
        return {}


def test_a_merge_that_makes_non_finite_steps_from_finite_chunks_is_refused():
    """The chunk was checked before the merge only: a merge function's (or an overflow's) inf was handed out."""
    observation = {"state": {"s": np.zeros((1, 1, 1), np.float32)}}
    chunker = ActionChunker(Constant(1.0, np.float32), asynchronous=True, prefetch_steps=6,
                            merge=lambda old, new: np.full_like(new, np.inf))
    try:
        with pytest.raises(ActionError, match="merging the overlap of action key 'a' .* gave non-finite values"):
            for _ in range(16):
                chunker.get_action(observation)
                chunker.wait_for_prefetch(5)
    finally:
        chunker.close()


def test_an_average_merge_of_large_float16_chunks_stays_finite():
    observation = {"state": {"s": np.zeros((1, 1, 1), np.float32)}}
    chunker = ActionChunker(Constant(40000.0, np.float16), asynchronous=True, prefetch_steps=6, merge="average")
    try:
        for _ in range(12):
            action, _ = chunker.get_action(observation)
            chunker.wait_for_prefetch(5)
            assert np.isfinite(action["a"]).all() and float(action["a"].max()) == 40000.0
    finally:
        chunker.close()


def test_a_server_shutting_down_is_not_taken_for_a_reference_server():
    """Its "server is shutting down" answer to get_server_info made the client treat the next server behind the
    address as a reference one (no multipart, no size check, any "error" map an error) until it reconnected."""
    from gr00t_client import ServerStoppingError, codec
    from gr00t_client.client import ERROR_MARKER, SHUTTING_DOWN
    from test_client_faults import ScriptedServer

    answers = []

    def handler(request):
        endpoint = request.get("endpoint")
        answers.append(endpoint)
        if endpoint == "get_server_info" and answers.count("get_server_info") == 1:
            return codec.encode({"error": f"{SHUTTING_DOWN}; 'get_server_info' was not run", ERROR_MARKER: True})
        if endpoint == "get_server_info":
            return codec.encode({"server": "gr00t-server", "capabilities": []})
        return codec.encode([{"x": np.zeros((1, 16, 1), np.float32)}, {}])

    with ScriptedServer(handler) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=3000) as client:
            with pytest.raises(ServerStoppingError):
                client.get_action(libero_like_observation(height=8, width=8))
            assert client._server_is_ours is None  # nothing learnt from a server going away
            client.get_action(libero_like_observation(height=8, width=8))
            assert client._server_is_ours is True
