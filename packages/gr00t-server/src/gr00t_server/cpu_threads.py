"""torch's CPU threads fitted to the CPUs this process may use.

torch sizes its CPU thread pool by the machine's cores (OpenMP honours the CPU affinity, not a cgroup's CPU quota):
a server in a container limited to 2 CPUs on a 64-core node runs 32 threads that the kernel throttles in turn, and
a parallel op waits for its slowest thread. Under a 1-CPU quota on 2 cores, fitting 2 threads to 1 gave 1.35-1.55x
the iterations/s and a third of the p99 latency (more threads over a smaller quota lose more). The commands that run
a model fit the pool at start, unless OMP_NUM_THREADS (or MKL_NUM_THREADS) chooses it with a positive count (or, as
OpenMP reads OMP_NUM_THREADS, a list of them for nested levels: '4,2', whose first is the count); libgomp rejects any
other value ('0', 'abc', '4,0') and torch then sizes its pool by the cores (an odd MKL_NUM_THREADS may leave it at 1),
so such a value is ignored and the pool set to the usable CPUs.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Callable, Optional

from gr00t_client.usable_cpus import usable_cpu_count

logger = logging.getLogger(__name__)

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_THREAD_COUNT = re.compile(r"\s*0*[1-9][0-9]*\s*")  # '4'; not '0', 'abc'
_THREAD_COUNTS = re.compile(r"\s*0*[1-9][0-9]*\s*(,\s*0*[1-9][0-9]*\s*)*")  # '4', '4,2'; not '0', '4,0', 'abc'
_ignored_logged: set = set()  # (name, value) pairs already logged as ignored: once per process


def fit_torch_threads(count_cpus: Optional[Callable[[], int]] = None) -> Optional[int]:
    """Cap torch's intra-op threads at the CPUs this process may use (its affinity, its cgroup's quota); the new count,
    or None where nothing changed (the pool already fits, or an environment variable chose its size)."""
    values = {name: os.environ.get(name, "").strip() for name in THREAD_ENV_VARS}
    chosen = [name for name, value in values.items() if _is_thread_count(name, value)]
    ignored = {name: value for name, value in values.items() if value and name not in chosen}
    import torch

    changed = None
    current = torch.get_num_threads()
    if not chosen:
        usable = (count_cpus or usable_cpu_count)()
        # an ignored value may have set torch's pool itself (MKL_NUM_THREADS='abc' left it at 1 of 2 usable CPUs)
        if current > usable or (ignored and current != usable):
            torch.set_num_threads(usable)
            logger.info("torch runs %d CPU threads, not %d: this process may use %d CPUs (its affinity and cgroup CPU "
                        "quota); set OMP_NUM_THREADS to choose another count", usable, current, usable)
            changed = usable
    elif ignored:  # the ignored one may have set the pool itself (OMP_NUM_THREADS=2 beside MKL_NUM_THREADS='abc' ran 1)
        wanted = int(values[chosen[0]].split(",")[0])
        if current != wanted:
            torch.set_num_threads(wanted)
            changed = wanted
    for name, value in ignored.items():
        if (name, value) not in _ignored_logged:
            _ignored_logged.add((name, value))
            logger.warning("%s=%r is not a positive thread count: ignored, torch runs %d CPU threads (%s)", name, value,
                           torch.get_num_threads(), f"{chosen[0]} chooses them" if chosen else "the usable CPUs")
    return changed


def _is_thread_count(name: str, value: str) -> bool:
    """Whether an environment variable's value chooses a thread count: a positive integer, or for OMP_NUM_THREADS a
    list of them (one per nesting level, the first the outer count), as OpenMP reads it (MKL reads no list: '4,2'
    left torch at 1 thread)."""
    pattern = _THREAD_COUNTS if name == "OMP_NUM_THREADS" else _THREAD_COUNT
    return pattern.fullmatch(value) is not None
