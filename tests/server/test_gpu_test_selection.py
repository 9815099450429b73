"""tests/conftest.py's gpu-test selection without a GPU: every gpu test is skipped, and GR00T_GPU_TEST_DEVICE=cpu
un-skips only the modules that declare CPU_CHECKABLE (the CUDA policy checks), never the onnxruntime-gpu and
TensorRT ones, which would fail on a CPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
MODULES = ["server/test_cuda_policy.py", "server/test_backends_gpu.py"]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _outcomes(env_device):
    env = {k: v for k, v in os.environ.items() if k != "GR00T_GPU_TEST_DEVICE"}
    if env_device is not None:
        env["GR00T_GPU_TEST_DEVICE"] = env_device
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                             *(f"tests/{module}" for module in MODULES)],
                            capture_output=True, text=True, timeout=600, cwd=TESTS.parent, env=env)
    summary = result.stdout.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|skipped|failed|error)", summary)}
    skipped_modules = set(re.findall(r"SKIPPED \[\d+\] tests/(server/\S+\.py)", result.stdout))
    return result.returncode, counts, skipped_modules, result.stdout


@pytest.mark.slow
@pytest.mark.skipif(_cuda_available(), reason="with a GPU every gpu test runs")
def test_without_a_gpu_every_gpu_test_is_skipped_and_the_cpu_switch_runs_only_the_checkable_module():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # the two runs side by side: each spends seconds importing torch
        plain, on_cpu = pool.map(_outcomes, [None, "cpu"])
    code, counts, skipped, out = plain
    assert code == 0 and counts.get("passed", 0) == 0 and counts["skipped"] >= 6, out
    assert skipped == set(MODULES), out
    code, counts, skipped, out = on_cpu
    assert code == 0 and counts["passed"] >= 3 and "failed" not in counts, out
    assert skipped == {"server/test_backends_gpu.py"}, out
