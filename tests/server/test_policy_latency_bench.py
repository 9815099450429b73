"""benchmarks/policy_latency.py: backend choice, skip reasons, reference rows, and the --full path on a tiny config."""

import importlib.util
from pathlib import Path

import pytest
import torch

from gr00t_server.backends.common import weights_fingerprint

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "policy_latency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("policy_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cells(row):
    return [c.strip() for c in row.strip().strip("|").split("|")]


def test_default_backends_are_all_four_on_cuda_and_all_but_tensorrt_on_cpu(bench):
    assert bench.default_backends("cuda") == ["pytorch", "torch-compile", "onnxruntime", "tensorrt"]
    assert bench.default_backends("cpu") == ["pytorch", "torch-compile", "onnxruntime"]


def test_tensorrt_on_cpu_is_unavailable_with_a_reason(bench):
    assert "CUDA" in bench.unavailable("tensorrt", "cpu")


def test_pytorch_is_always_available(bench):
    assert bench.unavailable("pytorch", "cpu") is None


def test_reference_rows_have_the_table_columns_and_the_published_h100_figures(bench):
    eager = cells(bench.reference_row("pytorch"))
    assert len(eager) == len(bench.COLUMNS)
    column = dict(zip(bench.COLUMNS, eager))
    assert (column["backbone ms"], column["action head ms"], column["total ms"]) == ("31.3", "48.2", "85.8")
    assert cells(bench.reference_row("tensorrt"))[bench.COLUMNS.index("total ms")] == "27.9"
    assert bench.reference_row("onnxruntime") is None


def test_a_full_size_policy_rebuilt_with_the_same_seed_has_the_same_weights(bench, tiny_checkpoint, monkeypatch):
    from gr00t_server.model.presets import tiny_config

    monkeypatch.setattr(bench, "full_size_config", tiny_config)
    first = bench.full_size_policy(tiny_checkpoint, "cpu", torch.float32)
    second = bench.full_size_policy(tiny_checkpoint, "cpu", torch.float32)
    assert weights_fingerprint(first.model) == weights_fingerprint(second.model)


@pytest.mark.slow
def test_full_run_exports_the_swapped_network_once_for_onnxruntime(bench, monkeypatch, capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    from gr00t_server.model.presets import tiny_config

    monkeypatch.setattr(bench, "full_size_config", tiny_config)  # the released config needs ~13 GB on CPU
    bench.main(["--full", "--device", "cpu", "--backends", "pytorch", "onnxruntime", "tensorrt",
                "--batch-sizes", "1", "2", "--iterations", "1", "--warmup", "0", "--workdir", str(tmp_path)])
    rows = [cells(line) for line in capsys.readouterr().out.splitlines() if line.startswith("| full")]
    measured = {(r[1], r[2]): r for r in rows}
    assert set(measured) == {("pytorch", "1"), ("pytorch", "2"), ("onnxruntime", "1"), ("onnxruntime", "2"),
                             ("tensorrt", "-")}
    assert float(measured[("onnxruntime", "2")][bench.COLUMNS.index("total ms")]) > 0
    assert measured[("tensorrt", "-")][3].startswith("skipped:")
    assert (tmp_path / "onnx-full-256x256-fp32" / "export_metadata.json").is_file()


def test_an_image_size_below_one_and_an_unknown_dtype_are_usage_errors():
    """--image-size 0 0 printed only "failed" rows (exit status 0); -5 7 and --dtype fp8 ended in tracebacks."""
    import subprocess
    import sys

    cases = [(["--image-size", "0", "0"], "argument --image-size: must be >= 1, got 0"),
             (["--image-size", "-5", "7"], "argument --image-size: must be >= 1, got -5"),
             (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'")]
    runs = [subprocess.Popen([sys.executable, str(SCRIPT), "--sizes", "tiny", "--backends", "pytorch", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=SCRIPT.parent)
            for args, _message in cases]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    for (args, message), run, stderr in zip(cases, runs, errors):
        assert run.returncode == 2 and "Traceback" not in stderr, (args, stderr)
        assert message in stderr, (args, stderr)


def test_a_run_that_measured_no_row_exits_1():
    """Every backend skipped (tensorrt on a CPU) printed a table without a measurement and exited 0."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "tiny", "--backends", "tensorrt", "--device", "cpu"],
                            capture_output=True, text=True, timeout=300, cwd=SCRIPT.parent)
    assert "| tiny | tensorrt | - | skipped:" in result.stdout
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("error: no row was measured: every backend was skipped; "
                                                      "expected at least one measured row")


def test_a_failed_row_fails_the_run(bench, monkeypatch, capsys, tmp_path):
    """A row that failed (its traceback on stderr) left the exit status 0, which make bench and gpu_checks.sh read
    as a run that measured."""
    def out_of_memory(*_args):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(bench, "build_policy", out_of_memory)
    with pytest.raises(bench.BenchmarkError, match=r"1 row\(s\) failed .*, 0 measured; every row should be measured or "
                                                   r"skipped"):
        bench.main(["--sizes", "tiny", "--backends", "pytorch", "--device", "cpu", "--workdir", str(tmp_path)])
    assert "| tiny | pytorch | - | failed: CUDA out of memory |" in capsys.readouterr().out


@pytest.mark.parametrize("kept_max_batch, rebuilt_for", [(1, [8]), (8, []), (16, [])])
def test_kept_engines_are_rebuilt_only_when_built_for_a_smaller_max_batch(bench, monkeypatch, tmp_path,
                                                                          kept_max_batch, rebuilt_for):
    """A kept --workdir served engines built for an earlier run's smaller max batch: its larger batches failed."""
    import json
    from types import SimpleNamespace

    from gr00t_server.backends import tensorrt_backend
    from gr00t_server.backends.common import ENGINE_METADATA, EXPORT_METADATA

    export_dir, engine_dir = tmp_path / "onnx", tmp_path / "engines"
    export_dir.mkdir()
    (export_dir / EXPORT_METADATA).write_text("{}")
    engine_dir.mkdir()
    (engine_dir / ENGINE_METADATA).write_text(json.dumps({"max_batch_size": kept_max_batch}))
    built = []

    def build_engines(onnx_dir, out_dir, max_batch_size):  # no TensorRT here: what matters is whether it is called
        built.append(max_batch_size)
        (out_dir / ENGINE_METADATA).write_text(json.dumps({"max_batch_size": max_batch_size}))

    monkeypatch.setattr(tensorrt_backend, "build_engines", build_engines)
    monkeypatch.setattr(bench, "apply_inference_mode", lambda *args, **kwargs: [])
    bench.apply_backend(SimpleNamespace(), "tensorrt", export_dir, engine_dir, (256, 256), max_batch_size=8)
    assert built == rebuilt_for
