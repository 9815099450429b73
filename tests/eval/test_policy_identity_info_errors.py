"""A server whose get_server_info fails is warned about (its policy goes unrecorded, so merge and resume check
nothing); a reference server, which has no get_server_info, is not. Real servers on loopback, the real client."""

from __future__ import annotations

import logging

from reference_peer import EchoPolicy, ReferenceServer
from serving import running_server

from gr00t_client import PolicyClient
from gr00t_eval.policy_identity import policy_record

IDENTITY_LOG = "gr00t_eval.policy_identity"


def identity_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == IDENTITY_LOG and r.levelno >= logging.WARNING]


def test_a_server_whose_get_server_info_fails_is_warned_about_and_its_policy_is_not_recorded(caplog):
    def broken_info():
        raise ValueError("checkpoint metadata unreadable")

    caplog.set_level(logging.DEBUG, logger=IDENTITY_LOG)
    with running_server(EchoPolicy()) as server:
        server.register_endpoint("get_server_info", broken_info, requires_input=False)
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            assert policy_record(client) is None  # the run goes on
    warnings = identity_warnings(caplog)
    assert len(warnings) == 1
    assert "answered get_server_info with an error (ValueError: checkpoint metadata unreadable)" in warnings[0]
    assert "not recorded, so merge and a resumed run cannot check" in warnings[0]


def test_a_reference_server_without_get_server_info_is_not_warned_about(caplog):
    caplog.set_level(logging.DEBUG, logger=IDENTITY_LOG)
    with ReferenceServer({"get_action": lambda observation, options=None: ({}, {})}) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            assert policy_record(client) is None
    assert identity_warnings(caplog) == []
    assert any("Unknown endpoint: get_server_info" in r.getMessage() for r in caplog.records if r.name == IDENTITY_LOG)
