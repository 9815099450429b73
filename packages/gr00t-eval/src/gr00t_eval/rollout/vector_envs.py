"""The rollout's vector env: building the MultiStepWrapper'd envs (in this process or in spawned workers) and
closing them, terminating workers that linger after an interrupted run."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import warnings
from typing import Iterator, Optional, Sequence

from ..extras import require_gymnasium

require_gymnasium("closed-loop rollout")

import gymnasium as gym  # noqa: E402

from ..video import EpisodeVideoRecorder
from .config import RolloutConfig
from .envs import EnvFactory, env_factory
from .multistep import MultiStepWrapper
from .policy_io import HorizonSpec

logger = logging.getLogger(__name__)


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
    if mode == "sync" or (mode == "auto" and n_envs == 1):
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=disabled)
    # spawn: workers must not inherit the parent's ZeroMQ threads or GL contexts.
    return gym.vector.AsyncVectorEnv(fns, shared_memory=False, context="spawn", autoreset_mode=disabled)


WORKER_STOP_WAIT_S = 3.0  # how long async env workers get to end on SIGTERM before they are killed


def _close_envs(vec: gym.vector.VectorEnv, clean: bool, timeout_s: Optional[float] = None) -> None:
    """Close the envs; after an interrupt or error, terminate async workers instead of waiting on them.

    After a clean run an async worker whose env close() is still running `timeout_s` later (a simulator's teardown
    deadlock) is killed, with a warning (None: no limit). Envs in this process are closed in this thread, waited for
    (a simulator's GL context belongs to the thread that made it).
    """
    try:
        if not isinstance(vec, gym.vector.AsyncVectorEnv):
            vec.close()
        elif clean:
            _close_workers(vec, timeout_s)
        else:
            with warnings.catch_warnings(), _lingering_workers_killed(vec, WORKER_STOP_WAIT_S, "of SIGTERM"):
                # A run stopped mid-step (Ctrl-C, a dead worker) has a step pending by design: gymnasium's "Calling
                # `close` while waiting for a pending call to `step`" would follow the run's own account of the stop.
                warnings.filterwarnings("ignore", message=r".*Calling `close` while waiting for a pending call")
                vec.close(terminate=True)
    except Exception as exc:  # noqa: BLE001 - closing must not hide the reason the run ended
        logger.warning("closing the envs failed: %s: %s", type(exc).__name__, exc)


def _close_workers(vec: gym.vector.AsyncVectorEnv, timeout_s: Optional[float]) -> None:
    """gymnasium's clean close joins every worker, which runs its env.close() last, without a timeout: kill the
    workers still in it."""
    if timeout_s is None:
        vec.close()
        return
    with _lingering_workers_killed(vec, timeout_s, "of being asked to close (--env-timeout)"):
        vec.close()


@contextlib.contextmanager
def _lingering_workers_killed(vec: gym.vector.AsyncVectorEnv, wait_s: float, after: str) -> Iterator[None]:
    """SIGKILL the async env workers still running `wait_s` into the block (`after`: what they were given that long
    for, in the warning). gymnasium's close(terminate=True) sends SIGTERM and then joins them without a timeout, so a
    worker that handles SIGTERM and stays in a hung step (a simulator that cleans up on shutdown), or a stopped one
    (SIGSTOP), held the run for ever after --env-timeout, without its stall message or results; its clean close() waits
    as long for an env whose close() hangs. Process.kill signals only a worker not yet reaped."""
    processes = list(getattr(vec, "processes", []))
    closed = threading.Event()

    def kill_lingering() -> None:
        if not closed.wait(wait_s):
            logger.warning("env workers did not end within %g s %s: killing those still running", wait_s, after)
            for process in processes:
                process.kill()

    watchdog = threading.Thread(target=kill_lingering, name="env-worker-watchdog", daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        closed.set()
        watchdog.join()
