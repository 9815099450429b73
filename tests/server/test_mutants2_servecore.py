"""Serving behaviour no test held, found by mutation testing (audit13b servecore): what the server counts, replies
and refuses around the policy call, through a real server on loopback."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from serving import running_server
from test_batching import call_together
from test_serving_decode_limits import pipelining_dealer, replies_of

from gr00t_client import codec
from gr00t_client import BasePolicy, ModalityConfig, PolicyClient, PolicyServerError
from gr00t_server import PolicyServer


class StrictNanPolicy(BasePolicy):
    """A strict policy whose action is NaN: its own check (NonFiniteActionError) refuses it after the model ran."""

    def __init__(self) -> None:
        super().__init__(strict=True)
        self.calls = 0

    def get_modality_config(self):
        return {"state": ModalityConfig([0], ["arm"]), "action": ModalityConfig([0], ["arm"])}

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        self.calls += 1
        return {"arm": np.full((observation["state"]["arm"].shape[0], 1, 2), np.nan, np.float32)}, {}


def test_a_strict_policys_own_nan_refusal_is_counted_as_one_policy_call():
    """The model ran even though its NaN action was refused: get_server_info counts it once, as a call of one request
    with the observation's rows (a crashing or NaN-producing model shows up in policy_calls, never vanishes)."""
    policy = StrictNanPolicy()
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match="non-finite"):
            client.get_action({"state": {"arm": np.zeros((2, 1, 2), np.float32)}})
        stats = client.get_server_info()["stats"]
    assert policy.calls == 1
    assert stats["policy_calls"] == 1 and stats["batch_sizes"] == {"1": 1} and stats["mean_batch_rows"] == 2.0


class FixedPolicy(BasePolicy):
    """Ignores the observation (a replay's or a scripted policy's way) and returns one row of zeros."""

    def __init__(self) -> None:
        super().__init__(strict=False)

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        return {"arm": np.zeros((1, 1, 2), np.float32)}, {}


def test_a_call_with_an_empty_observation_counts_one_row():
    """A get_action without arrays (a replay driven with {}) is one row in the stats: mean_batch_rows is 1, not 0."""
    with running_server(FixedPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        client.get_action({})
        stats = client.get_server_info()["stats"]
    assert stats["policy_calls"] == 1 and stats["mean_batch_rows"] == 1.0


def test_get_server_info_says_whether_requests_need_the_api_token():
    """info["auth"] is True exactly when the server was started with an API token (a client reads it to know)."""
    with running_server(FixedPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        open_info = client.get_server_info()
    with running_server(FixedPolicy(), api_token="secret") as server:
        with PolicyClient(port=server.port, timeout_ms=5000, api_token="secret") as client:
            token_info = client.get_server_info()
    assert open_info["auth"] is False and token_info["auth"] is True


class IdentityPolicy(FixedPolicy):
    """A policy whose identity() raises, or returns what is not a map."""

    def __init__(self, identity) -> None:
        super().__init__()
        self._identity = identity

    def identity(self):
        return self._identity()


def _fail():
    raise OSError("the checkpoint directory went away")


@pytest.mark.parametrize("identity, expected", [
    (_fail, {"error": "internal error in identity: OSError"}),
    (lambda: object(), None),  # not a map: reported as no identity, never an unencodable info reply
], ids=["raises", "not a map"])
def test_get_server_info_answers_when_the_policys_identity_fails_or_is_not_a_map(identity, expected):
    """get_server_info must answer whatever the policy's identity() does; eval pins the served policy with it."""
    with running_server(IdentityPolicy(identity)) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        info = client.get_server_info()
        assert client.ping()
    assert info["policy_identity"] == expected and info["server"] == "gr00t-server"


def test_get_server_info_answers_when_the_policys_modality_config_fails():
    """A policy whose get_modality_config raises still has its info served, the failure named in its place."""

    class BrokenConfig(FixedPolicy):
        def get_modality_config(self):
            raise RuntimeError("no such embodiment")

    with running_server(BrokenConfig()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        info = client.get_server_info()
    assert info["modality_configs"] == {"error": "internal error in get_modality_config: RuntimeError"}
    assert info["policy_class"] == "BrokenConfig"


def test_an_empty_api_token_is_refused_rather_than_serving_without_one():
    """api_token="" (os.environ.get("GR00T_API_TOKEN", "") with it unset) is refused; None serves without a token."""
    with pytest.raises(ValueError, match=r"^api_token is empty .*pass a token, or None to serve without a token"):
        PolicyServer(FixedPolicy(), port=0, api_token="")


def test_api_token_none_serves_without_authentication():
    with running_server(FixedPolicy(), api_token=None) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        action, _ = client.get_action({})
        info = client.get_server_info()
    assert action["arm"].shape == (1, 1, 2) and info["auth"] is False


class StrictRowPolicy(BasePolicy):
    """A strict batching policy: action row i is 10 * state[i, 0, 0]; records the rows of each call."""

    supports_batching = True

    def __init__(self) -> None:
        super().__init__(strict=True)
        self.row_counts = []

    def get_modality_config(self):
        return {"state": ModalityConfig([0], ["joints"]), "language": ModalityConfig([0], ["task"]),
                "action": ModalityConfig([0, 1], ["arm"])}

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        state = observation["state"]["joints"]
        self.row_counts.append(state.shape[0])
        return {"arm": (state[:, :1, :1] * 10.0 + np.zeros((1, 2, 2))).astype(np.float32)}, {}


def _row_observation(client_id: float, language=None) -> dict:
    state = np.full((1, 1, 3), client_id, np.float32)
    return {"state": {"joints": state}, "language": {"task": language or [["go"]]}}


def test_an_observation_the_strict_policy_refuses_leaves_the_others_batched_together():
    """Gathered requests are validated one by one before the merge: the invalid one is refused alone and the other
    clients still share one policy call (not a failed merged call, a logged batching failure and a call each)."""
    policy = StrictRowPolicy()
    observations = [_row_observation(1.0), _row_observation(2.0, language=[["two", "strings"]]), _row_observation(3.0)]
    with running_server(policy, max_batch_size=3, batch_timeout_ms=10000.0) as server:
        results = call_together(server.port, observations, strict=False)
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            stats = client.get_server_info()["stats"]
    assert isinstance(results[1], PolicyServerError) and "task" in results[1].server_message
    for index in (0, 2):
        np.testing.assert_array_equal(results[index][0]["arm"], np.full((1, 2, 2), 10.0 * (index + 1), np.float32))
    assert policy.row_counts == [2] and stats["batch_sizes"] == {"2": 1} and stats["internal_errors"] == 0


def test_a_type_error_inside_the_policy_is_an_internal_error_not_the_clients_bad_arguments():
    """A TypeError raised deep in the policy ("missing 1 required positional argument") is the policy's bug: an
    internal error, counted so, never told to the client as 'bad arguments' it passed."""

    class BuggyPolicy(FixedPolicy):
        def _get_action(self, observation, options=None):
            return _helper()

    def _helper(needed):
        return needed

    with running_server(BuggyPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError) as caught:
            client.get_action({})
        stats = client.get_server_info()["stats"]
    assert caught.value.server_message == "internal error in get_action: TypeError"
    assert stats["internal_errors"] == 1


class BatchBugPolicy(StrictRowPolicy):
    """Batching policy whose merged calls fail after a while (a batching bug); alone it answers at once."""

    def __init__(self, merged_call_s: float) -> None:
        super().__init__()
        self.strict = False
        self.merged_call_s = merged_call_s

    def _get_action(self, observation, options=None):
        rows = observation["state"]["joints"].shape[0]
        if rows > 1:
            self.row_counts.append(rows)
            time.sleep(self.merged_call_s)
            raise RuntimeError("batched call failed")
        return super()._get_action(observation, options)


def test_a_client_whose_deadline_passed_during_a_failed_batch_is_not_served_again_alone():
    """When a merged call fails, each request is retried alone, except one whose client gave up meanwhile: it is
    answered that its call failed and could not run again in time (an error, not expired: its call ran), and the
    policy is not run for nobody."""
    policy = BatchBugPolicy(merged_call_s=2.5)  # well past client 0's 1 s, which must still reach the merge on 2 busy cores
    results = [None, None]
    barrier = threading.Barrier(2)

    def one_client(index: int, timeout_ms: int) -> None:
        with PolicyClient(port=server.port, timeout_ms=timeout_ms) as client:
            client.get_server_info()
            barrier.wait()
            try:
                results[index] = client.get_action(_row_observation(index + 1.0))
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                results[index] = exc

    with running_server(policy, max_batch_size=2, batch_timeout_ms=10000.0) as server:
        threads = [threading.Thread(target=one_client, args=(0, 1000)), threading.Thread(target=one_client, args=(1, 15000))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            stats = client.get_server_info()["stats"]
    np.testing.assert_array_equal(results[1][0]["arm"], np.full((1, 2, 2), 20.0, np.float32))
    assert isinstance(results[0], Exception)  # its client gave up
    assert policy.row_counts == [2, 1] and stats["expired"] == 0 and stats["late"] == 0 and stats["errors"] == 1


class NormalisingPolicy(BasePolicy):
    """Batching policy that normalises state rows (an all-zero row gives NaN, as a degenerate rotation does)."""

    supports_batching = True

    def __init__(self) -> None:
        super().__init__(strict=False)
        self.row_counts = []

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        state = observation["state"]["joints"]
        self.row_counts.append(state.shape[0])
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"arm": (state / np.linalg.norm(state, axis=-1, keepdims=True)).astype(np.float32)}, {}


def _pipelined_replies(port: int, observations, replies: int) -> list:
    """Send get_actions back to back on one DEALER connection (a pipelining peer); the first `replies` replies."""
    with pipelining_dealer(port) as dealer:
        for observation in observations:
            dealer.send_multipart([b"", codec.encode({"endpoint": "get_action", "data": {"observation": observation}})])
        return replies_of(dealer, replies)


def test_a_request_whose_batched_rows_are_nan_gets_one_reply_the_error():
    """In a merged call, a request whose part of the action is NaN is answered with the error alone: the NaN action is
    not sent after it, where a pipelining client (or a REQ socket's next request) would take it as the next reply."""
    policy = NormalisingPolicy()
    zero, good = np.zeros((1, 1, 2), np.float32), np.array([[[3.0, 4.0]]], np.float32)
    with running_server(policy, max_batch_size=2, batch_timeout_ms=10000.0, inline_below_ms=0) as server:
        first, second = _pipelined_replies(server.port, [{"state": {"joints": zero}}, {"state": {"joints": good}}], 2)
    assert policy.row_counts == [2]  # the two requests shared one call
    assert "non-finite" in first["error"]
    np.testing.assert_allclose(second[0]["arm"], [[[0.6, 0.8]]], rtol=1e-6)


def test_a_batch_call_that_raises_system_exit_answers_the_request_refused_before_it_once():
    """A merged call ending in SystemExit serves its requests one by one, and does not answer the one refused before
    the merge a second time: the connection's next reply is its next request's action, not a stale error."""

    class ExitingPolicy(StrictRowPolicy):
        def _get_action(self, observation, options=None):
            if observation["state"]["joints"].shape[0] > 1:
                raise SystemExit("batched call exited")
            return super()._get_action(observation, options)

    policy = ExitingPolicy()
    sent = [_row_observation(1.0, language=[["two", "strings"]]), _row_observation(2.0), _row_observation(3.0),
            _row_observation(5.0)]
    with running_server(policy, max_batch_size=3, batch_timeout_ms=10000.0, inline_below_ms=0) as server:
        replies = _pipelined_replies(server.port, sent, 4)
    assert "task" in replies[0]["error"]
    assert [float(reply[0]["arm"][0, 0, 0]) for reply in replies[1:3]] == [20.0, 30.0]
    np.testing.assert_array_equal(replies[3][0]["arm"], np.full((1, 2, 2), 50.0, np.float32))


def test_a_connections_first_request_is_served_even_when_larger_than_its_byte_budget():
    """The per-connection byte budget bounds what waits beyond the first request: one request larger than the
    budget (a big image) on an idle connection is still served, not refused."""
    from gr00t_server.serving import ServerLimits

    with running_server(FixedPolicy(), limits=ServerLimits(max_client_queued_bytes=1024)) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            action, _ = client.get_action({"state": {"arm": np.zeros((1, 1, 1000), np.float32)}})
            stats = client.get_server_info()["stats"]
    assert action["arm"].shape == (1, 1, 2) and stats["refused"] == 0


@pytest.mark.parametrize("timeout_ms", [0, -5, float("nan")])
def test_a_request_timeout_that_is_not_positive_is_refused_naming_the_field(timeout_ms):
    """A timeout_ms of 0, below 0 or NaN is the client's mistake, named as such: not a deadline already passed (every
    request 'expired') nor one that never passes."""
    from gr00t_client.client import TIMEOUT_FIELD
    from reference_peer import raw_round_trip

    policy = StrictNanPolicy()
    with running_server(policy) as server:
        frames = raw_round_trip(server.port, codec.encode(
            {"endpoint": "get_action", "data": {"observation": {"state": {"arm": np.zeros((1, 1, 2), np.float32)}}},
             TIMEOUT_FIELD: timeout_ms}))
    reply = codec.decode(frames[-1])
    assert f"'{TIMEOUT_FIELD}' must be a positive number of milliseconds" in reply["error"] and policy.calls == 0
