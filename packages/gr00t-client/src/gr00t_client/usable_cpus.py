"""How many CPUs this process may use: its CPU affinity (taskset, a cpuset), capped by its cgroup's CPU quota (a
container's --cpus, a Kubernetes CPU limit), not the machine's cores that os.cpu_count() reports."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable_cpu_count(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The CPUs this process may run on (os.sched_getaffinity where the system has it, else os.cpu_count()), capped by
    the CPU quota of its cgroup and those above it (cgroup_cpu_quota) rounded up; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> Optional[float]:
    """The CPUs' worth of time this process's cgroup quota allows ("200000 100000" in cpu.max: 2.0): the least of its
    own cgroup's and those above it up to the mount's root (a systemd unit's CPUQuota=, a job's cgroup, a container
    seen without a cgroup namespace; inside one, its cgroup is the root), under `cgroup_root`, found by `proc_cgroup`
    (/proc/self/cgroup: v2 cpu.max, or v1 cpu.cfs_quota_us); None when there is none ("max", -1) or no file says
    (not Linux, no cgroup file system mounted)."""
    own = _own_cgroups(proc_cgroup)
    quotas = [_v2_quota(folder) for folder in _up_to(cgroup_root, own.get(""))]
    if not any(q is not None for q in quotas):
        for controllers in ("cpu", "cpu,cpuacct"):  # cgroup v1: the cpu controller's folder, alone or joined
            mount = cgroup_root / controllers
            quotas += [_v1_quota(folder) for folder in _up_to(mount, own.get(controllers, own.get("cpu")))]
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _own_cgroups(proc_cgroup: Path) -> dict:
    """{controllers ('' for v2, 'cpu,cpuacct' ...): this process's cgroup path} from /proc/self/cgroup lines
    'ID:CONTROLLERS:PATH'; empty where unreadable."""
    own = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            own[parts[1]] = parts[2]
            for controller in parts[1].split(","):
                own.setdefault(controller, parts[2])
    return own


def _up_to(mount: Path, own: Optional[str]) -> list:
    """The folders from this process's cgroup `own` under `mount` up to `mount` itself (just `mount` when unknown, or
    when that folder is not there: a path outside this mount's view)."""
    folder = mount / own.strip("/") if own else mount
    if not folder.is_dir():
        return [mount]
    chain = [folder]
    while chain[-1] != mount and mount in chain[-1].parents:
        chain.append(chain[-1].parent)
    return chain


def _v2_quota(folder: Path) -> Optional[float]:
    text = _read(folder / "cpu.max")
    if text is None:
        return None
    fields = text.split()
    return _quota(fields[0], fields[1] if len(fields) > 1 else "100000")


def _v1_quota(folder: Path) -> Optional[float]:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    return None if quota is None or period is None else _quota(quota, period)


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
