"""The one rule open-loop and rollout share about a policy's action chunk: its rows are consecutive steps."""

from __future__ import annotations

from typing import Sequence

from gr00t_client.modality import consecutive_action_deltas_problem


def check_consecutive_action_deltas(delta_indices: Sequence[int], consequence: str) -> None:
    """ValueError unless the action delta_indices are 0..H-1 (as the reference checks): chunk row j must be the
    step j after the query. A chunk of other steps ([0, 2, 4, 6], or one starting at 1) would be executed, or
    scored, as the wrong steps; `consequence` says what would go wrong for the caller. The rule is gr00t_client's
    (ActionChunker applies it too)."""
    problem = consecutive_action_deltas_problem(delta_indices)
    if problem is not None:
        raise ValueError(f"{problem}, or {consequence}")
