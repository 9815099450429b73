"""The one rule open-loop and rollout share about a policy's action chunk: its rows are consecutive steps."""

from __future__ import annotations

from typing import Sequence


def check_consecutive_action_deltas(delta_indices: Sequence[int], consequence: str) -> None:
    """ValueError unless the action delta_indices are 0..H-1 (as the reference checks): chunk row j must be the
    step j after the query. A chunk of other steps ([0, 2, 4, 6], or one starting at 1) would be executed, or
    scored, as the wrong steps; `consequence` says what would go wrong for the caller."""
    deltas = [int(d) for d in delta_indices]
    if deltas != list(range(len(deltas))):
        shown = deltas if len(deltas) <= 8 else [*deltas[:8], "..."]
        raise ValueError(
            f"the policy's action delta_indices are {shown}; this needs 0..{len(deltas) - 1} (one action per step from "
            f"the query on), or {consequence}"
        )
