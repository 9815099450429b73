"""Fixtures shared by the gr00t-eval tests."""

import subprocess
import sys

import pytest


@pytest.fixture
def live_process():
    """A process that runs until the test ends: the holder of a claim, or the writer of a file, that must be respected."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()
