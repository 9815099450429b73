"""SessionTable: least-recently-used and idle eviction, and the memory of dropped sessions that lets the server tell
their clients to reset instead of serving them from a fresh start."""

from __future__ import annotations

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


def test_the_memory_of_dropped_sessions_is_bounded():
    table = SessionTable(max_sessions=2, idle_s=100, clock=Clock())
    for index in range(100):
        table.touch(f"s{index}")
    assert len(table._dropped) == 8  # 4 x max_sessions, the most recent ones
    assert table.dropped_reason("s97") and table.dropped_reason("s0") is None
