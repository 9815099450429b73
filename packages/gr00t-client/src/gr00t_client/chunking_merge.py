"""How a newer chunk's steps merge with the overlapping steps of the chunk still running: the merge rules and
merge_overlap, which ActionChunker applies to every prefetched chunk."""

from __future__ import annotations

from fractions import Fraction
from typing import Callable, Union

import numpy as np

MergeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
MERGE_RULES = ("newest", "oldest", "average", "weighted")


class MergeResultError(ValueError):
    """A merge function's result that cannot be used as steps (a masked array, another shape)."""


def merge_overlap(old: np.ndarray, new: np.ndarray, rule: Union[str, MergeFn] = "newest", new_weight: float = 0.7) -> np.ndarray:
    """Merge the overlapping steps of the old and new chunk, both (n, ...) and aligned step by step.

    newest: new; oldest: old; average: (old + new) / 2, rounded to the nearest for integers and bools (a tie
    goes to the newer value); weighted: new_weight * new + (1 - new_weight) * old (LeRobot's weighted_average is
    new_weight=0.7), rounded to the nearest for integers and bools. A callable gets (old, new) and returns the
    merged steps.
    """
    if old.shape != new.shape:
        raise ValueError(f"overlapping steps must have equal shapes; got old {old.shape} and new {new.shape}")
    if callable(rule):
        merged = rule(old, new)
        if isinstance(merged, np.ma.MaskedArray):  # np.asarray drops the mask: the robot got the masked entries' values
            raise MergeResultError("merge function returned a numpy masked array; return merged.filled(x) with the "
                                   "value the robot should get")
        merged = np.asarray(merged)
        if merged.shape != old.shape:
            raise MergeResultError(f"merge function returned shape {merged.shape}; expected {old.shape}")
        return merged
    if rule == "newest":
        return new.copy()
    if rule == "oldest":
        return old.copy()
    if rule == "average":
        if new.dtype.kind not in "iub":  # halves first: two finite float16 steps over 32752 summed to inf
            return (old / 2 + new / 2).astype(new.dtype, copy=False)
        # old + new in an int8 gripper's own dtype wrapped (100 and 120 made -18), and float64 rounded int64 ones (a ns
        # timestamp moved by 21, 2**63 - 1 wrapped): add as Python ints (the overlap is small) and floor or ceil back.
        # Two ints (or bools) average to a whole or a half; a half goes to the newer value, as the default rule would.
        total = old.astype(object) + new.astype(object)
        return np.where(new >= old, -(-total // 2), total // 2).astype(new.dtype)
    if rule == "weighted":
        if new.dtype.kind in "iub":  # exact, as Python ints: float64 math moved int64 steps past 2**53 and wrapped them
            return _weighted_ints(old, new, new_weight)
        return (new_weight * new + (1.0 - new_weight) * old).astype(new.dtype, copy=False)
    raise ValueError(f"merge rule must be one of {MERGE_RULES} or a callable; got {rule!r}")


def _weighted_ints(old: np.ndarray, new: np.ndarray, new_weight: float) -> np.ndarray:
    """new_weight * new + (1 - new_weight) * old for integer or bool steps, rounded to the nearest (a tie to the even
    value, as np.rint) in exact integer arithmetic; new_weight is taken as written (0.7 is 7/10, not the float below
    it), so 0.7 * 101 + 0.3 * 100 is 101, not 100."""
    weight = Fraction(str(new_weight))
    numerator = weight.numerator * new.astype(object) + (weight.denominator - weight.numerator) * old.astype(object)
    quotient, remainder = numerator // weight.denominator, numerator % weight.denominator
    twice = 2 * remainder
    up = (twice > weight.denominator) | ((twice == weight.denominator) & (quotient % 2 == 1))
    return (quotient + up).astype(new.dtype)
