"""The env seed each episode of a replayed dataset was recorded with (the "seed" `gr00t-eval record` stores in
meta/episodes.jsonl), read once when the replay starts; episodes whose seed cannot be used are named then."""

from __future__ import annotations

import logging
import numbers
from typing import Any, List, Optional

from gr00t_client.codec import MAX_RECORDED_SEED

logger = logging.getLogger(__name__)
_NAMED_POSITIONS = 20  # episode positions a warning lists


def usable_seed(value: Any) -> Optional[int]:
    """`value` as an env seed: a whole number from 0 to MAX_RECORDED_SEED, an integral float taken (pandas writes 0
    as 0.0 once the column held a NaN); None for anything else (a fraction, NaN, a negative, a bool, a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if not isinstance(value, numbers.Integral) and not float(value).is_integer():
        return None
    seed = int(value)
    return seed if 0 <= seed <= MAX_RECORDED_SEED else None


def recorded_seeds(dataset: Any) -> List[Optional[int]]:
    """Each episode's recorded seed by position (None where it has none that can be used), warning once about
    episodes whose "seed" is no env seed, and about episodes without one when others have one: a rollout runs those
    with its own seeds, in other scenes than the ones recorded."""
    values = [dataset.episode_extras(position).get("seed") for position in range(dataset.num_episodes)]
    seeds = [usable_seed(value) for value in values]
    unusable = [(position, value) for position, (value, seed) in enumerate(zip(values, seeds))
                if value is not None and seed is None]
    if unusable:
        named = ", ".join(f"position {position}: {value!r:.40}" for position, value in unusable[:_NAMED_POSITIONS])
        logger.warning("dataset %s: the 'seed' of %d episodes is no env seed (a whole number from 0 to %d), so a "
                       "rollout runs them with its own seeds, not in their recorded scenes: %s", dataset.root,
                       len(unusable), MAX_RECORDED_SEED, named)
    missing = [position for position, value in enumerate(values) if value is None]
    if missing and len(missing) < len(values):
        logger.warning("dataset %s: %d episodes have no recorded 'seed' while others have one, so a rollout runs them "
                       "with its own seeds, not in their recorded scenes: positions %s", dataset.root, len(missing),
                       missing[:_NAMED_POSITIONS])
    return seeds
