"""Stop signals at the edges of a gr00t-eval command: during its first imports, after its results are reported, and
in the few instants where a half-made thing (an episode's files, a MuJoCo renderer) could be left behind.

Each child process sends the signal to itself at the exact point under test (an import hook, an exit hook, a wrapped
library call), so the window is hit every time rather than by luck.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

EVAL_MAIN = "import sys\nfrom gr00t_eval.cli import main\nsys.exit(main())\n"  # what the console script runs

# Registered before gr00t_eval is imported, so it runs last of the exit hooks: the command has returned and the
# interpreter is exiting (with torch or mujoco loaded that took seconds, and a signal in it ended the process).
LATE_STOP_SIGNALS = """
import atexit, os, signal, time

def _late_stop_signals():
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        os.kill(os.getpid(), signum)
    time.sleep(0.2)

atexit.register(_late_stop_signals)
"""


def stop_on_import(module: str, signum: int) -> str:
    """A prelude that sends `signum` to the process when `module` is first imported."""
    return textwrap.dedent(f"""
        import os, sys

        class _StopOnImport:
            def find_spec(self, name, path=None, target=None):
                if name == {module!r}:
                    sys.meta_path.remove(self)
                    os.kill(os.getpid(), {int(signum)})
                return None

        sys.meta_path.insert(0, _StopOnImport())
    """)


def run_program(prelude: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -c PRELUDE + the console script` with ARGS (PYTHONPATH and the rest of the environment inherited)."""
    return subprocess.run([sys.executable, "-c", prelude + EVAL_MAIN, *args], capture_output=True, text=True,
                          timeout=timeout)


def test_stop_signals_after_a_command_has_reported_leave_its_exit_status_alone():
    """SIGHUP, Ctrl-C or SIGTERM while the interpreter exits ended a finished run with 129/130/143 and no word."""
    result = run_program(LATE_STOP_SIGNALS, "suites")
    assert result.returncode == 0, result.stderr
    assert "metaworld-mt10" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_during_the_first_imports_is_one_line_and_exit_130(signum):
    """Ctrl-C while numpy and ZeroMQ were imported (before main) printed a KeyboardInterrupt traceback; SIGTERM killed
    the command silently with 143."""
    result = run_program(stop_on_import("gr00t_client", signum), "suites")
    assert result.returncode == 130, result.stderr
    assert result.stderr == "gr00t-eval suites: interrupted\n"


def test_main_called_in_a_program_puts_its_signal_handlers_back():
    """Only the program ignores stop signals once its command has ended; a caller of main(argv) keeps its own."""
    from gr00t_eval.cli import main

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    assert main(["suites"]) == 0
    assert {signum: signal.getsignal(signum) for signum in before} == before
