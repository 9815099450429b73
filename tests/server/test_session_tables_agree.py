"""The server's session table (--max-sessions, --session-idle-s) and a ReplayPolicy's own cursor table count the same
uses and forget the same sessions: one newcomer makes room by evicting one session, an idle one first, and every
other robot keeps its episode. Real servers on loopback, real clients, a real replay dataset."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from eval.dataset_factory import make_dataset
from gr00t_client import PolicyClient, PolicyServerError
from gr00t_server.policies.replay import ReplayPolicy
from gr00t_server.serving import ServerLimits
from gr00t_server.server import PolicyServer
from serving import running_server

pytest.importorskip("av")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tables") / "ds", lengths=(20, 30, 25), cameras=())


def clients(server, names):
    return {name: PolicyClient("127.0.0.1", server.port, timeout_ms=5000, strict=False, session_id=name)
            for name in names}


def held(server, policy, names):
    """(sessions the server holds, sessions the replay holds), of `names`."""
    return ({name for name in names if name in server.sessions}, {name for name in names if name in policy._sessions})


def test_a_refused_reset_counts_no_use_so_one_newcomer_evicts_one_session(dataset):
    """B's refused reset moved B ahead in the server's table only: for newcomer C the server evicted A and the replay
    evicted B, and only C still worked."""
    policy = ReplayPolicy(dataset, execution_horizon=4, strict=False, max_sessions=2)
    with running_server(policy, limits=ServerLimits(max_sessions=2), inline_below_ms=0) as server:
        robots = clients(server, "ABC")
        try:
            robots["A"].reset({"episode_index": 1})
            robots["A"].get_action({})
            robots["B"].reset({"episode_index": 2})
            with pytest.raises(PolicyServerError, match="episode_index 99"):
                robots["B"].reset({"episode_index": 99})
            robots["C"].reset({"episode_index": 0})
            assert held(server, policy, "ABC") == ({"A", "C"}, {"A", "C"})
            assert server.stats.snapshot()["sessions_evicted"] == 1
            _, info_a = robots["A"].get_action({})
            _, info_c = robots["C"].get_action({})
            assert (info_a["episode_index"], info_a["current_step"]) == (1, 4)
            assert (info_c["episode_index"], info_c["current_step"]) == (0, 0)
            with pytest.raises(PolicyServerError, match="was dropped by the server"):
                robots["B"].get_action({})
        finally:
            for robot in robots.values():
                robot.close()


def test_a_server_allowing_more_sessions_than_its_replay_keeps_the_replays_number_and_warns(dataset, caplog):
    """With ServerLimits(max_sessions=10) around a replay of max_sessions=2, four clients' resets left the server
    holding four sessions (its gr00t_sessions gauge said 4) while the replay held two and refused the others' get_action
    as forgotten; nothing warned."""
    policy = ReplayPolicy(dataset, execution_horizon=4, strict=False, max_sessions=2)
    with caplog.at_level("WARNING", logger="gr00t_server.serving.server"):
        context = running_server(policy, limits=ServerLimits(max_sessions=10), inline_below_ms=0)
        server = context.__enter__()
    try:
        robots = clients(server, "ABCD")
        try:
            for robot in robots.values():
                robot.reset({"episode_index": 0})
            assert held(server, policy, "ABCD") == ({"C", "D"}, {"C", "D"})
            assert server.sessions.live_count() == 2 and server.limits.max_sessions == 2
            with pytest.raises(PolicyServerError, match="was dropped by the server"):
                robots["A"].get_action({})
        finally:
            for robot in robots.values():
                robot.close()
    finally:
        context.__exit__(None, None, None)
    assert ("the policy keeps at most 2 sessions (its max_sessions) and the server's limits allow 10" in caplog.text)


def test_both_tables_hold_the_same_sessions_through_failing_and_succeeding_requests(dataset):
    policy = ReplayPolicy(dataset, execution_horizon=2, strict=False, max_sessions=3)
    names = "ABCDE"
    chooser = random.Random(7)
    with running_server(policy, limits=ServerLimits(max_sessions=3), inline_below_ms=0) as server:
        robots = clients(server, names)
        try:
            for _ in range(60):
                robot = robots[chooser.choice(names)]
                request = chooser.choice(("reset", "bad reset", "get_action", "bad get_action"))
                try:
                    if request == "reset":
                        robot.reset({"episode_index": chooser.randrange(3)})
                    elif request == "bad reset":
                        robot.reset({"episode_index": 99})
                    elif request == "get_action":
                        robot.get_action({})
                    else:
                        robot.get_action({}, {"batch_size": 0})
                except PolicyServerError:
                    pass
                server_held, replay_held = held(server, policy, names)
                assert server_held == replay_held, f"after {robot.session_id}'s {request}"
        finally:
            for robot in robots.values():
                robot.close()


def test_an_idle_session_makes_room_for_a_newcomer_before_an_active_robot(dataset):
    """The server made room first (evicting the robot, used once) and forgot the idle session after: the robot was
    refused and the table was left with a free slot."""
    policy = ReplayPolicy(dataset, execution_horizon=4, strict=False, max_sessions=2)
    # 1.5 s: the robot's 0.9 s quiet plus the calls' own time must stay under it (0.6 s against 0.4 s left a loaded
    # CI box 0.2 s); the naps are lower bounds, so the idle session's 1.8 s is over it however slow the box
    limits = ServerLimits(max_sessions=2, session_idle_s=1.5)
    with running_server(policy, limits=limits, inline_below_ms=0) as server:
        robots = clients(server, ("idle", "robot", "new"))
        try:
            robots["idle"].reset({"episode_index": 0})
            robots["idle"].get_action({})
            time.sleep(0.9)
            robots["robot"].reset({"episode_index": 1})
            time.sleep(0.9)  # idle quiet for 1.8 s (> 1.5 s), robot for 0.9 s
            robots["new"].reset({"episode_index": 2})
            assert held(server, policy, ("idle", "robot", "new")) == ({"robot", "new"}, {"robot", "new"})
            _, info = robots["robot"].get_action({})
            assert (info["episode_index"], info["current_step"]) == (1, 0)
            _, info = robots["new"].get_action({})
            assert (info["episode_index"], info["current_step"]) == (2, 0)
            with pytest.raises(PolicyServerError, match=r"dropped by the server \(it was idle"):
                robots["idle"].get_action({})
        finally:
            for robot in robots.values():
                robot.close()


@pytest.mark.parametrize("own", [np.int64(3), np.int32(3)], ids=["int64", "int32"])
def test_a_policy_session_limit_given_as_a_numpy_int_is_followed(dataset, own):
    policy = ReplayPolicy(dataset, max_sessions=3)
    policy.max_sessions = own
    with running_server(policy, limits=ServerLimits(max_sessions=10)) as server:
        assert server.limits.max_sessions == 3 and type(server.limits.max_sessions) is int


@pytest.mark.parametrize("own", [0, -1])
def test_a_policy_session_limit_below_one_is_refused_naming_the_policy(dataset, own):
    policy = ReplayPolicy(dataset, max_sessions=3)
    policy.max_sessions = own
    with pytest.raises(ValueError, match=rf"ReplayPolicy\.max_sessions is {own}; expected an int >= 1"):
        PolicyServer(policy, host="127.0.0.1", port=0, limits=ServerLimits(max_sessions=10))
