"""What the session table promises its robots (docs/protocol.md §7): a policy swapped in while serving does not
replay a continuing session from episode 0, a request waiting in the queue keeps its session from idle eviction, and
a flood of single-use session ids evicts no robot while the table has room for the robots. Real servers on loopback,
real clients, a real replay dataset."""

from __future__ import annotations

import threading
import time

import pytest

from eval.dataset_factory import make_dataset
from gr00t_client import PolicyClient, PolicyServerError
from gr00t_server.policies.replay import ReplayPolicy
from gr00t_server.serving import ServerLimits
from serving import running_server

pytest.importorskip("av")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("promises") / "ds", lengths=(20, 20, 20, 20), cameras=())


def client(server, name):
    return PolicyClient("127.0.0.1", server.port, timeout_ms=10000, strict=False, session_id=name)


class SlowForOneSession(ReplayPolicy):
    """A replay whose calls for session 'slow' take 1.5 s (another robot's slow model call)."""

    def _get_action(self, observation, options=None):
        if (options or {}).get("_session_id") == "slow":
            time.sleep(1.5)
        return super()._get_action(observation, options)


def test_a_policy_swapped_in_while_serving_refuses_a_continuing_session_until_its_reset(dataset):
    """The old session table was kept: robot A, mid episode 3, was served episode 0 step 0 by the new replay."""
    with running_server(ReplayPolicy(dataset, execution_horizon=4, strict=False)) as server:
        robot = client(server, "A")
        try:
            robot.reset({"episode_index": 3})
            robot.get_action({})
            robot.get_action({})
            server.policy = ReplayPolicy(dataset, execution_horizon=4, strict=False)
            with pytest.raises(PolicyServerError, match=r"no longer knows it: .*its policy was replaced.*call reset"):
                robot.get_action({})
            robot.reset({"episode_index": 3})
            _, info = robot.get_action({})
            assert (info["episode_index"], info["current_step"]) == (3, 0)
        finally:
            robot.close()


def test_a_session_whose_request_waits_in_the_queue_longer_than_the_idle_time_is_not_evicted(dataset):
    """A's get_action, sent 0.2 s after its previous reply, waited 1.3 s behind another robot's call and was refused
    as idle for more than 1 s when its turn came."""
    policy = SlowForOneSession(dataset, execution_horizon=4, strict=False)
    with running_server(policy, limits=ServerLimits(session_idle_s=1.0), inline_below_ms=0) as server:
        robot, slow = client(server, "A"), client(server, "slow")
        try:
            robot.reset({"episode_index": 1})
            slow.reset({"episode_index": 2})
            robot.get_action({})
            slow_call = threading.Thread(target=lambda: slow.get_action({}))
            slow_call.start()
            time.sleep(0.2)  # the slow call is running
            _, info = robot.get_action({})
            slow_call.join()
            assert (info["episode_index"], info["current_step"]) == (1, 4)
            assert server.stats.snapshot()["sessions_evicted"] == 0
        finally:
            robot.close()
            slow.close()


def test_a_flood_of_single_use_session_ids_evicts_no_robot_while_the_table_has_room_for_the_robots(dataset):
    """With --max-sessions 10 the protected segment held 8 robots: the ninth, demoted, was evicted by the flood and
    told it was 'the least recently used of those used only once'."""
    policy = ReplayPolicy(dataset, execution_horizon=4, strict=False, max_sessions=10)
    with running_server(policy, limits=ServerLimits(max_sessions=10)) as server:
        robots = [client(server, f"robot-{index}") for index in range(9)]
        try:
            for robot in robots:
                robot.reset({"episode_index": 1})
            for _ in range(3):
                for robot in robots:
                    robot.get_action({})
            for index in range(20):
                fresh = client(server, f"fresh-{index}")
                fresh.get_action({})
                fresh.close()
            for robot in robots:
                _, info = robot.get_action({})
                assert (info["episode_index"], info["current_step"]) == (1, 12), robot.session_id
        finally:
            for robot in robots:
                robot.close()


def test_a_demoted_robot_evicted_when_no_session_used_once_is_left_is_told_how_often_it_was_used(dataset):
    """With 5 robots in a table of 5 (4 protected), a newcomer evicted the demoted robot-0, which was told it was
    'the least recently used of those used only once' though it had been used 3 times."""
    policy = ReplayPolicy(dataset, execution_horizon=4, strict=False, max_sessions=5)
    with running_server(policy, limits=ServerLimits(max_sessions=5)) as server:
        robots = [client(server, f"robot-{index}") for index in range(5)]
        newcomer = client(server, "new")
        try:
            for robot in robots:
                robot.reset({"episode_index": 1})
            for _ in range(2):
                for robot in robots:
                    robot.get_action({})
            newcomer.reset({"episode_index": 2})
            with pytest.raises(PolicyServerError, match=r"robot-0.*least recently used of those used more than once "
                                                        r"\(it was used 3 times\)"):
                robots[0].get_action({})
            for robot in robots[1:]:
                _, info = robot.get_action({})
                assert (info["episode_index"], info["current_step"]) == (1, 8), robot.session_id
        finally:
            for robot in robots + [newcomer]:
                robot.close()


def test_a_replays_own_table_tells_a_demoted_session_how_often_it_was_used(dataset):
    """The replay's own table (ReplayPolicy(max_sessions=)) said the demoted robot-0 was used 'more than once' but
    made room from it before the ones used once were gone."""
    policy = ReplayPolicy(dataset, execution_horizon=4, strict=False, max_sessions=5)
    for name in [f"robot-{index}" for index in range(5)]:
        policy.reset({"_session_id": name, "episode_index": 1})
        policy.get_action({}, {"_session_id": name})
    policy.get_action({}, {"_session_id": "new"})
    with pytest.raises(ValueError, match=r"robot-0.*least recently used \(of those used more than once \(it was "
                                         r"used 2 times\)\).*call reset"):
        policy.get_action({}, {"_session_id": "robot-0"})


def test_a_request_answered_by_a_stop_leaves_its_session_to_idle_out_when_the_server_serves_again(dataset):
    """A request queued when the server stopped was answered "shutting down" outside the job runner, so its session
    stayed counted as waiting: after run() again it never idled out."""
    from gr00t_server.serving import PolicyServer

    server = PolicyServer(SlowForOneSession(dataset, execution_horizon=4, strict=False), host="127.0.0.1", port=0,
                          limits=ServerLimits(session_idle_s=0.5), inline_below_ms=0, shutdown_timeout_s=5)
    server.start()

    def serve():
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        return thread

    thread = serve()
    robot, slow = client(server, "A"), client(server, "slow")
    try:
        robot.reset({"episode_index": 1})
        robot.get_action({})
        slow.reset({"episode_index": 2})
        threading.Thread(target=lambda: slow.get_action({}), daemon=True).start()
        time.sleep(0.3)  # the slow call runs on the worker
        queued = threading.Thread(target=lambda: pytest.raises(PolicyServerError, robot.get_action, {}), daemon=True)
        queued.start()
        time.sleep(0.3)  # A's request waits in the queue
        server.stop()
        thread.join(10)
        queued.join(10)
        thread = serve()
        time.sleep(1.0)  # past --session-idle-s for every session
        with client(server, "C") as other:
            other.reset({"episode_index": 0})
            other.get_action({})  # its turn forgets the idle sessions
        assert "A" not in server.sessions and "slow" not in server.sessions
    finally:
        robot.close()
        slow.close()
        server.stop()
        thread.join(10)
        server.close()


def test_a_swapped_in_policys_own_session_limit_sizes_the_fresh_table_and_the_gauge_counts_it(dataset):
    """After a swap the fresh table kept the old policy's max_sessions (refusing robots the new one holds, blaming
    --max-sessions), and the sessions gauge counted the old policy's sessions until a request ran."""
    with running_server(ReplayPolicy(dataset, execution_horizon=4, strict=False, max_sessions=2)) as server:
        robots = [client(server, f"R{k}") for k in range(3)]
        try:
            robots[0].reset({"episode_index": 0})
            robots[0].get_action({})
            server.policy = ReplayPolicy(dataset, execution_horizon=4, strict=False, max_sessions=100)
            assert server.session_table().live_count() == 0
            for k, robot in enumerate(robots):
                robot.reset({"episode_index": k})
            for robot in robots:
                robot.get_action({})  # none evicted: the new policy holds 100
            assert server.limits.max_sessions == 100 and server.session_table().live_count() == 3
        finally:
            for robot in robots:
                robot.close()
