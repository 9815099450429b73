"""Rollout settings and the helpers that need no simulator: `gr00t-eval merge`, `suites` and the shard plans read
them without gymnasium (a plain `pip install gr00t-eval`); the runner imports them from here."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import secrets
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

CLIENT_CHUNKING_MODES = ("off", "sync", "async")
DEFAULT_ENV_TIMEOUT_S = 600.0
# Episodes one run may plan: a run keeps per-episode plans and results in memory (1e12 spun for minutes and GBs
# before its first episode); a million is beyond any evaluation, and shards or batch jobs split bigger ones.
MAX_EPISODES = 1_000_000
# Most envs one run starts (one subprocess each): --n-envs 1000000, a typo, passed every check; as many as auto picks.
MAX_ENVS = 64
# Longest env timeout taken: the wait it bounds is a poll() of milliseconds in a C int (24.8 days); 1e10 s overflowed
# in every task after the run had started. A week is beyond any reset or step; inf means no limit, as 0 does.
MAX_ENV_TIMEOUT_S = 7 * 24 * 3600.0
ASYNC_ONE_STEP = ("client_chunking='async' needs n_action_steps >= 2: with one step per chunk every prefetch comes "
                  "after its step, and is thrown away and asked for again (twice the requests of 'sync'); use 'sync'")
# The whole-number settings and their least value: 0 steps would end every episode before its first action (a success
# rate of 0 measured on nothing), and a float count failed deep inside (every episode errored on a slice index).
COUNT_MINIMUMS = {"n_episodes": 1, "n_envs": 1, "n_action_steps": 1, "max_episode_steps": 1, "steps_per_frame": 1,
                  "video_fps": 1, "first_episode": 0, "seed": 0, "max_episodes_rendered": 0, "rtc_frozen_steps": 1}
NULLABLE_COUNTS = ("seed", "max_episodes_rendered", "rtc_frozen_steps")
BOOL_SETTINGS = ("terminate_on_success",)


def default_env_timeout(vectorization: Any, n_envs: Any) -> Optional[float]:
    """The env timeout of a CLI run or batch job that sets none: DEFAULT_ENV_TIMEOUT_S, or none where its envs run in
    this process (envs_in_process), where a hung reset or step cannot be stopped."""
    return None if envs_in_process(vectorization, n_envs) else DEFAULT_ENV_TIMEOUT_S


def envs_in_process(vectorization: Any, n_envs: Any) -> bool:
    """Whether a run's envs run in this process: vectorization "sync", or "auto" with n_envs 1 (an n_envs of 0, auto,
    puts even a single env in a worker process: suites.resolve_auto_n_envs)."""
    return vectorization == "sync" or (vectorization == "auto" and n_envs == 1)


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
    # Seconds an env in a subprocess may take for its construction or one reset or step before the run stops (a hung
    # simulator); None: wait for ever. Envs run in-process (vectorization "sync", or "auto" with n_envs 1) cannot be
    # timed out: there, this default is taken as none (it stays the same under dataclasses.replace whatever the
    # vectorization; run_suite and run_rollout run and record it as None) and any other value is refused, as the CLI
    # and batch jobs refuse it. Workers whose close() has not returned that long after the last episode are given up
    # on (async workers killed).
    env_timeout_s: Optional[float] = DEFAULT_ENV_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.env_timeout_s == float("inf"):  # no limit, said the way a JSON job file can (Infinity)
            self.env_timeout_s = None
        for name in COUNT_MINIMUMS:  # a numpy int counts, and is saved to results.json as a plain int
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                setattr(self, name, int(value))

    @property
    def env_steps_per_call(self) -> int:
        """Inner env steps one vector step (one action given to the envs) executes."""
        return self.n_action_steps if self.client_chunking == "off" else 1

    def seed_for(self, episode_index: int) -> Optional[int]:
        """Episode i's env seed: seed + i, i being the run-wide index (None without a seed; the runner then draws one)."""
        return None if self.seed is None else int(self.seed) + episode_index


def non_finite_part(value: Any, path: str) -> Optional[str]:
    """`path` extended to the first NaN or infinite number in `value` (nested in lists, tuples and dicts), or None:
    results.json and run.json save such a number as null, and a resumed run rebuilt its env with None."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value):
        return path
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # an array (results.json saves it as a list)
        return non_finite_part(value.tolist(), path)
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = non_finite_part(item, f"{path}.{key}" if isinstance(value, Mapping) else f"{path}[{key}]")
        if found is not None:
            return found
    return None


# Why an env kwarg may not be NaN or infinite (JSON reads NaN, Infinity and -Infinity as numbers)
NON_FINITE_KWARG = ("a JSON number must be finite: run.json and results.json save NaN and Infinity as null, and a "
                    "resumed run would pass None")


def check_env_kwargs_finite(env_kwargs: Any, name: str = "env_kwargs") -> None:
    """ValueError naming the env kwarg (as `name`.KEY) that holds NaN or an infinite number, which no run file keeps."""
    if not isinstance(env_kwargs, Mapping):
        return  # not a dict of kwargs at all: refused (or failed) where its type is checked
    for key, value in env_kwargs.items():
        found = non_finite_part(value, f"{name}.{key}")
        if found is not None:
            raise ValueError(f"{found} is not a finite number (got {value!r}); {NON_FINITE_KWARG}; pass it as a string "
                             "if the env reads text")


def is_whole_number(value: Any) -> bool:
    """An int or numpy int, not a bool (True is 1 to Python, and never a count, an id or a position)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_whole_number(value: Any, name: str, least: int, why: str = "") -> int:
    """`value` as an int >= `least` (numpy ints taken); ValueError naming `name` for a bool, float, string or less."""
    if not is_whole_number(value):
        raise ValueError(f"{name} must be a whole number >= {least}, got {type(value).__name__} {value!r}")
    if value < least:
        raise ValueError(f"{name} must be >= {least}{why}, got {value}")
    return int(value)


def check_rollout_config(config: RolloutConfig, auto_n_envs: bool = False) -> None:
    """ValueError naming the setting of `config` that no run can take, before any env or episode. `auto_n_envs`: an
    n_envs of 0 is taken (run_suite and the CLI pick the count per task)."""
    for name, least in COUNT_MINIMUMS.items():
        value = getattr(config, name)
        if value is None and name in NULLABLE_COUNTS:
            continue
        why = " (env seeds are non-negative)" if name == "seed" else ""
        if name == "n_envs" and auto_n_envs:
            least, why = 0, " (0 = auto)"
        check_whole_number(value, name, least, why)
    for name in BOOL_SETTINGS:  # a string read from YAML or an env var ("false") is true to Python: ran with it on
        value = getattr(config, name)
        # numpy's bool without importing numpy: the CLI imports this module before its stop handling starts
        if not (isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"))):
            raise ValueError(f"{name} must be a bool (True or False), got {type(value).__module__}."
                             f"{type(value).__name__} {value!r}".replace("builtins.", ""))
        object.__setattr__(config, name, bool(value))  # a numpy bool failed json.dumps of the results (merge_results)
    if config.n_episodes > MAX_EPISODES:
        raise ValueError(f"n_episodes must be at most {MAX_EPISODES:,} per run (split bigger evaluations into shards or "
                         f"jobs), got {config.n_episodes}")
    _check_chunking(config)
    _check_env_kwargs_and_video_dir(config)
    check_env_kwargs_finite(config.env_kwargs)
    if config.env_timeout_s is not None:
        check_env_timeout(config.env_timeout_s, "env_timeout_s", no_limit="None")
    in_process = envs_in_process(config.vectorization, config.n_envs)
    if not (in_process and config.env_timeout_s == DEFAULT_ENV_TIMEOUT_S):  # the default: not kept
        check_env_timeout_applies(config.vectorization, config.env_timeout_s, n_envs=config.n_envs)


def _check_env_kwargs_and_video_dir(config: RolloutConfig) -> None:
    """TypeError for env_kwargs that are no map of keyword names, or a video_dir that is no path: each failed only once
    the envs started (a list as "argument after ** must be a mapping"). A PathLike video_dir is kept as its str, which
    results.json can save."""
    kwargs = config.env_kwargs
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"env_kwargs must be a dict of keyword arguments with str keys, got {type(kwargs).__name__} "
                        f"{kwargs!r:.60}")
    for key in kwargs:
        if not isinstance(key, str):
            raise TypeError(f"env_kwargs must be a dict of keyword arguments with str keys, got a key "
                            f"{type(key).__name__} {key!r:.60}")
    video_dir = config.video_dir
    if video_dir is not None:
        folder = os.fspath(video_dir) if isinstance(video_dir, os.PathLike) else video_dir
        if not isinstance(folder, str):
            raise TypeError(f"video_dir must be a str or os.PathLike folder (or None for no videos), got "
                            f"{type(video_dir).__name__} {video_dir!r:.60}")
        object.__setattr__(config, "video_dir", folder)


def check_env_timeout_applies(vectorization: Any, env_timeout_s: Optional[float], name: str = "env_timeout_s",
                              advice: str = "use vectorization 'async' (or 'auto' with n_envs > 1) for a time limit, "
                                            "or env_timeout_s None for none", *, n_envs: Any,
                              n_envs_name: str = "n_envs") -> None:
    """ValueError for an env timeout given where the envs run in this process (vectorization "sync", or "auto" with
    n_envs 1), where a hung reset or step cannot be stopped, and the limit was silently not kept. `advice`: what to do
    instead, in the caller's terms; `n_envs_name`: the caller's name for n_envs."""
    if env_timeout_applies(vectorization, env_timeout_s, n_envs=n_envs):
        return
    if vectorization == "sync":
        raise ValueError(f"{name} {env_timeout_s:g} cannot apply with vectorization 'sync': its envs run in this "
                         f"process, where a hung reset or step cannot be stopped; {advice}")
    raise ValueError(f"{name} {env_timeout_s:g} cannot apply with {n_envs_name} 1 under vectorization 'auto': its "
                     f"single env runs in this process, where a hung reset or step cannot be stopped; {advice}")


def env_timeout_applies(vectorization: Any, env_timeout_s: Optional[float], *, n_envs: Any) -> bool:
    """Whether an env timeout can be kept: any where the envs run in worker processes; where they run in this process
    (envs_in_process), only none."""
    return env_timeout_s is None or not envs_in_process(vectorization, n_envs)


def without_unkept_env_timeout(config: RolloutConfig) -> RolloutConfig:
    """`config` as an earlier version ran it: one started with its envs in this process (vectorization "sync", or
    "auto" with n_envs 1) and an env_timeout_s (the default, or another taken then; neither kept) resumes with
    env_timeout_s None, which check_env_timeout_applies accepts."""
    if env_timeout_applies(config.vectorization, config.env_timeout_s, n_envs=config.n_envs):
        return config
    return dataclasses.replace(config, env_timeout_s=None)


def _check_chunking(config: RolloutConfig) -> None:
    from gr00t_client.chunking import MERGE_RULES

    if config.client_chunking not in CLIENT_CHUNKING_MODES:
        raise ValueError(f"client_chunking must be one of {CLIENT_CHUNKING_MODES}, got {config.client_chunking!r}")
    if config.chunk_merge not in MERGE_RULES:
        raise ValueError(f"chunk_merge must be one of {MERGE_RULES}, got {config.chunk_merge!r}")
    if config.client_chunking == "async" and config.n_action_steps < 2:
        raise ValueError(ASYNC_ONE_STEP)
    if config.rtc_frozen_steps is not None and config.client_chunking != "async":
        raise ValueError(f"rtc_frozen_steps needs client_chunking='async', got {config.client_chunking!r}")
    if config.chunk_merge != "newest" and config.client_chunking != "async":  # ActionChunker refuses it too
        raise ValueError(f"chunk_merge {config.chunk_merge!r} needs client_chunking='async' (only a prefetched chunk is "
                         f"merged), got {config.client_chunking!r}")


def check_policy(policy: Any) -> None:
    """TypeError unless `policy` can be rolled out: a BasePolicy (e.g. a PolicyClient), or anything with callable
    get_action, reset and get_modality_config (an address string failed deep inside, or as every task's error)."""
    if not all(callable(getattr(policy, name, None)) for name in ("get_action", "reset", "get_modality_config")):
        hint = " (an address? pass PolicyClient(host, port))" if isinstance(policy, str) else ""
        raise TypeError(f"policy must be a BasePolicy (e.g. a PolicyClient), got {type(policy).__name__}{hint}")


def check_on_episode(on_episode: Any) -> None:
    """TypeError unless `on_episode` is None or callable: an int was called only once the first episode was scored,
    after the envs started, and the run's outcome was lost."""
    if on_episode is not None and not callable(on_episode):
        raise TypeError(f"on_episode must be a callable taking each EpisodeOutcome, or None, got "
                        f"{type(on_episode).__name__} {on_episode!r:.60}")


def draw_base_seed() -> int:
    """A random base seed (drawn once per run and saved, so every episode's seed is known)."""
    return secrets.randbelow(2**31 - 1)


def split_env_name(env_name: str) -> Tuple[str, str]:
    """`prefix/task` -> (prefix, task); a name without '/' has no task."""
    prefix, _, task = env_name.partition("/")
    return prefix, task


def exit_call(exc: SystemExit) -> str:
    """How a SystemExit reads in an error: `sys.exit(0)`, `sys.exit()` for no code."""
    return f"sys.exit({'' if exc.code is None else repr(exc.code)})"


# How an episode whose env reset raised is reported: such an episode sent its env no step (a run of only these never
# stepped its envs, as one whose every task failed to build them: gr00t-eval rollout exits 2 and keeps no run)
RESET_FAILED = "reset failed: "


def env_error_text(exc: BaseException) -> str:
    """An env's exception as an episode's or task's error: `env called sys.exit(0)` for a SystemExit (a simulator or
    GUI that exits ends only what it ran, not the whole run), else `Type: message`."""
    if isinstance(exc, SystemExit):
        return f"env called {exit_call(exc)}"
    return f"{type(exc).__name__}: {exc}"


def simulator_extras(env_spec: str) -> str:
    """The pip extras that install gymnasium and the simulators `env_spec` (env names or suites, comma-separated)
    needs: "pusht" for PushT names, "sim" for the rest (Meta-World, suites, registered envs), "pusht,sim" for both."""
    names = [name.strip() for name in env_spec.split(",") if name.strip()]
    extras = {"pusht" if split_env_name(name)[0] == "pusht" else "sim" for name in names}
    return ",".join(sorted(extras)) or "sim"
