"""PolicyClient when the server or the process misbehaves: a close() from a signal handler, a server restarted with
other facts behind the same port, a wire probe that got no answer, one budget per call, NaN or mis-batched actions
from a server that does not check them, CURVE keys that only look like keys, and a port that is not ZeroMQ."""

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import zmq
from reference_peer import EchoPolicy, RefModalityConfig, ReferenceServer, libero_like_configs, libero_like_observation, running_server
from rep_thread import RepThread
from serving import free_port

from gr00t_client import (ActionError, MessageTooLargeError, ModalityConfig, PolicyClient, PolicyServerError,
                          PolicyTimeoutError, codec)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ScriptedServer(handler):
    """A REP peer that answers each decoded request with handler(request) -> reply bytes."""

    def answer(frames):
        request = codec.decode_multipart(frames) if codec.is_multipart(frames) else codec.decode(frames[0].buffer)
        return [handler(request)]

    return RepThread(answer)


_SIGNAL_CLOSE_SCRIPT = textwrap.dedent(
    """
    import signal, sys, time
    import numpy as np, zmq
    from gr00t_client import PolicyClient
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)  # takes requests, never answers
    port = router.bind_to_random_port("tcp://127.0.0.1")
    how = sys.argv[1]
    client = PolicyClient(host="127.0.0.1", port=port, timeout_ms=20000, return_server_timing=how == "timing")
    signal.signal(signal.SIGALRM, lambda *_: client.close())  # a robot's shutdown hook
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    started = time.monotonic()
    try:
        if how == "ping":
            client.call_endpoint("ping", requires_input=False)
        else:  # the first get_action asks the server what it is first (with return_server_timing, outside call_endpoint)
            client.get_action({"state": {"x": np.zeros((1, 1, 3), np.float32)}})
    except ConnectionError as exc:
        print("ended:", type(exc).__name__, round(time.monotonic() - started, 2))
    try:
        client.call_endpoint("ping", requires_input=False)
    except RuntimeError as exc:
        print("after:", exc)
    """
)


@pytest.mark.parametrize("how", ["ping", "get_action", "timing"])
def test_close_from_a_signal_handler_during_a_call_ends_the_call_instead_of_hanging(how):
    # The handler runs on the thread that is in the call and holds the client's lock: close() must not wait for it.
    result = subprocess.run([sys.executable, "-c", _SIGNAL_CLOSE_SCRIPT, how], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    ended = [line for line in result.stdout.splitlines() if line.startswith("ended:")]
    assert ended and ended[0].split()[1] == "ClientClosedError", result.stdout  # a ConnectionError
    assert float(ended[0].split()[2]) < 10.0  # the call's own timeout is 20 s
    assert "is closed, so 'ping' was not sent" in result.stdout  # a later call is refused, naming itself


def test_a_server_restarted_with_other_facts_behind_the_same_port_is_asked_again():
    port = free_port()
    observation = libero_like_observation()
    with PolicyClient(host="127.0.0.1", port=port, timeout_ms=5000, strict=True) as client:
        with running_server(EchoPolicy(libero_like_configs(action_horizon=16)), port=port):
            assert client.get_action(observation)[0]["x"].shape == (1, 16, 1)
            assert client.server_max_message_bytes == 256 * 2**20
        # a new model and a smaller message limit at the same address, with no timeout in between
        with running_server(EchoPolicy(libero_like_configs(action_horizon=8)), port=port, max_message_bytes=2**20):
            action, _info = client.get_action(observation)  # the strict check must use the new server's configs
            assert action["x"].shape == (1, 8, 1)
            assert client.server_max_message_bytes == 2**20
            big = libero_like_observation(height=600, width=600)
            with pytest.raises(MessageTooLargeError, match="limit of 1048576 bytes"):
                client.get_action(big)


def test_a_timeout_forgets_the_servers_limit_so_an_oversized_request_is_refused_before_it_is_sent():
    port = free_port()
    with PolicyClient(host="127.0.0.1", port=port, timeout_ms=1500) as client:
        with running_server(EchoPolicy(), port=port):
            client.get_action(libero_like_observation())
        assert client.server_max_message_bytes == 256 * 2**20
        with running_server(EchoPolicy(), port=port, max_message_bytes=2**20):
            big = libero_like_observation(height=600, width=600)
            # sent on the old facts and refused by the new server in words (a frame up to twice its limit is
            # answered), or, if the reconnect was seen first, refused here; never a hang, and from then on here
            with pytest.raises((PolicyServerError, PolicyTimeoutError), match="limit of 1048576 bytes|did not answer"):
                client.get_action(big)
            with pytest.raises(MessageTooLargeError):
                client.get_action(big)


def _npsave_config_handler(calls):
    def get_modality_config():
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(1.2)  # busy with another robot when the client first asks: the probe times out
        return {k: RefModalityConfig(v.to_json_dict()) for k, v in libero_like_configs().items()}
    return get_modality_config


def test_a_wire_probe_that_timed_out_is_asked_again_before_arrays_are_sent():
    calls = []
    received = []

    def get_action(observation, options=None):
        received.append(type(observation["state"]["x"]).__name__)
        return [{"x": np.zeros((1, 16, 1), np.float32)}, {}]

    handlers = {"get_action": get_action, "get_modality_config": _npsave_config_handler(calls)}
    with ReferenceServer(handlers, generation="npsave") as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=1000) as client:
            observation = libero_like_observation()
            with pytest.raises(PolicyTimeoutError):
                client.get_action(observation)
            client.timeout_ms = 10000  # room for the server to finish the slow answer first
            action, _info = client.get_action(observation)
            assert client.speaks_npsave
            assert action["x"].shape == (1, 16, 1)
    assert received == ["ndarray"]  # the np.save-era policy got real arrays, never msgpack-numpy maps


def test_a_config_this_client_cannot_read_does_not_fail_the_first_get_action():
    def get_modality_config():
        configs = {k: v.to_json_dict() for k, v in libero_like_configs().items()}
        configs["action"]["action_configs"] = [{"rep": "ABSOLUTE", "type": "EEF", "format": "XYZ_QUAT_NEW"}]
        return {k: RefModalityConfig(v) for k, v in configs.items()}

    received = []

    def get_action(observation, options=None):
        received.append(type(observation["state"]["x"]).__name__)  # an np.save-era policy needs arrays
        return [{"x": np.zeros((1, 16, 1), np.float32)}, {}]

    handlers = {"get_action": get_action, "get_modality_config": get_modality_config}
    with ReferenceServer(handlers, generation="npsave") as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000) as client:
            action, _info = client.get_action(libero_like_observation())
            assert action["x"].shape == (1, 16, 1)
            assert client.speaks_npsave  # learnt from the markers of the reply it could not fully read
    # It was learnt only from the get_action reply: the first observation went out as msgpack-numpy maps.
    assert received == ["ndarray"]


def _ours_with_delay(delay_s: float, horizon: int = 16):
    def handler(request):
        time.sleep(delay_s)
        endpoint = request.get("endpoint")
        if endpoint == "get_server_info":
            return codec.encode({"server": "gr00t-server", "capabilities": ["sessions", "server_timing"]})
        if endpoint == "get_modality_config":
            return codec.encode({"state": ModalityConfig([0], ["x"]), "action": ModalityConfig(list(range(horizon)), ["x"])})
        return codec.encode([{"x": np.zeros((1, horizon, 1), np.float32)}, {}])
    return handler


# wire="multipart" asks nothing first: the strict client's config question is the only one
@pytest.mark.parametrize("settings", [{"return_server_timing": True}, {"strict": True, "wire": "multipart"}])
def test_the_first_get_action_and_its_questions_to_the_server_share_one_budget(settings):
    # Each answer takes 0.7 s: the question (server info, or the strict client's configs) and the call need 1.4 s,
    # more than the 1 s budget. Before, each had a budget of its own and the call succeeded after 1.4 s.
    with ScriptedServer(_ours_with_delay(0.7)) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=1000, **settings) as client:
            with pytest.raises(PolicyTimeoutError):
                client.get_action({"state": {"x": np.ones((1, 1, 1), np.float32)}})


def test_time_spent_waiting_for_another_threads_call_is_not_charged_to_the_budget():
    # One client shared by two threads; each answer takes 1 s and the budget is 1.8 s. B waits about 1 s for A's call
    # to finish, then has its whole budget for its own: charged from before the wait, it would time out.
    with ScriptedServer(_ours_with_delay(1.0)) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=1800, wire="multipart") as client:
            outcomes = {}
            observation = {"state": {"x": np.ones((1, 1, 1), np.float32)}}

            def call(name):
                try:
                    outcomes[name] = client.get_action(observation)[0]["x"].shape
                except Exception as exc:  # noqa: BLE001 - the outcome is what is asserted
                    outcomes[name] = exc

            first = threading.Thread(target=call, args=("A",))
            first.start()
            time.sleep(0.2)  # A holds the lock
            call("B")
            first.join(10)
    assert outcomes == {"A": (1, 16, 1), "B": (1, 16, 1)}


def test_removing_the_new_server_check_does_not_wait_for_another_threads_call_in_flight():
    # gr00t-eval removes its check when a run ends, Ctrl-C included; with a prefetch still in flight on the chunker's
    # thread against a stalled server, that waited out the prefetch's timeout_ms.
    with ScriptedServer(_ours_with_delay(2.0)) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000, wire="multipart") as client:
            client.on_new_server(lambda _: None)
            observation = {"state": {"x": np.ones((1, 1, 1), np.float32)}}
            in_flight = threading.Thread(target=client.get_action, args=(observation,))
            in_flight.start()
            time.sleep(0.2)  # the call holds the client's lock, waiting on the server
            began = time.monotonic()
            client.on_new_server(None)
            took = time.monotonic() - began
            in_flight.join(10)
    assert took < 0.5, f"on_new_server(None) waited {took:.1f} s for another thread's call"
    assert client.new_server_check is None


def _reference_answering(action):
    handlers = {
        "get_action": lambda observation, options=None: [action, {}],
        "get_modality_config": lambda: {k: RefModalityConfig(v.to_json_dict()) for k, v in libero_like_configs().items()},
    }
    return ReferenceServer(handlers)


def _libero_action(batch: int = 1, fill: float = 0.0):
    return {k: np.full((batch, 16, 1), fill, np.float32) for k in libero_like_configs()["action"].modality_keys}


@pytest.mark.parametrize("strict", [True, False])
def test_a_nan_action_from_a_server_that_does_not_check_is_refused(strict):
    action = _libero_action()
    action["x"][0, 3, 0] = np.nan
    with _reference_answering(action) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000, strict=strict) as client:
            with pytest.raises(ActionError, match=r"Action key 'x' .*non-finite values \(NaN or inf\) in rows \[0\]"):
                client.get_action(libero_like_observation())
            action["x"][0, 3, 0] = 0.5  # the next finite answer is used
            assert client.get_action(libero_like_observation())[0]["x"][0, 3, 0] == 0.5


def test_a_strict_client_refuses_an_action_whose_batch_is_not_the_observations():
    with _reference_answering(_libero_action(batch=2)) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000, strict=True) as client:
            with pytest.raises(ActionError, match="has batch size 2 .*expected 1, one row per observation row"):
                client.get_action(libero_like_observation())


def test_a_curve_key_of_z85_characters_that_does_not_decode_is_refused_by_the_constructor():
    with pytest.raises(ValueError, match=r"server_public_key: .* is not a valid z85 key: .*mistyped character"):
        PolicyClient(port=5555, server_public_key="%" * 40)
    _public, secret = zmq.curve_keypair()
    with pytest.raises(ValueError, match=r"client_secret_key: .* is not a valid z85 secret key"):
        PolicyClient(port=5555, server_public_key=_public.decode(), client_secret_key="%" * 40)


def test_a_mistyped_secret_key_is_never_repeated_in_the_error():
    public, secret = zmq.curve_keypair()
    typo = secret.decode()[:-1]  # one character lost in a copy: the rest is still a secret
    for value in (typo, "%" * 40):
        with pytest.raises(ValueError) as caught:
            PolicyClient(port=5555, server_public_key=public.decode(), client_secret_key=value)
        assert value not in str(caught.value) and f"a {len(value)}-character value (not shown)" in str(caught.value)


def test_a_certificate_whose_public_key_is_another_pairs_is_refused(tmp_path):
    import zmq.auth

    zmq.auth.create_certificates(str(tmp_path), "robot")
    zmq.auth.create_certificates(str(tmp_path), "other")
    lines = (tmp_path / "robot.key_secret").read_text().splitlines()
    other_public = next(line for line in (tmp_path / "other.key").read_text().splitlines() if "public-key" in line)
    mixed = tmp_path / "mixed.key_secret"
    mixed.write_text("\n".join(other_public if "public-key" in line else line for line in lines) + "\n")
    public, _ = zmq.curve_keypair()
    with pytest.raises(ValueError, match=r"mixed\.key_secret: its public-key does not belong to its secret-key"):
        PolicyClient(port=5555, server_public_key=public.decode(), client_secret_key=str(mixed))


def test_a_secret_key_file_readable_by_others_is_warned_about(tmp_path, caplog):
    import zmq.auth

    _, secret_file = zmq.auth.create_certificates(str(tmp_path), "robot")
    os.chmod(secret_file, 0o644)
    public, _ = zmq.curve_keypair()
    with caplog.at_level("WARNING"):
        PolicyClient(port=5555, server_public_key=public.decode(), client_secret_key=secret_file).close()
    assert "holds a secret key and is readable by other users (mode 644): chmod 600 it" in caplog.text
    os.chmod(secret_file, 0o600)
    caplog.clear()
    PolicyClient(port=5555, server_public_key=public.decode(), client_secret_key=secret_file).close()
    assert "readable by other users" not in caplog.text


def test_a_directory_given_as_a_key_is_named_as_one(tmp_path):
    with pytest.raises(ValueError, match=r"is a directory; pass the certificate file in it"):
        PolicyClient(port=5555, server_public_key=str(tmp_path))


def test_a_port_served_by_something_else_is_named_as_a_possible_cause():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def accept_and_close():  # not ZeroMQ: an HTTP-ish service that hangs up
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            connection.close()

    thread = threading.Thread(target=accept_and_close, daemon=True)
    thread.start()
    try:
        with PolicyClient(host="127.0.0.1", port=port, timeout_ms=3000) as client:
            with pytest.raises(PolicyTimeoutError, match="accepted and then closed before the ZeroMQ handshake finished: .*or another service on that port"
                                                          "; or a server that requires CURVE.*pass server_public_key"):
                client.call_endpoint("get_action", {"observation": {}})
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _short_array_map():
    """A reference-format (msgpack-numpy) map of a (1, 1, 7) float32 array with 24 bytes of its 28: refused."""
    return {b"nd": True, b"type": b"<f4", b"kind": b"", b"shape": [1, 1, 7], b"data": b"\0" * 24}


def test_a_servers_long_or_control_character_key_is_escaped_and_cut_in_the_decode_error():
    """The refused value's key path was the server's key verbatim: 100k characters, a newline and a terminal escape in
    the client's error (every other text a server chose is escaped and cut)."""
    import msgpack

    key = "arm\n2026-12-05 10:00:00 ERROR forged line\x1b[2J" + "x" * 100000
    reply = msgpack.packb({"ok": True, "result": {key: _short_array_map()}}, use_bin_type=True)
    with ScriptedServer(lambda request: reply) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000) as client:
            with pytest.raises(codec.WireDecodeError) as refused:
                client.get_server_info()
    text = str(refused.value)
    assert text.isprintable() and len(text) < 500, text[:300]
    assert "result.arm\\n2026-12-05 10:00:00 ERROR forged line\\x1b[2Jxxx" in text
    assert text.endswith("array of dtype <f4 and shape [1, 1, 7] needs 28 bytes, got 24"), text


def test_a_stale_reply_resent_by_the_server_is_not_taken_as_the_answer_to_the_next_get_action():
    # A misbehaving server (or proxy) re-sends its previous get_action reply, in its own envelope, before answering
    # the third: without request ids the third call got the second's action, and every later one stayed behind.
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve():
        previous, answered = None, 0
        while not stop.is_set():
            if not router.poll(20):
                continue
            frames = router.recv_multipart()
            request = codec.decode(frames[-1])
            if request.get("endpoint") != "get_action":
                router.send_multipart([*frames[:-1], codec.encode({"error": "Unknown endpoint"})])
                continue
            answered += 1
            t = float(np.asarray(request["data"]["observation"]["state"]["t"])[0, 0])
            reply = [*frames[:-1], codec.encode([{"x": np.full((1, 4, 1), t, np.float32)}, {}])]
            if answered == 3:
                router.send_multipart(previous)
            previous = reply
            router.send_multipart(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with PolicyClient(host="127.0.0.1", port=port, timeout_ms=5000) as client:
            got = [float(client.get_action({"state": {"t": np.array([[t]], np.float32)}})[0]["x"][0, 0, 0])
                   for t in (1.0, 2.0, 3.0, 4.0)]
        assert got == [1.0, 2.0, 3.0, 4.0]
    finally:
        stop.set()
        thread.join(5)
        router.close(linger=0)


def _router_server(answer):
    """A ROUTER peer on loopback whose replies `answer(frames, request)` makes (a list of messages to send, maybe
    empty); (port, stop)."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            if router.poll(20):
                frames = router.recv_multipart()
                for message in answer(frames, codec.decode(frames[-1])):
                    router.send_multipart(message)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def stopped():
        stop.set()
        thread.join(5)
        router.close(linger=0)
    return port, stopped


@pytest.mark.parametrize("server", ["echoes the identity only", "re-sends a stale reply and never answers"])
def test_a_reply_to_another_request_is_dropped_and_the_call_still_times_out_on_budget(server):
    # Replies are correlated with their requests: what made the socket readable was then dropped inside a blocking
    # recv, which waited for ever past timeout_ms (a ROUTER server that sends back [identity, b"", reply] only, and
    # a stale reply with no answer after it).
    stale = []

    def answer(frames, request):
        if server == "echoes the identity only":
            return [[frames[0], b"", codec.encode({"error": "Unknown endpoint"})]]
        if not stale:
            stale.append([*frames[:-1], codec.encode({"error": "Unknown endpoint"})])
            return stale
        return stale  # the first reply again, with the first request's id

    port, stopped = _router_server(answer)
    try:
        with PolicyClient(host="127.0.0.1", port=port, timeout_ms=600) as client:
            # the first request (the client's get_server_info question) gets its answer; get_action the stale copy
            started = time.monotonic()
            with pytest.raises(PolicyTimeoutError, match=r"within 600 ms .*; 1 message\(s\) that came were replies to "
                                                         r"other requests and were dropped: a ROUTER server must send "
                                                         r"back every routing frame it received"):
                client.get_action({"state": {"s": np.zeros((1, 1, 1), np.float32)}})
            assert time.monotonic() - started < 5
    finally:
        stopped()


def test_a_call_a_signal_handler_makes_in_the_middle_of_get_action_is_named_as_itself_when_it_times_out():
    # reset() from a SIGALRM handler that fired while get_action encoded its observation (before sending) timed out
    # as "did not answer 'get_action' (asking 'reset' first)": get_action asked no such thing.
    import signal

    class SlowReset(EchoPolicy):
        def reset(self, options=None):
            time.sleep(2)
            return {}

    seen = []
    with running_server(SlowReset()) as server, PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=600) as client:
        client.get_action(libero_like_observation())  # the server known: no get_server_info question below

        def handler(signum, frame):
            try:
                client.reset()
            except PolicyTimeoutError as exc:
                seen.append(str(exc))

        previous = signal.signal(signal.SIGALRM, handler)
        try:
            with client._asking_first("get_action"):  # as get_action holds it for its whole call
                signal.raise_signal(signal.SIGALRM)
        finally:
            signal.signal(signal.SIGALRM, previous)
    assert len(seen) == 1 and "did not answer 'reset' within 600 ms" in seen[0], seen


@pytest.mark.parametrize("endpoint", ["get_action", "reset"])
def test_a_first_call_that_times_out_in_the_servers_kind_question_names_the_call_and_the_question(endpoint):
    # It named 'get_server_info' alone: a question the caller never asked, not the call that timed out.
    holder = socket.socket()  # a frozen server (SIGSTOPped): the kernel accepts, nothing ever speaks
    holder.bind(("127.0.0.1", 0))
    holder.listen(4)
    try:
        with PolicyClient(host="127.0.0.1", port=holder.getsockname()[1], timeout_ms=300) as client:
            call = {"get_action": lambda: client.get_action({"state": {"s": np.zeros((1, 1, 1), np.float32)}}),
                    "reset": client.reset}[endpoint]
            with pytest.raises(PolicyTimeoutError, match=rf"did not answer '{endpoint}' \(asking 'get_server_info' "
                                                         r"first\) within 300 ms \(a TCP connection was made"):
                call()
    finally:
        holder.close()
