"""Rollout settings and the helpers that need no simulator: `gr00t-eval merge`, `suites` and the shard plans read
them without gymnasium (a plain `pip install gr00t-eval`); the runner imports them from here."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

CLIENT_CHUNKING_MODES = ("off", "sync", "async")
DEFAULT_ENV_TIMEOUT_S = 600.0
# Episodes one run may plan: a run keeps per-episode plans and results in memory (1e12 spun for minutes and GBs
# before its first episode); a million is beyond any evaluation, and shards or batch jobs split bigger ones.
MAX_EPISODES = 1_000_000
# Longest env timeout taken: the wait it bounds is a poll() of milliseconds in a C int (24.8 days); 1e10 s overflowed
# in every task after the run had started. A week is beyond any reset or step; inf means no limit, as 0 does.
MAX_ENV_TIMEOUT_S = 7 * 24 * 3600.0


def check_env_timeout(value: Any, name: str = "--env-timeout", no_limit: str = "0") -> Optional[float]:
    """Seconds an env may take per reset or step: None for no limit (None, inf, or 0 where `no_limit` is "0", the
    CLI's word; a job file says null); ValueError naming `name` for anything else that is not a number > 0 (NaN,
    negative) or is over MAX_ENV_TIMEOUT_S."""
    if value is None or (no_limit == "0" and value == 0 and not isinstance(value, bool)) or value == float("inf"):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be seconds > 0, or {no_limit} for no limit; got {value!r}")
    if value > MAX_ENV_TIMEOUT_S:
        raise ValueError(f"{name} must be at most {MAX_ENV_TIMEOUT_S:g} seconds (a week), or {no_limit} for no limit; "
                         f"got {value!r}")
    return float(value)


@dataclass
class RolloutConfig:
    """Settings of one rollout run (the CLI flags)."""

    env_name: str
    n_episodes: int = 50
    n_envs: int = 8
    n_action_steps: int = 8
    max_episode_steps: int = 720
    seed: Optional[int] = None
    video_dir: Optional[str] = None
    env_kwargs: Dict[str, Any] = field(default_factory=dict)
    vectorization: str = "auto"  # "auto": sync for one env, async subprocesses otherwise
    terminate_on_success: bool = True
    steps_per_frame: int = 1
    video_fps: int = 20
    # Index of the first episode run: episodes first_episode .. first_episode + n_episodes - 1 (a shard's slice).
    # The index sets the env seed and the policy's reset `episode_index` (the recorded episode a ReplayPolicy plays).
    first_episode: int = 0
    # "off": one env step runs n_action_steps rows of a fresh chunk; "sync"/"async": one env step runs one row
    # handed out by an ActionChunker (async prefetches the next chunk while the envs run).
    client_chunking: str = "off"
    chunk_merge: str = "newest"  # how an async prefetched chunk merges with the buffered steps (MERGE_RULES)
    # async only: send the buffered steps as options["rtc"] so the server pins the new chunk's first k steps to them
    rtc_frozen_steps: Optional[int] = None
    # Videos only of the task's episodes 0 .. max_episodes_rendered - 1 (None: all), like lerobot-eval; a slice starting
    # at first_episode (a shard) renders those of them it runs, so a split run renders what a single run would.
    max_episodes_rendered: Optional[int] = None
    # Seconds an env in a subprocess may take for one reset or step before the run stops (a hung simulator);
    # None: wait for ever. Envs run in-process (one env, vectorization "sync") cannot be timed out.
    env_timeout_s: Optional[float] = DEFAULT_ENV_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.env_timeout_s == float("inf"):  # no limit, said the way a JSON job file can (Infinity)
            self.env_timeout_s = None

    @property
    def env_steps_per_call(self) -> int:
        """Inner env steps one vector step (one action given to the envs) executes."""
        return self.n_action_steps if self.client_chunking == "off" else 1

    def seed_for(self, episode_index: int) -> Optional[int]:
        """Episode i's env seed: seed + i, i being the run-wide index (None without a seed; the runner then draws one)."""
        return None if self.seed is None else int(self.seed) + episode_index


def draw_base_seed() -> int:
    """A random base seed (drawn once per run and saved, so every episode's seed is known)."""
    return secrets.randbelow(2**31 - 1)


def split_env_name(env_name: str) -> Tuple[str, str]:
    """`prefix/task` -> (prefix, task); a name without '/' has no task."""
    prefix, _, task = env_name.partition("/")
    return prefix, task


def simulator_extras(env_spec: str) -> str:
    """The pip extras that install gymnasium and the simulators `env_spec` (env names or suites, comma-separated)
    needs: "pusht" for PushT names, "sim" for the rest (Meta-World, suites, registered envs), "pusht,sim" for both."""
    names = [name.strip() for name in env_spec.split(",") if name.strip()]
    extras = {"pusht" if split_env_name(name)[0] == "pusht" else "sim" for name in names}
    return ",".join(sorted(extras)) or "sim"
