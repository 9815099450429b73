"""How many CPUs this process may use: its CPU affinity (taskset, a cpuset), capped by its cgroup's CPU quota (a
container's --cpus, a Kubernetes CPU limit), not the machine's cores that os.cpu_count() reports."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpu_count(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on (os.sched_getaffinity where the system has it, else os.cpu_count()), capped by
    the cgroup CPU quota under `cgroup_root` (v2 cpu.max, or v1 cpu.cfs_quota_us) rounded up; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> Optional[float]:
    """The CPUs' worth of time the cgroup quota under `cgroup_root` allows ("200000 100000" in cpu.max: 2.0), or None
    when there is none ("max", -1) or no file says (not Linux, no cgroup file system mounted)."""
    v2 = _read(cgroup_root / "cpu.max")
    if v2 is not None:
        fields = v2.split()
        return _quota(fields[0], fields[1] if len(fields) > 1 else "100000")
    for folder in ("cpu", "cpu,cpuacct"):  # cgroup v1: the cpu controller's folder, alone or joined with cpuacct
        quota = _read(cgroup_root / folder / "cpu.cfs_quota_us")
        period = _read(cgroup_root / folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return _quota(quota, period)
    return None


def _quota(quota: str, period: str) -> Optional[float]:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max": no limit
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
