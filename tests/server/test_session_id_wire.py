"""A session_id on the wire is a non-empty str or absent: any other (msgpack bin, an int, "") is refused with an error
naming it, never ignored (keyed by the connection instead, a replay served a reconnecting client from episode 0)."""

from __future__ import annotations

import pytest
import zmq

from eval.dataset_factory import make_dataset
from gr00t_client import codec
from gr00t_eval.dataset import LeRobotDataset
from gr00t_server.modality_configs import derive_from_dataset
from gr00t_server.policies import ReplayPolicy
from serving import running_server


@pytest.fixture(scope="module")
def replay_server(tmp_path_factory):
    dataset = LeRobotDataset(make_dataset(tmp_path_factory.mktemp("sessions") / "ds", lengths=(12, 10, 8)))
    policy = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2)
    with running_server(policy) as server:
        yield server


def call_on_a_new_connection(port, envelope):
    """One request on a fresh REQ socket (a reconnecting client), its decoded reply."""
    context = zmq.Context.instance()
    with context.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send(codec.encode(envelope))
        assert sock.poll(10000), "no reply"
        return codec.decode(sock.recv())


@pytest.mark.parametrize("session_id, shown", [(b"robot-7", "bytes b'robot-7'"), (7, "int 7"), ("", "str ''"),
                                               (["robot-7"], "list")], ids=["bin", "int", "empty", "array"])
def test_a_session_id_that_is_not_a_non_empty_str_is_refused_naming_it(replay_server, session_id, shown):
    for endpoint, data in (("reset", {"options": {"episode_index": 1}}), ("get_action", {"observation": {}})):
        reply = call_on_a_new_connection(replay_server.port, {"endpoint": endpoint, "session_id": session_id, "data": data})
        assert isinstance(reply, dict) and "error" in reply, f"{endpoint} with session_id {session_id!r} was served: {reply}"
        assert "'session_id' must be a non-empty str" in reply["error"] and f"got {shown}" in reply["error"], reply


def test_a_str_session_id_continues_its_replay_on_a_new_connection(replay_server):
    session = {"session_id": "robot-7"}
    reset = call_on_a_new_connection(replay_server.port, {"endpoint": "reset", **session,
                                                          "data": {"options": {"episode_index": 1}}})
    assert "error" not in reset, reset
    _, info = call_on_a_new_connection(replay_server.port, {"endpoint": "get_action", **session,
                                                            "data": {"observation": {}}})
    assert int(info["episode_index"]) == 1


@pytest.mark.parametrize("envelope", [{}, {"session_id": None}], ids=["absent", "nil"])
def test_a_request_without_a_session_id_is_served_as_its_connections_session(replay_server, envelope):
    reply = call_on_a_new_connection(replay_server.port, {"endpoint": "get_action", **envelope,
                                                          "data": {"observation": {}}})
    assert isinstance(reply, list), reply
    assert int(reply[1]["episode_index"]) == 0 and int(reply[1]["current_step"]) == 0
