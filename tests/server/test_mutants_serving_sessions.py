"""The server's session table forgets a session idle past --session-idle-s at any client's request, not only at
its own, and tells its client why."""

from __future__ import annotations

from test_session_table import Clock

from gr00t_server.serving.sessions import SessionTable


def test_an_idle_session_is_forgotten_at_another_clients_request():
    """Robot a goes quiet past idle_s; robot b's next request evicts it (its policy state is dropped then, not kept
    until the table is full) and a's client is told it was idle."""
    clock = Clock()
    table = SessionTable(max_sessions=8, idle_s=1.0, clock=clock)
    table.touch("a")
    table.touch("b")
    clock.now = 0.5
    table.touch("b")
    clock.now = 1.4  # a idle 1.4 s, b 0.9 s
    assert table.touch("c") == ["a"]
    assert "a" not in table and "b" in table and "c" in table
    assert "idle for more than 1 s (--session-idle-s)" in table.dropped_reason("a")


def test_an_idle_session_used_many_times_is_forgotten_though_a_session_used_once_is_not_idle():
    """Idle eviction looks at the least recently used session of both segments: a robot used twice then quiet is
    forgotten at another's request even while a session used once, more recently, is still live."""
    clock = Clock()
    table = SessionTable(max_sessions=8, idle_s=1.0, clock=clock)
    table.touch("robot")
    table.touch("robot")  # used twice: the protected segment
    clock.now = 0.9
    table.touch("once")
    clock.now = 1.5  # robot idle 1.5 s, once 0.6 s
    assert table.touch("other") == ["robot"]
    assert "idle for more than 1 s" in table.dropped_reason("robot") and "once" in table


def test_a_full_table_of_sessions_each_used_twice_keeps_every_one_of_them():
    """When the protected segment overflows its least recently used session moves back to probation: it stays held
    (no session vanishes without being recorded as dropped, which would restart its client silently)."""
    table = SessionTable(max_sessions=5, idle_s=100, clock=Clock())
    for session in "abcde":
        assert table.touch(session) == [] and table.touch(session) == []
    assert len(table) == 5 and all(session in table for session in "abcde")
    assert table.touch("f") == ["a"] and "--max-sessions" in table.dropped_reason("a")


def test_a_reconnected_clients_session_keeps_its_order_across_connections_in_the_worker_queue():
    """A session's jobs run in the order queued even when they came on two connections (a client that reconnected):
    the new connection's turn comes first, but its job waits for the session's earlier one on the old connection."""
    from types import SimpleNamespace

    from gr00t_server.serving.worker import FairQueue

    def job(identity: bytes, session: str, name: str):
        return [SimpleNamespace(identity=identity, session=session, name=name)]

    queue = FairQueue()
    queue.put(job(b"old", "other", "old-0"))
    queue.put(job(b"old", "robot", "old-1 get_action"))
    queue.put(job(b"new", "robot", "new-1 reset"))
    taken = [queue.take()[0].name for _ in range(3)]
    assert taken == ["old-0", "old-1 get_action", "new-1 reset"]
    assert queue.take() is None and len(queue) == 0
