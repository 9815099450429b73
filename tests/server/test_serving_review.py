"""What a line-by-line review of the serving core found: a get_action registered in place of the built-in one was
skipped by batched requests and not held to the NaN check, a handler registered under a built-in name ran on the
socket thread, sessions were taken back by failed resets and evicted by refused requests, a replay's own session
limit restarted robots at episode 0 without an error, a second Ctrl-C stuck to the server, a gathered request made the
socket thread poll every millisecond, and a model whose raw output was NaN was not counted as a call. Real servers
on loopback, real clients, real replay datasets."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest

from eval.dataset_factory import make_dataset
from gr00t_client import BasePolicy, NonFiniteActionError, PolicyClient, PolicyServerError
from gr00t_server.policies.replay import ReplayPolicy
from gr00t_server.serving import ServerLimits
from gr00t_server.serving import transport as transport_module
from serving import running_server

pytest.importorskip("av")


class Echo(BasePolicy):
    """action = 10 x the state's first value, per row; a batching policy that takes `call_s` per call."""

    supports_batching = True

    def __init__(self, call_s: float = 0.0, nan: bool = False):
        super().__init__(strict=False)
        self.call_s, self.nan, self.calls = call_s, nan, []

    def _get_action(self, observation, options=None):
        state = observation["state"]["joints"]
        self.calls.append(state.shape[0])
        if self.call_s:
            time.sleep(self.call_s)
        arm = (state[:, :1, :1] * 10.0 + np.zeros((1, 4, 2))).astype(np.float32)
        if self.nan:
            arm[:] = np.nan
        return {"arm": arm}, {}

    def reset(self, options=None):
        return {}


def observation(value: float):
    state = np.zeros((1, 1, 3), np.float32)
    state[:, 0, 0] = value
    return {"state": {"joints": state}, "language": {"task": [["go"]]}}


def clamp_get_action(server):
    """A deployment's safety wrapper registered in place of get_action: every action clipped to [-1, 1]."""
    calls = []

    def clamped(observation=None, options=None):
        calls.append(1)
        action, info = server._get_action(observation, options)
        return [{key: np.clip(value, -1.0, 1.0) for key, value in action.items()}, info]

    server.register_endpoint("get_action", clamped)
    return calls


def test_a_replaced_get_action_serves_clients_that_arrive_together_too():
    """Gathered requests were merged and sent to the policy itself: the clamp was skipped (50, 60, 70 returned)."""
    policy = Echo()
    with running_server(policy, max_batch_size=8, batch_timeout_ms=2000, inline_below_ms=0) as server:
        calls = clamp_get_action(server)
        assert not server.batching_enabled
        barrier, highest = threading.Barrier(3), {}

        def robot(i):
            with PolicyClient("127.0.0.1", server.port, timeout_ms=10000) as client:
                client.ping()
                barrier.wait()
                highest[i] = float(client.get_action(observation(5 + i))[0]["arm"].max())

        threads = [threading.Thread(target=robot, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    assert highest == {0: 1.0, 1: 1.0, 2: 1.0} and len(calls) == 3


def test_a_replaced_get_action_is_held_to_the_nan_check():
    """docs/serving.md: an action with NaN or inf is never sent. A registered get_action's was."""
    with running_server(Echo(nan=True)) as server:
        server.register_endpoint("get_action", lambda observation=None, options=None: server.policy.get_action(observation))
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as client:
            with pytest.raises(PolicyServerError, match="non-finite"):
                client.get_action(observation(1))
            assert client.ping()


def test_a_handler_registered_under_a_built_in_name_runs_on_the_worker_and_pings_still_answer():
    """Built-in names were answered on the socket thread whoever registered them: a slow replacement held pings."""
    release = threading.Event()
    with running_server(Echo()) as server:
        server.register_endpoint("get_modality_config", lambda: release.wait(10) and {}, requires_input=False)
        slow = threading.Thread(target=lambda: PolicyClient("127.0.0.1", server.port, timeout_ms=15000).call_endpoint(
            "get_modality_config", requires_input=False))
        slow.start()
        time.sleep(0.3)
        try:
            with PolicyClient("127.0.0.1", server.port, timeout_ms=2000) as client:
                assert client.ping() is True  # while the replacement still runs
                assert slow.is_alive()
        finally:
            release.set()
            slow.join(15)


# --- sessions ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("review") / "ds", lengths=(8, 8, 8), cameras=())


def position(info):
    return info["episode_index"], info["current_step"]


def test_a_replaced_get_action_forwarding_options_serves_each_client_its_own_replay(dataset):
    """A clamp calling policy.get_action(observation, options) got no session: every client was served from one shared
    cursor, whatever episode it had reset to (protocol.md §7)."""
    policy = ReplayPolicy(dataset, execution_horizon=2, strict=False)
    with running_server(policy) as server:
        def clamped(observation=None, options=None):
            action, info = policy.get_action(observation, options)
            return [{key: np.clip(value, -1e4, 1e4) for key, value in action.items()}, info]

        server.register_endpoint("get_action", clamped)
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as first, \
                PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as second:
            first.reset({"episode_index": 1})
            second.reset({"episode_index": 2, "step_index": 2})
            assert position(first.get_action({})[1]) == (1, 0)
            assert position(second.get_action({})[1]) == (2, 2)
            assert position(first.get_action({})[1]) == (1, 2)


def test_a_replaced_reset_forwarding_options_moves_only_its_clients_replay(dataset):
    policy = ReplayPolicy(dataset, execution_horizon=2, strict=False)
    with running_server(policy) as server:
        server.register_endpoint("reset", lambda options=None: policy.reset(options))
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as first, \
                PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as second:
            first.reset({"episode_index": 1})
            second.reset({"episode_index": 2})
            assert position(first.get_action({})[1]) == (1, 0)
            assert position(second.get_action({})[1]) == (2, 0)


def test_a_registered_handler_learns_whose_request_it_serves(dataset):
    with running_server(ReplayPolicy(dataset, execution_horizon=2, strict=False)) as server:
        server.register_endpoint("whoami", lambda: {"session": server.current_session}, requires_input=False)
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False, session_id="robot-7") as robot:
            assert robot.call_endpoint("whoami", requires_input=False) == {"session": "robot-7"}
        assert server.current_session is None  # outside a handler


def test_a_failed_reset_leaves_a_dropped_session_dropped(dataset):
    """The reset took the session back before it failed: the next get_action was served from episode 0, step 0."""
    policy = ReplayPolicy(dataset, execution_horizon=2, strict=False)
    with running_server(policy, limits=ServerLimits(max_sessions=2), inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as robot:
            robot.reset({"episode_index": 2, "step_index": 2})
            for _ in range(2):  # two other robots: this one is the least recently used of three
                with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as other:
                    other.reset({"episode_index": 1})
            with pytest.raises(PolicyServerError, match="was dropped by the server"):
                robot.get_action({})
            with pytest.raises(PolicyServerError, match="episode_index 99"):
                robot.reset({"episode_index": 99})
            with pytest.raises(PolicyServerError, match="was dropped by the server"):
                robot.get_action({})
            robot.reset({"episode_index": 2, "step_index": 2})  # a reset that succeeds takes it back
            assert position(robot.get_action({})[1]) == (2, 2)


def test_a_failed_reset_of_a_session_gone_idle_leaves_it_dropped(dataset):
    """A held session idle past --session-idle-s was restarted by its reset before the reset ran: when the reset failed,
    the next get_action was served from episode 0, step 0 without an error (audit12 style note)."""
    policy = ReplayPolicy(dataset, execution_horizon=2, strict=False)
    with running_server(policy, limits=ServerLimits(session_idle_s=0.3), inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as robot:
            robot.reset({"episode_index": 2, "step_index": 2})
            assert position(robot.get_action({})[1]) == (2, 2)
            time.sleep(0.6)
            with pytest.raises(PolicyServerError, match="episode_index 99"):
                robot.reset({"episode_index": 99})
            with pytest.raises(PolicyServerError, match=r"was dropped by the server \(it was idle"):
                robot.get_action({})
            time.sleep(0.6)  # idle again: a reset that succeeds takes it back where it asked
            robot.reset({"episode_index": 1, "step_index": 2})
            assert position(robot.get_action({})[1]) == (1, 2)
        assert server.stats.snapshot()["sessions_evicted"] == 1


@contextlib.contextmanager
def two_live_robots(policy):
    """A server holding two sessions (its limit), the first at episode 1 step 2, and a third client: (server, first,
    stranger)."""
    with running_server(policy, limits=ServerLimits(max_sessions=2), inline_below_ms=0) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as first, \
                PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as second, \
                PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) as stranger:
            first.reset({"episode_index": 1, "step_index": 2})
            second.reset({"episode_index": 2})
            yield server, first, stranger


def test_a_refused_request_of_a_new_client_evicts_no_live_session(dataset):
    with two_live_robots(ReplayPolicy(dataset, execution_horizon=2, strict=False)) as (server, first, stranger):
        with pytest.raises(PolicyServerError, match="bad arguments for 'reset'"):
            stranger.call_endpoint("reset", {"opitons": {}})
        assert server.stats.snapshot()["sessions_evicted"] == 0
        assert position(first.get_action({})[1]) == (1, 2)


def test_a_replay_that_forgets_a_session_the_server_holds_refuses_it_instead_of_restarting_it(dataset):
    """A ReplayPolicy keeping fewer sessions than the server (Python API) restarted each robot at episode 0, step 0
    without an error. (The server now keeps the replay's 2 sessions too, and so drops the session first.)"""
    policy = ReplayPolicy(dataset, execution_horizon=2, strict=False, max_sessions=2)
    with running_server(policy, limits=ServerLimits(max_sessions=8), inline_below_ms=0) as server:
        robots = [PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False) for _ in range(3)]
        try:
            for robot in robots:
                robot.reset({"episode_index": 2, "step_index": 2})
            with pytest.raises(PolicyServerError, match=r"was dropped by the server \(the server holds at most 2 "):
                robots[0].get_action({})
            assert position(robots[2].get_action({})[1]) == (2, 2)
            robots[0].reset({"episode_index": 2, "step_index": 2})
            assert position(robots[0].get_action({})[1]) == (2, 2)
        finally:
            for robot in robots:
                robot.close()


def test_a_custom_endpoint_cannot_revive_a_session_the_server_dropped(dataset):
    """protocol.md §5: a handler serves a client from its own state under server.current_session. The server dropped
    the session (ReplayPolicy.drop_session) but the replay did not remember it: served from episode 0, step 0."""
    policy = ReplayPolicy(dataset, execution_horizon=2, strict=False)
    with running_server(policy, limits=ServerLimits(max_sessions=1), inline_below_ms=0) as server:
        def act(observation=None):
            return list(policy.get_action(observation, {"_session_id": server.current_session}))

        server.register_endpoint("act", act)
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False, session_id="robot-A") as robot, \
                PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False, session_id="robot-B") as other:
            robot.reset({"episode_index": 2, "step_index": 4})
            other.reset({"episode_index": 1})  # the server holds one session: robot-A's is dropped
            with pytest.raises(PolicyServerError, match="session 'robot-A' was forgotten by this replay, which was "
                                                        "told to drop it .*call reset"):
                robot.call_endpoint("act", {"observation": {}})
            robot.reset({"episode_index": 2, "step_index": 4})
            assert position(robot.call_endpoint("act", {"observation": {}})[1]) == (2, 4)


# --- stops, polling and counting ------------------------------------------------------------------------------


def test_a_later_run_of_the_same_server_waits_for_its_call_after_an_earlier_run_gave_up_on_one():
    """A second Ctrl-C in one run() set a flag no later run() cleared: their stop() gave up on a running call at once."""
    from gr00t_server.server import PolicyServer

    server = PolicyServer(Echo(call_s=1.0), host="127.0.0.1", port=0, shutdown_timeout_s=30, inline_below_ms=0)
    server.start()
    server._loop.stop_waiting = True  # as a second stop signal left it in an earlier run()
    results = {}

    def robot():
        with PolicyClient("127.0.0.1", server.port, timeout_ms=10000) as client:
            try:
                results["arm"] = client.get_action(observation(0.05))[0]["arm"]
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                results["error"] = exc

    def stop_during_the_call():
        time.sleep(0.5)
        caller = threading.Thread(target=robot)
        caller.start()
        time.sleep(0.3)
        server.stop()
        caller.join(15)

    driver = threading.Thread(target=stop_during_the_call)
    driver.start()
    try:
        server.run()
    finally:
        driver.join(15)
        server.close()
    assert "error" not in results, results.get("error")
    assert float(results["arm"].max()) == pytest.approx(0.5)


def test_a_gathered_request_waiting_for_a_busy_worker_does_not_make_the_socket_thread_spin(monkeypatch):
    polls = []
    original = transport_module.Transport.poll

    def counted(self, timeout_ms):
        polls.append(time.monotonic())
        return original(self, timeout_ms)

    monkeypatch.setattr(transport_module.Transport, "poll", counted)
    with running_server(Echo(call_s=1.5), max_batch_size=8, batch_timeout_ms=20, inline_below_ms=0) as server:
        def robot(value, delay):
            with PolicyClient("127.0.0.1", server.port, timeout_ms=20000) as client:
                client.ping()
                time.sleep(delay)
                client.get_action(observation(value))

        first = threading.Thread(target=robot, args=(1, 0.0))
        second = threading.Thread(target=robot, args=(2, 0.4))  # arrives during the first's call, and waits
        first.start()
        second.start()
        time.sleep(1.0)
        start = time.monotonic()
        time.sleep(0.5)
        during = sum(1 for at in polls if start <= at < start + 0.5)
        first.join(20)
        second.join(20)
    assert during < 50, f"{during} polls in 0.5 s while a gathered request waited for the busy worker"


def test_a_model_call_whose_raw_output_is_refused_is_still_counted():
    class RawNaN(BasePolicy):
        def __init__(self):
            super().__init__(strict=False)
            self.runs = 0

        def _get_action(self, observation, options=None):
            self.runs += 1
            raise NonFiniteActionError("the model's raw output has NaN", key="arm", rows=[0])

        def reset(self, options=None):
            return {}

    policy = RawNaN()
    with running_server(policy) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            for _ in range(3):
                with pytest.raises(PolicyServerError, match="raw output has NaN"):
                    client.get_action(observation(1))
        stats = server.stats.snapshot()
    assert policy.runs == 3 and stats["policy_calls"] == 3


def test_a_bare_key_error_from_inside_a_policy_is_logged_once_with_where_it_was_raised(caplog):
    """A policy's own bug (a KeyError in its table) was told to the client as its mistake and logged without a
    traceback: nothing showed where it came from. The first of its kind now shows it; the client's answer is as
    before."""
    class Buggy(Echo):
        def _get_action(self, observation, options=None):
            return {"arm": {"x": 1}["gripper"]}, {}

    with running_server(Buggy()) as server:
        with caplog.at_level("WARNING", logger="gr00t_server.serving.server"):
            with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
                for _ in range(3):
                    with pytest.raises(PolicyServerError, match="KeyError: 'gripper'"):
                        client.get_action(observation(1))
    assert caplog.text.count("Traceback") == 1 and "in _get_action" in caplog.text
    assert caplog.text.count("refused: KeyError: 'gripper'") == 3


def test_a_new_client_whose_first_call_the_replay_refuses_pushes_no_live_session_out(tmp_path):
    """The replay stored the newcomer's session (forgetting the oldest for room) before its call failed on a NaN in
    episode 0: a live robot's next call was refused as forgotten."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = make_dataset(tmp_path / "ds", lengths=(8, 8, 8), cameras=())
    path = sorted(root.rglob("episode_000000.parquet"))[0]
    table = pq.read_table(path)
    actions = np.array(table.column("action").to_pylist(), np.float32)
    actions[3, 0] = np.nan
    pq.write_table(table.set_column(table.column_names.index("action"), "action",
                                    pa.array(list(actions), type=table.schema.field("action").type)), path)
    with two_live_robots(ReplayPolicy(root, execution_horizon=2, strict=False, max_sessions=2)) as (_, first, stranger):
        with pytest.raises(PolicyServerError, match="holds nan at row 3"):
            stranger.get_action({})  # never reset: episode 0, refused
        assert position(first.get_action({})[1]) == (1, 2)
