"""asked_while_busy's waits: doubled each time, and in all exactly the bound the docs state (30 s), not the 25.5 s
that doubling 0.1 s stopped at."""

from __future__ import annotations

import pytest

from gr00t_client.client_errors import ServerBusyError, server_error
from gr00t_eval import server_busy


class RecordedWaits:
    """Stands in for server_busy's time module: records the waits instead of sleeping them."""

    def __init__(self) -> None:
        self.waits = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


def always_busy() -> None:
    raise server_error("server busy: 9 requests are waiting for the policy; this server queues at most 9 in all "
                       "(ServerLimits.max_queued_requests); try again", "get_action")


def test_the_waits_of_a_request_that_stays_busy_come_to_the_stated_bound(monkeypatch):
    recorded = RecordedWaits()
    monkeypatch.setattr(server_busy, "time", recorded)
    with pytest.raises(ServerBusyError):
        server_busy.asked_while_busy(always_busy, server_busy.BUSY_RETRY_FIRST_S, server_busy.BUSY_RETRY_TOTAL_S,
                                     "a get_action")
    assert sum(recorded.waits) == pytest.approx(server_busy.BUSY_RETRY_TOTAL_S), \
        f"expected waits of {server_busy.BUSY_RETRY_TOTAL_S} s in all, got {sum(recorded.waits)} s: {recorded.waits}"
    assert recorded.waits[:3] == pytest.approx([0.1, 0.2, 0.4])


def test_a_request_answered_after_a_busy_refusal_returns_its_answer(monkeypatch):
    monkeypatch.setattr(server_busy, "time", RecordedWaits())
    answers = iter([None, "answer"])

    def busy_once():
        answer = next(answers)
        if answer is None:
            always_busy()
        return answer

    assert server_busy.asked_while_busy(busy_once, 0.1, 30.0, "a get_action") == "answer"
