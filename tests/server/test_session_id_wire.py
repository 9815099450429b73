"""A session_id on the wire is a non-empty str or absent: any other (msgpack bin, an int, "") is refused with an error
naming it, never ignored (keyed by the connection instead, a replay served a reconnecting client from episode 0).
Without one, a request is its connection's session, which no session_id can name: each client behind a ROUTER-DEALER
proxy its own, and new at any reconnection, which is why our client always sends one."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from eval.dataset_factory import make_dataset
from gr00t_client import PolicyClient, codec
from gr00t_eval.dataset import LeRobotDataset
from gr00t_server.modality_configs import derive_from_dataset
from gr00t_server.policies import ReplayPolicy
from serving import forward_until_closed, running_server
from tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]


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


def test_no_client_can_move_a_reference_clients_replay_by_naming_its_connection(replay_server):
    """A connection's session was keyed by its routing id in hex, which another client could send as its session_id
    (ids are numbered in turn, and an error showed each client its own): that client's reset moved the reference
    client's replay back to episode 0."""
    replay_server.register_endpoint("whoami", lambda: replay_server.current_session, requires_input=False)
    with zmq.Context.instance().socket(zmq.REQ) as reference_client:
        reference_client.setsockopt(zmq.LINGER, 0)
        reference_client.connect(f"tcp://127.0.0.1:{replay_server.port}")
        call(reference_client, {"endpoint": "reset", "data": {"options": {"episode_index": 2, "step_index": 4}}})
        key = call(reference_client, {"endpoint": "whoami"})
        for named in {key, key.lstrip("\x00")}:
            call_on_a_new_connection(replay_server.port, {"endpoint": "reset", "session_id": named,
                                                          "data": {"options": {"episode_index": 0}}})
        _, info = call(reference_client, {"endpoint": "get_action", "data": {"observation": {}}})
    assert (int(info["episode_index"]), int(info["current_step"])) == (2, 4), info


def test_a_session_id_starting_with_nul_is_refused(replay_server):
    reply = call_on_a_new_connection(replay_server.port, {"endpoint": "reset", "session_id": "\x00006b8b4567",
                                                          "data": {"options": {"episode_index": 1}}})
    assert "'session_id' must not start with \\x00" in reply["error"], reply


def test_an_error_names_a_connections_session_without_its_key(replay_server):
    """The key (its routing id) told a client its neighbours' keys, numbered in turn."""
    reply = call_on_a_new_connection(replay_server.port, {"endpoint": "get_action", "session_continues": True,
                                                          "data": {"observation": {}}})
    assert reply["error"].startswith("this connection's session was dropped by the server"), reply
    assert not re.search(r"[0-9a-f]{8}", reply["error"]), reply


@pytest.mark.parametrize("mark", [True, 1, np.int64(1), np.bool_(True)], ids=["true", "int", "numpy-int", "numpy-bool"])
def test_a_session_continues_mark_sent_as_any_true_flag_refuses_a_session_the_server_does_not_know(replay_server, mark):
    """A mark of 1 (as msgpack peers in C++, JS or Go send flags) or a numpy bool was ignored: the session the server
    never knew was served from episode 0, step 0."""
    session = f"unknown-{type(mark).__module__}.{type(mark).__name__}-{mark}"  # numpy's bool_ is named "bool"
    reply = call_on_a_new_connection(replay_server.port, {"endpoint": "get_action", "session_continues": mark,
                                                          "session_id": session, "data": {"observation": {}}})
    assert isinstance(reply, dict) and "no longer knows it" in reply["error"] and "call reset" in reply["error"], reply


@pytest.mark.parametrize("mark", [False, 0, np.bool_(False)], ids=["false", "int", "numpy-bool"])
def test_a_session_continues_mark_sent_as_a_false_flag_starts_a_new_session(replay_server, mark):
    session = f"new-{type(mark).__module__}.{type(mark).__name__}-{mark}"  # numpy's bool_ is named "bool"
    reply = call_on_a_new_connection(replay_server.port, {"endpoint": "get_action", "session_continues": mark,
                                                          "session_id": session, "data": {"observation": {}}})
    assert isinstance(reply, list), reply
    assert int(reply[1]["episode_index"]) == 0 and int(reply[1]["current_step"]) == 0


@pytest.mark.parametrize("mark, shown", [(2, "int 2"), ("true", "str 'true'"), (1.0, "float 1.0"), ([True], "list")],
                         ids=["int", "str", "float", "array"])
def test_a_session_continues_mark_that_is_no_flag_is_refused_naming_it(replay_server, mark, shown):
    reply = call_on_a_new_connection(replay_server.port, {"endpoint": "get_action", "session_continues": mark,
                                                          "session_id": "robot-flag", "data": {"observation": {}}})
    assert isinstance(reply, dict) and "error" in reply, f"session_continues={mark!r} was served: {reply}"
    assert f"'session_continues' must be true or false (a bool, or 0 or 1), got {shown}" in reply["error"], reply


def test_reference_clients_behind_a_router_dealer_proxy_keep_their_own_replay(replay_server):
    context = zmq.Context()
    frontend, backend = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    frontend.bind("inproc://robots")
    backend.connect(f"tcp://127.0.0.1:{replay_server.port}")
    threading.Thread(target=forward_until_closed, args=(frontend, backend), daemon=True).start()
    robot_a, robot_b = context.socket(zmq.REQ), context.socket(zmq.REQ)
    try:
        for robot in (robot_a, robot_b):
            robot.setsockopt(zmq.LINGER, 0)
            robot.connect("inproc://robots")
        call(robot_a, {"endpoint": "reset", "data": {"options": {"episode_index": 1}}})
        call(robot_b, {"endpoint": "reset", "data": {"options": {"episode_index": 2}}})
        _, info = call(robot_a, {"endpoint": "get_action", "data": {"observation": {}}})
        assert int(info["episode_index"]) == 1, f"robot B's reset moved robot A behind the proxy: {info}"
    finally:
        robot_a.close(0)
        robot_b.close(0)
        context.term()  # ends the proxy, which then closes its sockets


def call(sock, envelope):
    """One request and its decoded reply on a REQ socket."""
    sock.send(codec.encode(envelope))
    assert sock.poll(10000), f"no reply to {envelope['endpoint']}"
    reply = codec.decode(sock.recv())
    assert not (isinstance(reply, dict) and "error" in reply), reply
    return reply


def test_our_client_keeps_its_replay_when_libzmq_reconnects_its_socket(replay_server):
    with TcpProxy(replay_server.port) as forwarder, PolicyClient(port=forwarder.port, timeout_ms=10000) as client:
        client.reset({"episode_index": 1})
        client.get_action({})
        forwarder.cut()  # the TCP connection drops; the same REQ socket reconnects by itself
        wait_until(lambda: forwarder.accepted == 2, "the client's socket did not reconnect")
        _, info = client.get_action({})
    assert (int(info["episode_index"]), int(info["current_step"])) == (1, 2), info


def wait_until(condition, failure, timeout_s=5.0):
    """Poll `condition` until it holds; AssertionError with `failure` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.01)


def test_the_protocol_says_any_reconnection_starts_a_new_session_for_a_client_without_session_id():
    text = " ".join((ROOT / "docs" / "protocol.md").read_text(encoding="utf-8").split())
    sessions = text[text.index("* **Sessions.**"):text.index("* **Server timing.**")]
    assert "libzmq's own automatic reconnection" in sessions, "§7 still says only a new socket changes the session"
    assert "should send a `session_id`" in sessions and "our `PolicyClient` always does" in sessions


def test_threads_sharing_a_client_share_its_session_and_robots_with_clients_of_their_own_do_not(replay_server):
    """One thread's reset moves the episode of every thread on the same client, without an error (as the protocol
    says); each robot's own client keeps its own episode."""
    shared = PolicyClient("127.0.0.1", replay_server.port, timeout_ms=5000)
    robot_b = threading.Thread(target=shared.reset, args=({"episode_index": 2},))
    shared.reset({"episode_index": 1})  # robot A, on this thread
    robot_b.start()
    robot_b.join(10)
    assert int(shared.get_action({})[1]["episode_index"]) == 2  # robot A was sent robot B's episode
    own_a, own_b = (PolicyClient("127.0.0.1", replay_server.port, timeout_ms=5000) for _ in range(2))
    own_a.reset({"episode_index": 1})
    own_b.reset({"episode_index": 2})
    assert int(own_a.get_action({})[1]["episode_index"]) == 1
    for client in (shared, own_a, own_b):
        client.close()


def test_the_protocol_says_threads_sharing_a_client_share_its_session():
    """It said only "calls take turns": a robot thread per episode on one client was sent the others' episodes."""
    text = " ".join((ROOT / "docs" / "protocol.md").read_text(encoding="utf-8").split())
    threads = text[text.index("* **Threads and fork.**"):text.index("A client used in a process")]
    assert "share its one session" in threads and "a client of its own" in threads, threads


def correlating_req(context, port):
    """A REQ socket as the reference PolicyClient makes it (ZMQ_REQ_CORRELATE + ZMQ_REQ_RELAXED), connected."""
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.REQ_CORRELATE, 1)
    sock.setsockopt(zmq.REQ_RELAXED, 1)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def test_a_req_correlate_client_without_session_id_keeps_one_session_across_requests(tmp_path):
    """libzmq's REQ_CORRELATE puts a 4-byte request id, new at every request, before the delimiter; it was part of
    the connection's session key, so each request was a new session: the reset to episode 2 was never served (every
    get_action replayed episode 0 from step 0) and one socket filled the session table."""
    dataset = LeRobotDataset(make_dataset(tmp_path / "ds", lengths=(12, 10, 8)))
    policy = ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2)
    with running_server(policy) as server, zmq.Context() as context:
        with correlating_req(context, server.port) as robot:
            call(robot, {"endpoint": "reset", "data": {"options": {"episode_index": 2}}})
            served = [call(robot, {"endpoint": "get_action", "data": {"observation": {}}})[1] for _ in range(3)]
            assert [(int(info["episode_index"]), int(info["current_step"])) for info in served] == \
                   [(2, 0), (2, 2), (2, 4)], served
            assert len(server.sessions) == 1, f"one connection made {len(server.sessions)} sessions"


def test_req_correlate_clients_behind_a_router_dealer_proxy_keep_one_session_each(replay_server):
    """Behind a proxy the request id follows the client's identity frame: it is dropped from the key, the identity
    frames the proxy adds are kept, so the robots stay apart and each keeps its own across requests."""
    context = zmq.Context()
    frontend, backend = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    frontend.bind("inproc://correlating-robots")
    backend.connect(f"tcp://127.0.0.1:{replay_server.port}")
    threading.Thread(target=forward_until_closed, args=(frontend, backend), daemon=True).start()
    robot_a, robot_b = (context.socket(zmq.REQ) for _ in range(2))
    try:
        for robot in (robot_a, robot_b):
            robot.setsockopt(zmq.LINGER, 0)
            robot.setsockopt(zmq.REQ_CORRELATE, 1)
            robot.setsockopt(zmq.REQ_RELAXED, 1)
            robot.connect("inproc://correlating-robots")
        call(robot_a, {"endpoint": "reset", "data": {"options": {"episode_index": 1}}})
        call(robot_b, {"endpoint": "reset", "data": {"options": {"episode_index": 2}}})
        for step in (0, 2):
            _, info_a = call(robot_a, {"endpoint": "get_action", "data": {"observation": {}}})
            _, info_b = call(robot_b, {"endpoint": "get_action", "data": {"observation": {}}})
            assert (int(info_a["episode_index"]), int(info_a["current_step"])) == (1, step), info_a
            assert (int(info_b["episode_index"]), int(info_b["current_step"])) == (2, step), info_b
    finally:
        robot_a.close(0)
        robot_b.close(0)
        context.term()  # ends the proxy, which then closes its sockets


def test_a_dealer_with_a_four_byte_identity_of_its_own_keeps_its_session(replay_server):
    """Only a 4-byte frame after another routing frame is a request id: a direct DEALER whose own routing id is 4
    bytes long is still keyed by it, and sends its replies back to itself."""
    with zmq.Context.instance().socket(zmq.DEALER) as dealer:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.ROUTING_ID, b"arm1")
        dealer.connect(f"tcp://127.0.0.1:{replay_server.port}")

        def dealer_call(envelope):
            dealer.send_multipart([b"", codec.encode(envelope)])
            assert dealer.poll(10000), f"no reply to {envelope['endpoint']}"
            delimiter, reply = dealer.recv_multipart()
            return codec.decode(reply)

        dealer_call({"endpoint": "reset", "data": {"options": {"episode_index": 1}}})
        _, info = dealer_call({"endpoint": "get_action", "data": {"observation": {}}})
    assert (int(info["episode_index"]), int(info["current_step"])) == (1, 0), info
