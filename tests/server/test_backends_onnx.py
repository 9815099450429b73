"""Inference backends on CPU: ONNX export of the tiny checkpoint, ONNX Runtime serving, verify, errors."""

import argparse
import json
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from reference_peer import ReferenceClient, running_server

from gr00t_client import ObservationError
from gr00t_server.backends import BackendError, apply_inference_mode
from gr00t_server.backends import commands
from gr00t_server.backends.bench import time_policy
from gr00t_server.backends.common import EXPORT_METADATA, model_of
from gr00t_server.backends.export import export_policy
from gr00t_server.backends.tensorrt_backend import profile_shapes
from gr00t_server.backends.verify import (
    action_spread,
    compare,
    cosine_similarity,
    max_abs_error,
    relative_error_status,
    status_for,
    verify_policy,
)
from gr00t_server.policies.gr00t_policy import Gr00tPolicy
from gr00t_server.test_checkpoint import example_observation

pytest.importorskip("onnxruntime")

TAG = "new_embodiment"


def make_policy(checkpoint):
    return Gr00tPolicy(checkpoint, TAG, device="cpu", dtype="fp32")


def flat(actions):
    return np.concatenate([np.ravel(actions[k]) for k in sorted(actions)])


def parse(argv):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def observation(tiny_checkpoint):
    return example_observation(tiny_checkpoint, TAG, batch_size=1, seed=1)


@pytest.fixture(scope="module")
def pytorch_policy(tiny_checkpoint):
    """A PyTorch policy that tests only read from (export, reference actions)."""
    return make_policy(tiny_checkpoint)


def exported_by_the_cli(checkpoint, out, mode, precision):
    """`out`, holding an export of `checkpoint` made on CPU through the `export` command."""
    args = parse(["export", "--model-path", str(checkpoint), "--output", str(out), "--mode", mode,
                  "--precision", precision, "--embodiment-tag", TAG, "--device", "cpu"])
    assert commands.run(args) == 0
    return out


@pytest.fixture(scope="module")
def full_export(tiny_checkpoint, tmp_path_factory):
    """A full_pipeline fp32 export made through the `export` command."""
    return exported_by_the_cli(tiny_checkpoint, tmp_path_factory.mktemp("onnx_full"), "full_pipeline", "fp32")


@pytest.fixture(scope="module")
def dit_export(tiny_checkpoint, tmp_path_factory):
    """A dit_only fp32 export made through the `export` command."""
    return exported_by_the_cli(tiny_checkpoint, tmp_path_factory.mktemp("onnx_dit"), "dit_only", "fp32")


def timestep_blind_copy(export, folder):
    """A copy of a dit_only export whose DiT multiplies its `timestep` input by 0, as an exporter that constant-folded
    the traced t=0 would make it; its file hashes re-recorded as export records them."""
    return dit_input_rewired_copy(export, folder, "timestep", "Mul", np.array(0, dtype=np.int64))


@pytest.fixture(scope="module")
def head_export(pytorch_policy, observation, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_head")
    export_policy(pytorch_policy, observation, out, mode="action_head")
    return out


@pytest.fixture(scope="module")
def reference_actions(pytorch_policy, observation):
    return pytorch_policy.get_action(observation, {"seed": 7})[0]


@pytest.fixture(scope="module")
def onnx_policy(tiny_checkpoint, full_export):
    policy = make_policy(tiny_checkpoint)
    apply_inference_mode(policy, "onnxruntime", onnx_dir=full_export)
    return policy


# --- export ---------------------------------------------------------------------------------------


def test_full_pipeline_export_writes_every_submodel_and_its_metadata(full_export):
    metadata = json.loads((full_export / EXPORT_METADATA).read_text())
    files = {info["file"] for info in metadata["submodules"].values()}
    assert files == {
        "vit_fp32.onnx", "llm_fp32.onnx", "vl_self_attention.onnx", "state_encoder.onnx",
        "action_encoder.onnx", "dit_fp32.onnx", "action_decoder.onnx",
    }
    assert all((full_export / f).is_file() for f in files)
    assert metadata["opset_version"] == 19
    assert (metadata["export_mode"], metadata["precision"], metadata["embodiment_tag"]) == ("full_pipeline", "fp32", TAG)
    assert metadata["sa_seq_len"] == metadata["action_horizon"] + 1
    assert set(metadata["model_identity"]) == {"config_sha256", "weights_fingerprint"}
    dit_inputs = metadata["submodules"]["dit"]["inputs"]
    assert dit_inputs["vl_embs"]["dynamic_axes"] == {"0": "batch_size", "1": "vl_seq_len"}
    assert dit_inputs["vl_embs"]["shape"][1] == metadata["vl_seq_len"]


def test_onnx_files_use_opset_19_and_named_dynamic_axes(full_export):
    import onnx

    model = onnx.load(str(full_export / "llm_fp32.onnx"), load_external_data=False)
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 19
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[:2] == ["batch_size", "seq_len"]


def test_dit_only_export_contains_only_the_dit(pytorch_policy, observation, tmp_path):
    metadata = export_policy(pytorch_policy, observation, tmp_path, mode="dit_only")
    assert list(metadata["submodules"]) == ["dit"]
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["dit_fp32.onnx"]


def test_bf16_export_traces_on_cpu_and_cpu_serving_explains_the_precision(pytorch_policy, observation, tmp_path):
    metadata = export_policy(pytorch_policy, observation, tmp_path, mode="dit_only", precision="bf16")
    assert metadata["submodules"]["dit"]["inputs"]["sa_embs"]["dtype"] == "bfloat16"
    with pytest.raises(BackendError, match="--precision fp32"):
        apply_inference_mode(pytorch_policy, "onnxruntime", onnx_dir=tmp_path)


@pytest.fixture(scope="module")
def bf16_export(tiny_checkpoint, tmp_path_factory):
    """A dit_only bf16 export made on CPU through the `export` command."""
    return exported_by_the_cli(tiny_checkpoint, tmp_path_factory.mktemp("onnx_bf16"), "dit_only", "bf16")


def test_a_bf16_export_on_cpu_warns_that_cpu_serving_needs_fp32_or_fp16(tiny_checkpoint, tmp_path, caplog):
    args = parse(["export", "--model-path", str(tiny_checkpoint), "--output", str(tmp_path / "onnx"), "--mode",
                  "dit_only", "--precision", "bf16", "--embodiment-tag", TAG, "--device", "cpu"])
    with caplog.at_level("WARNING"):
        assert commands.run(args) == 0
    assert "a bf16 export serves on a CUDA GPU only (ONNX Runtime's CPU provider lacks bf16 kernels: for CPU " \
           "serving export with --precision fp32, or --precision fp16 and serve with --dtype fp16)" in caplog.text


@pytest.mark.parametrize("command", ["serve", "verify"])
def test_a_bf16_export_on_cpu_is_refused_naming_bf16_before_the_checkpoint_loads(tiny_checkpoint, bf16_export,
                                                                                  tmp_path, capsys, command):
    """It failed only once the whole checkpoint had loaded, blaming "bf16/fp16 kernels" though fp16 exports run on
    CPU."""
    from gr00t_server import cli

    checkpoint = shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint")
    (checkpoint / "model.safetensors").write_bytes(b"not safetensors")  # a load would report this instead
    mode = ["--inference-mode", "onnxruntime"] if command == "serve" else []
    assert cli.main([command, "--model-path", str(checkpoint), "--device", "cpu", *mode,
                     "--onnx-dir", str(bf16_export)]) == 2
    err = capsys.readouterr().err
    assert f"{bf16_export} holds a bf16 export, which --device cpu cannot run (ONNX Runtime's CPU provider lacks " \
           "bf16 kernels: for CPU serving export with --precision fp32, or --precision fp16 and serve with --dtype " \
           "fp16); or give a CUDA --device" in err, err
    assert "fp16 kernels" not in err and "safetensors" not in err


@pytest.fixture(scope="module")
def fp16_export(tiny_checkpoint, tmp_path_factory):
    """A dit_only fp16 export made on CPU through the `export` command."""
    return exported_by_the_cli(tiny_checkpoint, tmp_path_factory.mktemp("onnx_fp16"), "dit_only", "fp16")


@pytest.mark.parametrize("dtype", ["fp32", "bfloat16"])
def test_serve_with_a_dtype_other_than_an_fp16_exports_is_refused_naming_both_before_the_checkpoint_loads(
        tiny_checkpoint, fp16_export, tmp_path, capsys, dtype):
    """It loaded the whole checkpoint (minutes for the 3B model), then refused the export's fp16 fingerprint."""
    from gr00t_server import cli

    checkpoint = shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint")
    (checkpoint / "model.safetensors").write_bytes(b"not safetensors")  # a load would report this instead
    assert cli.main(["serve", "--model-path", str(checkpoint), "--device", "cpu", "--inference-mode", "onnxruntime",
                     "--onnx-dir", str(fp16_export), "--dtype", dtype, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"{fp16_export} holds an fp16 export, and --dtype {dtype} loads the model in another precision" in err, err
    assert "serve with --dtype fp16 (or leave --dtype out)" in err and "safetensors" not in err


def test_serve_without_dtype_loads_the_model_in_the_exports_precision_and_prints_it(tiny_checkpoint, fp16_export,
                                                                                     capsys):
    """As verify does: the device's default (fp32 on CPU) loaded the checkpoint only to refuse the fp16 export."""
    import socket

    from gr00t_server import cli

    with socket.socket() as taken:  # serve then stops at the port check, after the start-up block
        taken.bind(("127.0.0.1", 0))
        port = str(taken.getsockname()[1])
        assert cli.main(["serve", "--model-path", str(tiny_checkpoint), "--device", "cpu", "--inference-mode",
                         "onnxruntime", "--onnx-dir", str(fp16_export), "--port", port]) == 2
        assert cli.main(["serve", "--model-path", str(tiny_checkpoint), "--device", "cpu", "--port", port]) == 2
    first, second = capsys.readouterr().out.split("Starting GR00T inference server...")[1:]
    assert "  Dtype: fp16 (the precision of the export in --onnx-dir)" in first, first
    assert "  Dtype: fp32 (the default on cpu)" in second, second


# --- serving with ONNX Runtime --------------------------------------------------------------------


def test_full_pipeline_swaps_every_exported_submodule(tiny_checkpoint, full_export):
    policy = make_policy(tiny_checkpoint)
    swapped = apply_inference_mode(policy, "onnxruntime", onnx_dir=full_export)
    assert swapped == ["vit", "llm", "vl_self_attention", "state_encoder", "action_encoder", "dit", "action_decoder"]
    assert type(model_of(policy).backbone).__name__ == "ExportedBackbone"


def test_onnxruntime_actions_match_pytorch_for_the_same_seed(onnx_policy, observation, reference_actions):
    actions = onnx_policy.get_action(observation, {"seed": 7})[0]
    assert cosine_similarity(flat(reference_actions), flat(actions)) >= 0.999
    for key in reference_actions:
        assert actions[key].shape == reference_actions[key].shape
        assert cosine_similarity(reference_actions[key], actions[key]) >= 0.999


def test_action_head_export_matches_pytorch_for_the_same_noise(tiny_checkpoint, pytorch_policy, head_export, observation):
    noise = np.random.default_rng(3).standard_normal((1, 40, 132)).astype(np.float32)
    expected = pytorch_policy.get_action(observation, {"noise": noise})[0]
    policy = make_policy(tiny_checkpoint)
    assert "llm" not in apply_inference_mode(policy, "onnxruntime", onnx_dir=head_export)
    assert cosine_similarity(flat(expected), flat(policy.get_action(observation, {"noise": noise})[0])) >= 0.999


def test_batch_with_left_padded_prompts_matches_pytorch(tiny_checkpoint, pytorch_policy, onnx_policy):
    observation = example_observation(tiny_checkpoint, TAG, batch_size=2, seed=4)
    observation["language"] = {k: [["Pick up the bowl."], ["pick the red bowl and place it on the big plate"]]
                               for k in observation["language"]}
    expected = pytorch_policy.get_action(observation, {"seed": 1})[0]
    actions = onnx_policy.get_action(observation, {"seed": 1})[0]
    for key in expected:
        assert max_abs_error(expected[key], actions[key]) < 1e-4


def test_a_state_far_beyond_its_statistics_is_refused_alike_by_pytorch_and_onnxruntime(pytorch_policy, onnx_policy,
                                                                                       observation):
    """A mean/std state of 1e30: PyTorch made NaN (refused after the model), ONNX Runtime answered finite actions."""
    far = {**observation, "state": {**observation["state"], "joints": np.full_like(observation["state"]["joints"], 1e30)}}
    messages = []
    for policy in (pytorch_policy, onnx_policy):
        with pytest.raises(ObservationError) as refused:
            policy.get_action(far, {"seed": 1})
        messages.append(str(refused.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith("State key 'joints' of 'new_embodiment' normalizes to |values| up to 6.49e+30 in rows "
                                  "[0], beyond +-1000: column ")


def test_server_in_onnxruntime_mode_answers_a_reference_client(onnx_policy, observation, reference_actions):
    with running_server(onnx_policy) as server, ReferenceClient(server.port, timeout_ms=30000) as client:
        action, _info = client.get_action(observation, {"seed": 7})
    assert sorted(action) == sorted(reference_actions)
    assert cosine_similarity(flat(reference_actions), flat(action)) >= 0.999


# --- start-up errors ------------------------------------------------------------------------------


def test_export_from_other_weights_is_refused_at_startup(tiny_checkpoint, full_export):
    policy = make_policy(tiny_checkpoint)
    with torch.no_grad():
        model_of(policy).action_head.position_embedding.weight.add_(0.5)
    with pytest.raises(BackendError, match="other weights") as info:
        apply_inference_mode(policy, "onnxruntime", onnx_dir=full_export)
    assert "\n" not in str(info.value)


def test_export_from_another_config_is_refused_at_startup(pytorch_policy, full_export, tmp_path):
    copy = tmp_path / "onnx"
    shutil.copytree(full_export, copy)
    metadata = json.loads((copy / EXPORT_METADATA).read_text())
    metadata["model_identity"]["config_sha256"] = "0" * 64
    (copy / EXPORT_METADATA).write_text(json.dumps(metadata))
    with pytest.raises(BackendError, match="another config"):
        apply_inference_mode(pytorch_policy, "onnxruntime", onnx_dir=copy)


def test_directory_without_export_metadata_is_refused(pytorch_policy, tmp_path):
    with pytest.raises(BackendError, match="export_metadata.json"):
        apply_inference_mode(pytorch_policy, "onnxruntime", onnx_dir=tmp_path)


def test_missing_onnxruntime_gives_one_line_install_hint(pytorch_policy, full_export, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendError, match=r"pip install 'gr00t-server\[onnx\]'") as info:
        apply_inference_mode(pytorch_policy, "onnxruntime", onnx_dir=full_export)
    assert "\n" not in str(info.value)


def test_missing_tensorrt_gives_one_line_install_hint(pytorch_policy, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendError, match="TensorRT") as info:
        apply_inference_mode(pytorch_policy, "tensorrt", engine_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_modes_need_their_directories_and_unknown_modes_are_named(pytorch_policy):
    policy = pytorch_policy
    with pytest.raises(BackendError, match="--onnx-dir"):
        apply_inference_mode(policy, "onnxruntime")
    with pytest.raises(BackendError, match="--engine-dir"):
        apply_inference_mode(policy, "tensorrt")
    with pytest.raises(BackendError, match="'jax'"):
        apply_inference_mode(policy, "jax")
    assert apply_inference_mode(policy, "pytorch") == []


def test_backend_error_is_a_value_error():
    assert issubclass(BackendError, ValueError)


# --- verify ---------------------------------------------------------------------------------------


def test_cosine_thresholds_follow_the_reference():
    assert (status_for(0.9995), status_for(0.995), status_for(0.98), status_for(float("nan"))) == (
        "PASS", "WARN", "FAIL", "FAIL")


def test_metrics_of_identical_and_opposite_arrays():
    values = np.arange(1.0, 7.0)
    assert cosine_similarity(values, values) == pytest.approx(1.0)
    assert cosine_similarity(values, -values) == pytest.approx(-1.0)
    assert max_abs_error(values, values + 0.25) == pytest.approx(0.25)
    assert compare("x", np.zeros(3), np.zeros(3)).status == "PASS"


def test_verify_passes_every_submodule_and_the_actions(tiny_checkpoint, full_export, observation):
    report = verify_policy(
        make_policy(tiny_checkpoint), observation,
        lambda p: apply_inference_mode(p, "onnxruntime", onnx_dir=full_export), "onnxruntime",
    )
    names = [c.name for c in report.comparisons]
    assert names[:7] == ["vit", "backbone", "vl_self_attention", "state_encoder", "action_encoder", "dit", "action_decoder"]
    assert "actions (all keys)" in names
    assert report.status == "PASS", report.format()


def test_verify_fails_a_backend_that_changes_the_output(tiny_checkpoint, observation):
    class Negated(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, embodiment_id):
            return -self.inner(x, embodiment_id)

    def broken_backend(policy):
        head = model_of(policy).action_head
        head.action_decoder = Negated(head.action_decoder)
        return ["action_decoder"]

    report = verify_policy(make_policy(tiny_checkpoint), observation, broken_backend, "broken")
    assert report.status == "FAIL"
    assert "FAIL" in report.format()


class Scaled(torch.nn.Module):
    """A backend that is right in direction and wrong in magnitude: its sub-module's output times `factor`."""

    def __init__(self, inner, factor):
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, *args, **kwargs):
        return self.factor * self.inner(*args, **kwargs)


@pytest.mark.parametrize("name, factor", [("action_decoder", 2.0), ("model", 1.5), ("vl_self_attention", 3.0)])
def test_verify_fails_a_backend_whose_submodule_is_off_by_a_scale_factor(tiny_checkpoint, observation, name, factor):
    """Cosine is blind to scale: every velocity doubled passed with cosine 1.000000."""

    def scaled_backend(policy):
        head = model_of(policy).action_head
        setattr(head, name, Scaled(getattr(head, name), factor))
        return ["dit" if name == "model" else name]

    report = verify_policy(make_policy(tiny_checkpoint), observation, scaled_backend, "scaled")
    row = report.comparisons[0]
    assert row.cosine > 0.999999 and row.status == "FAIL", report.format()
    assert row.relative_error == pytest.approx(factor - 1.0, rel=1e-3)
    assert report.status == "FAIL"


def test_relative_error_limits_are_tight_for_fp32_and_looser_for_half_precision():
    assert [relative_error_status(0.02, dtype) for dtype in (torch.float32, torch.float16, torch.bfloat16)] == [
        "WARN", "PASS", "PASS"]
    assert [relative_error_status(0.5, dtype) for dtype in (torch.float32, torch.float16, torch.bfloat16)] == [
        "FAIL", "FAIL", "FAIL"]
    assert relative_error_status(float("nan")) == "FAIL"


def test_an_action_error_is_not_hidden_by_the_actions_constant_offset():
    """A joint resting at 1.5 rad and moving 0.01 rad in the chunk: an error of 0.01 rad is its whole motion."""
    reference = 1.5 + 0.01 * np.sin(np.linspace(0.0, 3.0, 16)).reshape(1, 16, 1)
    candidate = reference + 0.01
    assert compare("action.joint", reference, candidate).status == "PASS"  # against its size: 0.7%, cosine 0.99998
    assert compare("action.joint", reference, candidate, scale=action_spread(reference)).status == "FAIL"


def test_an_action_key_that_does_not_move_in_the_chunk_is_held_to_a_tenth_of_its_size():
    closed_gripper = np.ones((1, 16, 1))
    assert compare("action.gripper", closed_gripper, closed_gripper + 1e-3, torch.bfloat16,
                   action_spread(closed_gripper)).status == "PASS"
    assert compare("action.gripper", closed_gripper, closed_gripper + 0.05, torch.float32,
                   action_spread(closed_gripper)).status == "FAIL"


def test_verify_command_prints_the_table_and_exits_zero_on_pass(tiny_checkpoint, full_export, capsys):
    args = parse(["verify", "--model_path", str(tiny_checkpoint), "--onnx_dir", str(full_export), "--device", "cpu"])
    assert commands.run(args) == 0
    out = capsys.readouterr().out
    assert "actions (all keys)" in out and "overall (onnxruntime): PASS" in out
    assert out.splitlines()[1].split() == ["output", "cosine", "max_abs_err", "rel_err", "status"]
    assert f"embodiment: {TAG}" in out  # which of the checkpoint's embodiments was verified
    # what a PASS allowed (a 1.5% error passes in fp32): the limits the statuses were given by
    assert ("limits: rel_err in float32 PASS below 0.02, WARN below 0.05; cosine PASS above 0.999, WARN above 0.99"
            in out), out


def test_the_verify_help_states_the_limits_the_report_uses():
    """--help names the numbers; they are RELATIVE_ERROR_LIMITS' and the cosine thresholds (kept in step)."""
    from gr00t_server.backends.verify import PASS_COSINE, RELATIVE_ERROR_LIMITS

    subparsers = argparse.ArgumentParser().add_subparsers(dest="command")
    commands.register(subparsers)
    text = " ".join(subparsers.choices["verify"].description.split())
    (fp32, _), (fp16, _), (bf16, _) = (RELATIVE_ERROR_LIMITS[d] for d in (torch.float32, torch.float16, torch.bfloat16))
    assert f"PASS above {PASS_COSINE:g}" in text
    assert f"PASS below {fp32:g} in fp32, {fp16:g} in fp16, {bf16:g} in bf16" in text


def row_of(report_text, name):
    return next(line for line in report_text.splitlines() if line.split()[0] == name)


def test_verify_checks_the_dit_at_every_denoising_step_and_passes_a_good_export(tiny_checkpoint, dit_export, capsys):
    args = parse(["verify", "--model-path", str(tiny_checkpoint), "--onnx-dir", str(dit_export), "--device", "cpu"])
    assert commands.run(args) == 0
    dit = row_of(capsys.readouterr().out, "dit")
    assert re.match(r"dit \(worst at t=(0|250|500|750)\) ", dit) and dit.endswith("PASS"), dit


def test_verify_fails_a_dit_export_that_ignores_the_timestep(tiny_checkpoint, dit_export, tmp_path, capsys):
    """Only each sub-module's first call (t=0) was compared: a DiT blind to its timestep passed with rel_err 7e-07,
    though wrong at the three later steps serving runs, and verify exited 0."""
    blind = timestep_blind_copy(dit_export, tmp_path / "onnx_frozen_t")
    args = parse(["verify", "--model-path", str(tiny_checkpoint), "--onnx-dir", str(blind), "--device", "cpu"])
    assert commands.run(args) == 1
    out = capsys.readouterr().out
    dit = row_of(out, "dit")
    assert re.match(r"dit \(worst at t=(250|500|750)\) ", dit) and dit.endswith("FAIL"), out
    assert "overall (onnxruntime): FAIL" in out


def padding_blind_copy(export, folder):
    """A copy of a dit_only export whose DiT ORs its `backbone_attention_mask` with True (attending to padded tokens),
    as an exporter that lost the mask would make it; its file hashes re-recorded as export records them."""
    return dit_input_rewired_copy(export, folder, "backbone_attention_mask", "Or", np.array(True))


def dit_input_rewired_copy(export, folder, name, op, constant):
    """A copy of a dit_only export in `folder` whose DiT reads its input `name` through `op`(name, constant), its
    file hashes re-recorded as export records them."""
    import onnx
    from onnx import helper, numpy_helper

    from gr00t_server.backends.common import file_digest

    shutil.copytree(export, folder)
    path = folder / "dit_fp32.onnx"
    graph = onnx.load(str(path))
    for node in graph.graph.node:
        node.input[:] = [f"{name}_rewired" if given == name else given for given in node.input]
    graph.graph.initializer.append(numpy_helper.from_array(constant, f"{name}_constant"))
    graph.graph.node.insert(0, helper.make_node(op, [name, f"{name}_constant"], [f"{name}_rewired"]))
    onnx.save(graph, str(path))
    metadata = json.loads((folder / EXPORT_METADATA).read_text())
    metadata["submodules"]["dit"]["files"] = {file: file_digest(folder / file)
                                              for file in metadata["submodules"]["dit"]["files"]}
    (folder / EXPORT_METADATA).write_text(json.dumps(metadata))
    return folder


def test_verify_fails_a_dit_export_that_ignores_padding_even_at_batch_size_1(tiny_checkpoint, dit_export, tmp_path,
                                                                              capsys):
    """The sample observation gave every row the same prompt, so no row was ever padded: a DiT that attends to padded
    tokens passed whatever --batch-size. A second pass of rows with prompts of different lengths fails it."""
    blind = padding_blind_copy(dit_export, tmp_path / "onnx_padding_blind")
    args = parse(["verify", "--model-path", str(tiny_checkpoint), "--onnx-dir", str(blind), "--device", "cpu",
                  "--batch-size", "1"])
    assert commands.run(args) == 1
    out = capsys.readouterr().out
    assert row_of(out, "dit").endswith("PASS"), out  # the unpadded sample cannot see it
    padded = next(line for line in out.splitlines() if line.startswith("dit (padded batch)"))
    assert padded.endswith("FAIL"), out
    assert "overall (onnxruntime): FAIL" in out


def nan_state_encoder_copy(export, folder):
    """A copy of an action_head export whose state encoder adds 0 * sum(sqrt(-100 - state)): NaN in every row, as an
    fp16 overflow inside a graph makes it; its file hashes re-recorded as export records them."""
    import onnx
    from onnx import TensorProto, helper

    from gr00t_server.backends.common import file_digest

    shutil.copytree(export, folder)
    metadata = json.loads((folder / EXPORT_METADATA).read_text())
    path = folder / metadata["submodules"]["state_encoder"]["file"]
    model = onnx.load(str(path))
    graph = model.graph
    output = graph.output[0].name
    for node in graph.node:
        node.output[:] = ["finite_output" if name == output else name for name in node.output]
    graph.initializer.extend([helper.make_tensor("minus_100", TensorProto.FLOAT, [], [-100.0]),
                              helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                              helper.make_tensor("last_axis", TensorProto.INT64, [1], [2])])
    graph.node.extend([helper.make_node("Sub", ["minus_100", "state"], ["negative"]),
                       helper.make_node("Sqrt", ["negative"], ["nan"]),
                       helper.make_node("ReduceSum", ["nan", "last_axis"], ["nan_sum"], keepdims=1),
                       helper.make_node("Mul", ["nan_sum", "zero"], ["nan_times_zero"]),
                       helper.make_node("Add", ["finite_output", "nan_times_zero"], [output])])
    onnx.save(model, str(path))
    metadata["submodules"]["state_encoder"]["files"] = {name: file_digest(folder / name)
                                                        for name in metadata["submodules"]["state_encoder"]["files"]}
    (folder / EXPORT_METADATA).write_text(json.dumps(metadata))
    return folder


def test_verify_of_an_export_whose_graph_makes_nan_prints_the_report_failing_that_submodule(
        tiny_checkpoint, head_export, tmp_path, capsys, caplog):
    """The NaN actions raised the serving refusal ("the action was not sent ... gr00t-server verify") out of verify:
    exit 2, and the table that named the sub-module at fault was lost."""
    from gr00t_server.cli import main

    broken = nan_state_encoder_copy(head_export, tmp_path / "onnx_nan")
    assert main(["verify", "--model-path", str(tiny_checkpoint), "--onnx-dir", str(broken), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert row_of(captured.out, "state_encoder").endswith("FAIL"), captured.out
    assert row_of(captured.out, "dit").endswith("PASS"), captured.out
    assert row_of(captured.out, "actions").endswith("FAIL") and "overall (onnxruntime): FAIL" in captured.out
    said = captured.err + caplog.text
    assert "was not sent" not in said and "gr00t-server verify" not in said, said


def test_verify_of_another_checkpoints_export_says_so_instead_of_blaming_its_tag(tiny_checkpoint, tmp_path):
    """verify took the export's recorded tag and said "Unknown embodiment tag: 'my_robot'", a tag the user never gave,
    where serve said the export was made from other weights."""
    from gr00t_server.backends.verify import verify_checkpoint
    from gr00t_server.test_checkpoint import make_test_checkpoint

    other = make_test_checkpoint(tmp_path / "other", embodiment_tags=("my_robot",), seed=2)
    out = tmp_path / "onnx_other"
    assert commands.run(parse(["export", "--model-path", str(other), "--output", str(out), "--mode", "dit_only",
                               "--precision", "fp32", "--device", "cpu"])) == 0
    with pytest.raises(BackendError, match=f"^{re.escape(str(out))} was exported from other weights"):
        verify_checkpoint(tiny_checkpoint, onnx_dir=out, device="cpu")


def test_verify_of_an_export_whose_recorded_tag_the_checkpoint_lacks_names_the_tag_and_the_flag(
        tiny_checkpoint, dit_export, tmp_path):
    from gr00t_server.backends.verify import verify_checkpoint

    folder = tmp_path / "onnx"
    shutil.copytree(dit_export, folder)
    metadata = json.loads((folder / EXPORT_METADATA).read_text())
    (folder / EXPORT_METADATA).write_text(json.dumps({**metadata, "embodiment_tag": "my_robot"}))
    with pytest.raises(BackendError, match=f"^{re.escape(str(folder))} was exported for embodiment tag 'my_robot' "
                                           r"\(its export_metadata\.json\), which .* does not have \(its tags: "
                                           r"\['libero_sim', 'new_embodiment'\]\); choose one with --embodiment-tag$"):
        verify_checkpoint(tiny_checkpoint, onnx_dir=folder, device="cpu")


def test_export_and_verify_default_to_serves_embodiment_when_the_checkpoint_has_it(tiny_checkpoint, tmp_path):
    """Without --embodiment-tag: new_embodiment (serve's default), not the first tag by name (libero_sim here)."""
    from gr00t_server.backends.export import default_embodiment_tag
    from gr00t_server.test_checkpoint import make_test_checkpoint

    assert default_embodiment_tag(tiny_checkpoint) == "new_embodiment"
    other = make_test_checkpoint(tmp_path / "other", embodiment_tags=("unitree_g1", "libero_sim"))
    assert default_embodiment_tag(other) == "libero_sim"


def test_verify_command_exits_one_on_fail(monkeypatch, capsys):
    import gr00t_server.backends.verify as verify_module

    failing = verify_module.VerifyReport("onnxruntime", [compare("actions (all keys)", np.ones(4), -np.ones(4))])
    monkeypatch.setattr(verify_module, "verify_checkpoint", lambda *args, **kwargs: failing)
    assert commands.run(parse(["verify", "--model-path", "m", "--onnx-dir", "d"])) == 1
    assert "overall (onnxruntime): FAIL" in capsys.readouterr().out


# --- CLI, benchmark, engine profiles --------------------------------------------------------------


def test_commands_accept_kebab_and_snake_case_flags():
    kebab = parse(["build-engine", "--onnx-dir", "a", "--engine-dir", "b", "--max-batch-size", "4"])
    snake = parse(["build-engine", "--onnx_dir", "a", "--engine_dir", "b", "--max_batch_size", "4"])
    assert vars(kebab) == vars(snake)
    export = parse(["export", "--model_path", "m", "--output", "o", "--batch_size", "2", "--embodiment_tag", "t"])
    assert (export.model_path, export.batch_size, export.embodiment_tag, export.mode) == ("m", 2, "t", "full_pipeline")


def test_verify_needs_exactly_one_of_onnx_dir_and_engine_dir():
    with pytest.raises(SystemExit):
        parse(["verify", "--model-path", "m"])
    with pytest.raises(SystemExit):
        parse(["verify", "--model-path", "m", "--onnx-dir", "a", "--engine-dir", "b"])


def test_time_policy_reports_every_stage(onnx_policy, observation):
    timing = time_policy(onnx_policy, observation, iters=2, warmup=1)
    assert set(timing) == {"data_processing_ms", "backbone_ms", "action_head_ms", "e2e_ms", "hz"}
    assert timing["e2e_ms"] >= timing["backbone_ms"] > 0
    assert "get_action" not in vars(model_of(onnx_policy))


def test_engine_profiles_keep_fixed_dims_and_bound_named_ones():
    inputs = {
        "sa_embs": {"shape": [1, 41, 64], "dynamic_axes": {"0": "batch_size"}},
        "vl_embs": {"shape": [1, 100, 64], "dynamic_axes": {"0": "batch_size", "1": "vl_seq_len"}},
        "deepstack_0": {"shape": [64, 64], "dynamic_axes": {"0": "num_vis_tokens"}},
    }
    shapes = profile_shapes(inputs, batch_size=1, max_batch_size=8)
    assert shapes["sa_embs"] == ((1, 41, 64), (1, 41, 64), (8, 41, 64))
    assert shapes["vl_embs"] == ((1, 1, 64), (1, 100, 64), (8, 200, 64))
    assert shapes["deepstack_0"] == ((1, 64), (64, 64), (512, 64))


def test_torch_compile_mode_compiles_only_the_dit(tiny_checkpoint):
    policy = make_policy(tiny_checkpoint)
    assert apply_inference_mode(policy, "torch-compile") == ["dit"]
    assert "forward" in vars(model_of(policy).action_head.model)


@pytest.mark.slow
def test_verify_torch_compile_runs_the_compiled_dit_and_passes(tiny_checkpoint, capsys):
    """`verify --torch-compile` on CPU: inductor compiles the DiT; the same noise gives the eager actions."""
    args = parse(["verify", "--model-path", str(tiny_checkpoint), "--torch-compile", "--device", "cpu",
                  "--embodiment-tag", TAG])
    assert commands.run(args) == 0
    out = capsys.readouterr().out
    assert "overall (torch-compile): PASS" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line and line.split()[0] in ("dit", "actions")}
    assert float(rows["dit"][-4]) > 0.999999 and float(rows["actions"][-4]) > 0.999999  # the cosine column


def test_verify_takes_exactly_one_backend(tiny_checkpoint, full_export):
    from gr00t_server.backends.verify import verify_checkpoint

    with pytest.raises(ValueError, match="exactly one of"):
        verify_checkpoint(tiny_checkpoint, onnx_dir=full_export, torch_compile=True)
    with pytest.raises(ValueError, match="exactly one of"):
        verify_checkpoint(tiny_checkpoint)
    with pytest.raises(SystemExit):
        parse(["verify", "--model-path", "m", "--onnx-dir", "a", "--torch-compile"])


def test_a_failed_re_export_leaves_the_earlier_export_in_place(tiny_checkpoint, tmp_path):
    out = tmp_path / "onnx"
    base = ["export", "--model-path", str(tiny_checkpoint), "--output", str(out), "--mode", "dit_only",
            "--precision", "fp32", "--device", "cpu"]
    assert commands.run(parse([*base, "--embodiment-tag", TAG])) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert "dit_fp32.onnx" in before and EXPORT_METADATA in before
    with pytest.raises(ValueError, match="Unknown embodiment tag: 'no_such_robot'"):
        commands.run(parse([*base, "--embodiment-tag", "no_such_robot"]))  # fails after the checkpoint loaded
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]  # no staging directory left behind
    assert commands.run(parse([*base, "--embodiment-tag", TAG, "--mode", "action_head"])) == 0
    after = json.loads((out / EXPORT_METADATA).read_text())
    assert after["export_mode"] == "action_head" and sorted(after["submodules"]) != ["dit"]
    assert all((out / info["file"]).is_file() for info in after["submodules"].values())


@pytest.mark.parametrize("argv, message", [
    (["export", "--model-path", "/nonexistent", "--output", "/nonexistent/out", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["verify", "--model-path", "/nonexistent", "--onnx-dir", "x", "--batch-size", "-1"], "--batch-size must be >= 1, got -1"),
    (["build-engine", "--onnx-dir", "x", "--engine-dir", "y", "--max-batch-size", "0"], "--max-batch-size must be >= 1, got 0"),
    (["build-engine", "--onnx-dir", "x", "--engine-dir", "y", "--workspace", "0"], "--workspace must be >= 1, got 0"),
    (["export", "--model-path", "/nonexistent", "--output", "/nonexistent/out", "--image-size", "480", "0"],
     "--image-size takes HEIGHT WIDTH of the cameras' frames, each from 16 to 4096; got 480 0"),
])
def test_counts_below_one_are_refused_before_anything_loads(argv, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        commands.run(parse(argv))


def test_an_export_at_the_cameras_frame_size_serves_it_and_warms_up_and_verifies_with_it(tiny_checkpoint, tmp_path):
    """Exports always traced 256x256 frames: a full_pipeline ViT then refused every 480x640 (non-square) camera frame
    with advice the CLI could not follow, while warm-up and verify (also 256x256) passed."""
    from gr00t_server.backends.bench import warm_up
    from gr00t_server.backends.verify import verify_checkpoint

    out = tmp_path / "onnx"
    assert commands.run(parse(["export", "--model-path", str(tiny_checkpoint), "--output", str(out), "--precision", "fp32",
                               "--embodiment-tag", TAG, "--device", "cpu", "--image-size", "48", "64"])) == 0
    assert json.loads((out / EXPORT_METADATA).read_text())["sample_image_size"] == [48, 64]
    onnx, reference = make_policy(tiny_checkpoint), make_policy(tiny_checkpoint)
    apply_inference_mode(onnx, "onnxruntime", onnx_dir=out)
    assert onnx.sample_image_size == (48, 64) and warm_up(onnx, (1,))  # warm-up samples the export's frame size
    frames = example_observation(tiny_checkpoint, TAG, batch_size=1, seed=3, image_size=(48, 64))
    np.testing.assert_allclose(flat(onnx.get_action(frames, {"seed": 5})[0]),
                               flat(reference.get_action(frames, {"seed": 5})[0]), atol=1e-4)
    larger = example_observation(tiny_checkpoint, TAG, batch_size=1, seed=3, image_size=(96, 128))  # the same grid
    np.testing.assert_allclose(flat(onnx.get_action(larger, {"seed": 5})[0]),
                               flat(reference.get_action(larger, {"seed": 5})[0]), atol=1e-4)
    square = example_observation(tiny_checkpoint, TAG, batch_size=1, seed=3, image_size=(64, 64))
    with pytest.raises(ObservationError, match=r"has 64x64 frames, .* traced its ViT for 48x64 frames .* re-export "
                                               r"with your cameras' frame size: `gr00t-server export --image-size 64 64 "
                                               r"\.\.\.`"):
        onnx.get_action(square)
    assert verify_checkpoint(tiny_checkpoint, onnx_dir=out, device="cpu", embodiment_tag=TAG).status != "FAIL"


@pytest.mark.parametrize("strict", [True, False])
def test_frames_of_another_size_than_the_export_traced_are_refused_naming_the_camera_before_the_model_runs(
        tiny_checkpoint, full_export, monkeypatch, strict):
    """480x640 frames given to an export traced for 256x256 ones failed inside the model run ("the exported ViT was
    traced for image grid [1, 16, 16] ...; got [[1, 16, 22]]"), naming neither the camera nor the frame sizes, as an
    internal error with a traceback in the server's log."""
    from gr00t_client import PolicyClient, PolicyServerError

    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", dtype="fp32", strict=strict)
    apply_inference_mode(policy, "onnxruntime", onnx_dir=full_export)
    ran, run_model = [], policy.model.get_action
    monkeypatch.setattr(policy.model, "get_action", lambda *args, **kwargs: ran.append(args) or run_model(*args, **kwargs))
    observation = example_observation(tiny_checkpoint, TAG, batch_size=1, seed=1, image_size=(480, 640))
    camera = next(iter(observation["video"]))
    expected = (f"Video key '{camera}' has 480x640 frames, which make image grid [1, 16, 22] (t,h,w in patches); "
                "this server's full_pipeline export traced its ViT for 256x256 frames (image grid [1, 16, 16])")
    with pytest.raises(ObservationError) as refused:
        policy.get_action(observation)
    assert str(refused.value).startswith(expected), refused.value
    assert "`gr00t-server export --image-size 480 640 ...`" in str(refused.value)
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=30_000, strict=False) as client:
        with pytest.raises(PolicyServerError) as info:
            client.get_action(observation)
        assert client.ping()
    assert str(info.value).startswith(f"Server error: ObservationError: {expected}"), info.value
    assert not ran


@pytest.mark.parametrize("frames, expected", [
    (np.zeros((1, 1, 0, 0, 3), np.uint8), "an image needs at least one pixel on each side"),
    (np.zeros((1, 1, 512, 1, 3), np.uint8), "aspect ratio 512"),
    (np.zeros((1, 1, 3, 256, 256), np.uint8), "channels first?"),
], ids=["0x0", "512x1", "channels-first"])
def test_a_lenient_export_names_what_is_wrong_with_frames_before_their_grid(tiny_checkpoint, full_export, frames,
                                                                            expected):
    """strict=False checked the export's grid on frames the processor had not checked: a 0x0 frame was a
    ZeroDivisionError, a 512x1 one transformers' own "absolute aspect ratio" ValueError, and channels-first frames
    were "3x256 frames" told to re-export with `--image-size 3 256`."""
    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", dtype="fp32", strict=False)
    apply_inference_mode(policy, "onnxruntime", onnx_dir=full_export)
    observation = example_observation(tiny_checkpoint, TAG, batch_size=1, seed=1)
    observation["video"][next(iter(observation["video"]))] = frames
    with pytest.raises(ObservationError) as refused:
        policy.get_action(observation)
    assert expected in str(refused.value), refused.value
    assert "--image-size" not in str(refused.value), refused.value


def test_cameras_of_different_frame_sizes_are_told_one_export_serves_one_size_naming_each_camera(
        tiny_checkpoint, tmp_path):
    """A 640x480 scene camera beside a 256x256 wrist camera was told to re-export with `--image-size HEIGHT WIDTH`,
    which cannot serve both, and no camera was named."""
    from gr00t_client import PolicyClient, PolicyServerError

    out = tmp_path / "onnx"
    assert commands.run(parse(["export", "--model-path", str(tiny_checkpoint), "--output", str(out), "--precision", "fp32",
                               "--embodiment-tag", "libero_sim", "--device", "cpu"])) == 0
    policy = Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu", dtype="fp32")
    apply_inference_mode(policy, "onnxruntime", onnx_dir=out)
    observation = example_observation(tiny_checkpoint, "libero_sim", batch_size=1, seed=1)  # both cameras 256x256
    observation["video"]["image"] = np.zeros((1, 1, 480, 640, 3), np.uint8)
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=30_000) as client:
        with pytest.raises(PolicyServerError) as info:
            client.get_action(observation, {"seed": 1})
        assert client.ping()  # the server answers on
    message = str(info.value)
    assert message.startswith("Server error: ObservationError: "), message  # refused before the model runs
    # named as other refusals name cameras (the sim wrapper renames "Video key '...'" to a flat client's key)
    assert "Video key 'image' 480x640 [1, 16, 22], Video key 'wrist_image' 256x256 [1, 16, 16]" in message, message
    assert "serves one frame size for all cameras (traced for 256x256 frames" in message, message
    assert "--mode action_head" in message, message
    assert "--image-size" not in message, message


def test_a_file_replaced_while_the_sessions_load_fails_the_start(tiny_checkpoint, full_export, tmp_path, monkeypatch):
    """The files were hashed, then opened again by path: a re-export landing in between served sub-models of two
    checkpoints without a word (a restart refused the same folder)."""
    from gr00t_server.backends import onnxruntime_backend

    folder = tmp_path / "onnx"
    shutil.copytree(full_export, folder)
    runner = onnxruntime_backend.OrtRunner

    class ReExportedMeanwhile(runner):  # another export's rename lands right before this session opens its file
        def __init__(self, path, *args, **kwargs):
            if path.name.startswith("dit"):
                replacement = path.with_name(path.name + ".new")
                shutil.copyfile(path, replacement)
                replacement.replace(path)  # same bytes, a new file: as a swap_in rename
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime_backend, "OrtRunner", ReExportedMeanwhile)
    with pytest.raises(BackendError, match=r"dit_fp32\.onnx changed while the server loaded .* \(another export into it\?\)"):
        apply_inference_mode(make_policy(tiny_checkpoint), "onnxruntime", onnx_dir=folder)
    monkeypatch.setattr(onnxruntime_backend, "OrtRunner", runner)
    assert apply_inference_mode(make_policy(tiny_checkpoint), "onnxruntime", onnx_dir=folder)  # unchanged since: loads


def test_serving_an_fp16_export_in_fp32_says_so_instead_of_other_weights(tiny_checkpoint, tmp_path):
    """The same checkpoint exported in fp16 and served in fp32 was refused as "exported from other weights"."""
    out = tmp_path / "onnx16"
    assert commands.run(parse(["export", "--model-path", str(tiny_checkpoint), "--output", str(out), "--mode", "dit_only",
                               "--precision", "fp16", "--embodiment-tag", TAG, "--device", "cpu"])) == 0
    with pytest.raises(BackendError, match=r"was exported from the model loaded in fp16, and this one runs in fp32: .*"
                                           r"serve with --dtype fp16, or re-export with --precision fp32"):
        apply_inference_mode(make_policy(tiny_checkpoint), "onnxruntime", onnx_dir=out)
    other16 = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", dtype="fp16")
    with torch.no_grad():  # other weights in the export's own dtype are still called other weights
        next(model_of(other16).action_head.parameters()).add_(1.0)
    with pytest.raises(BackendError, match="was exported from other weights of the same architecture"):
        apply_inference_mode(other16, "onnxruntime", onnx_dir=out)


def test_an_fp16_export_of_other_weights_served_in_fp32_is_called_other_weights_not_fp16_rounding(tiny_checkpoint,
                                                                                                     tmp_path):
    """Another checkpoint's fp16 export, served in fp32, was refused with "serve with --dtype fp16": following that
    loaded the model again only to be told it was other weights. The advice is given when the weights rounded to the
    export's precision match its fingerprint."""
    out = tmp_path / "onnx16"
    assert commands.run(parse(["export", "--model-path", str(tiny_checkpoint), "--output", str(out), "--mode", "dit_only",
                               "--precision", "fp16", "--embodiment-tag", TAG, "--device", "cpu"])) == 0
    other32 = make_policy(tiny_checkpoint)
    with torch.no_grad():
        next(model_of(other32).action_head.parameters()).add_(1.0)
    with pytest.raises(BackendError, match="was exported from other weights of the same architecture") as refused:
        apply_inference_mode(other32, "onnxruntime", onnx_dir=out)
    assert "--dtype" not in str(refused.value)


def test_a_second_export_into_a_folder_being_exported_into_is_refused_at_once(tiny_checkpoint, tmp_path):
    """Two exports into one folder swapped their files in over each other and left it refused to every later export;
    one from another container (its pids invisible) deleted the running export's staging folder as stale."""
    from gr00t_server.backends.export_dir import export_lock

    out = tmp_path / "onnx"
    out.mkdir()
    staging = out / f".gr00t-export-staging-{2**22 + 7}-abcdefgh"  # a running export's, its pid not visible here
    staging.mkdir()
    argv = ["export", "--model-path", str(tiny_checkpoint), "--output", str(out), "--mode", "dit_only", "--precision",
            "fp32", "--embodiment-tag", TAG, "--device", "cpu"]
    with export_lock(out):  # the running export holds the folder's lock (an flock: across processes and containers)
        with pytest.raises(BackendError, match=f"another export into {out} is running; wait for it to finish, or "
                                               "choose another --output"):
            commands.run(parse(argv))
        assert staging.is_dir()  # not deleted from under the running export
    assert commands.run(parse(argv)) == 0  # once it is done (the lock released), the folder is free again
    assert not staging.exists()  # and a work folder with no live owner is stale


def test_cpu_sessions_do_not_spin_and_use_at_most_the_usable_cpus(tmp_path):
    """Each exported sub-module is a session with its own intra-op pool; with ORT's defaults (spinning, a thread per
    core) the pools busy-waited after every run and took the cores from the next session and from preprocessing."""
    import onnx
    from onnx import TensorProto, helper

    from gr00t_client.usable_cpus import usable_cpu_count
    from gr00t_server.backends.onnxruntime_backend import OrtRunner

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    runner = OrtRunner(path, torch.device("cpu"))
    options = runner.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == usable_cpu_count()
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert torch.equal(runner({"x": x})["y"], x)
