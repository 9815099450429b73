"""Shared test setup: tests/ importable (for the fixture factories), Ctrl-C deliverable, GPU tests skipped without
a GPU."""

import faulthandler
import os
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# A suite started in the background by a non-interactive shell (`make test &`) inherits SIGINT ignored: Python then
# installs no KeyboardInterrupt handler, in this process or in the CLIs the tests start (an ignored signal stays
# ignored across exec), so every Ctrl-C test fails (exit 0 instead of 130). Ctrl-C is what those tests send.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Likewise a suite started with `nohup` passes SIGHUP ignored to every CLI it starts, which then (rightly) leave it
# ignored: the tests of what SIGHUP does to a run or a server failed (the run finished, exit 0). They send it
# themselves; the suite takes SIGHUP as a terminal's suite does (the nohup case has its own test).
if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
# Headless rendering, whichever test imports mujoco first (a test that only checks mujoco imports would otherwise fix
# the GL backend before the Meta-World adapter sets MUJOCO_GL, and a later render test in that run fails).
os.environ.setdefault("MUJOCO_GL", "egl")


# pytest-timeout's thread method needs the GIL to dump the stacks and end the run: a thread stuck in native code
# while holding it (the suite once sat 75 minutes in a concurrent-calls test until CI's own limit, with no output)
# blocks it too. faulthandler's watchdog is a C thread that needs no GIL: it writes every thread's Python stack to
# the terminal and ends the run a little after pytest-timeout would have, so a hang costs minutes and says where.
WATCHDOG_GRACE_S = float(os.environ.get("GR00T_TEST_WATCHDOG_GRACE_S", "120"))
_watchdog_file = None
_watchdog_deadline = None  # time.monotonic() at which the running test's watchdog fires; None between tests
_watchdog_armed = False  # whether faulthandler's timer is armed by us now (not under --pdb after a failure)


def pytest_configure(config):
    global _watchdog_file
    if _watchdog_file is None:  # the terminal's stderr, before pytest's capture redirects descriptor 2 for a test
        try:
            _watchdog_file = os.fdopen(os.dup(sys.stderr.fileno()), "w")
        except (AttributeError, ValueError, OSError):  # a stderr with no descriptor (pytest.main under an IDE, a
            _watchdog_file = None                      # notebook): no watchdog, as pytest's own faulthandler does


def _test_time_limit(item) -> float:
    """The test's pytest-timeout limit (its marker, --timeout, $PYTEST_TIMEOUT, pytest.ini; pytest-timeout's order),
    or 600 s without pytest-timeout. A limit missed here (timeout=N as a keyword, $PYTEST_TIMEOUT) fell back to
    pytest.ini's, and a test allowed longer was ended by the watchdog while pytest-timeout still let it run."""
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        given = marker.kwargs.get("timeout", marker.args[0] if marker.args else None)
        if given is not None:
            return float(given)
    given = item.config.getoption("timeout", None)
    if given is None:
        given = os.environ.get("PYTEST_TIMEOUT") or None
    if given is not None:
        return float(given)
    try:
        return float(item.config.getini("timeout") or 0)
    except ValueError:  # pytest-timeout not loaded (-p no:timeout): its option is unknown
        return 600.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _watchdog_deadline
    limit = _test_time_limit(item)
    armed = limit > 0 and _watchdog_file is not None
    if armed:
        _watchdog_deadline = time.monotonic() + limit + WATCHDOG_GRACE_S
        _arm_watchdog(limit + WATCHDOG_GRACE_S)
    try:
        yield
    finally:
        if armed:
            _disarm_watchdog()
            _watchdog_deadline = None


def _arm_watchdog(seconds: float) -> None:
    global _watchdog_armed
    faulthandler.dump_traceback_later(seconds, exit=True, file=_watchdog_file)
    _watchdog_armed = True


def _disarm_watchdog() -> None:
    global _watchdog_armed
    _watchdog_armed = False  # first: a fork from another thread meanwhile re-arms nothing (_watchdog_back_after_a_fork)
    faulthandler.cancel_dump_traceback_later()


def _watchdog_off_for_a_fork() -> None:
    """Before os.fork: a child inherits an armed watchdog without its thread, and its exit (faulthandler cancels the
    watchdog at shutdown, as a test's own cancel does) then waits for that thread for ever."""
    if _watchdog_deadline is not None:
        faulthandler.cancel_dump_traceback_later()  # armed or not (pytest's own plugin may have cancelled it)


def _watchdog_back_after_a_fork() -> None:
    """In the parent after a fork: armed again only when it was armed (not under --pdb after a failure, not past a
    test's end), for what is left of the test's time."""
    if _watchdog_armed and _watchdog_deadline is not None:
        faulthandler.dump_traceback_later(max(_watchdog_deadline - time.monotonic(), 1.0), exit=True,
                                          file=_watchdog_file)


def _no_watchdog_in_a_forked_child() -> None:
    """A forked child (a test's helper process) has no watchdog of its own: it never arms one, whatever it forks."""
    global _watchdog_deadline, _watchdog_armed
    _watchdog_deadline, _watchdog_armed = None, False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_watchdog_off_for_a_fork, after_in_parent=_watchdog_back_after_a_fork,
                        after_in_child=_no_watchdog_in_a_forked_child)


@pytest.hookimpl(trylast=True)
def pytest_exception_interact(node, call, report):
    """pytest's faulthandler plugin cancels every dump_traceback_later when a test's phase fails (for pdb's sake), the
    watchdog too: a failed test whose teardown then hung holding the GIL sat there for good. Re-armed for what is left
    of the test's time, unless a debugger is wanted (--pdb)."""
    global _watchdog_armed
    _watchdog_armed = False  # cancelled by pytest's faulthandler plugin
    if _watchdog_deadline is not None and not node.config.getoption("usepdb", False):
        _arm_watchdog(max(_watchdog_deadline - time.monotonic(), 1.0))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    # GR00T_GPU_TEST_DEVICE=cpu checks the logic of the gpu tests that can run on the CPU (their module says
    # CPU_CHECKABLE = True); the rest (onnxruntime-gpu, TensorRT) still need a GPU.
    on_cpu = os.environ.get("GR00T_GPU_TEST_DEVICE") == "cpu"
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not (on_cpu and getattr(item.module, "CPU_CHECKABLE", False)):
            item.add_marker(skip_gpu)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """$HOME is tmp_path/home; the working directory is tmp_path/work (for paths given with '~')."""
    (tmp_path / "work").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "home"
