"""A PolicyServer made in a process near its open-file limit is refused with an OSError naming the limit and how to
raise it: libzmq aborted the whole host (SIGABRT, exit 134, no Python error) when its context's threads or the bind's
address lookup found no descriptor, and elsewhere the refusal was a bare "Too many open files"."""

from __future__ import annotations

import subprocess
import sys

import pytest

SERVER_NEAR_THE_LIMIT = r"""
import os, resource, sys
from gr00t_client import BasePolicy
from gr00t_server import PolicyServer

class Idle(BasePolicy):
    def _get_action(self, observation, options=None):
        return {}, {}
    def reset(self, options=None):
        return {}

free = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
while len(os.listdir("/proc/self/fd")) - 1 < 64 - free:  # the host's own files use up the rest
    held.append(os.open(os.devnull, os.O_RDONLY))
try:
    PolicyServer(Idle(strict=False), port=0).start().close()
    print("served")
except OSError as exc:
    print("refused:", exc)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux descriptor limits")
@pytest.mark.parametrize("free", range(1, 9))
def test_a_server_made_near_the_descriptor_limit_is_refused_naming_the_limit(free):
    resource = pytest.importorskip("resource")
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 64:
        pytest.skip("the hard open-file limit is under 64")
    done = subprocess.run([sys.executable, "-c", SERVER_NEAR_THE_LIMIT, str(free)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert done.stdout.startswith("refused: cannot bind tcp://127.0.0.1:0: Too many open files"), done.stdout
    assert "soft limit 64" in done.stdout and "a PolicyServer takes about" in done.stdout
    assert "ulimit -n" in done.stdout
