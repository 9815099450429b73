"""PolicyServer checks what it is given when it is made: the policy, the remote-kill flag and the embodiment tag are
refused naming the argument instead of serving a wrong answer (a class's every request an internal error, a kill flag
read from text as True, an embodiment reported as typed where serve resolves it)."""

import numpy as np
import pytest
from reference_peer import EchoPolicy
from test_server_security import NON_LOOPBACK, needs_non_loopback

from gr00t_client import PolicyClient
from gr00t_server import PolicyServer
from serving import running_server


@pytest.mark.parametrize("policy, got", [
    (None, "got NoneType"),
    ("127.0.0.1:5555", "got str"),
    (EchoPolicy, "got the class EchoPolicy (pass an instance: EchoPolicy(...))"),
])
def test_a_policy_that_is_no_policy_object_is_refused_naming_policy(policy, got):
    with pytest.raises(TypeError) as refused:
        PolicyServer(policy, host="127.0.0.1", port=0)
    assert str(refused.value) == f"policy must be a BasePolicy (an object with a get_action method), {got}"


class StatelessPolicy:
    """A duck-typed policy with get_action and get_modality_config, no reset (the reference has no reset endpoint)."""

    def get_modality_config(self):
        return {}

    def get_action(self, observation, options=None):
        return {"move": np.zeros((1, 2, 1), np.float32)}, {}


def test_a_policy_object_without_reset_is_served():
    """The first version of the policy check refused it at construction; it served get_action before."""
    with running_server(StatelessPolicy()) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as client:
            action, _ = client.get_action({"state": {"x": np.zeros((1, 1, 1), np.float32)}})
            assert client.reset() == {}  # nothing to reset (it was an internal AttributeError: every episode lost)
    assert action["move"].shape == (1, 2, 1)


@pytest.mark.parametrize("value", ["false", "no", 0, 1, None])
def test_an_allow_remote_kill_that_is_not_a_bool_is_refused_naming_it(value):
    """bool("false") is True: a flag read from YAML or the environment let any peer stop the server."""
    with pytest.raises(ValueError) as refused:
        PolicyServer(EchoPolicy(), host="127.0.0.1", port=0, allow_remote_kill=value)
    assert str(refused.value) == f"allow_remote_kill must be True or False, got {value!r} ({type(value).__name__})"


@needs_non_loopback
def test_a_numpy_false_allow_remote_kill_still_refuses_a_remote_kill():
    with running_server(EchoPolicy(), host=NON_LOOPBACK, allow_remote_kill=np.bool_(False)) as server:
        assert server.allow_remote_kill is False
        with PolicyClient(host=NON_LOOPBACK, port=server.port, timeout_ms=5000) as client:
            with pytest.raises(Exception, match="kill refused"):
                client.kill_server()
            assert client.ping() is True
        assert not server._run_done.is_set()


@pytest.mark.parametrize("tag", ["", "   ", 5])
def test_an_embodiment_tag_that_is_no_tag_is_refused_naming_embodiment_tag(tag):
    with pytest.raises(ValueError) as refused:
        PolicyServer(EchoPolicy(), host="127.0.0.1", port=0, embodiment_tag=tag)
    assert str(refused.value) == (f"embodiment_tag must be a non-empty str (a tag such as 'new_embodiment') or None, "
                                  f"got {tag!r}")


@pytest.mark.parametrize("tag, reported", [
    ("LIBERO_PANDA", "libero_sim"),  # a built-in tag's name, resolved as `gr00t-server serve --embodiment-tag` does
    (" libero_sim ", "libero_sim"),
    ("my_robot", "my_robot"),  # a tag of one's own robot is reported as given
    ("libero_panda", "libero_panda"),  # an N1.6-era checkpoint's own tag, not libero_sim (open-loop pins it)
])
def test_get_server_info_reports_the_embodiment_tag_as_serve_resolves_it(tag, reported):
    with running_server(EchoPolicy(), embodiment_tag=tag) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            assert client.get_server_info()["embodiment_tag"] == reported


@pytest.mark.parametrize("host, message", [
    (None, "host must be a non-empty str (a name or an IP address), got None"),
    ("", "host must be a non-empty str (a name or an IP address), got ''"),
    ("127.0.0.1:5555", "host '127.0.0.1:5555' is not a host name or an IP address: it holds a ':port' (or is a "
                       "malformed IPv6 address); pass the host alone and the port as port= (host='127.0.0.1', port=5555)"),
])
def test_a_host_that_is_no_host_is_refused_naming_host(host, message):
    """start() failed with ZeroMQ's "No such device" (tcp://None:0), or bound tcp://127.0.0.1:5555:0."""
    with pytest.raises(ValueError) as refused:
        PolicyServer(EchoPolicy(), host=host, port=0)
    assert str(refused.value) == message


@pytest.mark.parametrize("host, kept", [("*", "*"), ("0.0.0.0", "0.0.0.0"), ("::", "::"), ("[::1]", "::1"),
                                        ("localhost", "localhost")])
def test_every_host_serve_accepts_is_taken(host, kept):
    """gr00t-server serve's --host takes these (serve_checks._check_bind_host); PolicyServer agrees."""
    from gr00t_server.serve_checks import _check_bind_host

    _check_bind_host(host)
    server = PolicyServer(EchoPolicy(), host=host, port=0)
    try:
        assert server.host == kept
    finally:
        server.close()
