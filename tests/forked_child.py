"""Run a function in a child made by os.fork, as a fork worker pool does, with a deadline for a hang."""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Callable, Optional, Tuple


def in_forked_child(work: Callable[[], Any], timeout_s: float = 20.0) -> Tuple[Optional[int], str]:
    """(exit code, str of what work() returned or the exception it raised); exit code None when the child had not
    finished within timeout_s and was killed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.write(write_end, str(work()).encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(write_end, f"{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), os.read(read_end, 65536).decode()
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None, f"killed: the child had not finished within {timeout_s:g} s"
    finally:
        os.close(read_end)
