"""One client against everyone else, through a real server on loopback: connections take turns at the policy (batches
are filled one request per connection per turn), a request too near its deadline is not computed for nobody and a
reply after the deadline is not counted a success, and a flood of one-shot sessions cannot evict a robot's session."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import urllib.request
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import pytest
import zmq
from eval.dataset_factory import make_dataset
from reference_peer import ReferenceClient, raw_round_trip
from serving import running_server
from test_batching import call_together

from gr00t_client import BasePolicy, DeadlineNotRunError, PolicyClient, PolicyServerError, PolicyTimeoutError, codec
from gr00t_server.policies import ReplayPolicy
from gr00t_server.serving import ServerLimits, batching, loop
from gr00t_server.serving.batching import VOLATILE_OPTION_VALUES, GatherWindow, cost_signature

ROBOT = 99.0  # the state value that marks the robot's request in the policy's record of calls


class TurnRecorder(BasePolicy):
    """Records the state values (one per row) of each call in order; the first call waits for `release`, so the test
    can queue requests behind it; every call then sleeps `call_s`."""

    supports_batching = True

    def __init__(self, call_s: float = 0.0, hold_first: bool = True) -> None:
        super().__init__(strict=False)
        self.call_s = call_s
        self.calls: List[List[float]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        values = observation["state"]["x"].reshape(-1).tolist()
        self.calls.append(values)
        self.started.set()
        assert self.release.wait(30), "the test never released the first call"
        time.sleep(self.call_s)
        return {"x": np.zeros((len(values), 2, 1), np.float32)}, {}

    def reset(self, options=None):
        return {}

    def call_of(self, value: float) -> int:
        """The position (0-based) of the call that served the request marked `value`."""
        return next(index for index, values in enumerate(self.calls) if value in values)


def state(value: float) -> Dict[str, Any]:
    return {"state": {"x": np.full((1, 1, 1), value, np.float32)}}


def get_action_frame(value: float) -> bytes:
    return codec.encode({"endpoint": "get_action", "data": {"observation": state(value)}})


@contextlib.contextmanager
def dealers(port: int, count: int) -> Iterator[List[zmq.Socket]]:
    """`count` DEALER connections to the server: a client that pipelines requests, as no REQ client can."""
    sockets = []
    try:
        for _ in range(count):
            dealer = zmq.Context.instance().socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(f"tcp://127.0.0.1:{port}")
            sockets.append(dealer)
        yield sockets
    finally:
        for dealer in sockets:
            dealer.close(linger=0)


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.005)


def robot_call(port: int, results: Dict[str, Any]) -> threading.Thread:
    """A REQ robot's one get_action in a thread (already negotiated, so that it sends at once)."""
    client = PolicyClient("127.0.0.1", port, timeout_ms=20000, strict=False)
    client.get_server_info()

    def run() -> None:
        try:
            results["action"] = client.get_action(state(ROBOT))[0]
        finally:
            client.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def pipeline_then_robot(server, policy: TurnRecorder, connections: int, depth: int) -> None:
    """`connections` DEALERs queue `depth` requests each behind a held call, then a robot sends one; the call is
    released once all are queued and every reply is read. Connection c's request i carries the value 10 * c + i."""
    results: Dict[str, Any] = {}
    with dealers(server.port, connections) as sockets:
        for index, dealer in enumerate(sockets, start=1):
            for step in range(depth):
                dealer.send_multipart([b"", get_action_frame(10.0 * index + step)])
        assert policy.started.wait(10)
        wait_until(lambda: server._loop.queued_requests == connections * depth)
        robot = robot_call(server.port, results)
        wait_until(lambda: server._loop.queued_requests == connections * depth + 1)
        policy.release.set()
        robot.join(30)
        for dealer in sockets:  # every pipelined request is answered, in the order it was sent
            for _ in range(depth):
                assert dealer.poll(20000), "a pipelined request was never answered"
                assert "error" not in codec.decode(dealer.recv_multipart()[1])
    assert "action" in results
    for index in range(1, connections + 1):  # one connection's requests ran in the order they were sent
        order = [value for values in policy.calls for value in values if 10 * index <= value < 10 * index + 10]
        assert order == sorted(order) and len(order) == depth


# --- F1: connections take turns ------------------------------------------------------------------------------------


def test_a_pipelining_client_cannot_keep_its_backlog_ahead_of_a_robot():
    """Two DEALER connections with 8 requests each in flight: the robot's request waited for all 16 (one FIFO). Now
    connections take turns, so it waits for at most one call per other connection with work waiting."""
    policy = TurnRecorder(call_s=0.005)
    with running_server(policy, inline_below_ms=0) as server:
        pipeline_then_robot(server, policy, connections=2, depth=8)
    # call 0 is the held one (connection 1's first); then connection 1, connection 2, the robot take one turn each
    assert policy.call_of(ROBOT) <= 3, policy.calls


def test_batches_are_filled_one_request_per_connection_per_turn():
    """With batching, the robot's request joins the next batch formed after it came instead of waiting behind every
    batch of the pipelined backlog (one peer kept 8 batches ahead of every robot)."""
    policy = TurnRecorder(call_s=0.005)
    with running_server(policy, inline_below_ms=0, max_batch_size=4) as server:
        pipeline_then_robot(server, policy, connections=2, depth=8)
    robot_call_index = policy.call_of(ROBOT)
    # at most the held call and one batch formed before the robot's request came are ahead of it
    assert robot_call_index <= 2, policy.calls
    assert len(policy.calls[robot_call_index]) == 4, policy.calls  # a full batch, shared with the pipelining peer
    assert all(len(values) <= 4 for values in policy.calls)


# --- F2: hopeless requests and late replies -------------------------------------------------------------------------


def scrape(server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        return response.read().decode()


def requests_total(page: str, outcome: str) -> float:
    prefix = f'gr00t_requests_total{{endpoint="get_action",outcome="{outcome}"}} '
    return sum(float(line[len(prefix):]) for line in page.splitlines() if line.startswith(prefix))


def test_a_request_whose_turn_comes_too_near_its_deadline_for_a_call_is_not_run():
    """A waits behind B's 0.6 s call, and its turn comes with about 100 ms of its 700 ms left: its call would end long
    after A gave up. It was computed anyway (85% of the calls in a timeout storm); now it is answered as expired."""
    policy = TurnRecorder(call_s=0.6, hold_first=False)
    with running_server(policy, inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=10000, strict=False) as warm:
            warm.get_action(state(1.0))  # the server learns that a call takes 0.6 s
        policy.started.clear()
        results: Dict[str, Any] = {}
        robot = robot_call(server.port, results)  # B
        assert policy.started.wait(10)
        with PolicyClient("127.0.0.1", server.port, timeout_ms=700, strict=False) as impatient:  # A
            impatient.get_server_info()
            with pytest.raises(PolicyServerError, match=r"'get_action' was not run: the client's deadline was \d+ ms "
                                                        r"away when its turn came, too close for a policy call"):
                impatient.call_endpoint("get_action", {"observation": state(2.0), "options": None})
        robot.join(10)
        assert server.stats.expired == 1
    assert policy.calls == [[1.0], [ROBOT]]  # A's call never ran


def test_a_reset_with_less_time_left_than_a_get_action_takes_is_still_run():
    """The too-near margin is a get_action's call time and holds only for get_action: a reset (or a registered
    endpoint) with 1 s left behind a policy whose calls take 1.5 s takes milliseconds, and was dropped as too late
    when the margin was applied to every endpoint."""
    policy = TurnRecorder(call_s=1.5, hold_first=False)
    with running_server(policy, inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=10000, strict=False) as warm:
            warm.get_action(state(1.0))  # the server learns that a call takes 1.5 s
        with PolicyClient("127.0.0.1", server.port, timeout_ms=1000, strict=False) as hurried:
            assert hurried.reset() == {}
        assert server.stats.expired == 0
    assert policy.calls == [[1.0]]


def test_a_merged_calls_time_counts_toward_the_too_near_margin():
    """A server whose every call so far was a merged batch learns the policy's call time from those calls too: a
    get_action of as many rows with 1 s left, behind calls that took 1.5 s, is answered as too near its deadline at
    once (the server knew of no call, ran it, and its client timed out waiting)."""
    policy = TurnRecorder(call_s=1.5, hold_first=False)
    with running_server(policy, inline_below_ms=0, max_batch_size=2, batch_timeout_ms=10000.0) as server:
        results = call_together(server.port, [state(1.0), state(2.0)], strict=False)
        assert all(isinstance(result, tuple) for result in results)
        assert [sorted(call) for call in policy.calls] == [[1.0, 2.0]]  # one merged call of both
        with PolicyClient("127.0.0.1", server.port, timeout_ms=1000, strict=False) as hurried:
            with pytest.raises(PolicyServerError, match=r"too close for a policy call \(by recent calls, one of 2 "
                                                        r"row\(s\) takes at least 1[5-9]\d\d ms; calls of its kind: "
                                                        r".*no options that change a call's work\)"):
                hurried.get_action({"state": {"x": np.full((2, 1, 1), 3.0, np.float32)}})
        assert server.stats.expired == 1
    assert len(policy.calls) == 1  # 3.0's call never ran


def test_a_first_call_and_a_call_without_a_deadline_are_never_dropped_for_want_of_time():
    """Before any call there is no call time to compare a budget with; a request without a deadline has no budget."""
    pytest.importorskip("prometheus_client")
    policy = TurnRecorder(call_s=0.3, hold_first=False)
    with running_server(policy, inline_below_ms=0, metrics_port=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=10000, strict=False) as first:
            first.get_action(state(1.0))  # first call: served
        reply = raw_round_trip(server.port, get_action_frame(2.0), timeout_ms=10000)  # no timeout_ms in the envelope
        assert reply is not None and "error" not in codec.decode(reply[-1])
        wait_until(lambda: requests_total(scrape(server), "ok") >= 2)  # counted once its reply is sent
        assert requests_total(scrape(server), "ok") == 2
    assert policy.calls == [[1.0], [2.0]]


class SlowFirstCall(TurnRecorder):
    """The first call takes `first_s` (a cold start: lazy CUDA init, autotuning, --no-warmup); later ones ~0 ms."""

    def __init__(self, first_s: float) -> None:
        super().__init__(call_s=first_s, hold_first=False)

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        try:
            return super()._get_action(observation, options)
        finally:
            self.call_s = 0.0


class SlowFirstCalls(TurnRecorder):
    """The first `slow_calls` calls take `first_s` each (a warm-up); later ones ~0 ms."""

    def __init__(self, first_s: float, slow_calls: int) -> None:
        super().__init__(call_s=first_s, hold_first=False)
        self.slow_calls = slow_calls

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        try:
            return super()._get_action(observation, options)
        finally:
            if len(self.calls) >= self.slow_calls:
                self.call_s = 0.0


class RowCost(TurnRecorder):
    """Each call takes `row_s` per observation row, as a model's does."""

    def __init__(self, row_s: float) -> None:
        super().__init__(hold_first=False)
        self.row_s = row_s

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        self.call_s = self.row_s * observation["state"]["x"].shape[0]
        return super()._get_action(observation, options)


def rows_state(rows: int, value: float) -> Dict[str, Any]:
    return {"state": {"x": np.full((rows, 1, 1), value, np.float32)}}


def test_a_client_that_timed_out_on_a_cold_first_call_is_served_once_calls_are_fast():
    """The first call took 0.8 s against the client's 400 ms, then calls took ~0 ms: every later request was refused
    for good as nearer its deadline than 'the fastest recent call', since refused requests never run to say otherwise.
    Now a request runs once no call has run for a while (a probe), and is measured."""
    policy = SlowFirstCall(first_s=0.8)
    with running_server(policy, inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=400, strict=False) as robot:
            with pytest.raises(PolicyTimeoutError):
                robot.get_action(state(1.0))
            outcomes, give_up = [], time.monotonic() + 3.0
            while outcomes[-3:] != ["served"] * 3 and time.monotonic() < give_up:
                try:
                    robot.get_action(state(2.0))
                    outcomes.append("served")
                except (PolicyServerError, PolicyTimeoutError):
                    outcomes.append("refused")
                time.sleep(0.05)
    assert outcomes[-3:] == ["served"] * 3, outcomes


def test_a_client_refused_after_a_cold_first_call_is_served_from_its_next_request_without_pausing(monkeypatch):
    """A rollout sends its next request right after each refusal, so the server was never idle long enough for a
    probe: one cold first call (0.8 s against a 400 ms timeout) refused every later request of the run. Now the
    request after a refusal on that call's word runs as a probe, and once measured fast the rest are served."""
    from gr00t_server.serving import batching

    monkeypatch.setattr(batching, "PROBE_AFTER_IDLE_S", 60.0)  # no idle probe: only the refusals in a row count
    policy = SlowFirstCall(first_s=0.8)
    with running_server(policy, inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=400, strict=False) as robot:
            with pytest.raises(PolicyTimeoutError):
                robot.get_action(state(1.0))
            wait_until(lambda: server.stats.late >= 1)  # the cold call ended and was measured
            outcomes = []
            for value in (2.0, 3.0, 4.0):
                try:
                    robot.get_action(state(value))
                    outcomes.append("served")
                except DeadlineNotRunError:
                    outcomes.append("refused")
    assert outcomes == ["refused", "served", "served"], outcomes
    assert policy.calls == [[1.0], [3.0], [4.0]]


def test_a_client_whose_timeout_is_shorter_than_every_call_has_few_of_its_requests_run_after_it_gave_up(monkeypatch):
    """A probe after each refusal ran every other request of a client whose 20 ms timeout is shorter than every call
    (100 ms): each call was wasted (it had given up) and delayed the others. A probe whose call is as slow again now
    doubles the refusals needed before the next (past the first three), so of 20 such requests at most a few run."""
    from gr00t_server.serving import batching

    monkeypatch.setattr(batching, "PROBE_AFTER_IDLE_S", 60.0)  # no idle probe: only the refusals count
    policy = TurnRecorder(call_s=0.1, hold_first=False)
    with running_server(policy, inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=2000, strict=False) as patient:
            patient.get_action(state(1000.0))  # measured: calls take 100 ms
        with PolicyClient("127.0.0.1", server.port, timeout_ms=20, strict=False) as hasty:
            for value in range(1, 21):
                with pytest.raises(PolicyTimeoutError):
                    hasty.get_action(state(float(value)))
                time.sleep(0.15)  # a call it gave up on has ended before its next request: none is refused unseen
    run_after_giving_up = [values for values in policy.calls if values != [1000.0]]
    # probes after 1 refusal (four times), then 2, 4 and 8: requests 2, 4, 6, 8, 11 and 16 (it was 10 of the 20)
    assert len(run_after_giving_up) <= 7, run_after_giving_up


def test_a_client_refused_through_a_warm_up_of_three_slow_calls_is_served_at_the_first_fast_one(monkeypatch):
    """Each probe whose call was slow again doubled the refusals needed before the next: after a warm-up of a few slow
    calls, requests were refused for a while after calls had become fast (a rollout errored one more episode each
    time, and aborted at three in a row). The first probes after refusals come at once, whatever their calls took."""
    from gr00t_server.serving import batching

    monkeypatch.setattr(batching, "PROBE_AFTER_IDLE_S", 60.0)  # no idle probe: only the refusals count
    policy = SlowFirstCalls(first_s=0.6, slow_calls=3)
    outcomes = []
    with running_server(policy, inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=300, strict=False) as robot:
            for value in range(1, 8):
                try:
                    robot.get_action(state(float(value)))
                    outcomes.append("served")
                except DeadlineNotRunError:
                    outcomes.append("refused")
                except PolicyTimeoutError:  # its call ran: wait until it ended and was measured
                    outcomes.append("timed out")
                    late = outcomes.count("timed out")
                    wait_until(lambda: server.stats.late >= late)
    # calls 1-3 slow (requests 1, 3, 5: the first, then the probe after each refusal), call 4 fast
    assert outcomes == ["timed out", "refused", "timed out", "refused", "timed out", "refused", "served"], outcomes


def test_a_hopeless_clients_back_off_holds_back_no_other_clients_probes(monkeypatch):
    """The back-off was one for all clients, judged against the client refused last: after a client with a hopeless
    20 ms timeout had pushed it up, a robot with 300 ms, refused after a slow spell, waited through many refusals
    although calls took 50 ms again. Each client's probes are now backed off by the calls too slow for its own
    timeout."""
    from gr00t_server.serving import batching

    monkeypatch.setattr(batching, "PROBE_AFTER_IDLE_S", 60.0)
    window = batching.GatherWindow(cap_ms=20.0)
    window.observe_call(0.05)  # calls take 50 ms
    probes = 0
    for _ in range(200):  # the hopeless client's requests: refused, or run as probes that confirm slow calls
        if window.least_call_seconds(1, time.monotonic(), timeout_s=0.02) > 0.02:
            window.note_refused()
        else:
            probes += 1
            window.observe_call(0.05)
    assert probes <= 12, probes  # backed off (every other request ran before: 100)
    for _ in range(3):  # a slow spell, too slow for the robot (ordinary calls)
        window.observe_call(0.35)
    window.note_refused()
    assert window.least_call_seconds(1, time.monotonic(), timeout_s=0.3) == 0.0  # the robot's next request: a probe
    window.observe_call(0.05)  # which shows calls are fast: the robot is served from now on
    assert window.least_call_seconds(1, time.monotonic(), timeout_s=0.3) == pytest.approx(0.05)


@pytest.mark.parametrize("rows, timeouts_s", [(4, [0.1] * 60), (1, [0.1 + 0.001 * (i % 100) for i in range(60)])],
                         ids=["4-row requests", "a timeout jittering by the millisecond"])
def test_a_hopeless_client_is_backed_off_whatever_its_rows_or_timeout_jitter(monkeypatch, rows, timeouts_s):
    """Probes were judged by a call's per-row share (a 4-row call of 200 ms 'answered' a 100 ms timeout, so the
    back-off never started), and counted per exact millisecond of timeout (a client sending its remaining budget had
    every other request run)."""
    from gr00t_server.serving import batching

    monkeypatch.setattr(batching, "PROBE_AFTER_IDLE_S", 60.0)
    window = batching.GatherWindow(cap_ms=20.0)
    call_s = 0.05 * rows if rows > 1 else 0.3  # 4 rows of 50 ms; or 300 ms, longer than every timeout
    window.observe_call(call_s, rows)
    probes = 0
    for timeout_s in timeouts_s:
        if window.least_call_seconds(rows, time.monotonic(), timeout_s=timeout_s) > timeout_s:
            window.note_refused()
        else:
            probes += 1
            window.observe_call(call_s, rows)
    assert probes <= 10, probes  # every other request ran: 30


def test_a_lone_one_row_request_is_not_refused_on_the_word_of_larger_batches():
    """An evaluation's batch-8 calls took 240 ms; a robot's 1-row calls take 30 ms and its timeout is 200 ms. Every
    robot request was refused: 'the fastest recent call' was a batch of 8. A call of 1 row takes at least its share."""
    policy = RowCost(row_s=0.03)
    with running_server(policy, inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as evaluation:
            for step in range(3):
                evaluation.get_action(rows_state(8, float(step)))
        with PolicyClient("127.0.0.1", server.port, timeout_ms=200, strict=False) as robot:
            for _ in range(3):
                robot.get_action(state(ROBOT))
        assert server.stats.expired == 0
    assert [len(call) for call in policy.calls] == [8, 8, 8, 1, 1, 1]


class StepsPolicy(BasePolicy):
    """A call takes STEP_S per options['denoising_steps'] (default 4), as Gr00tPolicy's call time scales with it."""

    STEP_S = 0.05

    def __init__(self) -> None:
        super().__init__(strict=False)

    def get_modality_config(self) -> Dict[str, Any]:
        return {}

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {}

    def _get_action(self, observation: Any, options: Optional[Dict[str, Any]] = None) -> Any:
        steps = int((options or {}).get("denoising_steps", 4))
        time.sleep(self.STEP_S * steps)
        return {"a": np.zeros((1, 16, 7), np.float32)}, {"steps": steps}


def test_a_fast_request_is_not_refused_on_the_word_of_another_kind_of_slower_calls():
    """Client A's 8-step calls take 400 ms; B's 1-step request (50 ms) with 300 ms left on an idle server was refused
    "not run" because the call-time memory was keyed by rows only. A request of A's kind is still refused at once,
    and the refusal names the kind of calls its estimate came from."""
    with running_server(StepsPolicy(), inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=20000, strict=False) as slow, \
                PolicyClient("127.0.0.1", server.port, timeout_ms=300, strict=False) as fast:
            fast.get_server_info()  # its handshake done before the slow calls
            for _ in range(2):
                slow.get_action(state(1.0), {"denoising_steps": 8})
            assert fast.get_action(state(2.0), {"denoising_steps": 1})[1]["steps"] == 1
            slow.get_action(state(1.0), {"denoising_steps": 8})
            with pytest.raises(DeadlineNotRunError, match=r"too close for a policy call \(by recent calls, one of 1 "
                                                          r"row\(s\) takes at least \d+ ms; calls of its kind: .*"
                                                          r"denoising_steps=8"):
                fast.get_action(state(3.0), {"denoising_steps": 8})
        assert server.stats.expired == 1


def test_a_per_request_option_value_does_not_make_each_request_a_kind_of_its_own():
    """An option whose value changes with every request (a counter, a timestamp) made each request a kind no recent
    call had, so the deadline pre-check never refused one: a timeout storm ran calls whose clients had given up.
    An option of more than VOLATILE_OPTION_VALUES values among the recent calls is keyed by its name and type, and the
    refusal names it so (R40: it named the request's own value, 99, which no recent call had)."""
    with running_server(StepsPolicy(), inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=20000, strict=False) as slow, \
                PolicyClient("127.0.0.1", server.port, timeout_ms=300, strict=False) as fast:
            fast.get_server_info()  # its handshake done before the slow calls
            for counter in range(VOLATILE_OPTION_VALUES + 1):
                slow.get_action(state(1.0), {"denoising_steps": 8, "request_counter": counter})
            with pytest.raises(DeadlineNotRunError, match=r"calls of its kind: .*denoising_steps=8, "
                                                          r"request_counter=<any int>\)"):
                fast.get_action(state(3.0), {"denoising_steps": 8, "request_counter": 99})
        assert server.stats.expired == 1


def test_an_option_of_few_values_keeps_its_kinds_apart_and_a_counter_becomes_one_kind():
    """A custom policy's quality='best' calls (slow) said nothing of a quality='fast' request (R38: refused on an idle
    server when only denoising_steps was keyed by value); a counter option, once it has shown many values, is one kind.
    Options are ordered by name alone (an int key 1 beside a str key "1" raised TypeError in the sort)."""
    window = GatherWindow(cap_ms=20.0)
    now = time.monotonic()
    for _ in range(3):
        window.observe_call(0.4, 1, cost_signature({"options": {"quality": "best"}}))
    assert window.least_call_seconds(1, now, cost=cost_signature({"options": {"quality": "fast"}})) == 0.0
    assert window.least_call_seconds(1, now, cost=cost_signature({"options": {"quality": "best"}})) == pytest.approx(0.4)
    for counter in range(VOLATILE_OPTION_VALUES + 1):
        window.observe_call(0.2, 1, cost_signature({"options": {"counter": counter}}))
    assert window.least_call_seconds(1, now, cost=cost_signature({"options": {"counter": 1000}})) == pytest.approx(0.2)
    cost_signature({"options": {1: np.zeros(2), "1": "x"}})  # no TypeError
    # a sweep of step counts (R39: five made denoising_steps "volatile", and a 1-step request was refused on the word
    # of 6-step calls) and a five-level option sent again and again keep their kinds apart
    sweep = GatherWindow(cap_ms=20.0)
    for steps in (16, 12, 10, 8, 6):
        sweep.observe_call(0.05 * steps, 1, cost_signature({"options": {"denoising_steps": steps}}))
    assert sweep.least_call_seconds(1, now, cost=cost_signature({"options": {"denoising_steps": 1}})) == 0.0
    levels = GatherWindow(cap_ms=20.0)
    for level in [0, 1, 2, 3, 4] * 2:
        levels.observe_call(0.1 * (level + 1), 1, cost_signature({"options": {"quality": level}}))
    assert levels.least_call_seconds(1, now, cost=cost_signature({"options": {"quality": 0}})) == pytest.approx(0.1)


def test_call_times_count_only_for_calls_of_the_same_cost_signature():
    window = batching.GatherWindow(cap_ms=20.0)
    window.observe_call(0.8, 1, cost="eight steps")
    now = time.monotonic()
    assert window.least_call_seconds(1, now, cost="eight steps") == pytest.approx(0.8)
    assert window.least_call_seconds(1, now, cost="one step") == 0.0  # no call of its kind: it runs


def test_an_equal_copy_of_a_recent_calls_signature_counts_as_its_kind():
    """The window compares option-free signatures by identity first (equal nested tuples compare item by item: ~30 us
    a request over 32 recent calls): a request's own signature, equal in value to a recent call's, is of its kind."""
    observation = {"state": {"x": np.zeros((1, 1), np.float32)}, "video": {"cam": np.zeros((1, 8, 8, 3), np.uint8)}}
    window = GatherWindow(cap_ms=20.0)
    window.observe_call(0.3, 1, cost_signature({"observation": observation}))
    again = cost_signature({"observation": {key: dict(value) for key, value in observation.items()}})
    assert window.least_call_seconds(1, time.monotonic(), cost=again) == pytest.approx(0.3)


def test_an_options_value_type_is_the_requests_own_whatever_equal_value_another_client_sent():
    """1, 1.0 and True are equal (and hash alike): a request sending an int counter t=3 was compared as `t=<any
    float>`, and refused on the word of slow float calls, because another client once sent 3.0 (R53: signatures were
    looked up by value in a table every request shared)."""
    window = GatherWindow(cap_ms=20.0)
    now = time.monotonic()
    for counter in range(VOLATILE_OPTION_VALUES + 2):
        window.observe_call(0.4, 1, cost_signature({"options": {"t": float(counter)}}))
    int_request = cost_signature({"options": {"t": 3}})
    assert window.least_call_seconds(1, now, cost=int_request) == 0.0  # no int call yet: it runs
    assert batching.describe_cost(window.kind_of(int_request)).endswith("t=<any int>")
    window.observe_call(0.05, 1, cost_signature({"options": {"t": 7}}))
    assert window.least_call_seconds(1, now, cost=int_request) == pytest.approx(0.05)


def test_a_signature_only_asked_about_is_not_kept():
    """A refused request's signature (its keys, up to a message's size) stayed in a table of 256 after its reply (R53:
    six refused requests with a 40 MB key each kept 240 MB); only the recent calls' signatures are kept."""
    import gc
    import sys

    window = GatherWindow(cap_ms=20.0)
    window.observe_call(0.1, 1, cost_signature({}))
    key = "".join(["a client's key ", "x" * 64])  # an object of its own, whose references can be counted
    before = sys.getrefcount(key)
    request = cost_signature({"observation": {key: np.zeros((1, 1), np.float32)}})
    assert sys.getrefcount(key) > before  # the signature holds the key itself
    window.least_call_seconds(1, time.monotonic(), cost=request)
    del request
    gc.collect()
    assert sys.getrefcount(key) == before


def test_an_option_stops_being_volatile_once_its_calls_are_forgotten_and_becomes_so_again():
    """Which options are volatile is worked out from the recent calls that sent options only: once every call with a
    counter has made way for calls without options none is, and counter calls make it so again."""
    window = GatherWindow(cap_ms=20.0)
    now = time.monotonic()
    for counter in range(batching.SPREAD_HISTORY):
        window.observe_call(0.2, 1, cost_signature({"options": {"counter": counter}}))
    assert window.least_call_seconds(1, now, cost=cost_signature({"options": {"counter": 1000}})) == pytest.approx(0.2)
    for _ in range(batching.SPREAD_HISTORY):
        window.observe_call(0.1, 1, cost_signature({}))
    assert window.least_call_seconds(1, now, cost=cost_signature({"options": {"counter": 1000}})) == 0.0
    for counter in range(VOLATILE_OPTION_VALUES + 1):
        window.observe_call(0.25, 1, cost_signature({"options": {"counter": counter}}))
    assert window.least_call_seconds(1, now, cost=cost_signature({"options": {"counter": 1000}})) == pytest.approx(0.25)


def test_a_refusal_for_want_of_time_is_a_timeout_and_still_a_server_error():
    """A robot loop holds position on a timeout: a request the server would not run in time is one (and stays the
    PolicyServerError it was), and the client goes on with the same connection."""
    policy = TurnRecorder(call_s=0.6, hold_first=False)
    with running_server(policy, inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=10000, strict=False) as warm:
            warm.get_action(state(1.0))  # the server learns that a call takes 0.6 s
        with PolicyClient("127.0.0.1", server.port, timeout_ms=300, strict=False) as hurried:
            with pytest.raises(PolicyTimeoutError) as refused:
                hurried.get_action(state(2.0))
            assert isinstance(refused.value, PolicyServerError)
            assert "'get_action' was not run: the client's deadline was" in refused.value.server_message
            assert hurried.ping()
    assert policy.calls == [[1.0]]


def test_a_reply_sent_after_its_clients_deadline_is_counted_late_not_ok():
    """The first call (no call time measured yet, so it runs) takes 0.3 s against a 150 ms deadline: its reply goes to
    a client that has given up. It was counted `ok`; now `late`, in the metrics and in get_server_info's stats."""
    pytest.importorskip("prometheus_client")
    policy = TurnRecorder(call_s=0.3, hold_first=False)
    with running_server(policy, inline_below_ms=0, metrics_port=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=150, wire="multipart", strict=False) as hurried:
            with pytest.raises(PolicyTimeoutError):
                hurried.get_action(state(1.0))
        wait_until(lambda: server._loop.queued_requests == 0)
        page = scrape(server)
        with PolicyClient("127.0.0.1", server.port, timeout_ms=10000, strict=False) as operator:
            stats = operator.get_server_info()["stats"]
    assert requests_total(page, "late") == 1 and requests_total(page, "ok") == 0
    assert stats["late"] == 1 and stats["errors"] == 0 and stats["expired"] == 0
    assert policy.calls == [[1.0]]


class AnswersAt(BasePolicy):
    """Returns its action at `answer_at` (time.monotonic()), which the test sets before it sends its request."""

    def __init__(self) -> None:
        super().__init__(strict=False)
        self.answer_at = 0.0
        self.answer_after_call_s: Optional[float] = None  # instead: this long after the call starts
        self.called = threading.Event()

    def _get_action(self, observation, options=None):
        self.called.set()
        if self.answer_after_call_s is not None:
            self.answer_at = time.monotonic() + self.answer_after_call_s
        time.sleep(max(0.0, self.answer_at - time.monotonic()))
        return {"x": np.zeros((1, 4, 1), np.float32)}, {}

    def reset(self, options=None):
        return {}


@pytest.mark.parametrize("timeout_ms, past_ms, waits, outcome", [
    (1000, 1, True, "ok"), (1000, 200, True, "late"),
    # a 2 ms client takes nothing 4 ms late: the grace is at most half its whole timeout (5 ms made it look served)
    (2, 4, True, "late"),
    # a client already gone: late from its deadline on, not `undelivered` (our timed-out clients read as no waste)
    (300, 1, False, "late"),
], ids=["within the grace", "past it", "past half a short timeout", "client gone"])
def test_a_reply_sent_within_a_clients_rounding_of_its_deadline_is_counted_ok(timeout_ms, past_ms, waits, outcome,
                                                                             monkeypatch):
    """Our client sends its timeout cut to whole ms and polls in whole ms rounded up, so it takes a reply sent a
    millisecond past the deadline the server worked out. Such replies were counted `late` (for nobody): a client with
    a 100 ms timeout at a 94-100 ms policy received 106 of 120 actions while the server counted 45 late. The grace
    is for a client still waiting, and never more than half its whole timeout. (The grace is widened here so that a
    loaded machine's late wake-up stays inside it.)"""
    pytest.importorskip("prometheus_client")
    monkeypatch.setattr(loop, "LATE_GRACE_S", 0.05)
    policy = AnswersAt()
    with running_server(policy, inline_below_ms=0, metrics_port=0) as server:
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{server.port}")
        try:
            request = codec.encode({"endpoint": "get_action", "data": {"observation": state(1.0)},
                                    "timeout_ms": timeout_ms})
            # The deadline counts from the server's receipt, between this send and the call: a reply meant to be in
            # the grace is timed from the send (at most past_ms after the deadline), a late one from the call (at
            # least past_ms after it), so that a slow receipt on a loaded machine moves neither across the line.
            policy.answer_at = time.monotonic() + (timeout_ms + past_ms) / 1000.0
            policy.answer_after_call_s = None if outcome == "ok" else (timeout_ms + past_ms) / 1000.0
            sock.send(request)
            if not waits:  # gone once the server has it (a socket closed at once may never have sent it)
                assert policy.called.wait(5), "the request never reached the policy"
            if waits:
                assert sock.poll(5000), "no reply"
                assert isinstance(codec.decode(sock.recv()), list)  # [action, info]: it was served
        finally:
            sock.close()
        wait_until(lambda: sum(requests_total(scrape(server), name) for name in ("ok", "late", "undelivered")) == 1)
        page = scrape(server)
    assert requests_total(page, outcome) == 1


# --- F3, F4: sessions ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replay_dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("fairness") / "ds", lengths=(40, 40, 40), cameras=())


def one_shot_sessions(port: int, count: int, prefix: str = "flood") -> None:
    """`count` get_actions, each under a fresh session id (what any peer can send)."""
    for index in range(count):
        frame = codec.encode({"endpoint": "get_action", "data": {"observation": {}, "options": None},
                              "session_id": f"{prefix}-{index}"})
        reply = raw_round_trip(port, frame)
        assert reply is not None and "error" not in codec.decode(reply[-1])


def position(info: Dict[str, Any]) -> tuple:
    return int(np.ravel(info["episode_index"])[0]), int(np.ravel(info["current_step"])[0])


@pytest.mark.parametrize("held_by", ["server", "replay"])
def test_a_flood_of_one_shot_sessions_evicts_only_one_shot_sessions(replay_dataset, held_by):
    """A robot that made several calls and pauses keeps its place while one peer sends get_actions under fresh session
    ids (it lost it to any 8 new ids, here the table's size); a session used once is the one that goes, and is told
    so. In both tables: the server's (--max-sessions) and a ReplayPolicy's own (max_sessions)."""
    limits = ServerLimits(max_sessions=8 if held_by == "server" else 1024)
    policy = ReplayPolicy(replay_dataset, execution_horizon=2, strict=False,
                          max_sessions=8 if held_by == "replay" else 1024)
    with running_server(policy, limits=limits, inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False, session_id="robot") as robot, \
                PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False, session_id="once") as once:
            robot.reset({"episode_index": 2})
            robot.get_action({})
            robot.get_action({})
            once.reset({"episode_index": 1})  # used once, then quiet
            one_shot_sessions(server.port, 20)
            assert position(robot.get_action({})[1]) == (2, 4)  # where it paused
            with pytest.raises(PolicyServerError, match=r"session 'once' was (dropped by the server|forgotten by this "
                                                        r"replay).*least recently used.*of those used only once.*reset"):
                once.get_action({})


def test_forgotten_replay_sessions_are_logged_at_the_refusal_rate_not_one_line_each(replay_dataset, caplog):
    """Each session a ReplayPolicy forgot for room was one INFO line: 16 GB a day from one peer sending fresh ids."""
    policy = ReplayPolicy(replay_dataset, execution_horizon=2, strict=False, max_sessions=2)
    with running_server(policy, inline_below_ms=0) as server, caplog.at_level(logging.INFO, logger="gr00t_server"):
        one_shot_sessions(server.port, 60)
    forgotten = [r for r in caplog.records if "forgotten" in r.getMessage()]
    assert 1 <= len(forgotten) <= 20, len(forgotten)


def test_a_reset_keeping_the_episode_of_a_session_the_server_dropped_and_the_replay_forgot_is_refused(replay_dataset):
    """The server keeps more dropped marks than a replay (16 MB of them): after the replay forgot a reference robot's
    session, the server still told it to reset, and its reset keeping the episode restarted it at episode 0, step 0
    with no error. The server marks such a reset as a lost session's (_session_lost), which the replay refuses."""
    policy = ReplayPolicy(replay_dataset, execution_horizon=4, strict=False, max_sessions=1)
    with running_server(policy, inline_below_ms=0) as server:
        with ReferenceClient(server.port, timeout_ms=5000) as robot:
            robot.call_endpoint("reset", {"options": {"episode_index": 1, "step_index": 20}})
            with ReferenceClient(server.port, timeout_ms=5000) as other:  # evicts the robot's session
                other.call_endpoint("reset", {"options": {"episode_index": 0}})
            for index in range(policy._forgotten.capacity):  # the replay's marks churn past the robot's
                policy.drop_session(f"other-{index}")
            with pytest.raises(RuntimeError, match=r"dropped by the server .*call reset"):
                robot.get_action({})
            with pytest.raises(RuntimeError, match=r"not known to this replay .*options\['episode_index'\]"):
                robot.call_endpoint("reset", {"options": {}})
            robot.call_endpoint("reset", {"options": {"episode_index": 1, "step_index": 20}})
            assert position(robot.get_action({})[1]) == (1, 20)


def test_an_evicted_connection_session_is_refused_however_many_sessions_were_dropped_since(replay_dataset):
    """A reference client sends no session_id and no mark: its session is its connection's. Once evicted, it was
    served from episode 0, step 0 with no error after 4 x max_sessions other sessions were dropped."""
    policy = ReplayPolicy(replay_dataset, execution_horizon=4, strict=False, max_sessions=1)
    with running_server(policy, inline_below_ms=0) as server:
        with ReferenceClient(server.port, timeout_ms=5000) as robot:
            robot.call_endpoint("reset", {"options": {"episode_index": 1, "step_index": 20}})
            assert position(robot.get_action({})[1]) == (1, 20)
            for _ in range(12):  # each new connection's session evicts the one before it
                with ReferenceClient(server.port, timeout_ms=5000) as other:
                    other.call_endpoint("reset", {"options": {"episode_index": 0}})
            with pytest.raises(RuntimeError, match=r"this connection's session was dropped by the server "
                                                   r".*--max-sessions.*call reset"):
                robot.get_action({})
            robot.call_endpoint("reset", {"options": {"episode_index": 1, "step_index": 20}})
            assert position(robot.get_action({})[1]) == (1, 20)
