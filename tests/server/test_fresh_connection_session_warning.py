"""A get_action that starts a new connection-keyed session of a policy that keeps sessions (a reference client, no
session_id, that never reset: a new client, or one reconnected after a pause beyond the server's heartbeat) is served
from the policy's initial state, and the server says so in its log, once per session (docs/protocol.md §7)."""

from __future__ import annotations

import logging

import pytest
from reference_peer import ReferenceClient
from serving import running_server

from eval.dataset_factory import make_dataset
from gr00t_client import PolicyClient
from gr00t_server.policies.replay import ReplayPolicy

pytest.importorskip("av")

SERVER_LOG = "gr00t_server.serving.server"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("fresh") / "ds", lengths=(20, 20), cameras=())


def fresh_session_warnings(caplog):
    return [record.getMessage() for record in caplog.records
            if record.name == SERVER_LOG and "initial state" in record.getMessage()]


def test_a_reference_clients_get_action_without_a_reset_is_warned_once_naming_its_peer(dataset, caplog):
    caplog.set_level(logging.WARNING, logger=SERVER_LOG)
    with running_server(ReplayPolicy(dataset, execution_horizon=4, strict=False)) as server, \
            ReferenceClient(server.port) as client:
        _, info = client.get_action({})
        client.get_action({})
    assert (info["episode_index"], info["current_step"]) == (0, 0)
    warnings = fresh_session_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "127.0.0.1" in warnings[0] and "without session_id" in warnings[0] and "heartbeat" in warnings[0]


def test_each_reconnected_reference_client_is_warned_for_its_new_session(dataset, caplog):
    caplog.set_level(logging.WARNING, logger=SERVER_LOG)
    with running_server(ReplayPolicy(dataset, execution_horizon=4, strict=False)) as server:
        for _ in range(2):  # a new connection each: what libzmq's reconnection after a closed connection makes
            with ReferenceClient(server.port) as client:
                client.get_action({})
    assert len(fresh_session_warnings(caplog)) == 2


def test_a_session_started_by_a_reset_or_named_by_session_id_is_not_warned(dataset, caplog):
    caplog.set_level(logging.WARNING, logger=SERVER_LOG)
    with running_server(ReplayPolicy(dataset, execution_horizon=4, strict=False)) as server:
        with ReferenceClient(server.port) as client:
            client.call_endpoint("reset", {"options": {"episode_index": 1}})
            _, info = client.get_action({})
            assert (info["episode_index"], info["current_step"]) == (1, 0)
        with PolicyClient("127.0.0.1", server.port, timeout_ms=10000, strict=False) as ours:
            ours.get_action({})
    assert fresh_session_warnings(caplog) == []


def test_a_connection_whose_calls_fail_is_warned_once_not_at_each_failing_call(dataset, caplog):
    """The table holds a session once a call of it succeeded: a reference client whose get_actions failed (a bad
    option) was warned of a new session at each of them, blaming a reconnection for a bad request."""
    caplog.set_level(logging.WARNING, logger=SERVER_LOG)
    with running_server(ReplayPolicy(dataset, execution_horizon=4, strict=True)) as server, \
            ReferenceClient(server.port) as client:
        for _ in range(3):
            with pytest.raises(Exception, match="no_such_option"):
                client.get_action({}, {"no_such_option": 1})
        client.get_action({})
    assert len(fresh_session_warnings(caplog)) == 1
