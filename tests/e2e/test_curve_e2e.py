"""CURVE end to end: a real PolicyServer and PolicyClient on loopback, refusals, token on top, and what a wire tap sees."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from typing import Dict, Iterator, List

import numpy as np
import pytest
import zmq.auth
from reference_peer import ReferenceClient
from serving import running_server

from gr00t_client import BasePolicy, HandshakeError, PolicyClient, PolicyServerError, PolicyTimeoutError

TOKEN = "tok-3f9a-very-secret-token"
TASK = "place the quokka figurine on the blue plate"
PATTERN = b"QUOKKA-PIXEL-PATTERN-0123456789!"


class MirrorPolicy(BasePolicy):
    """Sends the first camera image back as the action and the task text as info: a round trip checks both exactly."""

    def __init__(self) -> None:
        super().__init__(strict=False)

    def _get_action(self, observation, options=None):
        image = next(iter(observation["video"].values()))
        task = observation["language"]["annotation.human.action.task_description"][0][0]
        return {"image": image.copy(), "scaled": image.astype(np.float32) / 255.0}, {"task": task}

    def reset(self, options=None):
        return {}


def patterned_observation(height: int = 64, width: int = 64) -> Dict[str, Dict[str, object]]:
    flat = np.frombuffer(PATTERN * (height * width * 3 // len(PATTERN) + 1), np.uint8)[: height * width * 3]
    return {
        "video": {"image": flat.reshape(1, 1, height, width, 3).copy()},
        "state": {"x": np.full((1, 1, 1), 0.25, np.float32)},
        "language": {"annotation.human.action.task_description": [[TASK]]},
    }


@pytest.fixture
def keys(tmp_path):
    """Server key pair, an authorized robot key pair, an unknown one, and the authorized-keys directory."""
    for name in ("server", "robot", "stranger"):
        (tmp_path / name).mkdir()
    server_public, server_secret = zmq.auth.create_certificates(str(tmp_path / "server"), "server")
    robot_public, robot_secret = zmq.auth.create_certificates(str(tmp_path / "robot"), "robot")
    _, stranger_secret = zmq.auth.create_certificates(str(tmp_path / "stranger"), "stranger")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(robot_public, authorized / "robot.key")
    return {"server": server_public, "server_secret": server_secret, "robot": robot_secret,
            "stranger": stranger_secret, "authorized": str(authorized)}


def curve_server(keys, **kwargs):
    return running_server(MirrorPolicy(), curve_secret_key=keys["server_secret"], authorized_keys=keys["authorized"], **kwargs)


def test_authorised_client_round_trip_is_exact(keys):
    observation = patterned_observation()
    with curve_server(keys) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, server_public_key=keys["server"],
                          client_secret_key=keys["robot"]) as client:
            action, info = client.get_action(observation)
            again, _ = client.get_action(observation)  # a second request on the same encrypted connection
            assert client.get_server_info()["encryption"] == "curve"
    np.testing.assert_array_equal(action["image"], observation["video"]["image"])
    assert action["image"].dtype == np.uint8
    np.testing.assert_array_equal(action["scaled"], observation["video"]["image"].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(again["image"], observation["video"]["image"])
    assert info == {"task": TASK}


@pytest.mark.parametrize("client_keys, message", [
    ({"server_public_key": "stranger-as-server", "client_secret_key": "robot"}, "server_public_key .--server-public-key. is not this server's key"),
    ({"server_public_key": "server", "client_secret_key": "stranger"}, "refused this client's public key"),
    ({"server_public_key": "server"}, "ephemeral key"),
    ({}, "pass server_public_key"),
])
def test_refused_clients_get_a_one_line_handshake_error_within_the_timeout(keys, client_keys, message):
    timeout_ms = 4000
    files = dict(keys, **{"stranger-as-server": keys["stranger"]})
    kwargs = {name: files[value] for name, value in client_keys.items()}
    with curve_server(keys) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=timeout_ms, **kwargs) as client:
            started = time.monotonic()
            # A keyless client: the server's mechanism-mismatch ERROR can be lost to its closing the connection (a race
            # seen on a loaded machine), and closings alone are what a forwarder whose server is down makes too: then
            # the timeout says both, the remedy included
            expected = HandshakeError if client_keys else (HandshakeError, PolicyTimeoutError)
            with pytest.raises(expected, match=message) as info:
                client.get_action(patterned_observation())
            if isinstance(info.value, HandshakeError):
                assert time.monotonic() - started < timeout_ms / 1000.0
            assert "\n" not in str(info.value) and "handshake" in str(info.value)
            assert client.ping() is False


def test_curve_client_against_a_plaintext_server_is_a_handshake_error(keys):
    with running_server(MirrorPolicy()) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=4000, server_public_key=keys["server"],
                          client_secret_key=keys["robot"]) as client:
            with pytest.raises(HandshakeError, match="does not use CURVE encryption"):
                client.get_action(patterned_observation())


def test_token_is_still_required_on_top_of_curve(keys):
    with curve_server(keys, api_token=TOKEN) as server:
        curve = dict(server_public_key=keys["server"], client_secret_key=keys["robot"])
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, **curve) as stolen_key_only:
            with pytest.raises(PolicyServerError, match="Unauthorized"):
                stolen_key_only.get_action(patterned_observation())
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, api_token=TOKEN, **curve) as client:
            _, info = client.get_action(patterned_observation())
            assert info == {"task": TASK}


def test_reference_clients_still_work_against_a_server_without_curve():
    with running_server(MirrorPolicy()) as server:
        reference = ReferenceClient(server.port, timeout_ms=5000)
        try:
            action, info = reference.get_action(patterned_observation())
            assert reference.call_endpoint("get_server_info", requires_input=False)["encryption"] is None
        finally:
            reference.close()
    assert info == {"task": TASK} and action["image"].shape == (1, 1, 64, 64, 3)


def test_closing_a_curve_server_stops_its_authenticator_and_frees_the_port(keys):
    before = {t.ident for t in threading.enumerate()}
    with curve_server(keys) as server:
        port = server.port
        with PolicyClient("127.0.0.1", port, timeout_ms=5000, server_public_key=keys["server"],
                          client_secret_key=keys["robot"]) as client:
            assert client.ping()
    server.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and {t.ident for t in threading.enumerate() if t.is_alive()} - before:
        time.sleep(0.05)
    assert not {t.name for t in threading.enumerate() if t.is_alive() and t.ident not in before}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


# --- what a wire tap sees -------------------------------------------------------------------------


class TcpRelay:
    """A TCP relay on 127.0.0.1 between clients and a server port that records every byte it forwards, both ways."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.captured = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                downstream, _ = self._listener.accept()
            except socket.timeout:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                thread = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(0.1)
        while not self._stop.is_set():
            try:
                chunk = source.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            with self._lock:
                self.captured += chunk
            try:
                sink.sendall(chunk)
            except OSError:
                break
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        self._listener.close()


@contextlib.contextmanager
def tapped(server_port: int) -> Iterator[TcpRelay]:
    relay = TcpRelay(server_port)
    try:
        yield relay
    finally:
        relay.close()


def capture_one_session(server_port: int, **client_kwargs) -> bytes:
    """Every byte of a ping, get_server_info and two get_action calls through the relay."""
    with tapped(server_port) as relay:
        with PolicyClient("127.0.0.1", relay.port, timeout_ms=5000, api_token=TOKEN, **client_kwargs) as client:
            _, info = client.get_action(patterned_observation())
            client.get_action(patterned_observation())
            assert info == {"task": TASK}
        return bytes(relay.captured)


def secrets_seen(captured: bytes) -> Dict[str, bool]:
    return {"token": TOKEN.encode() in captured, "task": TASK.encode() in captured, "image": PATTERN in captured}


def test_a_wire_tap_sees_token_task_and_image_in_clear_text_without_curve():
    with running_server(MirrorPolicy(), api_token=TOKEN) as server:
        seen = secrets_seen(capture_one_session(server.port))
    assert seen == {"token": True, "task": True, "image": True}  # so the test below can fail


def test_a_wire_tap_sees_none_of_them_with_curve(keys):
    with curve_server(keys, api_token=TOKEN) as server:
        captured = capture_one_session(server.port, server_public_key=keys["server"], client_secret_key=keys["robot"])
    assert len(captured) > 64 * 64 * 3 * 2  # the images did go through the relay
    assert secrets_seen(captured) == {"token": False, "task": False, "image": False}


# --- gr00t-eval connects with the same keys -------------------------------------------------------


def test_gr00t_eval_flags_and_environment_connect_to_a_curve_server(keys, monkeypatch):
    from gr00t_eval.cli import build_parser
    from gr00t_eval.connection import open_client

    monkeypatch.setenv("GR00T_SERVER_PUBLIC_KEY", keys["server"])
    with curve_server(keys, api_token=TOKEN) as server:
        args = build_parser().parse_args(["open-loop", "--dataset-path", "unused", "--port", str(server.port),
                                          "--api-token", TOKEN, "--client-key", keys["robot"]])
        assert args.server_public_key == keys["server"]
        with open_client("127.0.0.1", server.port, args) as client:
            assert client.get_action(patterned_observation())[1] == {"task": TASK}
        stranger = build_parser().parse_args(["rollout", "--env-name", "x", "--policy-client-port", str(server.port),
                                              "--client-key", keys["stranger"], "--timeout-ms", "3000"])
        with pytest.raises(SystemExit, match=r"^error: handshake with the policy server .* refused this client's public key"):
            open_client("127.0.0.1", server.port, stranger)


@pytest.mark.parametrize("variable, flag", [("GR00T_SERVER_PUBLIC_KEY", "--server-public-key"),
                                            ("GR00T_CLIENT_KEY", "--client-key")])
def test_gr00t_eval_refuses_an_empty_key_variable_instead_of_connecting_in_plaintext(keys, monkeypatch, variable, flag):
    """GR00T_SERVER_PUBLIC_KEY= (an unset variable exported) was read as no key: the run went ahead in plaintext."""
    from gr00t_eval.cli import build_parser
    from gr00t_eval.connection import open_client

    monkeypatch.setenv("GR00T_SERVER_PUBLIC_KEY", keys["server"])
    monkeypatch.setenv(variable, "")
    with running_server(MirrorPolicy()) as plaintext:
        args = build_parser().parse_args(["open-loop", "--dataset-path", "unused", "--port", str(plaintext.port)])
        with pytest.raises(SystemExit, match=rf"^error: {flag} \(or \${variable}\) is empty: an unset variable\?"):
            open_client("127.0.0.1", plaintext.port, args).close()


def test_batch_jobs_take_curve_keys_in_policy_server(keys):
    from gr00t_eval.batch import JobError, connect
    from gr00t_eval.batch_jobs import _server

    with curve_server(keys) as server:
        address = _server("job", {"port": server.port, "server_public_key": keys["server"], "client_key": keys["robot"]})
        client = connect(address)
        try:
            assert client.get_action(patterned_observation())[1] == {"task": TASK}
        finally:
            client.close()
    with pytest.raises(JobError, match="'client_key' needs 'server_public_key'"):
        _server("job", {"port": 1, "client_key": keys["robot"]})
