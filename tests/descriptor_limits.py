"""Child processes that run near their open-file limit, as a host whose own files used up the rest."""

from __future__ import annotations

import subprocess
import sys

import pytest

LIMIT = 64  # the soft open-file limit the child runs under

# Defines leave_free_descriptors(free) for a child script to call once its imports (which open files) are done
_PRELUDE = rf"""
import os, resource, sys

def leave_free_descriptors(free):
    resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    held = []
    while len(os.listdir("/proc/self/fd")) - 1 < {LIMIT} - free:  # the host's own files use up the rest
        held.append(os.open(os.devnull, os.O_RDONLY))
    return held
"""


def run_near_the_descriptor_limit(script: str, *args: object) -> subprocess.CompletedProcess:
    """Run `script` (which calls leave_free_descriptors) in a child Python with `args`; skipped where there are no
    Linux descriptor limits to lower."""
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux descriptor limits")
    resource = pytest.importorskip("resource")
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < LIMIT:
        pytest.skip(f"the hard open-file limit is under {LIMIT}")
    return subprocess.run([sys.executable, "-c", _PRELUDE + script, *map(str, args)], capture_output=True, text=True,
                          timeout=60)
