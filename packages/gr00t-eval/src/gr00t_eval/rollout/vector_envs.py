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
                            render_below=render_below)


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


def _close_envs(vec: gym.vector.VectorEnv, clean: bool) -> None:
    """Close the envs; after an interrupt or error, terminate async workers instead of waiting on them."""
    try:
        if clean or not isinstance(vec, gym.vector.AsyncVectorEnv):
            vec.close()
        else:
            with warnings.catch_warnings(), _lingering_workers_killed(vec):
                # A run stopped mid-step (Ctrl-C, a dead worker) has a step pending by design: gymnasium's "Calling
                # `close` while waiting for a pending call to `step`" would follow the run's own account of the stop.
                warnings.filterwarnings("ignore", message=r".*Calling `close` while waiting for a pending call")
                vec.close(terminate=True)
    except Exception as exc:  # noqa: BLE001 - closing must not hide the reason the run ended
        logger.warning("closing the envs failed: %s: %s", type(exc).__name__, exc)


@contextlib.contextmanager
def _lingering_workers_killed(vec: gym.vector.AsyncVectorEnv) -> Iterator[None]:
    """SIGKILL the async env workers still running WORKER_STOP_WAIT_S into the block: gymnasium's close(terminate=True)
    sends SIGTERM and then joins them without a timeout, so a worker that handles SIGTERM and stays in a hung step (a
    simulator that cleans up on shutdown), or a stopped one (SIGSTOP), held the run for ever after --env-timeout,
    without its stall message or results. Process.kill signals only a worker not yet reaped."""
    processes = list(getattr(vec, "processes", []))
    closed = threading.Event()

    def kill_lingering() -> None:
        if not closed.wait(WORKER_STOP_WAIT_S):
            logger.warning("env workers did not end within %.0f s of SIGTERM: killing those still running",
                           WORKER_STOP_WAIT_S)
            for process in processes:
                process.kill()

    watchdog = threading.Thread(target=kill_lingering, name="env-worker-watchdog", daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        closed.set()
        watchdog.join()
