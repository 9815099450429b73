"""Preludes for child processes that send themselves a stop signal at an exact point (shared by the gr00t-eval and
gr00t-server stop-signal tests), so a window of a few instants is hit every time rather than by luck; and
`signal_when`, which stops a child from the test's side."""

from __future__ import annotations

import subprocess
import textwrap
import time
from typing import Callable

# Registered before the package under test is imported, so it runs last of the exit hooks: the command has returned
# and the interpreter is exiting (with torch or mujoco loaded that took seconds, and a signal in it ended the process).
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


def stop_at_call(function: str, text: str, signum: int, after: bool = True) -> str:
    """A prelude that sends `signum` to the process the first time `function` ('os:replace', 'shutil:rmtree',
    'builtins:print', 'logging:Logger.warning') is called with an argument whose str() holds `text`: once the call has
    returned (`after`), or just before it runs."""
    module, _, path = function.partition(":")
    return textwrap.dedent(f"""
        import importlib, os

        def _stopping(real):
            def call(*args, **kwargs):
                hit = not call.done and any({text!r} in str(arg) for arg in args)
                call.done = call.done or hit
                if hit and not {after!r}:
                    os.kill(os.getpid(), {int(signum)})
                result = real(*args, **kwargs)
                if hit and {after!r}:
                    os.kill(os.getpid(), {int(signum)})
                return result
            call.done = False
            return call

        _owner = importlib.import_module({module!r})
        for _name in {path!r}.split(".")[:-1]:
            _owner = getattr(_owner, _name)
        setattr(_owner, {path!r}.split(".")[-1], _stopping(getattr(_owner, {path!r}.split(".")[-1])))
    """)


def signal_when(proc: subprocess.Popen, signum: int, ready: Callable[[], bool] = lambda: True, poll_s: float = 0.1,
                wait_s: float = 120.0) -> str:
    """Send `signum` to `proc` once `ready()` holds (or it has exited, or `wait_s` passed); its output once it ends,
    within 60 s (killed otherwise, the timeout raised)."""
    try:
        deadline = time.monotonic() + wait_s
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(poll_s)
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return output
