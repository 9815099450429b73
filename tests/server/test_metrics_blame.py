"""Whose fault the counters say it was (audit 11): a strict policy's own wrong action is the policy's (a policy call
and an internal error, not the client's refused request), a refused token names the endpoint it was sent to, and
the shutdown totals show expired requests inside the errors they are counted in."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from reference_peer import EchoPolicy, libero_like_observation, raw_round_trip, ref_packb, ref_unpackb
from serving import running_server

from gr00t_client import PolicyClient, PolicyServerError

pytest.importorskip("prometheus_client")
from test_prometheus_metrics import requests_count, scrape  # noqa: E402 - needs prometheus_client


class WrongShapePolicy(EchoPolicy):
    """A strict policy whose model runs and then returns an action one step short of its horizon."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        return {key: value[:, :-1] for key, value in action.items()}, info


def test_a_strict_policys_own_wrong_action_is_an_internal_error_and_a_policy_call():
    """It was counted as the client's refused request (outcome error, logged 'refused') and as no policy call,
    although the model had run."""
    policy = WrongShapePolicy(strict=True)
    with running_server(policy, metrics_port=0) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            with pytest.raises(PolicyServerError, match=r"ActionError: Action key '\w+' must have horizon T=16"):
                client.get_action(libero_like_observation(height=8, width=8))
            stats = client.get_server_info()["stats"]
        samples = scrape(server)
    assert policy.calls == 1
    assert stats["policy_calls"] == 1 and stats["internal_errors"] == 1 and stats["errors"] == 1
    assert requests_count(samples, "get_action", "internal_error") == 1
    assert requests_count(samples, "get_action", "error") == 0
    assert samples[("gr00t_batch_size_count", ())] == 1


def test_a_request_with_a_wrong_token_is_counted_under_the_endpoint_it_named(caplog):
    """It was counted under endpoint="other" (meant for unknown endpoint names) and logged as request '?'."""
    with running_server(EchoPolicy(), api_token="s3cret", metrics_port=0) as server:
        with caplog.at_level(logging.WARNING, logger="gr00t_server"):
            for endpoint in ("get_action", "no_such_endpoint"):
                request = {"endpoint": endpoint, "data": {"observation": {}}, "api_token": "wrong"}
                reply = ref_unpackb(raw_round_trip(server.port, ref_packb(request))[0])
                assert reply["error"] == "Unauthorized: Invalid API token"
        samples = scrape(server)
    assert requests_count(samples, "get_action", "error") == 1
    assert requests_count(samples, "other", "error") == 1  # an unknown name is still "other"
    assert "request 'get_action' from 127.0.0.1 refused: Unauthorized: Invalid API token" in caplog.text


def test_the_shutdown_totals_show_expired_requests_among_the_errors(caplog):
    """'7 errors (0 internal; 4 over queue or connection limits), 3 expired' read as 10 failures of 12 requests."""
    with caplog.at_level(logging.INFO, logger="gr00t_server"):
        with running_server(EchoPolicy(), api_token="s3cret") as server:
            server.stats.add("requests", 3)
            server.stats.add("errors", 2)
            server.stats.add("expired", 2)
    assert "stopped after 3 requests: 2 errors (0 internal; 0 over queue or connection limits; 2 expired), 0 late, " \
           "0 undelivered, 0 policy calls" in caplog.text


def test_endpoint_names_a_client_chooses_cannot_spend_the_refusal_log_kinds(caplog):
    """The first refusal of each kind is always logged, past the rate limit, for up to 256 kinds. Keyed by the endpoint
    name a client sent (even without the token), 300 made-up names logged 256 lines and used up the kinds, so a real
    client's first refusal of a new kind went unlogged. Unknown names are one kind now, as in the metrics."""
    with running_server(EchoPolicy(), api_token="s3cret") as server:
        with caplog.at_level(logging.WARNING, logger="gr00t_server"):
            for i in range(300):
                request = {"endpoint": f"made_up_{i}", "data": {}, "api_token": "wrong"}
                raw_round_trip(server.port, ref_packb(request))
            flood = len([r for r in caplog.records if "refused" in r.getMessage()])
            with PolicyClient(port=server.port, timeout_ms=5000, api_token="s3cret") as client:
                with pytest.raises(PolicyServerError, match="return_server_timing'. must be true or false"):
                    client.call_endpoint("get_action", {"observation": {}, "options": {"return_server_timing": "yes"}})
    assert flood <= 25, flood  # the rate limit's 20 lines and a first of each kind, not 256
    assert "request 'get_action' from 127.0.0.1 refused" in caplog.text  # the genuine refusal is still shown
