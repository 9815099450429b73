"""The suite's hang watchdog (tests/conftest.py): a test stuck in native code while holding the GIL blocks
pytest-timeout's thread method (its timer thread needs the GIL), and CI once sat at its 90-minute limit with no
output. faulthandler's watchdog needs no GIL: it prints the stuck test's stack and ends the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

STUCK_TEST = '''
import ctypes

import pytest


@pytest.mark.timeout(1)
def test_stuck_holding_the_gil():
    ctypes.PyDLL(None).sleep(120)  # a PyDLL call keeps the GIL: the thread method's timer cannot run


def test_after_the_stuck_one():
    pass
'''

QUICK_TEST = '''
import time

import pytest


@pytest.mark.timeout(1)
def test_quick():
    pass


def test_outlives_an_earlier_test_limit():
    time.sleep(4)  # the watchdog armed for the 1 s test above was cancelled when it ended
'''

FAILED_THEN_STUCK_TEST = '''
import ctypes

import pytest


@pytest.fixture
def stuck_teardown():
    yield
    ctypes.PyDLL(None).sleep(120)  # holds the GIL, after the test failed


@pytest.mark.timeout(1)
def test_fails_then_its_teardown_sticks(stuck_teardown):
    assert False
'''


def _run(tmp_path, source):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\ntimeout = 600\ntimeout_method = thread\n")
    (tmp_path / "test_case.py").write_text(source)
    env = dict(os.environ, GR00T_TEST_WATCHDOG_GRACE_S="2")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_case.py"],
                            capture_output=True, text=True, timeout=100, cwd=tmp_path, env=env)
    return result, time.monotonic() - started


def test_a_test_stuck_holding_the_gil_ends_the_run_naming_its_stack(tmp_path):
    result, took = _run(tmp_path, STUCK_TEST)
    assert result.returncode != 0
    assert took < 60, f"the run waited {took:.0f} s: the watchdog did not end it"
    assert "Timeout (" in result.stderr
    assert "in test_stuck_holding_the_gil" in result.stderr


def test_the_watchdog_is_cancelled_when_a_test_ends(tmp_path):
    result, _ = _run(tmp_path, QUICK_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout and "Timeout (" not in result.stderr


KEYWORD_LIMIT_TEST = '''
import ctypes

import pytest


@pytest.mark.timeout(timeout=1)
def test_stuck_with_a_keyword_limit():
    ctypes.PyDLL(None).sleep(120)
'''


def test_a_limit_given_by_keyword_arms_the_watchdog_at_that_limit(tmp_path):
    result, took = _run(tmp_path, KEYWORD_LIMIT_TEST)
    assert result.returncode != 0 and took < 60, f"exit {result.returncode} after {took:.0f} s"
    assert "in test_stuck_with_a_keyword_limit" in result.stderr


def test_a_stderr_without_a_descriptor_runs_the_tests_without_a_watchdog(tmp_path):
    """pytest.main() under an IDE or a notebook, whose sys.stderr is no file: the suite ran nothing (INTERNALERROR)."""
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_case.py").write_text("def test_runs():\n    pass\n")
    script = ("import io, sys, pytest\nsys.stderr = io.StringIO()\n"
              "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'test_case.py']))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_a_failed_test_whose_teardown_sticks_still_ends_the_run(tmp_path):
    """pytest's faulthandler plugin cancels dump_traceback_later when a test fails (pytest_exception_interact), and
    with it the watchdog: a teardown then stuck holding the GIL sat there for good."""
    result, took = _run(tmp_path, FAILED_THEN_STUCK_TEST)
    assert result.returncode != 0
    assert took < 60, f"the run waited {took:.0f} s: the watchdog did not end it"
    assert "Timeout (" in result.stderr and "in stuck_teardown" in result.stderr, result.stderr


FORKING_TEST = '''
import faulthandler
import os
import time


def test_a_forked_child_exits():
    pid = os.fork()
    if pid == 0:  # what the child's interpreter does at exit: cancel the watchdog (its thread is the parent's)
        faulthandler.cancel_dump_traceback_later()
        os._exit(0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child hung at exit waiting for the parent's watchdog thread")
'''


def test_a_forked_child_does_not_inherit_an_armed_watchdog(tmp_path):
    """A child forked while the watchdog was armed waited for ever at its exit (faulthandler cancels it then, and
    its thread exists only in the parent): the watchdog is off across each fork and re-armed in the parent."""
    result, _ = _run(tmp_path, FORKING_TEST)
    assert result.returncode == 0, result.stdout + result.stderr


HELPER_THAT_FORKS_LATER_TEST = '''
import os
import time

import pytest

HELPER = []


@pytest.mark.timeout(1)
def test_starts_a_helper_that_outlives_it():
    pid = os.fork()
    if pid == 0:  # a helper process (a server child, say): forks a worker after its parent test's watchdog deadline
        time.sleep(4)
        worker = os.fork()
        if worker == 0:
            os._exit(0)
        os.waitpid(worker, 0)
        time.sleep(2)
        os._exit(0)
    HELPER.append(pid)


def test_the_helper_finishes():
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(HELPER[0], os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, "the helper was ended by a watchdog it never armed"
            return
        time.sleep(0.05)
    raise AssertionError("the helper did not finish")
'''


def test_a_forked_helper_that_forks_again_arms_no_watchdog_of_its_own(tmp_path):
    """The helper inherited the parent test's deadline: its own fork re-armed the watchdog in it, past that deadline,
    and ended it a second later with a stack dump."""
    result, _ = _run(tmp_path, HELPER_THAT_FORKS_LATER_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
