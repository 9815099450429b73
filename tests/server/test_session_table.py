"""SessionTable: least-recently-used and idle eviction, and the memory of dropped sessions that lets the server tell
their clients to reset instead of serving them from a fresh start."""

from __future__ import annotations

from gr00t_server.serving import sessions
from gr00t_server.serving.sessions import SessionTable


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_least_recently_used_session_is_dropped_with_its_reason():
    table = SessionTable(max_sessions=2, idle_s=100, clock=Clock())
    assert table.touch("a") == [] and table.touch("b") == []
    assert table.touch("c") == ["a"]
    assert "--max-sessions" in table.dropped_reason("a") and table.dropped_reason("b") is None
    assert table.dropped_reason("never-seen") is None  # a new session is not a dropped one


def test_a_dropped_session_comes_back_only_with_a_restart():
    table = SessionTable(max_sessions=1, idle_s=100, clock=Clock())
    table.touch("a")
    table.touch("b")
    assert table.touch("a", restart=False) == [] and "a" not in table and table.dropped_reason("a")
    assert table.touch("a", restart=True) == ["b"]
    assert "a" in table and table.dropped_reason("a") is None


def test_an_idle_session_is_dropped_at_its_own_request_without_other_traffic():
    clock = Clock()
    table = SessionTable(max_sessions=8, idle_s=1.0, clock=clock)
    table.touch("a")
    clock.now = 0.9
    assert table.touch("a", restart=False) == [] and table.dropped_reason("a") is None  # within the idle time
    clock.now = 2.0
    assert table.touch("a", restart=False) == ["a"]
    assert "idle for more than 1 s" in table.dropped_reason("a")


def test_a_dropped_mark_outlives_any_churn_within_the_tables_large_cap():
    """The marks were the last 4 x max_sessions: a robot evicted before 4 others were dropped was served anew."""
    table = SessionTable(max_sessions=2, idle_s=100, clock=Clock())
    table.touch("robot")
    for index in range(2000):
        table.touch(f"s{index}")
    assert "--max-sessions" in table.dropped_reason("robot")


def test_the_memory_of_dropped_sessions_is_bounded_by_count_and_by_age():
    clock = Clock()
    table = SessionTable(max_sessions=2, idle_s=100, clock=clock)
    for index in range(sessions.MAX_DROPPED_MARKS + 10):
        table.touch(f"s{index}")
    assert len(table._dropped) == sessions.MAX_DROPPED_MARKS  # the most recent ones
    assert table.dropped_reason(f"s{sessions.MAX_DROPPED_MARKS}") and table.dropped_reason("s0") is None
    clock.now += table.dropped_memory_s + 1
    table.touch("late")
    assert len(table._dropped) <= 2 and table.dropped_reason(f"s{sessions.MAX_DROPPED_MARKS}") is None
    assert table.dropped_memory_s >= 24 * table.idle_s


def test_idle_sessions_are_forgotten_before_room_is_made():
    """Room came first: the robot used once was evicted, then the idle session anyway, leaving a slot empty."""
    clock = Clock()
    table = SessionTable(max_sessions=2, idle_s=1.0, clock=clock)
    table.touch("idle")
    table.touch("idle")  # used twice: the protected segment
    clock.now = 0.5
    table.touch("robot")
    clock.now = 1.2  # idle quiet for 1.2 s, robot for 0.7 s
    assert table.touch("new") == ["idle"]
    assert "robot" in table and "new" in table


def test_an_idle_session_demoted_behind_a_live_one_is_forgotten():
    """Idle eviction looked only at each segment's least recently used: a protected session moved back to probation
    sits behind a live session there, and stayed held while the live one was evicted for room."""
    clock = Clock()
    table = SessionTable(max_sessions=10, idle_s=1.0, clock=clock)  # 8 of the 10 may be protected
    table.touch("old")
    table.touch("old")
    clock.now = 0.9
    table.touch("live")
    for index in range(8):  # the ninth protected session moves "old" back to probation, behind "live"
        table.touch(f"s{index}")
        table.touch(f"s{index}")
    clock.now = 1.5  # old quiet for 1.5 s, the others for 0.6 s
    assert table.touch("new") == ["old"]
    assert "live" in table and "idle for more than 1 s" in table.dropped_reason("old")
