"""What a replay server's reset info says about the recorded episodes it replays: the env they were recorded in
(it must be the rollout's) and the seeds they were recorded with (the rollout's episodes take them)."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping

import numpy as np

from .config import RolloutConfig
from .policy_io import _reports_steps

logger = logging.getLogger(__name__)


class RecordedEnvMismatchError(ValueError):
    """The policy replays episodes recorded in another env than the one rolled out (a replay server of another task's
    dataset): the run stops, as every episode would score the wrong task's actions."""


def _check_recorded_env(info: Any, started: Mapping[int, int], n_rows: int, env_name: str) -> None:
    """RecordedEnvMismatchError when the policy's reset info (key "env_name", one per row or one for all, as a replay
    server of a `gr00t-eval record` dataset reports it) says a started episode was recorded in another env than
    this rollout's: its actions played in this env would score a plausible 0%. A policy that reports none passes."""
    names = info.get("env_name") if isinstance(info, Mapping) else None
    if names is None:
        return
    names = list(names) if isinstance(names, (list, tuple, np.ndarray)) else [names]
    if len(names) == 1 and n_rows > 1:
        names = names * n_rows
    if len(names) != n_rows:  # not one per row: not a recording's env names (as for "seed")
        return
    for row, episode in started.items():
        recorded = names[row]
        if isinstance(recorded, str) and recorded and recorded != env_name:
            raise RecordedEnvMismatchError(
                f"the policy replays episode {episode} as recorded in {recorded!r}, but this rollout runs "
                f"{env_name!r}: the recorded actions would be scored in another task (a plausible 0%). "
                f"Roll out --env-name {recorded}, or serve a dataset recorded in {env_name}")


def _note_recorded_seeds(info: Any, started: Mapping[int, int], n_rows: int, config: RolloutConfig,
                         recorded_seeds: Dict[int, int], warn_ignored: bool = True) -> bool:
    """Keep in `recorded_seeds` the per-row seeds a replay server reports in its reset info (key "seed"); warn of
    started episodes it reports none for while it reports seeds for other rows or earlier episodes. Return True when
    the info has a "seed" that is not a recording's (warned of unless `warn_ignored` is False: once per run)."""
    if not isinstance(info, Mapping) or info.get("seed") is None:
        if recorded_seeds:
            _warn_unseeded(list(started.values()), config)
        return False
    seeds = info["seed"]
    listed = isinstance(seeds, (list, tuple, np.ndarray))
    # One seed per row; a single row's as a bare value only from a policy that reports its step, as a replay server
    # does: any other scalar is a policy's own sampling seed, and taking it gave every episode the same scene.
    if (len(seeds) if listed else 1) != n_rows or not (listed or _reports_steps(info)):
        if warn_ignored:
            logger.warning("the policy's reset info has a 'seed' (%s) that is not one recorded seed per env row "
                           "(%d rows) from a replay server, so it is not taken as recorded seeds: it is the "
                           "policy's own, and the episodes keep their own seeds (said once per run)",
                           _shown_seed(seeds), n_rows)
        return True
    seeds = list(seeds) if listed else [seeds]
    unseeded = []
    for row, episode in started.items():
        seed = seeds[row]
        if seed is None:
            unseeded.append(episode)
            continue
        if config.seed_for(episode) != int(seed) and not recorded_seeds:
            logger.warning("the policy reports recorded seeds (a replay server): episode %d runs with seed %d, "
                           "not %d", episode, int(seed), config.seed_for(episode))
        recorded_seeds[episode] = int(seed)
    if unseeded:
        _warn_unseeded(unseeded, config)
    return False


def _shown_seed(seeds: Any) -> str:
    if isinstance(seeds, (list, tuple, np.ndarray)):
        return f"{len(seeds)} values"
    return repr(seeds)[:40]


def _warn_unseeded(episodes: List[int], config: RolloutConfig) -> None:
    logger.warning("the policy reports recorded seeds (a replay server), but none for episodes %s: they run with this "
                   "rollout's seeds %s, not in the scenes they were recorded in", episodes,
                   [config.seed_for(episode) for episode in episodes])
