"""Batch formation across clients: a batch never passes max rows, never runs a connection's later request before
its earlier one, connections take turns, and only row-splittable observations are merged. Real batching functions on real observations."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from gr00t_server import batching


def state(rows: int, dim: int = 3) -> Dict[str, Any]:
    return {"state": {"joints": np.zeros((rows, 1, dim), np.float32)}}


def items(*specs: Tuple[str, Dict[str, Any]]) -> List[Tuple[str, Any]]:
    """(connection, batch_shape) per request, in turn order."""
    return [(connection, batching.batch_shape({"observation": observation})) for connection, observation in specs]


def batch_of(requests: List[Tuple[str, Any]], max_rows: int) -> List[str]:
    taken = batching.next_batch(requests, max_rows, shape=lambda item: item[1], connection=lambda item: item[0])
    return [f"{connection}:{shape[1]}" for connection, shape in taken]


def test_a_request_that_would_pass_max_rows_by_one_row_waits_for_the_next_batch():
    """3 rows then 2 rows under max_rows 4: the 2-row request is left for the next call (5 rows would pass the cap)."""
    assert batch_of(items(("a", state(3)), ("b", state(2)), ("c", state(1))), 4) == ["a:3", "c:1"]
    assert batch_of(items(("a", state(3)), ("b", state(1))), 4) == ["a:3", "b:1"]  # exactly 4 rows: one batch


def test_a_connections_later_request_never_joins_a_batch_its_earlier_one_was_left_out_of():
    """A pipelining connection whose first request cannot join (another signature) has its second left out too, so
    its requests run, and are answered, in the order sent."""
    requests = items(("a", state(1)), ("b", state(1, dim=5)), ("b", state(1)), ("c", state(1)))
    assert batch_of(requests, 8) == ["a:1", "c:1"]


def test_a_connection_served_in_a_full_batch_goes_behind_the_others_for_the_next_turn():
    """Round-robin: after connection a's request went into a batch, b's waiting request comes before a's next one."""
    turns = batching.Turns(connection=lambda item: item[0])
    first = turns.order([("a", 1), ("b", 1)])
    assert first == [("a", 1), ("b", 1)]
    turns.served([[("a", 1)]], still_gathered=[("b", 1), ("a", 2)])
    assert turns.order([("a", 2), ("b", 1)]) == [("b", 1), ("a", 2)]


def test_an_observation_with_a_value_that_cannot_be_split_by_rows_is_a_call_of_its_own():
    """A str or 0-d array beside the row arrays cannot be split back per client: such a request is never merged
    (merged, two clients' strings would be joined character by character into one list)."""
    for odd in ("fast", np.array(2.0)):
        requests = items(("a", {**state(1), "mode": odd}), ("b", {**state(1), "mode": odd}))
        assert batch_of(requests, 8) == ["a:1"]
    assert batch_of(items(("a", state(1)), ("b", state(1))), 8) == ["a:1", "b:1"]
