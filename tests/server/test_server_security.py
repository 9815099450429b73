"""PolicyServer security: the API token gates every endpoint, and kill needs loopback, the token or an opt-in."""

import contextlib
import re
import socket
import subprocess
import threading
import time
from unittest import mock

import numpy as np
import pytest
import zmq
from reference_peer import EchoPolicy, ReferenceClient, libero_like_observation, raw_round_trip, ref_packb, ref_unpackb, running_server

from gr00t_client import PolicyClient, PolicyServerError, codec
from gr00t_server import server as server_module
from gr00t_server import messages as messages_module

TOKEN = "s3cret-token"


def local_non_loopback_address():
    """An IPv4 address of this machine that is not loopback, or None (we only ever connect to our own)."""
    try:
        output = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for address in output.split():
        if "." in address and not address.startswith("127."):
            try:
                with socket.socket() as probe:
                    probe.bind((address, 0))
                return address
            except OSError:
                continue
    return None


NON_LOOPBACK = local_non_loopback_address()
needs_non_loopback = pytest.mark.skipif(NON_LOOPBACK is None, reason="no non-loopback local address")


@pytest.fixture
def guarded():
    with running_server(EchoPolicy(), api_token=TOKEN) as server:
        yield server


@pytest.mark.parametrize("endpoint", ["ping", "get_action", "reset", "get_modality_config", "get_server_info", "kill"])
@pytest.mark.parametrize("token", [None, "wrong"])
def test_missing_or_wrong_token_is_unauthorized_and_nothing_runs(guarded, endpoint, token):
    request = {"endpoint": endpoint, "data": {"observation": libero_like_observation(height=8, width=8)}}
    if token is not None:
        request["api_token"] = token
    reply = ref_unpackb(raw_round_trip(guarded.port, ref_packb(request))[0])
    if token is None:  # told apart from a wrong token, naming where a token is given
        assert reply["error"].startswith("Unauthorized: this server requires an API token and the request carried none")
        assert "--api-token or $GR00T_API_TOKEN" in reply["error"]
    else:
        assert reply["error"] == "Unauthorized: Invalid API token"
    assert guarded.policy.calls == 0 and guarded.policy.resets == 0
    with ReferenceClient(guarded.port, api_token=TOKEN) as client:
        assert client.call_endpoint("ping", requires_input=False)["status"] == "ok"  # still serving


@pytest.mark.parametrize("token, type_name", [(TOKEN.encode(), "bytes"), (12345, "int"), ([TOKEN], "list")],
                         ids=["bin", "int", "array"])
def test_a_raw_token_that_is_no_msgpack_str_is_refused_naming_its_type_not_its_value(guarded, token, type_name):
    """The right token sent as msgpack bin (a C++ std::vector<char>, Rust serde_bytes) got 'Invalid API token', the
    words for a wrong token: its operator rechecked the token instead of its type."""
    request = {"endpoint": "ping", "api_token": token}
    reply = ref_unpackb(raw_round_trip(guarded.port, ref_packb(request))[0])
    assert reply["error"] == f"Unauthorized: 'api_token' must be a str (msgpack str), got {type_name}"
    assert guarded.policy.calls == 0 and guarded.policy.resets == 0


def test_valid_token_is_served_for_our_client_and_the_reference_client(guarded):
    with PolicyClient(port=guarded.port, api_token=TOKEN, timeout_ms=5000) as client:
        assert client.get_action(libero_like_observation(height=8, width=8))[0]["x"].shape == (1, 16, 1)
    with ReferenceClient(guarded.port, api_token=TOKEN) as client:
        assert client.get_action(libero_like_observation(height=8, width=8))[0]["x"].shape == (1, 16, 1)


def test_our_client_without_the_token_gets_unauthorized(guarded):
    with PolicyClient(port=guarded.port, timeout_ms=5000) as client, pytest.raises(PolicyServerError, match="Unauthorized"):
        client.get_action({})


def test_unauthenticated_peers_costly_requests_do_not_hold_back_an_authenticated_clients_replies():
    """Two connections without the token, each keeping one costly request in flight (a map of 60,000 keys, about
    0.1 s to decode before the token is read), kept the socket thread's receive burst of 64 messages going: the
    robot's finished replies waited behind it for seconds and its calls timed out."""
    costly = codec.encode({"endpoint": "get_action", "data": {"observation": {
        "state": {"x": np.zeros((1, 1, 1), np.float32)}, "pad": {f"k{i:061d}": 1 for i in range(60_000)}}}})
    observation = {"state": {"x": np.zeros((1, 1, 1), np.float32)}}
    refusals: list = []
    stop = threading.Event()
    with running_server(EchoPolicy(delay_s=0.01), api_token=TOKEN) as server:
        def attack() -> None:
            with contextlib.closing(zmq.Context.instance().socket(zmq.DEALER)) as dealer:
                dealer.setsockopt(zmq.LINGER, 0)
                dealer.connect(f"tcp://127.0.0.1:{server.port}")
                dealer.send_multipart([b"", costly])
                while not stop.is_set():
                    if dealer.poll(100):
                        refusals.append(codec.decode(dealer.recv_multipart()[1])["error"])
                        dealer.send_multipart([b"", costly])

        attackers = [threading.Thread(target=attack, daemon=True) for _ in range(2)]
        try:
            with PolicyClient(port=server.port, api_token=TOKEN, timeout_ms=5000) as client:
                client.get_action(observation)
                for attacker in attackers:
                    attacker.start()
                deadline = time.monotonic() + 30
                while len(refusals) < 4 and time.monotonic() < deadline:  # the attack is under way
                    time.sleep(0.05)
                for _ in range(5):
                    client.get_action(observation)  # PolicyTimeoutError when its reply waits behind the attack
        finally:
            stop.set()
            for attacker in attackers:
                attacker.join(10)
    assert refusals and all(error.startswith("Unauthorized") for error in refusals)


@pytest.mark.parametrize("token, hint", [(TOKEN.encode(), "; decode bytes first: api_token.decode()"), (12345, "")],
                         ids=["bytes", "int"])
def test_a_token_that_is_no_str_is_refused_naming_api_token_not_sent_as_invalid(guarded, token, hint):
    """PolicyClient(api_token=b"<the right token>") was sent as given and got only 'Invalid API token'."""
    with pytest.raises(TypeError) as refused:
        PolicyClient(port=guarded.port, api_token=token, timeout_ms=5000)
    assert str(refused.value) == f"api_token must be a str (or None for no token), got {type(token).__name__}{hint}"
    assert TOKEN not in str(refused.value)
    with PolicyClient(port=guarded.port, api_token=token.decode() if hint else TOKEN, timeout_ms=5000) as client:
        assert client.get_action(libero_like_observation(height=8, width=8))[0]["x"].shape == (1, 16, 1)


def test_token_is_compared_in_constant_time(guarded):
    with mock.patch.object(messages_module.hmac, "compare_digest", wraps=messages_module.hmac.compare_digest) as compare:
        with ReferenceClient(guarded.port, api_token=TOKEN) as client:
            client.call_endpoint("ping", requires_input=False)
    compare.assert_called_once_with(TOKEN.encode(), TOKEN.encode())


# --- kill -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("peer,allowed", [("127.0.0.1", True), ("127.5.5.5", True), ("::1", True), ("::ffff:127.0.0.1", True), (None, True), ("192.0.2.7", False), ("10.0.0.1", False), ("::ffff:10.0.0.1", False)])
def test_loopback_decision(peer, allowed):
    assert server_module._is_loopback(peer) is allowed


def test_kill_from_loopback_stops_the_server():
    with running_server(EchoPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        client.kill_server()
        assert server._run_done.wait(5)


@needs_non_loopback
def test_kill_from_a_remote_peer_without_a_token_is_refused_and_serving_continues():
    with running_server(EchoPolicy(), host=NON_LOOPBACK) as server:
        with PolicyClient(host=NON_LOOPBACK, port=server.port, timeout_ms=5000) as client:
            with pytest.raises(PolicyServerError, match="kill refused"):
                client.kill_server()
            assert client.ping() is True
        assert not server._run_done.is_set()


@needs_non_loopback
def test_kill_from_a_remote_peer_with_the_token_is_honoured():
    with running_server(EchoPolicy(), host=NON_LOOPBACK, api_token=TOKEN) as server:
        with PolicyClient(host=NON_LOOPBACK, port=server.port, api_token=TOKEN, timeout_ms=5000) as client:
            client.kill_server()
        assert server._run_done.wait(5)


@needs_non_loopback
def test_kill_from_a_remote_peer_is_honoured_with_allow_remote_kill():
    with running_server(EchoPolicy(), host=NON_LOOPBACK, allow_remote_kill=True) as server:
        with PolicyClient(host=NON_LOOPBACK, port=server.port, timeout_ms=5000) as client:
            client.kill_server()
        assert server._run_done.wait(5)


def test_kill_decision_refuses_a_remote_peer_without_token_or_opt_in():
    policy_server = server_module.PolicyServer(EchoPolicy())
    policy_server._current = mock.Mock(peer="198.51.100.4")
    with pytest.raises(server_module.RequestError, match="kill refused"):
        policy_server._kill()
    policy_server.allow_remote_kill = True
    policy_server._kill()
    assert policy_server._running is False


@pytest.mark.parametrize("token, warned", [(None, True), ("s3cret", False)])
def test_a_server_started_from_python_off_loopback_without_a_token_warns(caplog, token, warned):
    """Only `gr00t-server serve` warned; docs/serving.md promises it for every server."""
    from gr00t_server.serving import PolicyServer

    server = PolicyServer(EchoPolicy(), host="0.0.0.0", port=0, api_token=token)
    with caplog.at_level("WARNING", logger="gr00t_server.serving.server"):
        server.start()
    server.close()
    assert ("listening on 0.0.0.0 without an API token" in caplog.text) is warned


@pytest.mark.parametrize("host", ["127.1", "localhost"])
def test_a_server_on_a_name_that_binds_loopback_does_not_warn_of_exposure(caplog, host):
    """A host name that resolves to a loopback address (127.1, or the machine's own name in /etc/hosts) binds
    127.0.0.1 only; the server warned that anyone who can reach the port can use the policy."""
    from gr00t_server.serving import PolicyServer

    server = PolicyServer(EchoPolicy(), host=host, port=0)
    with caplog.at_level("WARNING", logger="gr00t_server.serving.server"):
        server.start()
    bound = server.bound_endpoint
    server.close()
    assert bound.startswith("tcp://127.0.0.1:")
    assert "without an API token" not in caplog.text


def test_a_token_that_is_not_utf8_is_refused_when_the_server_is_made():
    # '\udcff': the surrogate a Latin-1 shell's byte becomes in $GR00T_API_TOKEN; every request failed with
    # UnicodeEncodeError before, so no client could ever be served
    with pytest.raises(ValueError, match="api_token must be UTF-8 text"):
        server_module.PolicyServer(EchoPolicy(), port=0, api_token="s\udcffx")


@pytest.mark.parametrize("token", ["", "  "])
def test_serve_refuses_an_empty_api_token_instead_of_serving_without_one(token, capsys):
    from gr00t_server import cli

    assert cli.main(["serve", "--dataset-path", "unused", "--api-token", token]) == 2
    assert "--api-token (or $GR00T_API_TOKEN) is empty: an unset variable?" in capsys.readouterr().err


@pytest.mark.parametrize("given", ["environment", "flag"])
def test_serve_refuses_a_token_that_is_not_utf8_before_the_model_loads(tiny_checkpoint, capsys, monkeypatch, given):
    """PolicyServer refused it only after the checkpoint had loaded and warmed up (minutes for a 3B model)."""
    from gr00t_server import cli

    token = "s\udcffx"  # the surrogate a Latin-1 shell's byte becomes in $GR00T_API_TOKEN or argv
    monkeypatch.delenv("GR00T_API_TOKEN", raising=False)
    if given == "environment":
        monkeypatch.setenv("GR00T_API_TOKEN", token)
    flags = ["--api-token", token] if given == "flag" else []
    assert cli.main(["serve", "--model-path", str(tiny_checkpoint), "--device", "cpu", "--port", "0", *flags]) == 2
    out, err = capsys.readouterr()
    named = "$GR00T_API_TOKEN" if given == "environment" else "--api-token"
    assert f"gr00t-server serve: error: {named} must be UTF-8 text" in err
    assert "Warm-up:" not in out and "Embodiment tag:" not in out


@pytest.mark.parametrize("token, problem", [("s3cret-token\n", "ends with a newline"), ("s3cret-token\r", "ends with a carriage return"),
                                            (" s3cret-token", "starts with whitespace"),
                                            ("s3cret\x07token", "holds a control character (U+0007)")])
def test_a_token_no_client_would_type_is_refused_when_the_server_is_made(token, problem):
    """A token read from a file kept its final newline: every client typing the token got only 'Invalid API token'."""
    with pytest.raises(ValueError, match=rf"^api_token {re.escape(problem)}: clients that type the token") as refused:
        server_module.PolicyServer(EchoPolicy(), port=0, api_token=token)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("given", ["environment", "flag"])
def test_serve_refuses_a_token_ending_in_a_newline_naming_where_it_came_from(capsys, monkeypatch, given):
    """`kubectl create secret --from-file` keeps the file's final newline in $GR00T_API_TOKEN."""
    from gr00t_server import cli

    token = "s3cret-token\n"
    monkeypatch.delenv("GR00T_API_TOKEN", raising=False)
    if given == "environment":
        monkeypatch.setenv("GR00T_API_TOKEN", token)
    flags = ["--api-token", token] if given == "flag" else []
    assert cli.main(["serve", "--dataset-path", "unused", "--port", "0", *flags]) == 2
    err = capsys.readouterr().err
    named = "$GR00T_API_TOKEN" if given == "environment" else "--api-token"
    assert f"gr00t-server serve: error: {named} ends with a newline: clients that type the token" in err
    assert "s3cret" not in err and len(err.strip().splitlines()) == 1
