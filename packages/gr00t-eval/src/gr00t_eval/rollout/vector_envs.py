"""The rollout's vector env: building the MultiStepWrapper'd envs (in this process or in spawned workers) and
closing them, killing workers that have not built or closed their envs in time."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
import weakref
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from gr00t_client.cli_signals import interrupting_signals, signals_handled_by
from gr00t_client.peer_text import shown_text
from gr00t_client.process_limits import shown_limits

from ..extras import require_gymnasium
from ..run_stop import note_stop_while_closing

require_gymnasium("closed-loop rollout")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.vector.async_vector_env import _async_worker  # noqa: E402
from gymnasium.vector.utils import batch_space, create_empty_array  # noqa: E402

from ..metrics import ERROR_REASON_CHARS
from ..video import EpisodeVideoRecorder
from .config import RolloutConfig, env_error_text, envs_in_process
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
    return BoundedAsyncVectorEnv(fns, build_timeout_s=config.env_timeout_s, context="spawn", autoreset_mode=disabled)


def runs_in_process(config: RolloutConfig) -> bool:
    """Whether the envs run in this process: vectorization "sync", or "auto" with n_envs 1. Decided by the n_envs asked
    for, not the rows a run needs: a resume of one episode keeps its --env-timeout and its crash isolation (an n_envs
    0, auto, is given as vectorization "async" once resolved: suites.resolve_auto_n_envs)."""
    return envs_in_process(config.vectorization, config.n_envs)


class SharedMemoryUnavailableError(RuntimeError):
    """The env worker processes could not be started: /dev/shm, which holds their queue's semaphores, is full,
    read-only, missing or not writable for this user (a container's 64 MB default, --ipc=none, a sandbox)."""


_SHM_STATES = {errno.ENOSPC: "is full", errno.EROFS: "is read-only", errno.EACCES: "is not writable for this user",
               errno.EPERM: "is not writable for this user", errno.ENOENT: "is missing"}


def shared_memory_problem(exc: OSError) -> str:
    """What a semaphore that could not be made in /dev/shm (`exc`) means for a run, and the remedies."""
    state = _SHM_STATES.get(exc.errno, "cannot hold them")
    return (f"/dev/shm {state} ({exc.strerror or exc}): the env worker processes need POSIX semaphores there. Give "
            "the container a larger or writable /dev/shm (docker run --shm-size=1g; in Kubernetes an emptyDir volume "
            "with medium: Memory mounted at /dev/shm), or run the envs in this process (--n-envs 1 with "
            "--vectorization auto, or --vectorization sync)")


class EnvWorkersUnstartableError(RuntimeError):
    """The env worker processes could not be started: this process ran out of open files or processes (its ulimit),
    or the system did."""


# errno -> (what ran out, the resource limit to name (None: a system-wide one), its words, how to raise it)
_LIMITS_RUN_OUT = {
    errno.EMFILE: ("this process has used up its file descriptors", "RLIMIT_NOFILE", "open-file limit", "ulimit -n"),
    errno.ENFILE: ("the system's open-file table is full", None, None, "sysctl fs.file-max"),
    errno.EAGAIN: ("no more processes could be started for this user or container", "RLIMIT_NPROC",
                   "process limit", "ulimit -u (or the container's pids limit)"),
}


def workers_unstartable_problem(exc: OSError) -> str:
    """What a worker start that failed for want of descriptors or processes (`exc`) means, the limit and remedies."""
    what, limit_name, limit_words, remedy = _LIMITS_RUN_OUT[exc.errno]
    shown = shown_limits(limit_name) if limit_name else None
    limit = f" ({limit_words} {shown[0]}, hard limit {shown[1]})" if shown is not None else ""
    return (f"the env worker processes could not be started: {exc.strerror or exc}: {what}{limit}; raise it with "
            f"{remedy}, or use fewer --n-envs (each worker holds several descriptors and a process)")


class BoundedAsyncVectorEnv(gym.vector.AsyncVectorEnv):
    """gymnasium's AsyncVectorEnv whose workers get at most `build_timeout_s` (None: no limit) to build their envs:
    its own check waits on each worker without a timeout, and it builds one env in this process for the spaces, so a
    constructor that hung held the run for ever. The spaces are read from worker 0's env instead."""

    def __init__(self, env_fns: Sequence[Any], build_timeout_s: Optional[float], **kwargs: Any) -> None:
        self.build_timeout_s = build_timeout_s
        try:
            # shared memory would be laid out for the stand-in's spaces before the workers report theirs
            super().__init__([_BuiltInWorker(fn) for fn in env_fns], worker=_announcing_worker, shared_memory=False,
                             **kwargs)
        except OSError as exc:
            _kill_processes(getattr(self, "processes", []))
            if exc.errno in _LIMITS_RUN_OUT:  # before any worker too: the queue's pipe takes descriptors
                raise EnvWorkersUnstartableError(workers_unstartable_problem(exc)) from exc
            # before any worker was made, only the workers' queue (its POSIX semaphores, in /dev/shm) writes a file;
            # an error there names none, and read as the output folder's full or read-only disk
            if not getattr(self, "processes", None) and exc.filename is None:
                raise SharedMemoryUnavailableError(shared_memory_problem(exc)) from exc
            raise
        except BaseException:  # a Ctrl-C while they build: the workers ignore SIGTERM, and Python's exit waited for ever
            _kill_processes(getattr(self, "processes", []))
            raise
        # An env left open at exit (a script that never closes it): multiprocessing's exit SIGTERMs its children, which
        # ignore it, and waits for them; this runs first (a finalizer registered after multiprocessing's exit hook).
        weakref.finalize(self, _kill_processes, self.processes)

    def close_extras(self, timeout: Optional[float] = None, terminate: bool = False) -> None:
        """gymnasium's close; a forced one (close(terminate=True), as its __del__ does) kills the workers: they ignore
        SIGTERM (_announcing_worker), and one that was hung would have been waited for ever."""
        if terminate:
            _kill_processes(self.processes)
        super().close_extras(timeout=timeout, terminate=terminate)

    def _check_spaces(self) -> None:
        self._adopt_spaces(self._wait_until_built(self.build_timeout_s))
        super()._check_spaces()

    def _wait_until_built(self, timeout_s: Optional[float]) -> "EnvSpaces":
        """Worker 0's env's spaces, once every worker has built its env (each within `timeout_s` of starting)."""
        # The clock starts once a worker is up: starting Python and its imports take seconds on a busy machine.
        start_limit = None if timeout_s is None else time.monotonic() + WORKER_START_LIMIT_S
        started, died = _answers(dict(enumerate(self.parent_pipes)), start_limit)
        started_pipes = {row: self.parent_pipes[row] for row in started}
        built, died_building = _answers(started_pipes, None if timeout_s is None else time.monotonic() + timeout_s)
        silent = [row for row in range(self.num_envs) if row not in built and row not in died + died_building]
        failed = [answer.error for answer in built.values() if isinstance(answer, _BuildFailed)]
        if not silent and not died + died_building and not failed:
            return built[0]
        _stop_workers(self, WORKER_STOP_WAIT_S, "after their construction failed or timed out")
        if failed:  # the env's own error (an --env-kwarg it does not take), as a run of one env in this process gives
            raise failed[0]
        if silent:
            raise EnvStalledError(construction_stalled(silent, timeout_s))
        raise EOFError(f"env worker {', '.join(map(str, sorted(died + died_building)))} died building its env")

    def _adopt_spaces(self, spaces: "EnvSpaces") -> None:
        """What gymnasium's __init__ took from its env built in this process, from `spaces` (worker 0's env's)."""
        self.metadata = {**spaces.metadata, "autoreset_mode": self.autoreset_mode}
        self.render_mode = spaces.render_mode
        self.single_action_space = spaces.action_space
        self.action_space = batch_space(spaces.action_space, self.num_envs)
        self.single_observation_space = spaces.observation_space
        self.observation_space = batch_space(spaces.observation_space, self.num_envs)
        self.observations = create_empty_array(spaces.observation_space, n=self.num_envs, fn=np.zeros)


@dataclasses.dataclass(frozen=True)
class EnvSpaces:
    """What gymnasium's AsyncVectorEnv reads from an env it builds in this process, sent by a worker instead."""

    metadata: Dict[str, Any]
    render_mode: Optional[str]
    action_space: gym.Space
    observation_space: gym.Space

    @classmethod
    def of(cls, env: gym.Env) -> "EnvSpaces":
        return cls(dict(env.metadata), env.render_mode, env.action_space, env.observation_space)


class _SpacesPending(gym.Env):
    """The stand-in gymnasium builds in this process: placeholder spaces, replaced by worker 0's (_adopt_spaces)."""

    def __init__(self) -> None:
        self.metadata = {}
        self.action_space = self.observation_space = gym.spaces.Box(0.0, 1.0, (1,))


class _BuiltInWorker:
    """An env fn that builds its env only in a worker process; called here (gymnasium's env_fns[0]() for the spaces,
    with no time limit) it gives a _SpacesPending. Pickling it for a worker drops that."""

    def __init__(self, env_fn: Callable[[], gym.Env], in_worker: bool = False, log_level: Optional[int] = None) -> None:
        self.env_fn, self.in_worker, self.log_level = env_fn, in_worker, log_level

    def __call__(self) -> gym.Env:
        if not self.in_worker:
            return _SpacesPending()
        if self.log_level is not None and not logging.getLogger().handlers:  # a spawned worker logs as its parent
            logging.basicConfig(level=self.log_level, format="%(levelname)s:%(name)s:%(message)s")
        return self.env_fn()

    def __reduce__(self) -> Tuple[Any, ...]:
        # the parent's level travels with it: a spawned worker's logging is unconfigured (its env's tracebacks, logged
        # at DEBUG, were lost under --log-level DEBUG)
        return _BuiltInWorker, (self.env_fn, True, logging.getLogger().getEffectiveLevel())


@dataclasses.dataclass(frozen=True)
class _BuildFailed:
    """A worker's answer when its env's constructor raised: the error, or its text where it cannot be pickled."""

    error: BaseException

    @classmethod
    def of(cls, exc: Exception) -> "_BuildFailed":
        try:
            pickle.dumps(exc)
            return cls(exc)
        except Exception:  # noqa: BLE001 - an exception holding an unpicklable value
            return cls(RuntimeError(f"{type(exc).__name__}: {exc}"))


def _announcing_worker(index: int, env_fn: Callable[[], gym.Env], pipe: Connection, *rest: Any) -> None:
    """gymnasium's worker, telling the parent first when it starts building its env and then when it has built it
    (with its EnvSpaces). It ignores Ctrl-C, SIGTERM and SIGHUP: a terminal's (a closed one's, `kill -- -PGID`'s)
    reach the whole process group, and a worker that died of one mid write_video lost the episode the parent was
    saving; the parent closes its workers when it stops, and kills those that do not end in time."""
    for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)
    _exit_with_the_parent()

    def build() -> gym.Env:
        pipe.send("building")
        try:
            env = env_fn()
        except Exception as exc:  # the parent raises it: the worker's death alone read as a crashed simulator
            pipe.send(_BuildFailed.of(exc))
            reported.append(True)
            raise
        pipe.send(EnvSpaces.of(env))
        built.append(True)
        return env

    built: List[bool] = []
    reported: List[bool] = []
    try:
        _async_worker(index, build, pipe, *rest)
    except Exception as exc:  # noqa: BLE001 - past the build, gymnasium's `finally` closing the env raised
        if reported:  # the parent's one line names it: raised here, each worker printed its raw traceback before it
            logger.debug("building env %d failed", index, exc_info=exc)
            return
        if not built:
            raise
        # unhandled, it ended this worker printing its raw traceback: unbounded, unescaped, once per env
        _log_close_failure(f"closing env {index} failed", exc)


def _log_close_failure(what: str, exc: BaseException) -> None:
    """`what` and an env's close() error as one line, bounded and escaped as an episode's error is (an env's words
    must neither flood the log nor forge a line of it); its traceback at DEBUG."""
    logger.warning("%s: %s", what, shown_text(env_error_text(exc), ERROR_REASON_CHARS))
    logger.debug("%s", what, exc_info=exc)


def _kill_processes(processes: Sequence[Any], wait_s: Optional[float] = 10) -> None:
    """Kill the worker processes still running and wait for them (at most `wait_s` each; None: no limit): they ignore
    the stop signals. One never started is skipped: gymnasium lists each worker before starting it, and joining the
    one whose start failed raised "can only join a started process" in place of that failure."""
    started = [process for process in processes if process.pid is not None]
    for process in started:
        if process.is_alive():
            process.kill()
    for process in started:
        process.join(wait_s)


def _exit_with_the_parent() -> None:
    """End this worker when the process that started it is gone (SIGKILLed, say): a worker whose env hung, and that
    ignores the stop signals, was left running for ever, holding the caller's pipes open."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class _ClosingCutShort(Exception):
    """A stop signal came while the envs of a run whose every episode was scored were closing."""


def _cut_closing_short(signum: int, frame: Any) -> None:
    note_stop_while_closing(signum)  # the run is complete; a suite's next task or a batch's next job is not started
    raise _ClosingCutShort(f"signal {signum}")


def _close_envs(vec: gym.vector.VectorEnv, clean: bool, timeout_s: Optional[float] = None) -> None:
    """Close the envs: async workers are asked to close theirs (a pending reset or step answered first) and killed if
    they have not ended in time: `timeout_s` after a clean run (None: no limit; a simulator's teardown deadlock),
    WORKER_STOP_WAIT_S after an interrupt or error (a worker that does not answer, a hung env, is killed then).
    Envs in this process are closed in this thread, waited for (a simulator's GL context belongs to the thread that
    made it). After a clean run a Ctrl-C, SIGTERM or SIGHUP cuts the closing short (the workers are killed) and is
    spent: every episode is scored, so it must not make the run an interrupted one."""
    try:
        # a stop at a close() that looks stuck: the run is complete, only the teardown is left to cut short
        with signals_handled_by(_cut_closing_short, (signal.SIGINT, *interrupting_signals())) if clean \
                else contextlib.nullcontext():
            if not isinstance(vec, gym.vector.AsyncVectorEnv):
                vec.close()
            elif clean:
                _stop_workers(vec, timeout_s, "of being asked to close (--env-timeout)")
            else:
                _stop_workers(vec, WORKER_STOP_WAIT_S, "after the run stopped")
    except _ClosingCutShort:
        logger.warning("the envs' close was cut short by a stop signal (every episode was already scored): env "
                       "workers still closing were killed")
    except Exception as exc:  # noqa: BLE001 - closing must not hide the reason the run ended
        _log_close_failure("closing the envs failed", exc)
    finally:
        if isinstance(vec, gym.vector.AsyncVectorEnv) and not vec.closed:
            _kill_workers(vec)


def _kill_workers(vec: gym.vector.AsyncVectorEnv) -> None:
    """Kill the async env workers still running and mark `vec` closed, when closing stopped part-way (a second Ctrl-C,
    an error): gymnasium's __del__ closed it again, and one interrupted there printed 'Exception ignored' and a
    traceback."""
    _kill_processes(vec.processes, None)
    for pipe in vec.parent_pipes:
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    vec.closed = True


def _stop_workers(vec: gym.vector.AsyncVectorEnv, wait_s: Optional[float], after: str) -> None:
    """Send "close" to every live async env worker (its env's close() runs in the worker: a simulator process it
    started is stopped), then SIGKILL those still running `wait_s` later (None: no limit), warning with `after`
    (what they were given that long for). gymnasium's close(terminate=True) SIGTERMed the workers at once, so no
    env's close() ran, and then joined them without a timeout: a worker that survives SIGTERM held the run for ever.
    A worker still in a reset or step reads "close" once it has sent its answer, which is read and dropped here."""
    if vec.closed:
        return
    deadline = None if wait_s is None else time.monotonic() + wait_s
    pipes = [pipe for pipe in vec.parent_pipes if pipe is not None and not pipe.closed]
    for pipe in pipes:
        with contextlib.suppress(OSError):  # a worker that died has nothing to close
            pipe.send(("close", None))
    lingering = _drained_until_ended(vec.processes, pipes, deadline)
    if lingering:
        logger.warning("env workers did not end within %g s %s: killing those still running (env %s)", wait_s, after,
                       ", ".join(map(str, lingering)))
        for row in lingering:
            vec.processes[row].kill()
    for process in vec.processes:
        process.join()
    for pipe in pipes:
        pipe.close()
    vec.closed = True


def _answers(pipes: Mapping[int, Connection], deadline: Optional[float]) -> Tuple[Dict[int, Any], List[int]]:
    """The answers of the workers (by row) that answered by `deadline` (None: no limit), and the rows whose worker died
    instead."""
    waiting, answered, died = dict(pipes), {}, []
    while waiting:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = multiprocessing.connection.wait(list(waiting.values()), timeout)
        if not ready:
            break
        for row, pipe in [(row, pipe) for row, pipe in waiting.items() if pipe in ready]:
            del waiting[row]
            try:
                answered[row] = pipe.recv()
            except (EOFError, OSError):
                died.append(row)
    return answered, died


def _drained_until_ended(processes: Sequence[Any], pipes: Sequence[Connection], deadline: Optional[float]) -> List[int]:
    """Read and drop what the workers send (an answer a worker may be blocked sending) until every worker process has
    ended or `deadline` (None: no limit) has passed; the rows of those still running."""
    readable = list(pipes)
    while True:
        running = [process.sentinel for process in processes if process.is_alive()]
        timeout = None if deadline is None else deadline - time.monotonic()
        if not running or (timeout is not None and timeout <= 0):
            break
        for pipe in multiprocessing.connection.wait(readable + running, timeout):
            if pipe in readable:
                try:
                    pipe.recv()
                except (EOFError, OSError):
                    readable.remove(pipe)
    return [row for row, process in enumerate(processes) if process.is_alive()]
