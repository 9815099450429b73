"""The outcome of one rollout: its scored episodes and wall time, and the success figures the metrics read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from gr00t_client import EmbodimentTag

from ..metrics import EpisodeOutcome


@dataclass
class RolloutResult:
    """The scored episodes (exactly n_episodes, ordered by episode index from first_episode) and the wall time."""

    env_name: str
    embodiment_tag: EmbodimentTag
    outcomes: List[EpisodeOutcome]
    eval_s: float

    @property
    def finished(self) -> List[EpisodeOutcome]:
        """The episodes that ran to their end without an error, in episode order: the ones the metrics count."""
        return [o for o in self.outcomes if o.error is None]

    @property
    def errored_episodes(self) -> List[int]:
        """Indices of the episodes that errored: neither successes nor failures, left out of every metric."""
        return [o.episode_index for o in self.outcomes if o.error is not None]

    @property
    def n_errors(self) -> int:
        """How many episodes errored (results.json's `n_errors`)."""
        return len(self.errored_episodes)

    @property
    def successes(self) -> List[bool]:
        """Success of each finished episode, in episode order (errored episodes are left out)."""
        return [o.success for o in self.finished]

    @property
    def success_rate(self) -> Optional[float]:
        """Fraction of the finished episodes that succeeded; None when none finished (results.json's null pc_success)."""
        successes = self.successes
        return float(np.mean(successes)) if successes else None
