"""Fixtures shared by the gr00t-eval tests."""

import logging
import os
import subprocess
import sys

import pytest


@pytest.fixture(autouse=True)
def no_stop_left_noted():
    """A stop signal that cut a complete run's env teardown short stays noted, and the next run of the process raises
    KeyboardInterrupt at its start (gr00t_eval.run_stop): one a test left noted would abort the whole test session
    at the next test's rollout. A test that makes one spends it (or checks it); leaving one fails that test."""
    yield
    from gr00t_eval.run_stop import take_stop_while_closing

    assert not take_stop_while_closing(), "the test left a stop signal noted from a cut-short env teardown"


@pytest.fixture
def ray_progress(caplog):
    """A callable giving the Ray runner's progress lines logged so far, joined by newlines (they are log records at
    INFO, which gr00t-eval's CLI shows on stderr; under pytest its logging set-up leaves pytest's handlers alone)."""
    names = ("gr00t_eval.ray_runner", "gr00t_eval.ray_connect")
    for name in names:
        caplog.set_level(logging.INFO, logger=name)
    return lambda: "\n".join(r.getMessage() for r in caplog.records if r.name in names)


@pytest.fixture
def live_process():
    """A process that runs until the test ends: the holder of a claim, or the writer of a file, that must be respected."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture(scope="session")
def recorded_reach(tmp_path_factory):
    """Two Meta-World reach-v3 episodes recorded by `gr00t-eval record` at 32x32 with seeds 40 and 41 (far from a
    rollout's default base seeds, so only the recorded seeds make a replay of them succeed). Read-only: copy it to
    change it."""
    pytest.importorskip("metaworld")
    os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering
    from gr00t_eval.cli import main

    root = tmp_path_factory.mktemp("record") / "reach"
    assert main(["record", "--env-name", "metaworld/reach-v3", "--episodes", "2", "--output", str(root),
                 "--image-size", "32", "--seed", "40"]) == 0
    return root
