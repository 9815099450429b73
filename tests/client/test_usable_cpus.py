"""`--n-envs 0` (auto) sizes its env workers by the CPUs this process may use (its affinity, its cgroup's CPU quota),
not the machine's cores: a container pinned to one CPU on a 64-core node started 44 MuJoCo workers on it."""

import os
import subprocess
import sys
import textwrap

import pytest

from gr00t_client.usable_cpus import cgroup_cpu_quota, usable_cpu_count


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity (Linux)")
def test_auto_n_envs_counts_the_cpus_this_process_is_pinned_to_not_the_machines_cores():
    child = textwrap.dedent("""
        import os
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # taskset -c 0
        os.cpu_count = lambda: 64  # ... on a 64-core node
        from gr00t_eval.suites import auto_n_envs
        print(auto_n_envs(100))
    """)
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout) == 1  # floor(1 * 0.7), at least 1; it was floor(64 * 0.7) = 44


def test_a_cgroup_v2_quota_caps_the_count(tmp_path):
    write(tmp_path, "cpu.max", "100000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.0
    assert usable_cpu_count(tmp_path) == 1


def test_a_fractional_quota_rounds_up(tmp_path):
    write(tmp_path, "cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    assert usable_cpu_count(tmp_path) == min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count())


def test_cgroup_v2_max_is_no_cap(tmp_path):
    write(tmp_path, "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None


@pytest.mark.parametrize("folder", ["cpu", "cpu,cpuacct"])
def test_a_cgroup_v1_cfs_quota_caps_the_count(tmp_path, folder):
    write(tmp_path, f"{folder}/cpu.cfs_quota_us", "200000\n")
    write(tmp_path, f"{folder}/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(tmp_path) == 2.0


def test_a_cgroup_v1_quota_of_minus_one_or_no_files_is_no_cap(tmp_path):
    assert cgroup_cpu_quota(tmp_path) is None
    write(tmp_path, "cpu/cpu.cfs_quota_us", "-1\n")
    write(tmp_path, "cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    assert usable_cpu_count(tmp_path) >= 1


def test_the_quota_of_this_process_own_cgroup_or_one_above_it_caps_the_count(tmp_path):
    """Only the mount's root was read: a systemd unit's CPUQuota=, a job's cgroup or a container seen without a cgroup
    namespace (limited to 1 CPU) counted every CPU."""
    root = tmp_path / "cgroup"
    write(root, "cpu.max", "max 100000\n")
    write(root, "system.slice/cpu.max", "200000 100000\n")
    write(root, "system.slice/job.scope/cpu.max", "max 100000\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("0::/system.slice/job.scope\n")
    assert cgroup_cpu_quota(root, proc) == 2.0
    write(root, "system.slice/job.scope/cpu.max", "50000 100000\n")
    assert cgroup_cpu_quota(root, proc) == 0.5 and usable_cpu_count(root, proc) == 1
    proc.write_text("0::/gone.scope\n")  # a path this mount does not show: its root alone
    assert cgroup_cpu_quota(root, proc) is None


def test_a_cgroup_v1_quota_of_this_process_own_cgroup_caps_the_count(tmp_path):
    root = tmp_path / "cgroup"
    write(root, "cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    write(root, "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    write(root, "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n")
    write(root, "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cgroup_cpu_quota(root, proc) == 3.0
