"""The rollout's vector env: building the MultiStepWrapper'd envs (in this process or in spawned workers) and
closing them, killing workers that have not built or closed their envs in time."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import multiprocessing.connection
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..extras import require_gymnasium

require_gymnasium("closed-loop rollout")

import gymnasium as gym  # noqa: E402
from gymnasium.vector.async_vector_env import AsyncState, _async_worker  # noqa: E402

from ..video import EpisodeVideoRecorder
from .config import RolloutConfig
from .envs import EnvFactory, env_factory
from .multistep import MultiStepWrapper
from .policy_io import HorizonSpec
from .stalls import EnvStalledError, construction_stalled

logger = logging.getLogger(__name__)

WORKER_START_LIMIT_S = 120.0  # for a worker process to start and import what its env needs, before it builds the env
WORKER_STOP_WAIT_S = 3.0  # how long async env workers get to close their envs after an interrupt before they are killed


def _build_env(factory: EnvFactory, row: int, n_action_steps: int, max_episode_steps: int,
               video_delta_indices: Sequence[int], state_delta_indices: Sequence[int], terminate_on_success: bool,
               video_dir: Optional[str], steps_per_frame: int, video_fps: int, render_below: Optional[int] = None) -> gym.Env:
    # Top-level (not a closure) so spawned workers can unpickle it.
    recorder = EpisodeVideoRecorder(video_dir, fps=video_fps, steps_per_frame=steps_per_frame) if video_dir else None
    return MultiStepWrapper(factory(), n_action_steps, max_episode_steps, video_delta_indices, state_delta_indices,
                            terminate_on_success=terminate_on_success, recorder=recorder, env_index=row,
                            render_below=render_below, defer_video=True)


def make_vector_env(config: RolloutConfig, spec: HorizonSpec, n_envs: int) -> gym.vector.VectorEnv:
    """n_envs MultiStepWrapper'd envs with autoreset disabled (the runner resets rows itself)."""
    factory = env_factory(config.env_name, **config.env_kwargs)
    factory = dataclasses.replace(factory, step_budget=config.max_episode_steps)  # a gym id's TimeLimit is the run's
    # the first N episodes of the task, whatever slice this runner runs: N per task however many shards there are
    render_below = config.max_episodes_rendered
    fns = [
        functools.partial(_build_env, factory, row, config.env_steps_per_call, config.max_episode_steps,
                          tuple(spec.video_delta_indices), tuple(spec.state_delta_indices), config.terminate_on_success,
                          config.video_dir, config.steps_per_frame, config.video_fps, render_below)
        for row in range(n_envs)
    ]
    mode = config.vectorization
    if mode not in ("auto", "sync", "async"):
        raise ValueError(f"vectorization must be 'auto', 'sync' or 'async', got {mode!r}")
    disabled = gym.vector.AutoresetMode.DISABLED
    if runs_in_process(config):
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=disabled)
    # spawn: workers must not inherit the parent's ZeroMQ threads or GL contexts.
    return BoundedAsyncVectorEnv(fns, build_timeout_s=config.env_timeout_s, shared_memory=False, context="spawn",
                                 autoreset_mode=disabled)


def runs_in_process(config: RolloutConfig) -> bool:
    """Whether the envs run in this process: vectorization "sync", or "auto" with n_envs 1. Decided by the n_envs asked
    for, not the rows a run needs: a resume of one episode keeps its --env-timeout and its crash isolation."""
    return config.vectorization == "sync" or (config.vectorization == "auto" and config.n_envs == 1)


class BoundedAsyncVectorEnv(gym.vector.AsyncVectorEnv):
    """gymnasium's AsyncVectorEnv whose workers get at most `build_timeout_s` (None: no limit) to build their envs:
    its own check waits on each worker without a timeout, so a constructor that hung held the run for ever."""

    def __init__(self, env_fns: Sequence[Any], build_timeout_s: Optional[float], **kwargs: Any) -> None:
        self.build_timeout_s = build_timeout_s
        super().__init__(env_fns, worker=_announcing_worker, **kwargs)

    def _check_spaces(self) -> None:
        self._wait_until_built(self.build_timeout_s)
        super()._check_spaces()

    def _wait_until_built(self, timeout_s: Optional[float]) -> None:
        # The clock starts once a worker is up: starting Python and its imports take seconds on a busy machine.
        start_limit = None if timeout_s is None else time.monotonic() + WORKER_START_LIMIT_S
        started, died = _answers(dict(enumerate(self.parent_pipes)), start_limit)
        built, died_building = _answers(started, None if timeout_s is None else time.monotonic() + timeout_s)
        silent = [row for row in range(self.num_envs) if row not in built and row not in died + died_building]
        if not silent and not died + died_building:
            return
        _stop_workers(self, WORKER_STOP_WAIT_S, "after their construction timed out", answering=built)
        if silent:
            raise EnvStalledError(construction_stalled(silent, timeout_s))
        raise EOFError(f"env worker {', '.join(map(str, sorted(died + died_building)))} died building its env")


def _announcing_worker(index: int, env_fn: Callable[[], gym.Env], pipe: Connection, *rest: Any) -> None:
    """gymnasium's worker, telling the parent first when it starts building its env and then when it has built it."""

    def build() -> gym.Env:
        pipe.send("building")
        env = env_fn()
        pipe.send("built")
        return env

    _async_worker(index, build, pipe, *rest)


def _close_envs(vec: gym.vector.VectorEnv, clean: bool, timeout_s: Optional[float] = None) -> None:
    """Close the envs: async workers are asked to close theirs (a pending reset or step answered first) and killed if
    they have not ended in time: `timeout_s` after a clean run (None: no limit; a simulator's teardown deadlock),
    WORKER_STOP_WAIT_S after an interrupt or error (a worker that does not answer, a hung env, is killed then).
    Envs in this process are closed in this thread, waited for (a simulator's GL context belongs to the thread that
    made it)."""
    try:
        if not isinstance(vec, gym.vector.AsyncVectorEnv):
            vec.close()
        elif clean:
            _stop_workers(vec, timeout_s, "of being asked to close (--env-timeout)")
        else:
            _stop_workers(vec, WORKER_STOP_WAIT_S, "after the run stopped")
    except Exception as exc:  # noqa: BLE001 - closing must not hide the reason the run ended
        logger.warning("closing the envs failed: %s: %s", type(exc).__name__, exc)


def _stop_workers(vec: gym.vector.AsyncVectorEnv, wait_s: Optional[float], after: str,
                  answering: Optional[Mapping[int, Connection]] = None) -> None:
    """Send "close" to every async env worker that answers (its env's close() runs in the worker: a simulator process
    it started is stopped), then SIGKILL those still running `wait_s` later (None: no limit), warning with `after`
    (what they were given that long for). gymnasium's close(terminate=True) SIGTERMed the workers at once, so no
    env's close() ran, and then joined them without a timeout: a worker that survives SIGTERM held the run for ever.
    `answering`: the workers known to wait for a command (default: those that answer a pending reset, step or call by
    then, or all when none is pending)."""
    if vec.closed:
        return
    deadline = None if wait_s is None else time.monotonic() + wait_s
    pipes = {row: pipe for row, pipe in enumerate(vec.parent_pipes) if pipe is not None and not pipe.closed}
    if answering is None:
        owing = getattr(vec, "_state", AsyncState.DEFAULT) != AsyncState.DEFAULT
        answering = _answers(pipes, deadline)[0] if owing else pipes
    for pipe in answering.values():
        with contextlib.suppress(OSError):  # a worker that died has nothing to close
            pipe.send(("close", None))
    lingering = _still_running(vec.processes, deadline)
    if lingering:
        logger.warning("env workers did not end within %g s %s: killing those still running (env %s)", wait_s, after,
                       ", ".join(map(str, lingering)))
        for row in lingering:
            vec.processes[row].kill()
            vec.processes[row].join()
    for pipe in pipes.values():
        pipe.close()
    vec.closed = True


def _answers(pipes: Mapping[int, Connection], deadline: Optional[float]) -> Tuple[Dict[int, Connection], List[int]]:
    """The pipes whose worker answered (its answer read and dropped) by `deadline` (None: no limit), and the rows whose
    worker died instead."""
    waiting, answered, died = dict(pipes), {}, []
    while waiting:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = multiprocessing.connection.wait(list(waiting.values()), timeout)
        if not ready:
            break
        for row, pipe in [(row, pipe) for row, pipe in waiting.items() if pipe in ready]:
            del waiting[row]
            try:
                pipe.recv()
                answered[row] = pipe
            except (EOFError, OSError):
                died.append(row)
    return answered, died


def _still_running(processes: Sequence[Any], deadline: Optional[float]) -> List[int]:
    """The rows of the worker processes that have not ended by `deadline` (None: wait for each)."""
    for process in processes:
        process.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return [row for row, process in enumerate(processes) if process.is_alive()]
