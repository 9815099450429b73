"""The benchmarks without a test of their own run at their smallest settings and print every row they promise: a
rename in a module they import, or a row that stops being printed, would otherwise go unnoticed until someone
measures."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run(script, *args, timeout=600):
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                            timeout=timeout, cwd=BENCHMARKS)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_record_stats_prints_both_costs_for_every_checkpoint():
    out = run("record_stats.py", "--episodes", "10", "--steps", "10")
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", out, re.MULTILINE)
    assert rows and int(rows[-1][0]) == 10, out
    assert "total over 10 episodes" in out


@pytest.mark.slow
def test_preprocessing_prints_every_row_with_a_ratio():
    pytest.importorskip("cv2")
    out = run("preprocessing.py", "--rounds", "1")
    for name in ("image transform 256x256 vs cv2", "image transform 480x640 vs cv2", "patchify 2 x 256x256 on cpu",
                 "preprocessing per row, B=16", "outside the model, B=1, 2 x 480x640"):
        line = next((line for line in out.splitlines() if name in line), None)
        assert line is not None and re.search(r"\| [\d.]+(x|%) \|", line), (name, out)


def test_gpu_options_say_a_gpu_is_needed_in_one_line_on_a_cpu_machine():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    scripts = ("preprocessing.py", "policy_latency.py", "policy_profile.py")
    # started together: each spends seconds importing torch and transformers before it refuses
    runs = [subprocess.Popen([sys.executable, str(BENCHMARKS / script), "--device", "cuda"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=BENCHMARKS) for script in scripts]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    for script, run, stderr in zip(scripts, runs, errors):
        assert run.returncode == 2 and "Traceback" not in stderr, (script, stderr)
        assert "--device cuda needs a CUDA build of torch and a GPU; this machine has none" in stderr


@pytest.mark.slow
def test_policy_profile_runs_the_tiny_model_on_the_cpu():
    pytest.importorskip("torch")
    out = run("policy_profile.py", "--size", "tiny", "--device", "cpu", "--rows", "3")
    assert "Self CPU time total" in out


@pytest.mark.slow
def test_amplification_probes_answers_every_probe_and_runs_no_expired_call():
    out = run("amplification_probes.py")
    assert "ping with an idle server" in out
    assert "11 of 12 refused by the per-connection byte budget" in out
    assert "'policy calls for them': 0" in out
