"""torch's CPU threads are fitted to the CPUs the process may use (a container's CPU quota), not the node's cores."""

import json
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, logging, sys
    from pathlib import Path
    import torch
    import gr00t_client.usable_cpus as usable_cpus
    from gr00t_server import cpu_threads

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    torch.set_num_threads(int(sys.argv[2]))  # the pool torch sized by the node's cores
    root = Path(sys.argv[1])  # a cgroup v2 tree: this process's cgroup /job under a quota
    count = lambda: usable_cpus.usable_cpu_count(root, root / "self-cgroup")
    changed = cpu_threads.fit_torch_threads(count)
    print(json.dumps({"changed": changed, "threads": torch.get_num_threads()}))
""")


def _fit(tmp_path, quota_line, threads, **env_vars):
    (tmp_path / "job").mkdir(exist_ok=True)
    (tmp_path / "job" / "cpu.max").write_text(quota_line)
    (tmp_path / "self-cgroup").write_text("0::/job\n")
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(env_vars)
    run = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(threads)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def test_a_cpu_quota_below_torchs_pool_caps_the_pool_and_says_so(tmp_path):
    result, log = _fit(tmp_path, "100000 100000\n", 4)  # docker --cpus=1
    assert result == {"changed": 1, "threads": 1}
    assert "torch runs 1 CPU threads, not 4" in log and "OMP_NUM_THREADS" in log


def test_a_fractional_quota_rounds_up(tmp_path):
    result, _ = _fit(tmp_path, "150000 100000\n", 4)
    assert result == {"changed": 2, "threads": 2}


def test_a_pool_that_fits_is_left_alone(tmp_path):
    result, log = _fit(tmp_path, "max 100000\n", 1)
    assert result == {"changed": None, "threads": 1}
    assert "torch runs" not in log


def test_omp_num_threads_chooses_the_pool_itself(tmp_path):
    result, log = _fit(tmp_path, "100000 100000\n", 4, OMP_NUM_THREADS="4")
    assert result == {"changed": None, "threads": 4}
    assert "torch runs" not in log


def test_serve_fits_the_pool_before_it_loads_the_checkpoint(tmp_path):
    """The serve command's model load goes through the fit (a CLI run under a quota, not only the function)."""
    child = textwrap.dedent("""
        import torch
        from gr00t_server import cli, cpu_threads, serve_policy
        from gr00t_server.policies import gr00t_policy

        torch.set_num_threads(4)
        cpu_threads.usable_cpu_count = lambda: 1  # the quota, as usable_cpus reads it
        seen = []
        class Loaded(Exception):
            pass
        def record(**kwargs):
            seen.append(torch.get_num_threads())
            raise Loaded()
        gr00t_policy.Gr00tPolicy = record
        args = cli.build_parser().parse_args(["serve", "--model-path", "ckpt", "--device", "cpu", "--max-rows", "1"])
        try:
            serve_policy._model_policy(args, "new_embodiment")
        except Loaded:
            pass
        print(seen)
    """)
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[1]"


def test_an_omp_num_threads_that_is_no_positive_count_is_ignored_with_a_log_and_the_pool_is_capped(tmp_path):
    """libgomp rejects '0', 'abc' and a list holding a 0 (torch then sizes its pool by the cores): such a value chooses
    nothing."""
    for value in ("0", "abc", "4,0", "4;2"):
        result, log = _fit(tmp_path, "100000 100000\n", 4, OMP_NUM_THREADS=value)
        assert result == {"changed": 1, "threads": 1}, value
        assert f"OMP_NUM_THREADS={value!r} is not a positive thread count: ignored, torch runs 1 CPU threads" in log
        assert log.count("is not a positive thread count") == 1


def test_a_positive_omp_num_threads_chooses_even_beside_an_invalid_mkl_num_threads(tmp_path):
    result, log = _fit(tmp_path, "100000 100000\n", 4, OMP_NUM_THREADS="4", MKL_NUM_THREADS="0")
    assert result == {"changed": None, "threads": 4}
    assert "MKL_NUM_THREADS='0' is not a positive thread count: ignored, torch runs 4 CPU threads" in log


def test_openmps_list_of_counts_for_nested_levels_chooses_the_count(tmp_path):
    """OMP_NUM_THREADS='4,2' (outer and nested levels) is a valid OpenMP value: it chooses, nothing is capped or logged."""
    for value in ("4,2", " 3 , 1 "):
        result, log = _fit(tmp_path, "100000 100000\n", 4, OMP_NUM_THREADS=value)
        assert result == {"changed": None, "threads": 4}, value
        assert "is not a positive thread count" not in log


def test_an_ignored_mkl_num_threads_that_shrank_torchs_pool_is_undone_to_the_usable_cpus(tmp_path):
    """MKL_NUM_THREADS='abc' (or OpenMP's list form, which MKL does not read) left torch at 1 thread of 2 usable CPUs,
    while the log said it was ignored and torch ran the usable CPUs: the pool is set to them."""
    for value in ("abc", "4,2"):
        result, log = _fit(tmp_path, "200000 100000\n", 1, MKL_NUM_THREADS=value)
        assert result == {"changed": 2, "threads": 2}, value
        assert f"MKL_NUM_THREADS={value!r} is not a positive thread count: ignored, torch runs 2 CPU threads" in log
    result, _ = _fit(tmp_path, "200000 100000\n", 1)  # nothing set: a smaller pool is the user's to keep
    assert result == {"changed": None, "threads": 1}


def test_a_chosen_count_holds_beside_an_ignored_variable_that_shrank_torchs_pool(tmp_path):
    """OMP_NUM_THREADS=2 beside MKL_NUM_THREADS='abc' left torch at 1 thread while the log said OMP chose them."""
    result, log = _fit(tmp_path, "200000 100000\n", 1, OMP_NUM_THREADS="2", MKL_NUM_THREADS="abc")
    assert result == {"changed": 2, "threads": 2}
    assert "MKL_NUM_THREADS='abc' is not a positive thread count: ignored, torch runs 2 CPU threads" in log
