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
    assert "RSS +MiB" in out  # growth / 2**20
    assert "11 of 12 refused by the per-connection byte budget" in out
    assert "'policy calls for them': 0" in out


def test_counts_of_zero_are_usage_errors_naming_the_option():
    """--rounds 0 and the like ended in a bare traceback (StatisticsError, ZeroDivisionError, ValueError), the wire
    benchmark's after starting seven servers."""
    cases = [("preprocessing.py", "--rounds"), ("record_stats.py", "--episodes"), ("record_stats.py", "--steps"),
             ("wire_latency.py", "--rounds"), ("throughput.py", "--requests"), ("batching_timeline.py", "--clients")]
    # started together: some spend seconds importing torch before they parse their arguments
    runs = [subprocess.Popen([sys.executable, str(BENCHMARKS / script), option, "0"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=BENCHMARKS) for script, option in cases]
    for (script, option), run in zip(cases, runs):
        _stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 2 and "Traceback" not in stderr, (script, option, stderr)
        assert f"argument {option}: must be >= 1, got 0" in stderr, (script, option, stderr)


def test_amplification_probes_are_labelled_in_the_unit_their_bytes_were_counted_in():
    """The flood labelled "12 x 32 MB" sent 12 x 32 MiB (402.7 MB) beside an "8 MB" probe of 8,000,005 bytes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("amplification_probes", BENCHMARKS / "amplification_probes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    units = {"KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20}
    labelled = 0
    for name, _run, size in module.probes():
        found = re.search(r"(?:(\d+) x )?(\d+) (KB|KiB|MB|MiB)\b", name)
        if found:
            count, amount, unit = int(found.group(1) or 1), int(found.group(2)), found.group(3)
            assert abs(size - count * amount * units[unit]) <= 0.01 * size, (name, size)
            labelled += 1
    assert labelled == 4


def test_a_device_torch_does_not_name_this_way_is_a_usage_error_naming_the_accepted_ones():
    """--device gpu ended in a torch RuntimeError traceback (preprocessing.py's after its image-transform rounds)."""
    pytest.importorskip("torch")
    scripts = ("preprocessing.py", "policy_latency.py", "policy_profile.py")
    runs = [subprocess.Popen([sys.executable, str(BENCHMARKS / script), "--device", "gpu"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=BENCHMARKS) for script in scripts]
    errors = [run.communicate(timeout=120)[1] for run in runs]  # all waited for: a failed one must not run on
    for script, run, stderr in zip(scripts, runs, errors):
        assert run.returncode == 2 and "Traceback" not in stderr, (script, stderr)
        assert "argument --device: must be cpu, cuda or cuda:N, got 'gpu'" in stderr, (script, stderr)


def test_a_negative_warmup_is_a_usage_error():
    cases = ("wire_latency.py", "policy_latency.py")
    runs = [subprocess.Popen([sys.executable, str(BENCHMARKS / script), "--warmup", "-1"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=BENCHMARKS) for script in cases]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    for script, run, stderr in zip(cases, runs, errors):
        assert run.returncode == 2 and "Traceback" not in stderr, (script, stderr)
        assert "argument --warmup: must be >= 0, got -1" in stderr, (script, stderr)
