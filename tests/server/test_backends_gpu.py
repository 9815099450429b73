"""Inference backends on a CUDA GPU: bf16 PyTorch vs onnxruntime-gpu and TensorRT on the tiny checkpoint."""

import json
import shutil

import pytest
import torch

from gr00t_server.backends import BackendError, apply_inference_mode
from gr00t_server.backends.common import ENGINE_METADATA
from gr00t_server.backends.export import export_checkpoint
from gr00t_server.backends.verify import verify_checkpoint

pytestmark = pytest.mark.gpu

TAG = "new_embodiment"


def require_onnxruntime_gpu():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) is not installed")


@pytest.fixture(scope="module")
def bf16_export(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_bf16")
    export_checkpoint(tiny_checkpoint, out, mode="full_pipeline", precision="bf16", embodiment_tag=TAG, device="cuda")
    return out


@pytest.fixture(scope="module")
def engines(bf16_export, tmp_path_factory):
    pytest.importorskip("tensorrt")
    from gr00t_server.backends.tensorrt_backend import build_engines

    out = tmp_path_factory.mktemp("engines")
    build_engines(bf16_export, out, workspace_mib=2048, max_batch_size=4)
    return out


def action_comparison(report):
    return next(c for c in report.comparisons if c.name == "actions (all keys)")


def test_bf16_export_on_cuda_keeps_the_vit_in_fp32(bf16_export):
    metadata = json.loads((bf16_export / "export_metadata.json").read_text())
    assert metadata["precision"] == "bf16"
    assert metadata["submodules"]["vit"]["file"] == "vit_fp32.onnx"
    assert metadata["submodules"]["dit"]["inputs"]["sa_embs"]["dtype"] == "bfloat16"


def test_onnxruntime_gpu_matches_cuda_bf16_pytorch(tiny_checkpoint, bf16_export):
    require_onnxruntime_gpu()
    report = verify_checkpoint(tiny_checkpoint, onnx_dir=bf16_export, embodiment_tag=TAG, device="cuda")
    print(report.format())
    assert report.status != "FAIL", report.format()
    assert action_comparison(report).cosine > 0.99


def test_build_engine_writes_one_engine_per_submodel_and_records_the_gpu(engines):
    import tensorrt as trt

    metadata = json.loads((engines / ENGINE_METADATA).read_text())
    assert metadata["tensorrt_version"] == trt.__version__
    assert metadata["gpu_name"] == torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    assert metadata["compute_capability"] == f"{major}{minor}"
    assert set(metadata["engines"]) == {
        "vit", "llm", "vl_self_attention", "state_encoder", "action_encoder", "dit", "action_decoder",
    }
    assert all((engines / info["file"]).is_file() for info in metadata["engines"].values())


def test_tensorrt_matches_cuda_bf16_pytorch(tiny_checkpoint, engines):
    report = verify_checkpoint(tiny_checkpoint, engine_dir=engines, embodiment_tag=TAG, device="cuda")
    print(report.format())
    assert report.status != "FAIL", report.format()
    assert action_comparison(report).cosine > 0.99


def test_engines_built_for_another_gpu_are_refused_at_startup(tiny_checkpoint, engines, tmp_path):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    copy = tmp_path / "engines"
    shutil.copytree(engines, copy)
    metadata = json.loads((copy / ENGINE_METADATA).read_text())
    metadata["compute_capability"] = "00"
    (copy / ENGINE_METADATA).write_text(json.dumps(metadata))
    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cuda", dtype="bf16")
    with pytest.raises(BackendError, match="rebuild them with build-engine"):
        apply_inference_mode(policy, "tensorrt", engine_dir=copy)


def test_tensorrt_engines_serve_a_batch_of_two(tiny_checkpoint, engines):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cuda", dtype="bf16")
    apply_inference_mode(policy, "tensorrt", engine_dir=engines)
    actions, _ = policy.get_action(example_observation(tiny_checkpoint, TAG, batch_size=2), {"seed": 0})
    assert all(value.shape[0] == 2 and torch.isfinite(torch.from_numpy(value)).all() for value in actions.values())


def test_torch_compile_max_autotune_on_cuda_matches_eager_bf16(tiny_checkpoint):
    report = verify_checkpoint(tiny_checkpoint, torch_compile=True, embodiment_tag=TAG, device="cuda")
    print(report.format())
    assert report.status != "FAIL", report.format()
    assert action_comparison(report).cosine > 0.99


def test_onnxruntime_gpu_keeps_tensors_on_the_gpu_through_a_batch_of_two(tiny_checkpoint, bf16_export):
    require_onnxruntime_gpu()
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cuda", dtype="bf16")
    apply_inference_mode(policy, "onnxruntime", onnx_dir=bf16_export)
    actions, _ = policy.get_action(example_observation(tiny_checkpoint, TAG, batch_size=2), {"seed": 0})
    assert all(value.shape[0] == 2 and torch.isfinite(torch.from_numpy(value)).all() for value in actions.values())
