"""The processes left in a session started for a script under test (demo.sh), and how to stop them all."""

from __future__ import annotations

import os
import signal
import subprocess


def session_processes(session_id: int) -> list:
    """'PID ARGS' of each process left in the session (the demo's steps run in process groups of their own)."""
    listing = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True, check=True).stdout
    return [" ".join(line.split()[:1] + line.split()[2:]) for line in listing.splitlines()
            if int(line.split()[1]) == session_id]


def kill_session(session_id: int) -> None:
    for process in session_processes(session_id):
        try:
            os.kill(int(process.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass
