"""A server whose get_server_info fails is warned about (its policy goes unrecorded, so merge and resume check
nothing); a reference server, which has no get_server_info, is not. Real servers on loopback, the real client."""

from __future__ import annotations

import json
import logging

from reference_peer import EchoPolicy, ReferenceServer
from serving import running_server

from gr00t_client import PolicyClient
from gr00t_eval.policy_identity import describe, policy_record

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


def test_a_get_server_info_error_with_a_newline_is_warned_on_one_line(caplog):
    def broken_info():
        raise ValueError("unreadable\n2026-01-01 00:00:00 INFO forged line \x1b[31mred")

    caplog.set_level(logging.DEBUG, logger=IDENTITY_LOG)
    with running_server(EchoPolicy()) as server:
        server.register_endpoint("get_server_info", broken_info, requires_input=False)
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            assert policy_record(client) is None
    [warning] = identity_warnings(caplog)
    assert "\n" not in warning and "\x1b" not in warning
    assert "(ValueError: unreadable\\n2026-01-01 00:00:00 INFO forged line \\x1b[31mred)" in warning


class IdentityPolicy(EchoPolicy):
    def __init__(self, identity):
        super().__init__()
        self._identity = identity

    def identity(self):
        return self._identity


def served_record(identity):
    with running_server(IdentityPolicy(identity)) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=10000) as client:
            return policy_record(client)


def test_a_servers_identity_of_megabytes_is_recorded_bounded_and_escaped():
    """A wrong server's get_server_info is saved into results.json and run.json: megabytes there, or terminal
    escapes in a message that describes the policy, came from the server's words kept whole."""
    huge = {"kind": "test", "checkpoint": "c" * 3_000_000 + "\n\x1b[31m", **{f"key{i}": "v" * 20 for i in range(5000)}}
    record = served_record(huge)
    assert len(json.dumps(record)) < 40_000
    assert "\x1b" not in json.dumps(record, ensure_ascii=False) and "\n" not in describe(record)
    assert record["fingerprint"] != served_record({**huge, "checkpoint": "c" * 3_000_001})["fingerprint"]


def test_a_long_field_of_a_servers_identity_is_cut_saying_how_much_was_cut():
    record = served_record({"kind": "test", "checkpoint": "c" * 5000})
    assert record["identity"]["kind"] == "test"
    checkpoint = record["identity"]["checkpoint"]
    assert len(checkpoint) <= 1000 and checkpoint.startswith("ccc") and checkpoint.endswith(" more characters)")


def test_a_servers_usual_identity_is_recorded_as_it_gave_it():
    identity = {"kind": "gr00t", "config_sha256": "0123456789abcdef", "weights_fingerprint": "fedcba9876543210",
                "processor_sha256": "00ff00ff00ff00ff"}
    record = served_record(identity)
    assert record["identity"] == identity and record["policy_class"] == "IdentityPolicy"
