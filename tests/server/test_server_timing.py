"""server_timing in get_action replies (on request) and the counters that get_server_info reports."""

import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import zmq

from gr00t_client import BasePolicy, PolicyClient, PolicyServerError, codec
from serving import running_server

TIMING_KEYS = {"queue_wait_ms", "decode_ms", "policy_ms", "encode_ms", "batch_size", "batch_rows"}
POLICY_SLEEP_S = 0.02


class SleepyPolicy(BasePolicy):
    """Sleeps a fixed time per call, records the options it gets, and fails on a state of NaN."""

    supports_batching = True

    def __init__(self) -> None:
        super().__init__(strict=False)
        self.options_seen: List[Optional[Dict[str, Any]]] = []

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        self.options_seen.append(options)
        state = observation["state"]["joints"]
        if np.isnan(state).any():
            raise ValueError("state 'joints' contains NaN")
        time.sleep(POLICY_SLEEP_S)
        return {"arm": np.repeat(state[:, :1, :], 16, axis=1).astype(np.float32)}, {"model": "sleepy"}

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {}




def observation(value: float = 1.0, rows: int = 1) -> Dict[str, Any]:
    return {"state": {"joints": np.full((rows, 1, 3), value, np.float32)}}


def assert_timing(timing: Dict[str, Any], batch_size: int = 1, batch_rows: int = 1) -> None:
    assert set(timing) == TIMING_KEYS
    assert timing["batch_size"] == batch_size
    assert timing["batch_rows"] == batch_rows
    for key in TIMING_KEYS - {"batch_size", "batch_rows"}:
        assert isinstance(timing[key], float) and timing[key] >= 0.0, key
    assert timing["policy_ms"] >= POLICY_SLEEP_S * 1000.0  # a lower bound the sleep guarantees


@pytest.mark.parametrize("wire", ["multipart", "reference", "npsave"])
def test_server_timing_is_in_info_when_the_option_asks_for_it(wire):
    with running_server(SleepyPolicy()) as server, PolicyClient(port=server.port, wire=wire) as client:
        action, info = client.get_action(observation(), {"return_server_timing": True})
    assert_timing(info["server_timing"])
    assert info["model"] == "sleepy"
    assert action["arm"].shape == (1, 16, 3)


def test_a_request_served_alone_reports_one_request_and_its_own_rows():
    with running_server(SleepyPolicy()) as server, PolicyClient(port=server.port) as client:
        _action, info = client.get_action(observation(rows=3), {"return_server_timing": True})
    assert_timing(info["server_timing"], batch_size=1, batch_rows=3)


def test_server_timing_is_absent_unless_asked():
    with running_server(SleepyPolicy()) as server, PolicyClient(port=server.port) as client:
        _action, info = client.get_action(observation())
    assert info == {"model": "sleepy"}


def test_client_option_adds_server_timing_to_every_reply():
    with running_server(SleepyPolicy()) as server, PolicyClient(port=server.port, return_server_timing=True) as client:
        infos = [client.get_action(observation())[1] for _ in range(3)]
    for info in infos:
        assert_timing(info["server_timing"])


def test_a_per_call_option_overrides_the_client_default():
    with running_server(SleepyPolicy()) as server, PolicyClient(port=server.port, return_server_timing=True) as client:
        _action, info = client.get_action(observation(), {"return_server_timing": False})
    assert "server_timing" not in info


def test_the_timing_option_never_reaches_the_policy():
    policy = SleepyPolicy()
    with running_server(policy) as server, PolicyClient(port=server.port, return_server_timing=True) as client:
        client.get_action(observation())
        client.get_action(observation(), {"seed": 3, "return_server_timing": True})
    assert policy.options_seen == [None, {"seed": 3}]


def test_a_replaced_get_action_forwarding_its_options_never_passes_the_timing_option_to_the_policy():
    """protocol.md §7: the option is removed before the policy sees the options. On a policy without sessions, a clamp
    forwarding its options passed it on, and a strict Gr00tPolicy refused it as an unknown option."""
    policy = SleepyPolicy()
    with running_server(policy) as server, PolicyClient(port=server.port, return_server_timing=True) as client:
        server.register_endpoint("get_action",
                                 lambda observation=None, options=None: policy.get_action(observation, options))
        client.get_action(observation())
        client.get_action(observation(), {"seed": 3})
    assert policy.options_seen == [None, {"seed": 3}]


REPLACED_RESULTS = {
    "tuple": lambda action, info: (action, info),  # what policy.get_action returns
    "none info": lambda action, info: [action, None],
}


@pytest.mark.parametrize("shape", list(REPLACED_RESULTS))
def test_a_replaced_get_action_returning_a_tuple_or_no_info_gets_server_timing(shape):
    """Only a list with a map for info got server_timing; a tuple or a None info got none, silently."""
    policy = SleepyPolicy()

    def replaced(observation=None, options=None):
        return REPLACED_RESULTS[shape](*policy.get_action(observation, options))

    with running_server(policy) as server, PolicyClient(port=server.port, return_server_timing=True) as client:
        server.register_endpoint("get_action", replaced)
        _action, info = client.get_action(observation())
    assert_timing(info["server_timing"])


def test_batched_replies_report_the_requests_and_the_rows_of_their_call():
    with running_server(SleepyPolicy(), max_batch_size=6, batch_timeout_ms=10000.0) as server:
        barrier = threading.Barrier(3)
        infos: List[Dict[str, Any]] = [{} for _ in range(3)]

        def one_client(index: int) -> None:
            with PolicyClient(port=server.port, return_server_timing=True) as client:
                client.get_server_info()
                barrier.wait()
                infos[index] = client.get_action(observation(index, rows=2))[1]

        threads = [threading.Thread(target=one_client, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    for info in infos:
        assert_timing(info["server_timing"], batch_size=3, batch_rows=6)
    assert len({info["server_timing"]["policy_ms"] for info in infos}) == 1  # one policy call shared by all


def test_the_client_option_is_not_sent_to_a_reference_server():
    context = zmq.Context()
    rep = context.socket(zmq.REP)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    requests: List[Dict[str, Any]] = []

    def reference_server() -> None:
        for _ in range(3):  # get_server_info, the np.save probe (get_modality_config), get_action
            request = codec.decode(rep.recv())
            requests.append(request)
            if request["endpoint"] == "get_action":
                rep.send(codec.encode([{"arm": np.zeros((1, 16, 3), np.float32)}, {}]))
            else:
                rep.send(codec.encode({"error": f"Unknown endpoint: {request['endpoint']}"}))

    thread = threading.Thread(target=reference_server, daemon=True)
    thread.start()
    try:
        with PolicyClient(port=port, timeout_ms=10000, return_server_timing=True) as client:
            _action, info = client.get_action(observation())
        thread.join(timeout=10)
    finally:
        rep.close(linger=0)
        context.term()
    assert info == {}
    assert requests[-1]["endpoint"] == "get_action" and requests[-1]["data"]["options"] is None


def test_server_info_counts_requests_errors_and_batch_sizes():
    with running_server(SleepyPolicy()) as server, PolicyClient(port=server.port) as client:
        before = client.get_server_info()["stats"]
        client.get_action(observation())
        client.get_action(observation())
        with pytest.raises(PolicyServerError, match="NaN"):
            client.get_action(observation(float("nan")))
        after = client.get_server_info()["stats"]
    assert after["requests"] - before["requests"] == 4  # three get_action and this get_server_info
    assert after["errors"] - before["errors"] == 1
    assert after["batch_sizes"] == {"1": 2}
    assert after["policy_calls"] == 2


@pytest.mark.parametrize("wire", ["multipart", "reference"])
def test_timed_replies_keep_large_arrays_in_both_action_and_info(wire):
    class LargeOutputs(SleepyPolicy):
        def _get_action(self, observation, options=None):
            action = {"arm": np.arange(16 * 4096, dtype=np.float32).reshape(1, 16, 4096)}
            return action, {"attention": np.full((1, 64, 256), 7.0, np.float32), "small": np.arange(3)}

    with running_server(LargeOutputs()) as server, PolicyClient(port=server.port, wire=wire, return_server_timing=True) as client:
        action, info = client.get_action(observation())
    np.testing.assert_array_equal(action["arm"], np.arange(16 * 4096, dtype=np.float32).reshape(1, 16, 4096))
    np.testing.assert_array_equal(info["attention"], np.full((1, 64, 256), 7.0, np.float32))
    np.testing.assert_array_equal(info["small"], np.arange(3))
    assert set(info["server_timing"]) == TIMING_KEYS


POLICY_STAGES = {"preprocess_ms", "model_ms", "postprocess_ms"}


class StagedPolicy(SleepyPolicy):
    """Reports per-thread stage timings as Gr00tPolicy does (`last_timing`), distinct per call (and per `scale`)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self._timing = threading.local()
        self.calls = 0
        self.scale = scale

    @property
    def last_timing(self) -> Dict[str, float]:
        return dict(getattr(self._timing, "stages", {}))

    def _get_action(self, observation, options=None):
        result = super()._get_action(observation, options)
        self.calls += 1
        self._timing.stages = {"preprocess_ms": 1.0 * self.calls * self.scale,
                               "model_ms": 2.0 * self.calls * self.scale, "postprocess_ms": 0.5 * self.scale}
        return result


class HeldStagedPolicy(StagedPolicy):
    """A StagedPolicy whose call, once `started` is set, waits for `release`: a call still running while a test acts."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.started = threading.Event()
        self.release = threading.Event()

    def _get_action(self, observation, options=None):
        self.started.set()
        assert self.release.wait(10), "the held call was never released"
        return super()._get_action(observation, options)


def timing_of_a_call_swapped_out(server, client: PolicyClient, held: HeldStagedPolicy,
                                 replacement: BasePolicy) -> Dict[str, Any]:
    """The server_timing of a get_action that `held` serves while `server.policy` is set to `replacement`."""
    infos: List[Dict[str, Any]] = []
    caller = threading.Thread(target=lambda: infos.append(client.get_action(observation())[1]))
    caller.start()
    try:
        assert held.started.wait(10), "the held policy's call never started"
        server.policy = replacement  # documented: another policy may be assigned while serving
    finally:
        held.release.set()
    caller.join(10)
    assert infos, "the call during the swap got no reply"
    return infos[0]["server_timing"]


class Wrapper(BasePolicy):
    """A wrapper in the sim wrapper's shape: the inner policy under `.policy`."""

    def __init__(self, policy: BasePolicy) -> None:
        super().__init__(strict=False)
        self.policy = policy

    def _get_action(self, observation, options=None):
        return self.policy.get_action(observation, options)

    def reset(self, options=None):
        return {}


@pytest.mark.parametrize("wire", ["multipart", "reference"])
def test_server_timing_carries_the_policy_stages_of_its_own_call(wire):
    with running_server(StagedPolicy()) as server, PolicyClient(port=server.port, wire=wire, return_server_timing=True) as client:
        first = client.get_action(observation())[1]["server_timing"]
        second = client.get_action(observation())[1]["server_timing"]
    assert set(first) == TIMING_KEYS | POLICY_STAGES
    assert (first["preprocess_ms"], first["model_ms"], first["postprocess_ms"]) == (1.0, 2.0, 0.5)
    assert (second["preprocess_ms"], second["model_ms"]) == (2.0, 4.0)


def test_policy_stages_are_read_through_a_wrapper():
    with running_server(Wrapper(StagedPolicy())) as server, PolicyClient(port=server.port, return_server_timing=True) as client:
        timing = client.get_action(observation())[1]["server_timing"]
    assert timing["model_ms"] == 2.0


def test_a_policy_swapped_in_during_a_call_leaves_that_call_its_own_stages():
    """The stages were read from the policy the server held after the call: the new one's earlier call on that
    thread (an A -> B -> A swap), model_ms 2.0 inside B's call."""
    first, held = StagedPolicy(), HeldStagedPolicy(scale=100.0)
    with running_server(first, inline_below_ms=0) as server, \
            PolicyClient(port=server.port, return_server_timing=True) as client:
        client.get_action(observation())  # first's stages on the worker thread: model_ms 2.0
        server.policy = held
        timing = timing_of_a_call_swapped_out(server, client, held, first)
    assert timing.get("model_ms") == 200.0, f"expected the held policy's own stages, got {timing}"


def test_a_replaced_get_action_reports_the_stages_of_the_policy_it_called_when_another_is_swapped_in():
    first, held = StagedPolicy(), HeldStagedPolicy(scale=100.0)
    with running_server(first, inline_below_ms=0) as server, \
            PolicyClient(port=server.port, return_server_timing=True) as client:
        server.register_endpoint("get_action",
                                 lambda observation=None, options=None: server.policy.get_action(observation, options))
        client.get_action(observation())  # first's stages on the worker thread: model_ms 2.0
        server.policy = held
        timing = timing_of_a_call_swapped_out(server, client, held, first)
    assert timing.get("model_ms") == 200.0, f"expected the held policy's own stages, got {timing}"


def test_a_batched_call_reports_its_stages_to_every_request():
    with running_server(StagedPolicy(), max_batch_size=2, batch_timeout_ms=10000.0) as server:
        barrier = threading.Barrier(2)
        timings: List[Dict[str, Any]] = [{} for _ in range(2)]

        def one_client(index: int) -> None:
            with PolicyClient(port=server.port, return_server_timing=True) as client:
                client.get_server_info()
                barrier.wait()
                timings[index] = client.get_action(observation(index))[1]["server_timing"]

        threads = [threading.Thread(target=one_client, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert [t["batch_size"] for t in timings] == [2, 2]
    assert [t["model_ms"] for t in timings] == [2.0, 2.0]  # the one shared call


def test_gr00t_policy_stages_reach_the_client(tiny_checkpoint):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu")
    with running_server(policy) as server, PolicyClient(port=server.port, return_server_timing=True) as client:
        _action, info = client.get_action(example_observation(tiny_checkpoint, "libero_sim", batch_size=1))
    timing = info["server_timing"]
    assert set(timing) == TIMING_KEYS | POLICY_STAGES
    assert timing["model_ms"] > 0.0
    assert timing["preprocess_ms"] + timing["model_ms"] + timing["postprocess_ms"] <= timing["policy_ms"]


class RowsFromOptionsPolicy(BasePolicy):
    """Serves the rows its options ask for, whatever the observation (as a replay serves an empty one)."""

    def __init__(self) -> None:
        super().__init__(strict=False)

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        return {"arm": np.zeros((options["batch_size"], 16, 3), np.float32)}, {}

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {}


def test_batch_rows_are_the_rows_of_the_action_the_call_returned():
    with running_server(RowsFromOptionsPolicy()) as server, PolicyClient(port=server.port) as client:
        action, info = client.get_action({}, {"batch_size": 4, "return_server_timing": True})
        stats = client.get_server_info()["stats"]
    assert action["arm"].shape[0] == 4
    assert info["server_timing"]["batch_rows"] == 4
    assert stats["mean_batch_rows"] == 4.0


class LargeActionPolicy(BasePolicy):
    """Returns the same 8 MiB action every call, so encoding it is most of a reply's work."""

    def __init__(self) -> None:
        super().__init__(strict=False)
        self.action = np.ones((1, 2 * 2**20, 1), np.float32)

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        return {"arm": self.action}, {}

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {}


@pytest.mark.parametrize("wire", ["multipart", "reference", "npsave"])
def test_encode_ms_in_the_reply_is_the_encoding_time_the_server_counts(wire):
    """It left out the copy of each multipart frame, and the join of a reference reply's parts: 0.2 ms reported of
    12.3 ms counted. An np.save-era reply carried no encode_ms at all."""
    with running_server(LargeActionPolicy(), max_message_bytes=2**30) as server:
        with PolicyClient(port=server.port, wire=wire, timeout_ms=30000, return_server_timing=True) as client:
            client.get_server_info()
            counted_before = server.stats.snapshot()["encode_ms_total"]
            reported = sum(client.get_action(observation())[1]["server_timing"]["encode_ms"] for _ in range(3))
            counted = server.stats.snapshot()["encode_ms_total"] - counted_before
    assert 0.9 * counted <= reported <= counted + 0.01, (reported, counted)


class SlowTokenizerPolicy(SleepyPolicy):
    """Counts language tokens slowly (TOKENIZE_S a text), as a real tokenizer does long texts, in the server's limit
    checks."""

    def count_language_tokens(self, text: str) -> int:
        time.sleep(TOKENIZE_S)
        return 1


TOKENIZE_S = 0.1


def test_the_servers_limit_checks_count_as_decoding_not_as_queue_wait():
    """One client alone on an idle server was told it waited in the queue for the time the server spent counting its
    language's tokens (11 ms of a 12.6 ms round trip for 128 long instructions)."""
    long_instruction = "pick up the red bowl " * 30  # past the length below which no tokens are counted
    obs = dict(observation(), language={"task": [[long_instruction]]})
    with running_server(SlowTokenizerPolicy(), inline_below_ms=0) as server:
        with PolicyClient(port=server.port, return_server_timing=True) as client:
            timing = client.get_action(obs)[1]["server_timing"]
    assert timing["queue_wait_ms"] < TOKENIZE_S * 1000.0 / 2
    assert timing["decode_ms"] >= TOKENIZE_S * 1000.0


def test_a_replaced_get_action_counts_its_policy_calls_and_reports_the_policys_stages():
    """A clamp calling policy.get_action ran the policy on every request, yet policy_calls and batch_sizes counted
    none of its calls, and its server_timing left out the policy's own stages."""
    policy = StagedPolicy()

    def clamped(observation=None, options=None):
        action, info = policy.get_action(observation, options)
        return {key: np.clip(value, -0.5, 0.5) for key, value in action.items()}, info

    with running_server(policy) as server, PolicyClient(port=server.port, return_server_timing=True) as client:
        server.register_endpoint("get_action", clamped)
        timings = [client.get_action(observation(rows=2))[1]["server_timing"] for _ in range(2)]
        stats = client.get_server_info()["stats"]
    assert stats["policy_calls"] == 2
    assert stats["batch_sizes"] == {"1": 2}
    assert stats["mean_batch_rows"] == 2.0
    assert set(timings[1]) == TIMING_KEYS | POLICY_STAGES
    assert timings[1]["model_ms"] == 4.0  # the second call's own


class BrokenPolicy(SleepyPolicy):
    """Fails inside every call, as a model out of memory does."""

    def _get_action(self, observation, options=None):
        raise RuntimeError("model broke")


def test_a_replaced_get_action_whose_policy_call_failed_counts_the_call():
    """As the built-in get_action counts a call the policy failed inside; a request refused before its handler ran
    (arguments it does not take) counts none."""
    policy = BrokenPolicy()
    with running_server(policy) as server, PolicyClient(port=server.port) as client:
        server.register_endpoint("get_action", lambda observation=None, options=None: policy.get_action(observation))
        with pytest.raises(PolicyServerError, match="internal error in get_action: RuntimeError"):
            client.get_action(observation())
        with pytest.raises(PolicyServerError, match="bad arguments"):
            client.call_endpoint("get_action", {"observation": observation(), "extra": 1})
        stats = client.get_server_info()["stats"]
    assert stats["policy_calls"] == 1
    assert stats["batch_sizes"] == {"1": 1}


@pytest.mark.parametrize("value", ["yes please", [1, 2], 2])
def test_a_reset_return_server_timing_that_is_no_flag_is_refused_naming_the_option(value):
    """reset dropped the option whatever its value, where get_action refuses anything but a bool, nil, 0 or 1."""
    with running_server(SleepyPolicy()) as server, PolicyClient(port=server.port) as client:
        with pytest.raises(PolicyServerError, match=r"options\['return_server_timing'\] must be true or false"):
            client.reset(options={"return_server_timing": value})


def test_a_reset_asking_for_server_timing_is_refused_naming_the_option():
    """reset answers no server_timing: asking for it is refused, not ignored; false, 0 and nil pass."""
    with running_server(SleepyPolicy()) as server, PolicyClient(port=server.port) as client:
        with pytest.raises(PolicyServerError, match=r"options\['return_server_timing'\] is a get_action option: reset "
                                                    r"answers no server_timing"):
            client.reset(options={"return_server_timing": True})
        for value in (False, 0, None):
            assert client.reset(options={"return_server_timing": value}) == {}
