"""On a server with a token, kill needs the token even from loopback, and README.md and docs/serving.md say so
(audit 11, L3: both said kill worked "from loopback or with the token")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from serving import running_server

from gr00t_client import BasePolicy, PolicyClient, PolicyServerError

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "secret-kill-token"


class IdlePolicy(BasePolicy):
    def _get_action(self, observation, options=None):
        return {}, {}

    def reset(self, options=None):
        return {}


def test_a_loopback_kill_without_the_token_is_refused_and_one_with_it_stops_the_server():
    with running_server(IdlePolicy(strict=False), api_token=TOKEN) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000) as anonymous:
            with pytest.raises(PolicyServerError, match="Unauthorized"):
                anonymous.kill_server()
        with PolicyClient(host="127.0.0.1", port=server.port, api_token=TOKEN, timeout_ms=5000) as client:
            assert client.ping()
            client.kill_server()


@pytest.mark.parametrize("doc", ["README.md", "docs/serving.md", "docs/protocol.md"])
def test_the_docs_say_a_token_server_needs_the_token_for_kill_from_loopback_too(doc):
    text = " ".join((ROOT / doc).read_text(encoding="utf-8").split())
    sentences = [s for s in re.split(r"(?<=[.;])\s", text) if "kill" in s and "loopback" in s]
    assert sentences, f"{doc} no longer says where kill is honoured"
    assert not any("from loopback or with the token" in s or "loopback peer or with the token" in s for s in sentences)
    assert any("token" in s and "too" in s for s in sentences), sentences


@pytest.mark.parametrize("doc", ["README.md", "docs/serving.md", "docs/protocol.md"])
def test_the_docs_say_any_peer_with_the_token_may_kill_a_token_server(doc):
    """README.md said kill worked 'from loopback; with --api-token, only with the token, from loopback too', but a
    remote peer that sends the token stops the server (test_server_security.py)."""
    text = " ".join((ROOT / doc).read_text(encoding="utf-8").split())
    sentences = [s for s in re.split(r"(?<=\.)\s", text) if "kill" in s and "token" in s and "loopback" in s]
    assert any("any peer" in s for s in sentences), sentences
