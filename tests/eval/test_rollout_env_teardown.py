"""Once every episode is scored, closing the envs is no part of the evaluation: its time is left out of eval_s, and a
stop signal while a close() hangs cuts the closing short instead of turning a complete run into an interrupted one.
Real spawned env workers, real files, a real signal."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from eval.scale_fixtures import ConstantPolicy, WalkToEnv
from gr00t_client import EmbodimentTag
from gr00t_eval.rollout import RolloutConfig, run_rollout
from gr00t_eval.rollout.envs import register_env_prefix
from gr00t_eval.shard import run_suite


class HungCloseWalkEnv(WalkToEnv):
    """walkto whose close() in a worker hangs (a simulator's teardown deadlock), having written the clock it began at
    to `marks`/closing-PID; with `interrupt`, the first worker to close sends the rollout SIGINT first (a Ctrl-C
    at a run that looks stuck)."""

    def __init__(self, marks: str, interrupt: bool = False):
        super().__init__(2.0)
        self.marks = Path(marks)
        self.interrupt = interrupt

    def close(self):
        if multiprocessing.current_process().name == "MainProcess":
            return
        (self.marks / f"closing-{os.getpid()}").write_text(repr(time.perf_counter()))
        if self.interrupt:
            try:
                os.close(os.open(self.marks / "interrupted", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os.kill(os.getppid(), signal.SIGINT)
            except FileExistsError:  # the other worker's: one SIGINT only
                pass
        time.sleep(3600)


def hung_close_config(marks: Path, interrupt: bool, env_timeout_s: float) -> RolloutConfig:
    register_env_prefix("hungclose", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: HungCloseWalkEnv(**kwargs))
    return RolloutConfig("hungclose/walk", n_episodes=2, n_envs=2, n_action_steps=2, max_episode_steps=6, seed=0,
                         vectorization="async", env_timeout_s=env_timeout_s,
                         env_kwargs={"marks": str(marks), "interrupt": interrupt})


def first_close_began(marks: Path) -> float:
    return min(float(path.read_text()) for path in marks.glob("closing-*"))


@pytest.mark.timeout(120)
def test_eval_s_ends_with_the_episodes_not_with_the_wait_for_hung_env_closes(tmp_path):
    """eval_s was taken after the envs' close: workers whose close() hung added up to --env-timeout (600 s by default)
    to eval_s and eval_ep_s, while a resumed run counts its earlier attempts from the episodes' attempt_s stamps."""
    (tmp_path / "api").mkdir()
    started = time.perf_counter()
    result = run_rollout(ConstantPolicy(), hung_close_config(tmp_path / "api", False, 2.0), progress=False)
    assert len(result.outcomes) == 2 and result.success_rate == 1.0
    assert started + result.eval_s <= first_close_began(tmp_path / "api")

    (tmp_path / "suite").mkdir()
    started = time.perf_counter()
    results = run_suite(ConstantPolicy(), "hungclose/walk", hung_close_config(tmp_path / "suite", False, 2.0))
    assert results["status"] == "complete"
    assert started + results["overall"]["eval_s"] <= first_close_began(tmp_path / "suite")
    assert multiprocessing.active_children() == []


@pytest.mark.timeout(120)
def test_a_stop_signal_while_the_envs_close_after_every_episode_is_scored_cuts_the_close_short(tmp_path, caplog):
    """Every episode scored, a Ctrl-C at a hung close() made the run 'interrupted' (exit 130, 'continue with
    --resume') with nothing left to run; now the closing is cut short and the run is complete."""
    caplog.set_level(logging.WARNING, logger="gr00t_eval")
    results = run_suite(ConstantPolicy(), "hungclose/walk", hung_close_config(tmp_path, True, 600.0))
    assert (tmp_path / "interrupted").is_file()
    assert results["status"] == "complete" and results["n_not_run"] == 0
    assert [entry["success"] for entry in results["per_episode"]] == [True, True]
    assert "the envs' close was cut short by a stop signal" in caplog.text
    assert multiprocessing.active_children() == []
    # The stop stays noted: what this process runs next does not start (a script looping over checkpoints stops)
    with pytest.raises(KeyboardInterrupt, match="a stop signal while the envs of the run before closed"):
        run_rollout(ConstantPolicy(), hung_close_config(tmp_path, False, 2.0), progress=False)
    result = run_rollout(ConstantPolicy(), hung_close_config(tmp_path, False, 2.0), progress=False)
    assert result.success_rate == 1.0  # the stop was spent on the run it stopped
    # run_suite alike: it raises, rather than returning an 'interrupted' run of nothing (a loop went on past it)
    (tmp_path / "interrupted").unlink()
    run_suite(ConstantPolicy(), "hungclose/walk", hung_close_config(tmp_path, True, 600.0))
    with pytest.raises(KeyboardInterrupt, match="a stop signal while the envs of the run before closed"):
        run_suite(ConstantPolicy(), "hungclose/walk", hung_close_config(tmp_path, False, 2.0))


@pytest.mark.timeout(120)
def test_a_stop_signal_while_a_tasks_envs_close_stops_the_suite_before_its_next_task(tmp_path, caplog):
    """The stop that cuts a complete task's teardown short is spent on that task only as far as its status goes: a
    suite with more tasks stops before the next one (interrupted, resumable), as the user who pressed Ctrl-C meant."""
    caplog.set_level(logging.WARNING, logger="gr00t_eval")
    config = hung_close_config(tmp_path, True, 600.0)
    results = run_suite(ConstantPolicy(), "hungclose/walk,hungclose/again", config)
    assert (tmp_path / "interrupted").is_file()
    assert results["status"] == "interrupted"
    assert [entry["task"] for entry in results["per_episode"]] == ["hungclose/walk", "hungclose/walk"]
    assert results["n_not_run"] == 2  # the second task's two episodes
    assert "the envs' close was cut short by a stop signal" in caplog.text
    assert multiprocessing.active_children() == []
