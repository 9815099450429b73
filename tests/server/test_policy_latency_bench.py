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
