"""A PolicyServer made in a process near its open-file limit is refused with an OSError naming the limit and how to
raise it: libzmq aborted the whole host (SIGABRT, exit 134, no Python error) when its context's threads or the bind's
address lookup found no descriptor, and elsewhere the refusal was a bare "Too many open files"."""

from __future__ import annotations

import pytest
from descriptor_limits import run_near_the_descriptor_limit

SERVER_NEAR_THE_LIMIT = r"""
from gr00t_client import BasePolicy
from gr00t_server import PolicyServer

class Idle(BasePolicy):
    def _get_action(self, observation, options=None):
        return {}, {}
    def reset(self, options=None):
        return {}

held = leave_free_descriptors(int(sys.argv[1]))
try:
    PolicyServer(Idle(strict=False), port=0).start().close()
    print("served")
except OSError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("free", range(1, 9))
def test_a_server_made_near_the_descriptor_limit_is_refused_naming_the_limit(free):
    done = run_near_the_descriptor_limit(SERVER_NEAR_THE_LIMIT, free)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert done.stdout.startswith("refused: cannot bind tcp://127.0.0.1:0: Too many open files"), done.stdout
    assert "soft limit 64" in done.stdout and "a PolicyServer takes about" in done.stdout
    assert "ulimit -n" in done.stdout
