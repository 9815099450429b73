"""PolicyServer: the reference endpoints, a ROUTER serving many REQ clients, sessions, and robustness."""

import threading
from collections import defaultdict

import msgpack
import numpy as np
import pytest
from reference_peer import EchoPolicy, ReferenceClient, libero_like_observation, raw_round_trip, ref_packb, ref_unpackb, running_server

from gr00t_client import BasePolicy, PolicyClient, PolicyServerError, codec
from gr00t_server.server import DEFAULT_MAX_MESSAGE_BYTES, PolicyServer


class SessionCounterPolicy(BasePolicy):
    """Counts get_action calls per session; reset zeroes the caller's count only."""

    stateful_sessions = True

    def __init__(self):
        super().__init__(strict=False)
        self.counts = defaultdict(int)

    def _get_action(self, observation, options=None):
        session = (options or {}).get("_session_id", "<no session>")  # lenient, so a lost session shows
        self.counts[session] += 1
        return {}, {"count": self.counts[session], "session": session}

    def reset(self, options=None):
        session = (options or {}).get("_session_id", "<no session>")
        self.counts[session] = 0
        return {"session": session}


class OptionsRecorder(EchoPolicy):
    """Records the options each call received."""

    def _get_action(self, observation, options=None):
        self.last_options = options
        return {}, {}


class FailingPolicy(EchoPolicy):
    def _get_action(self, observation, options=None):
        raise KeyError("camera 'front' not found")


@pytest.fixture
def server():
    with running_server(EchoPolicy()) as server:
        yield server


def reference_reply(port, request):
    """One request in the reference's current format; the decoded reply."""
    reply = raw_round_trip(port, ref_packb(request))
    assert reply is not None, "server did not answer"
    return ref_unpackb(reply[0])


def small_observation(seed=0):
    return libero_like_observation(height=16, width=16, seed=seed)


# --- endpoints --------------------------------------------------------------------------------------


def test_ping_replies_like_the_reference(server):
    assert reference_reply(server.port, {"endpoint": "ping"}) == {"status": "ok", "message": "Server is running"}


def test_get_action_replies_action_and_info_as_a_two_element_array(server):
    reply = reference_reply(server.port, {"endpoint": "get_action", "data": {"observation": small_observation(), "options": {"tag": 1}}})
    assert isinstance(reply, list) and len(reply) == 2
    action, info = reply
    assert action["x"].shape == (1, 16, 1) and info["tag"] == 1


def test_request_without_endpoint_means_get_action(server):
    action, info = reference_reply(server.port, {"data": {"observation": small_observation(), "options": {"tag": "implicit"}}})
    assert info["tag"] == "implicit"


def test_reset_and_modality_config_endpoints(server):
    assert reference_reply(server.port, {"endpoint": "reset", "data": {"options": None}}) == {"resets": 1}
    configs = reference_reply(server.port, {"endpoint": "get_modality_config"})
    assert configs["action"].as_json["modality_keys"] == server.policy.configs["action"].modality_keys


def test_get_server_info_describes_server_protocol_and_capabilities(server):
    with PolicyClient(port=server.port, timeout_ms=5000) as client:
        info = client.get_server_info()
    assert info["server"] == "gr00t-server" and info["protocol_version"] == 1
    assert "multipart" in info["capabilities"] and "sessions" in info["capabilities"]
    assert set(info["endpoints"]) >= {"ping", "kill", "get_action", "reset", "get_modality_config", "get_server_info"}
    assert info["policy_class"] == "EchoPolicy" and info["modality_configs"]["video"].modality_keys == ["image", "wrist_image"]


def test_registered_endpoints_are_served_with_and_without_input(server):
    server.register_endpoint("add", lambda a, b: a + b)
    server.register_endpoint("answer", lambda: 42, requires_input=False)
    assert reference_reply(server.port, {"endpoint": "add", "data": {"a": 2, "b": 3}}) == 5
    assert reference_reply(server.port, {"endpoint": "answer"}) == 42


def test_explicit_nil_data_is_treated_as_no_arguments(server):
    assert reference_reply(server.port, {"endpoint": "reset", "data": None}) == {"resets": 1}


def test_server_timing_is_returned_when_asked(server):
    with PolicyClient(port=server.port, timeout_ms=5000) as client:
        _, info = client.get_action(small_observation(), {"return_server_timing": True})
    assert set(info["server_timing"]) >= {"queue_wait_ms", "decode_ms", "policy_ms", "batch_size"}


def test_binding_a_taken_port_raises_os_error_naming_it(server):
    with pytest.raises(OSError, match=str(server.port)):
        PolicyServer(EchoPolicy(), port=server.port).start()


# --- many clients -----------------------------------------------------------------------------------


def test_router_serves_many_req_clients_that_send_before_any_reply(server):
    import zmq

    context = zmq.Context.instance()
    sockets = [context.socket(zmq.REQ) for _ in range(20)]
    try:
        for n, sock in enumerate(sockets):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://127.0.0.1:{server.port}")
            sock.send(ref_packb({"data": {"observation": {}, "options": {"tag": n}}}))
        for n, sock in enumerate(sockets):
            assert sock.poll(5000)
            assert ref_unpackb(sock.recv())[1]["tag"] == n
    finally:
        for sock in sockets:
            sock.close(linger=0)


def test_eight_concurrent_clients_each_get_their_own_replies(server):
    failures = []

    def run_client(n):
        with PolicyClient(port=server.port, timeout_ms=20000) as client:
            for i in range(200):
                observation = small_observation(seed=n)
                observation["state"]["x"][:] = n * 1000 + i
                _, info = client.get_action(observation, {"tag": [n, i]})
                if info["tag"] != [n, i] or info["first_state"] != n * 1000 + i:
                    failures.append((n, i, info))

    threads = [threading.Thread(target=run_client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == [] and server.policy.calls == 1600


# --- sessions ---------------------------------------------------------------------------------------


def test_stateful_policy_gets_the_session_id_our_client_sends():
    with running_server(SessionCounterPolicy()) as server, PolicyClient(port=server.port, session_id="arm-1", timeout_ms=5000) as client:
        assert client.get_action({})[1] == {"count": 1, "session": "arm-1"}


def test_one_clients_reset_never_moves_another_clients_session():
    with running_server(SessionCounterPolicy()) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as a, PolicyClient(port=server.port, timeout_ms=5000) as b:
            for _ in range(3):
                a.get_action({})
            assert b.get_action({})[1]["count"] == 1
            a.reset()
            assert b.get_action({})[1]["count"] == 2
            assert a.get_action({})[1]["count"] == 1


def test_session_falls_back_to_the_zeromq_identity_for_reference_clients():
    with running_server(SessionCounterPolicy()) as server:
        with ReferenceClient(server.port) as first, ReferenceClient(server.port) as second:
            assert first.get_action({})[1]["count"] == 1
            assert first.get_action({})[1]["count"] == 2
            assert second.get_action({})[1]["count"] == 1
            assert first.get_action({})[1]["session"] != second.get_action({})[1]["session"]


def test_stateless_policy_options_carry_no_session_id():
    policy = OptionsRecorder()
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        client.get_action({}, {"k": 1})
        assert policy.last_options == {"k": 1}
        client.get_action({})
        assert policy.last_options is None


# --- nothing a client sends stops the server ----------------------------------------------------------


def assert_error_reply_then_ping(port, frames, expected):
    reply = raw_round_trip(port, frames)
    assert reply is not None and len(reply) == 1
    decoded = codec.decode(reply[0])
    assert expected in decoded["error"], decoded
    assert reference_reply(port, {"endpoint": "ping"})["status"] == "ok"


@pytest.mark.parametrize(
    "payload,expected",
    [
        (b"\xc1\xff not msgpack", "undecodable message"),
        (b"", "undecodable message"),
        (msgpack.packb([1, 2, 3]), "request must be a map"),
        (msgpack.packb({"endpoint": 7}), "'endpoint' must be a str"),
        (msgpack.packb({"endpoint": "get_action", "data": [1, 2]}), "must be a map of named arguments"),
        (b"\xc1\xc1", "undecodable message (FormatError: not msgpack: 2 bytes starting c1 c1)"),
        (msgpack.packb({"endpoint": "get_action", "data": {"obs": {}}}),
         "bad arguments for 'get_action': got an unexpected keyword argument 'obs' (it takes: observation, options)"),
        (msgpack.packb({"endpoint": "get_action", "data": {"observation": {}, "options": 5}}), "'options' must be a map or nil"),
        (msgpack.packb({b"nd": True, b"type": "|O", b"kind": b"", b"shape": [1], b"data": b"x" * 8}), "object dtype"),
    ],
)
def test_malformed_requests_get_an_error_reply_and_the_next_request_is_served(server, payload, expected):
    assert_error_reply_then_ping(server.port, payload, expected)


def test_unknown_endpoint_reply_lists_the_known_endpoints(server):
    assert_error_reply_then_ping(server.port, ref_packb({"endpoint": "get_actoin"}), "known endpoints: get_action, get_modality_config")


def test_extra_frames_without_the_multipart_header_get_an_error_reply(server):
    assert_error_reply_then_ping(server.port, [ref_packb({"endpoint": "ping"}), b"extra"], "no multipart header")


def test_handler_exception_becomes_an_error_reply_naming_it():
    with running_server(FailingPolicy()) as server:
        assert_error_reply_then_ping(server.port, ref_packb({"data": {"observation": {}}}), "KeyError: \"camera 'front' not found\"")
        with PolicyClient(port=server.port, timeout_ms=5000) as client, pytest.raises(PolicyServerError, match="front"):
            client.get_action({})


def test_strict_policy_validation_error_reaches_the_client_naming_the_key():
    with running_server(EchoPolicy(strict=True)) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        observation = small_observation()
        observation["video"]["wrist_image"] = observation["video"]["wrist_image"].astype(np.float32)
        with pytest.raises(PolicyServerError, match="ObservationError: Video key 'wrist_image' must have dtype uint8; got float32"):
            client.get_action(observation)
        assert client.get_action(small_observation())[0]["x"].shape == (1, 16, 1)


def test_unencodable_result_becomes_an_error_reply(server):
    server.register_endpoint("objects", lambda: {"bad": np.array([object()], dtype=object)}, requires_input=False)
    assert_error_reply_then_ping(server.port, ref_packb({"endpoint": "objects"}), "could not encode the result of 'objects'")
    with PolicyClient(port=server.port, timeout_ms=5000) as client, pytest.raises(PolicyServerError, match="could not encode"):
        client.call_endpoint("objects", requires_input=False)


def test_malformed_multipart_gets_a_multipart_error_reply(server):
    reply = raw_round_trip(server.port, [codec.MULTIPART_MAGIC, b"\xc1"])
    assert reply is not None and reply[0] == codec.MULTIPART_MAGIC
    assert codec.decode_multipart(reply)["ok"] is False
    assert reference_reply(server.port, {"endpoint": "ping"})["status"] == "ok"


# --- message size cap -------------------------------------------------------------------------------


def test_default_size_cap_is_256_mib():
    assert DEFAULT_MAX_MESSAGE_BYTES == 256 * 1024 * 1024
    assert PolicyServer(EchoPolicy()).max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES


def test_oversize_message_is_dropped_and_other_clients_are_still_served():
    with running_server(EchoPolicy(), max_message_bytes=64 * 1024) as server:
        big = ref_packb({"endpoint": "ping", "data": {"blob": b"\x00" * (256 * 1024)}})
        assert raw_round_trip(server.port, big, timeout_ms=500) is None
        assert reference_reply(server.port, {"endpoint": "ping"})["status"] == "ok"
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            assert client.get_action(small_observation())[0]["x"].shape == (1, 16, 1)


def test_sessions_survive_when_batching_is_configured():
    class BatchableCounter(SessionCounterPolicy):
        supports_batching = True

    import zmq

    with running_server(BatchableCounter(), max_batch_size=8, batch_timeout_ms=200) as server:
        assert server.batching_enabled is False
        context = zmq.Context.instance()
        sockets = [context.socket(zmq.REQ) for _ in range(3)]
        try:
            for n, sock in enumerate(sockets):
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(f"tcp://127.0.0.1:{server.port}")
                sock.send(ref_packb({"data": {"observation": {"state": {"q": np.zeros((1, 1, 2), np.float32)}}}, "session_id": f"s{n}"}))
            replies = []
            for sock in sockets:
                assert sock.poll(5000)
                replies.append(ref_unpackb(sock.recv()))
        finally:
            for sock in sockets:
                sock.close(linger=0)
    assert [info for _, info in replies] == [{"count": 1, "session": f"s{n}"} for n in range(3)]


def test_multipart_message_over_the_cap_in_total_is_refused_although_each_frame_fits():
    with running_server(EchoPolicy(), max_message_bytes=64 * 1024) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            observation = libero_like_observation(height=120, width=120)  # two 43 KB frames: 86 KB in all
            with pytest.raises(PolicyServerError, match="exceeds this server's limit of 65536 bytes"):
                client.get_action(observation)
            assert server.policy.calls == 0
            assert client.get_action(small_observation())[0]["x"].shape == (1, 16, 1)


class BufferReusingPolicy(BasePolicy):
    """Writes every action into one preallocated array, as ONNX/TensorRT output bindings do."""

    def __init__(self):
        super().__init__(strict=False)
        self.buffer = np.zeros((16, 40, 132), np.float32)
        self.calls = 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        self.buffer[:] = self.calls
        return {"arm": self.buffer}, {"call": self.calls}

    def reset(self, options=None):
        return {}


def test_replies_stay_intact_when_the_policy_reuses_its_output_buffer():
    torn = []
    with running_server(BufferReusingPolicy()) as server:

        def run_client():
            with PolicyClient(port=server.port, timeout_ms=20000) as client:
                for _ in range(40):
                    action, info = client.get_action({})
                    if not (action["arm"] == info["call"]).all():
                        torn.append(info["call"])

        threads = [threading.Thread(target=run_client) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert torn == []
