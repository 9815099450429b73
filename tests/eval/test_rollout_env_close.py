"""A rollout that stops early (Ctrl-C or SIGTERM mid-step, a hung env) still runs the close() of its envs in
subprocess workers, as an env stopping the simulator process it started needs, and ends within seconds. Real
spawned workers, real files, a real signal."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from eval.scale_fixtures import ConstantPolicy, WalkToEnv
from gr00t_client import EmbodimentTag
from gr00t_eval.rollout import EnvStalledError, EnvWorkerDiedError, RolloutConfig, run_rollout
from gr00t_eval.rollout.envs import register_env_prefix


class MarkingWalkEnv(WalkToEnv):
    """WalkTo whose worker writes `built-PID` and, from its close(), `closed-PID` under `marks`; each step takes 0.3 s,
    the episode with seed 103 hangs at its first step, and the worker of the episode with seed 105 dies there."""

    def __init__(self, marks: str):
        super().__init__(1.0)
        self.marks = Path(marks)
        self.hangs = False
        if multiprocessing.current_process().name != "MainProcess":
            (self.marks / f"built-{os.getpid()}").touch()

    def reset(self, *, seed=None, options=None):
        self.hangs, self.dies = seed == 103, seed == 105
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if self.dies and multiprocessing.current_process().name != "MainProcess":
            os._exit(3)  # a simulator's segfault
        time.sleep(3600 if self.hangs else 0.3)
        return super().step(action)

    def close(self):
        if multiprocessing.current_process().name != "MainProcess":
            (self.marks / f"closed-{os.getpid()}").touch()


class SigintOnSecondCall(ConstantPolicy):
    """Sends this process SIGINT 0.1 s after its second action, while the envs run that step (as `kill -INT` does)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls == 2:
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
        return super()._get_action(observation, options)


def marked(marks: Path, what: str):
    return sorted(path.name.split("-")[1] for path in marks.glob(f"{what}-*"))


def rollout_config(marks: Path, **settings):
    register_env_prefix("marking", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: MarkingWalkEnv(**kwargs))
    values = dict(n_episodes=4, n_envs=2, n_action_steps=2, max_episode_steps=50, seed=0, vectorization="async",
                  env_kwargs={"marks": str(marks)})
    values.update(settings)
    return RolloutConfig("marking/walk", **values)


@pytest.mark.timeout(120)
def test_an_interrupted_rollout_closes_the_envs_in_its_workers_before_it_ends(tmp_path):
    """close(terminate=True) SIGTERMed the workers at once: no env's close() ran, and a simulator process an env had
    started was left running, orphaned."""
    with pytest.raises(KeyboardInterrupt):
        run_rollout(SigintOnSecondCall(), rollout_config(tmp_path), progress=False)
    stopped = time.monotonic()
    assert len(marked(tmp_path, "built")) == 2
    assert marked(tmp_path, "closed") == marked(tmp_path, "built")
    assert multiprocessing.active_children() == []
    assert time.monotonic() - stopped < 5


@pytest.mark.timeout(120)
def test_a_hung_env_is_killed_while_the_envs_of_the_other_workers_are_closed(tmp_path):
    started = time.monotonic()
    with pytest.raises(EnvStalledError, match=r"env 1 \(episode 1\) did not finish a step within 1 s"):
        run_rollout(ConstantPolicy(), rollout_config(tmp_path, n_episodes=2, seed=102, env_timeout_s=1.0),
                    progress=False)
    assert time.monotonic() - started < 30
    built, closed = marked(tmp_path, "built"), marked(tmp_path, "closed")
    assert len(built) == 2 and len(closed) == 1 and closed[0] in built  # the healthy row's env, not the hung one's
    assert multiprocessing.active_children() == []


@pytest.mark.timeout(120)
def test_after_a_worker_dies_mid_step_the_other_workers_env_is_closed_not_killed(tmp_path, caplog):
    """gymnasium had read the healthy worker's answer to the step before it met the dead worker's pipe: the healthy
    worker was waited for an answer it had already given, never asked to close, and killed 3 s later."""
    with pytest.raises(EnvWorkerDiedError, match=r"env 1 \(episode 1, seed 105\) exited with code 3"):
        run_rollout(ConstantPolicy(), rollout_config(tmp_path, n_episodes=2, seed=104), progress=False)
    built, closed = marked(tmp_path, "built"), marked(tmp_path, "closed")
    assert len(built) == 2 and len(closed) == 1 and closed[0] in built  # the healthy row's env, not the dead one's
    assert "killing those still running" not in caplog.text
    assert multiprocessing.active_children() == []


class InterruptingCloseWalkEnv(WalkToEnv):
    """WalkTo whose close() in the first worker to close sends the parent SIGINT (a second Ctrl-C while the run stops)
    and takes 1 s more: the parent is interrupted while it waits for its workers to close their envs."""

    def __init__(self, marks: str):
        super().__init__(1.0)
        self.marks = Path(marks)

    def close(self):
        if multiprocessing.current_process().name == "MainProcess":
            return
        try:
            os.close(os.open(self.marks / "interrupted", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:  # the other worker's: one SIGINT only
            return
        os.kill(os.getppid(), signal.SIGINT)
        time.sleep(1.0)


@pytest.mark.timeout(120)
def test_a_ctrl_c_while_the_workers_close_leaves_the_vector_env_closed_and_no_worker_running(tmp_path):
    """The interrupt escaped _close_envs (it caught Exception only) with the env not marked closed: gymnasium's
    __del__ then closed it again, and a Ctrl-C there printed 'Exception ignored in: AsyncVectorEnv.__del__' with a
    traceback. The run is stopped by a first Ctrl-C (the policy's second call), before episode 1 has ended: a stop
    while the envs of a run that scored every episode close only cuts their close short
    (test_rollout_env_teardown)."""
    from eval.scale_fixtures import SigintOnCall
    from gr00t_eval.rollout import RolloutRunner

    register_env_prefix("closeint", EmbodimentTag.NEW_EMBODIMENT,
                        lambda task, **kwargs: InterruptingCloseWalkEnv(**kwargs))
    config = RolloutConfig("closeint/walk", n_episodes=2, n_envs=2, n_action_steps=2, max_episode_steps=6, seed=0,
                           vectorization="async", env_kwargs={"marks": str(tmp_path)})
    runner = RolloutRunner(SigintOnCall(2), config, progress=False)
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    assert (tmp_path / "interrupted").is_file()
    assert runner._vec.closed
    assert multiprocessing.active_children() == []


class HungStepWalkEnv(WalkToEnv):
    """walkto whose first step never returns (a simulator that hung)."""

    def step(self, action):
        time.sleep(1000)


def test_a_forced_close_kills_hung_workers_that_ignore_sigterm():
    """Workers ignore SIGTERM (a process group's stop must not kill them mid video write), so gymnasium's forced close
    (close(terminate=True), its __del__'s) SIGTERMed a hung worker and waited for it for ever; it kills them."""
    import numpy as np

    from gr00t_eval.rollout.vector_envs import BoundedAsyncVectorEnv

    vec = BoundedAsyncVectorEnv([HungStepWalkEnv, HungStepWalkEnv], build_timeout_s=60, context="spawn")
    vec.reset(seed=0)
    vec.step_async({key: np.zeros((2, *space.shape), space.dtype) for key, space in vec.single_action_space.items()})
    time.sleep(0.5)
    closing = threading.Thread(target=vec.close, kwargs={"terminate": True}, daemon=True)
    closing.start()
    closing.join(30)
    assert not closing.is_alive(), "close(terminate=True) waited for the hung workers"
    assert not any(process.is_alive() for process in vec.processes)


HUNG_WORKERS_OF_A_KILLED_PARENT = """
import sys, time
sys.path[:0] = sys.argv[1:]
import numpy as np
from gr00t_eval.rollout.vector_envs import BoundedAsyncVectorEnv
from eval.test_rollout_env_close import HungStepWalkEnv

if __name__ == "__main__":
    vec = BoundedAsyncVectorEnv([HungStepWalkEnv, HungStepWalkEnv], build_timeout_s=60, context="spawn")
    vec.reset(seed=0)
    vec.step_async({key: np.zeros((2, *space.shape), space.dtype) for key, space in vec.single_action_space.items()})
    print(" ".join(str(process.pid) for process in vec.processes), flush=True)
    time.sleep(1000)
"""


def test_workers_whose_env_hung_end_when_the_rollout_is_killed(tmp_path):
    """They ignore the stop signals: a rollout SIGKILLed (the OOM killer, `timeout -s KILL`) left them running for
    ever, holding the caller's pipes open."""
    import subprocess
    import sys

    script = tmp_path / "killed_parent.py"
    script.write_text(HUNG_WORKERS_OF_A_KILLED_PARENT)
    tests = str(Path(__file__).resolve().parents[1])
    parent = subprocess.Popen([sys.executable, str(script), tests], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 20
        alive = workers
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in workers if _running(pid)]
        assert not alive, f"workers {alive} outlived their killed parent"
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(parent.pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


class SlowBuildWalkEnv(WalkToEnv):
    """walkto that takes 20 s to build."""

    def __init__(self, *args, **kwargs):
        time.sleep(20)
        super().__init__(*args, **kwargs)


ENVS_LEFT_OPEN = """
import os, signal, sys, threading
sys.path[:0] = sys.argv[2:]
from gr00t_eval.rollout.vector_envs import BoundedAsyncVectorEnv
from eval.test_rollout_env_close import SlowBuildWalkEnv, WalkToEnv

if __name__ == "__main__":
    if sys.argv[1] == "open":  # built, used, never closed: the script just ends
        vec = BoundedAsyncVectorEnv([WalkToEnv, WalkToEnv], build_timeout_s=60, context="spawn")
        vec.reset(seed=0)
        print("built", flush=True)
    else:  # a Ctrl-C while the workers build
        threading.Timer(3, os.kill, (os.getpid(), signal.SIGINT)).start()
        BoundedAsyncVectorEnv([SlowBuildWalkEnv, SlowBuildWalkEnv], build_timeout_s=60, context="spawn")
"""


@pytest.mark.parametrize("case", ["open", "ctrl_c_while_building"])
def test_a_script_that_leaves_its_envs_open_or_is_stopped_while_they_build_exits_with_no_worker_left(tmp_path, case):
    """The workers ignore SIGTERM: multiprocessing's exit SIGTERMs its children and waits for them, so a script that
    never closed its envs, or a Ctrl-C while they built (the half-made env held by the traceback), never exited."""
    import subprocess
    import sys

    script = tmp_path / "left_open.py"
    script.write_text(ENVS_LEFT_OPEN)
    tests = str(Path(__file__).resolve().parents[1])
    process = subprocess.Popen([sys.executable, str(script), case, tests], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the script did not exit")
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


FORGED_LINE = "ERROR:gr00t_eval.rollout.runner:FORGED LINE \x1b[31mred\x1b[0m"


class FailingCloseWalkEnv(WalkToEnv):
    """WalkTo whose close() raises a simulator's teardown error: a newline, a terminal escape, 200,000 characters."""

    def __init__(self):
        super().__init__(1.0)

    def close(self):
        raise RuntimeError("simulator teardown failed\n" + FORGED_LINE + "\n" + "x" * 200_000)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("vectorization, n_envs", [("sync", 1), ("async", 2)])
def test_an_env_close_error_is_logged_as_one_bounded_escaped_line(tmp_path, capfd, caplog, vectorization, n_envs):
    """The close error was logged raw (sync), and each async worker died printing its whole raw traceback: forged log
    lines, terminal escapes and 200,000-character lines on the console, once per env."""
    register_env_prefix("closefail", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: FailingCloseWalkEnv())
    config = RolloutConfig("closefail/walk", n_episodes=2, n_envs=n_envs, n_action_steps=2, max_episode_steps=6,
                           seed=0, vectorization=vectorization)
    result = run_rollout(ConstantPolicy(), config, progress=False)
    assert len(result.finished) == 2  # the run and its results stand
    console = capfd.readouterr().err + caplog.text
    lines = console.splitlines()
    assert not [line for line in lines if line.startswith("ERROR:gr00t_eval.rollout.runner:FORGED")]
    assert "\x1b" not in console and max(map(len, lines)) < 5000
    closing = [line for line in lines if "RuntimeError: simulator teardown failed\\nERROR:" in line]
    assert len(closing) == n_envs and all("more characters)" in line for line in closing), closing
    assert "Traceback" not in console
    assert multiprocessing.active_children() == []
