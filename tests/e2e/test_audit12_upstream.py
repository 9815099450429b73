"""Audit 12 (interop with the real upstream peers): kill answers an empty map, which every client generation reads
(N1.5's raised TypeError on nil); our client names an N1/N1.5 server as unsupported; open-loop asks an upstream
server get_server_info once and hints at --observation-format flat when a flat-key policy gets the nested form."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pytest
from reference_peer import RefModalityConfig, ReferenceClient, ReferenceServer, libero_like_observation

from eval.dataset_factory import ACTION_DIMS, make_dataset
from gr00t_client import BasePolicy, PolicyClient, codec
from gr00t_server import PolicyServer


class IdlePolicy(BasePolicy):
    def __init__(self) -> None:
        super().__init__(strict=False)

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None) -> tuple:
        return {}, {}

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {}


def _serve_in_a_thread() -> tuple:
    server = PolicyServer(IdlePolicy(), host="127.0.0.1", port=0)
    server.start()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize("generation", ["current", "npsave", "n15"])
def test_kill_answers_an_empty_map_that_every_client_generation_reads(generation):
    server, thread = _serve_in_a_thread()
    try:
        with ReferenceClient(server.port, generation=generation) as client:
            assert client.call_endpoint("kill", requires_input=False) == {}
        thread.join(5)
        assert not thread.is_alive(), f"kill from a {generation} client did not stop the server"
    finally:
        server.stop()
        thread.join(5)


def test_an_n15_client_kill_server_stops_our_server_without_an_error():
    """N1.5's BaseInferenceClient.call_endpoint does `"error" in response` on the reply: TypeError on nil."""
    server, thread = _serve_in_a_thread()
    try:
        with ReferenceClient(server.port, generation="n15") as client:
            client.kill_server()
        thread.join(5)
        assert not thread.is_alive()
    finally:
        server.stop()
        thread.join(5)


def test_our_client_says_n15_servers_are_not_supported():
    seen = []

    def get_action(observation):  # service.py: the whole request data is the flat observation
        seen.append(sorted(observation))
        return {"action.x": np.zeros((1, 16, 1), np.float32)}

    with ReferenceServer({"get_action": get_action}, generation="n15") as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as client:
            with pytest.raises(codec.WireDecodeError, match="PolicyClient does not support N1/N1.5 servers"):
                client.get_action(libero_like_observation(height=8, width=8))
    assert seen == [["observation", "options"]]


def test_our_client_asks_a_reference_server_get_server_info_once_for_a_first_get_server_info():
    with ReferenceServer({"get_action": lambda observation, options=None: ({}, {})}) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as client:
            with pytest.raises(RuntimeError, match="Unknown endpoint: get_server_info"):
                client.get_server_info()
    assert [r["endpoint"] for r in server.requests].count("get_server_info") == 1


# --- open-loop against a reference server whose policy takes flat keys (upstream's Gr00tSimPolicyWrapper) ----------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("audit12") / "ds", lengths=(6, 5))


def flat_key_server(dataset: Path) -> ReferenceServer:
    from gr00t_server.policies.replay import ReplayPolicy

    configs = {k: RefModalityConfig(v.to_json_dict()) for k, v in ReplayPolicy(dataset).get_modality_config().items()}

    def get_action(observation, options=None):
        state = observation["state.arm"]  # a bare KeyError for the nested form, as upstream's wrapper gives
        rows = state.shape[0]
        return {f"action.{k}": np.zeros((rows, 16, d), np.float32) for k, d in ACTION_DIMS.items()}, {}

    return ReferenceServer({"get_action": get_action, "get_modality_config": lambda: configs})


def _open_loop(dataset: Path, port: int, out: Path, *extra: str) -> int:
    from gr00t_eval import cli

    return cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(port), "--execution-horizon", "4",
                     "--traj-ids", "0", "1", "--output-dir", str(out), "--no-plots", *extra])


def test_open_loop_auto_against_a_flat_key_reference_server_hints_at_the_flat_format(dataset, tmp_path):
    with flat_key_server(dataset) as server:
        _open_loop(dataset, server.port, tmp_path / "out")
        asked = [r["endpoint"] for r in server.requests].count("get_server_info")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    reasons = [entry["error"] for entry in results["errored_trajectories"]]
    assert len(reasons) == 2 and all("'state.arm'" in r and "--observation-format flat" in r for r in reasons), reasons
    assert asked == 1  # once per run (it was 4, each a traceback on the upstream server's console)


def test_open_loop_flat_against_the_same_server_is_scored_and_asks_once(dataset, tmp_path):
    with flat_key_server(dataset) as server:
        assert _open_loop(dataset, server.port, tmp_path / "out", "--observation-format", "flat") == 0
        asked = [r["endpoint"] for r in server.requests].count("get_server_info")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["status"] == "complete" and sorted(results["trajectories"]) == ["0", "1"]
    assert asked == 1


# --- docs/protocol.md quotes both Unauthorized messages the server sends ----------------------------------------------


def test_protocol_md_quotes_both_unauthorized_messages_the_server_sends():
    from reference_peer import running_server

    from gr00t_client import PolicyServerError

    protocol = " ".join((Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8").split())
    with running_server(IdlePolicy(), api_token="right") as server:
        for token in (None, "wrong"):
            with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, api_token=token) as client:
                with pytest.raises(PolicyServerError) as refused:
                    client.get_action({})
            assert refused.value.server_message.startswith("Unauthorized")
            assert f"`{refused.value.server_message}`" in protocol, refused.value.server_message
