"""What a policy's get_action info reports about its place in a replay (`episode_index`, `current_step`,
`execution_horizon`, `episode_length`, `episode_done`): open-loop and the rollout both check it against where they put
the policy."""

from __future__ import annotations

from typing import Any

import numpy as np

from .rollout.config import is_whole_number


def is_position(value: Any) -> bool:
    """True for a value a policy reports as a position or horizon: a whole number (a bool is not one).

    Other values (None, lists of another length, text) mean the policy reports no position to check.
    """
    return is_whole_number(value)


def is_flag(value: Any) -> bool:
    """True for a value a policy reports as yes or no (`episode_done`): a bool or numpy bool, not a list of them."""
    return isinstance(value, (bool, np.bool_))
