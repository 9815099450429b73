"""ONNX export of GR00T N1.7 sub-modules, with shapes captured from one real `get_action` (model.md §7.1)."""

from __future__ import annotations

import copy
import logging
import os
import stat
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from gr00t_server.backends.common import (
    EXPORT_METADATA,
    EXPORT_MODES,
    MODE_SUBMODULES,
    MODEL_VERSION,
    OPSET_VERSION,
    PRECISION_OF_DTYPE,
    PROMPT_AXES,
    TORCH_DTYPES,
    BackendError,
    file_digest,
    model_identity,
    model_of,
    onnx_file_name,
    write_json,
)
from gr00t_server.backends.export_modules import LLMForExport, VisionForExport, sdpa_without_explicit_scale
from gr00t_server.serving.limits import ServerLimits

logger = logging.getLogger(__name__)

# Above this many parameter bytes the weights go to one `<name>.onnx.data` file (protobuf limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1 << 30
DEFAULT_MAX_LANGUAGE_TOKENS = ServerLimits().max_language_tokens  # serve's --max-language-tokens default


@dataclass
class CapturedCall:
    """Arguments and output of one call of a sub-module during the sample `get_action`."""

    args: tuple
    kwargs: dict
    output: Any


def detached(value: Any) -> Any:
    """A copy of `value` (a tensor, or tensors in lists, tuples and dicts) that later in-place changes cannot reach."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(detached(v) for v in value)
    if isinstance(value, dict):
        return {k: detached(v) for k, v in value.items()}
    return value


def hooked_submodules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's sub-modules by export name (the units of model.md §7.1)."""
    head = model.action_head
    return {
        "vit": model.backbone.visual,
        "llm": model.backbone.language_model,
        "vl_self_attention": head.vl_self_attention,
        "state_encoder": head.state_encoder,
        "action_encoder": head.action_encoder,
        "dit": head.model,
        "action_decoder": head.action_decoder,
    }


def capture_calls(model: nn.Module, run_sample: Callable[[], Any]) -> dict[str, CapturedCall]:
    """Run `run_sample()` once with forward hooks on every exportable sub-module; keep each first call."""
    captured: dict[str, CapturedCall] = {}
    handles = []

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if name not in captured:
                captured[name] = CapturedCall(detached(args), detached(kwargs), detached(output))

        return hook

    try:
        for name, module in hooked_submodules(model).items():
            handles.append(module.register_forward_hook(make_hook(name), with_kwargs=True))
        run_sample()
    finally:
        for handle in handles:
            handle.remove()
    return captured


# ----- per-sub-module export specs -----


@dataclass
class ExportSpec:
    """One ONNX graph: the module to trace, sample inputs, names and dynamic axes."""

    module: nn.Module
    inputs: tuple
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


def _as_dtype(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The module in `dtype`: itself when it already is, else a copy (the served model stays untouched)."""
    params = list(module.parameters())
    if all(p.dtype == dtype for p in params):
        return module
    return copy.deepcopy(module).to(dtype)


def _batch(names: list[str]) -> dict[str, dict[int, str]]:
    return {name: {0: "batch_size"} for name in names}


def _vit_spec(model: nn.Module, call: CapturedCall) -> tuple[ExportSpec, dict[str, Any]]:
    pixel_values = call.args[0]
    grid_thw = call.kwargs.get("grid_thw", call.args[1] if len(call.args) > 1 else None)
    if grid_thw is None:
        raise BackendError("the sample get_action ran the vision tower without image_grid_thw")
    if not bool((grid_thw == grid_thw[0]).all()):
        raise BackendError(f"ViT export needs one image size for all images; captured grids {grid_thw.tolist()}")
    images, patches = grid_thw.shape[0], int(grid_thw[0].prod())
    module = VisionForExport(_as_dtype(model.backbone.visual, torch.float32), grid_thw[0])
    sample = pixel_values.to(torch.float32).reshape(images, patches, -1)
    spec = ExportSpec(
        module, (sample,), ["pixel_values"], ["image_embeds", "deepstack_features"],
        {"pixel_values": {0: "num_images"}, "image_embeds": {0: "num_images"}, "deepstack_features": {1: "num_images"}},
    )
    info = {
        "image_grid_thw": grid_thw[0].tolist(),
        "num_images": images,
        "num_patches": patches * images,
        "num_merged_patches": patches * images // 4,
        "num_deepstack": len(model.backbone.visual.deepstack_visual_indexes),
    }
    return spec, info


def _llm_spec(model: nn.Module, call: CapturedCall, dtype: torch.dtype) -> tuple[ExportSpec, dict[str, Any]]:
    kw = call.kwargs
    deepstack = list(kw.get("deepstack_visual_embeds") or [])
    inputs_embeds = kw["inputs_embeds"].to(dtype)
    batch, length = inputs_embeds.shape[:2]
    visual_pos_masks = kw.get("visual_pos_masks")
    if visual_pos_masks is None:
        visual_pos_masks = torch.zeros(batch, length, dtype=torch.bool, device=inputs_embeds.device)
    attention_mask = kw.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=inputs_embeds.device)
    module = LLMForExport(_as_dtype(model.backbone.language_model, dtype), len(deepstack))
    ds_names = [f"deepstack_{i}" for i in range(len(deepstack))]
    inputs = (inputs_embeds, attention_mask.to(torch.long), kw["position_ids"], visual_pos_masks.bool(),
              *(d.to(dtype) for d in deepstack))
    axes = {
        "inputs_embeds": {0: "batch_size", 1: "seq_len"},
        "attention_mask": {0: "batch_size", 1: "seq_len"},
        "position_ids": {1: "batch_size", 2: "seq_len"},
        "visual_pos_masks": {0: "batch_size", 1: "seq_len"},
        "embeddings": {0: "batch_size", 1: "seq_len"},
        **{name: {0: "num_vis_tokens"} for name in ds_names},
    }
    spec = ExportSpec(
        module, inputs, ["inputs_embeds", "attention_mask", "position_ids", "visual_pos_masks", *ds_names],
        ["embeddings"], axes,
    )
    info = {"llm_seq_len": length, "llm_hidden_size": inputs_embeds.shape[-1], "num_vis_tokens": int(visual_pos_masks.sum())}
    return spec, info


def _head_spec(name: str, module: nn.Module, call: CapturedCall, dtype: torch.dtype) -> ExportSpec:
    args = tuple(_cast(a, dtype) for a in call.args)
    module = _as_dtype(module, dtype)
    if name == "vl_self_attention":
        return ExportSpec(module, args, ["hidden_states"], ["output"],
                          {"hidden_states": {0: "batch_size", 1: "seq_len"}, "output": {0: "batch_size", 1: "seq_len"}})
    if name == "state_encoder":
        return ExportSpec(module, args, ["state", "embodiment_id"], ["output"], _batch(["state", "embodiment_id", "output"]))
    if name == "action_encoder":
        return ExportSpec(module, args, ["actions", "timesteps", "embodiment_id"], ["output"],
                          _batch(["actions", "timesteps", "embodiment_id", "output"]))
    if name == "action_decoder":
        return ExportSpec(module, args, ["model_output", "embodiment_id"], ["output"],
                          _batch(["model_output", "embodiment_id", "output"]))
    if name == "dit":
        sa_embs, vl_embs, timestep = args[:3]
        image_mask = args[3].bool() if len(args) > 3 and args[3] is not None else None
        attention = args[4].bool() if len(args) > 4 and args[4] is not None else None
        if image_mask is None or attention is None:
            raise BackendError("the sample DiT call had no image_mask/backbone_attention_mask; cannot export it")
        vl_axes = {0: "batch_size", 1: "vl_seq_len"}
        return ExportSpec(
            module, (sa_embs, vl_embs, timestep, image_mask, attention),
            ["sa_embs", "vl_embs", "timestep", "image_mask", "backbone_attention_mask"], ["output"],
            {"sa_embs": {0: "batch_size"}, "vl_embs": vl_axes, "timestep": {0: "batch_size"},
             "image_mask": vl_axes, "backbone_attention_mask": vl_axes, "output": {0: "batch_size"}},
        )
    raise ValueError(f"unknown action-head sub-module {name!r}")


def _value_info(value: Any) -> dict[str, Any]:
    return {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}


# Where tracing meets Python values it records as constants, known to hold for every input the export takes: the
# attention scale factor (head size), the timestep encoding's log(1e4), the action encoder's shape check (it raises
# or not, no value flows from it). Any other TracerWarning is shown: it may mark a trace that fits one batch only.
_KNOWN_TRACER_WARNING_MODULES = r"gr00t_server\.(backends\.export_modules|model\.embodiment_mlp)$"
# torch deprecated the TorchScript-based exporter (dynamo=False) in 2.9; the reference exports with it, and so do we
# (tests/server export tests fail first if a torch release removes it)
_LEGACY_EXPORTER_NOTICE = "You are using the legacy TorchScript-based ONNX export"


def _ignore_known_export_warnings() -> None:
    """Inside warnings.catch_warnings(): ignore the warnings an export is known to raise, and only those."""
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=_KNOWN_TRACER_WARNING_MODULES)
    warnings.filterwarnings("ignore", message=_LEGACY_EXPORTER_NOTICE, category=DeprecationWarning)
    # the exporter's own use of what torch deprecated inside torch.onnx: nothing an export's caller can change
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")


def export_onnx(spec: ExportSpec, path: Path) -> dict[str, Any]:
    """Trace `spec` to `path` (opset 19, legacy exporter like the reference); returns its I/O description."""
    param_bytes = sum(p.numel() * p.element_size() for p in spec.module.parameters())
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch, warnings.catch_warnings():
        _ignore_known_export_warnings()
        scratch_path = Path(scratch) / path.name
        with torch.no_grad(), sdpa_without_explicit_scale():
            torch.onnx.export(
                spec.module.eval(), spec.inputs, str(scratch_path),
                input_names=spec.input_names, output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes, opset_version=OPSET_VERSION,
                do_constant_folding=True, dynamo=False,
            )
        _save_consolidated(scratch_path, path, external=param_bytes > EXTERNAL_DATA_THRESHOLD)
        with torch.no_grad():
            outputs = spec.module(*spec.inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    written = [path] + [p for p in (path.parent / (path.name + ".data"),) if p.exists()]
    return {
        "file": path.name,
        "files": {p.name: file_digest(p) for p in written},
        "inputs": {n: {**_value_info(v), "dynamic_axes": spec.dynamic_axes.get(n, {})} for n, v in zip(spec.input_names, spec.inputs)},
        "outputs": {n: {**_value_info(v), "dynamic_axes": spec.dynamic_axes.get(n, {})} for n, v in zip(spec.output_names, outputs)},
    }


def _save_consolidated(source: Path, target: Path, external: bool) -> None:
    """Re-save `source` as `target`, with all weights in one `<name>.onnx.data` file when `external`."""
    import onnx

    model = onnx.load(str(source), load_external_data=True)
    data_name = target.name + ".data"
    for stale in (target, target.parent / data_name):
        stale.unlink(missing_ok=True)
    if external:
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name)
        # onnx writes the data file 0600; give it the graph's mode so a server running as another user reads both
        os.chmod(target.parent / data_name, stat.S_IMODE(target.stat().st_mode))
    else:
        onnx.save_model(model, str(target))


def export_model(
    model: nn.Module,
    run_sample: Callable[[], Any],
    output_dir: Union[str, Path],
    mode: str = "full_pipeline",
    precision: Optional[str] = None,
    extra_metadata: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Export the sub-modules of `mode` from `model` to `output_dir`; shapes come from `run_sample()`.

    `precision` defaults to the model's dtype. The ViT is always exported in fp32 (model.md §7.1).
    Returns the metadata also written to `export_metadata.json`.
    """
    if mode not in EXPORT_MODES:
        raise BackendError(f"unknown export mode {mode!r}; expected one of {list(EXPORT_MODES)}")
    precision = precision or PRECISION_OF_DTYPE.get(model.dtype, "fp32")
    if precision not in TORCH_DTYPES:
        raise BackendError(f"unknown precision {precision!r}; expected one of {list(TORCH_DTYPES)}")
    dtype = TORCH_DTYPES[precision]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    calls = capture_calls(model, run_sample)
    wanted = MODE_SUBMODULES[mode]
    missing = [name for name in wanted if name not in calls]
    if missing:
        raise BackendError(f"the sample get_action never called {missing}; cannot export mode {mode!r}")

    config = model.config
    dit_call = calls["dit"]
    metadata: dict[str, Any] = {
        "model_version": MODEL_VERSION,
        "export_mode": mode,
        "precision": precision,
        "opset_version": OPSET_VERSION,
        "batch_size": int(dit_call.args[0].shape[0]),
        "sa_seq_len": int(dit_call.args[0].shape[1]),
        "vl_seq_len": int(dit_call.args[1].shape[1]),
        "action_horizon": config.action_horizon,
        "max_action_dim": config.max_action_dim,
        "max_state_dim": config.max_state_dim,
        "state_history_length": config.state_history_length,
        "hidden_size": config.hidden_size,
        "input_embedding_dim": config.input_embedding_dim,
        "backbone_embedding_dim": config.backbone_embedding_dim,
        "num_inference_timesteps": config.num_inference_timesteps,
        "model_identity": model_identity(model),
        "torch_version": torch.__version__,
        "submodules": {},
        **(extra_metadata or {}),
    }
    head_modules = hooked_submodules(model)
    for name in wanted:
        if name == "vit":
            spec, info = _vit_spec(model, calls[name])
            metadata.update(info)
            file_precision = "fp32"
        elif name == "llm":
            spec, info = _llm_spec(model, calls[name], dtype)
            metadata.update(info)
            file_precision = precision
        else:
            spec = _head_spec(name, head_modules[name], calls[name], dtype)
            file_precision = precision
        path = out / onnx_file_name(name, file_precision)
        logger.info("exporting %s to %s", name, path)
        metadata["submodules"][name] = _with_language_room(export_onnx(spec, path), metadata.get("max_language_tokens"))
    write_json(out / EXPORT_METADATA, metadata)
    return metadata


def _with_language_room(info: dict[str, Any], max_language_tokens: Optional[int]) -> dict[str, Any]:
    """`info` with `profile_max` {axis: the sample prompt's length + max_language_tokens} for its inputs' prompt axes:
    build-engine sizes the engines' profiles to it, so they hold the prompt of any instruction serve accepts (sized
    from the sample prompt alone, they refused one longer than about the sample's at run time)."""
    if max_language_tokens is None:
        return info
    for value in info["inputs"].values():
        room = {str(axis): int(value["shape"][int(axis)]) + max_language_tokens
                for axis, dim in value.get("dynamic_axes", {}).items() if dim in PROMPT_AXES}
        if room:
            value["profile_max"] = room
    return info


def export_policy(
    policy: Any,
    observation: dict[str, Any],
    output_dir: Union[str, Path],
    mode: str = "full_pipeline",
    precision: Optional[str] = None,
    max_language_tokens: int = DEFAULT_MAX_LANGUAGE_TOKENS,
) -> dict[str, Any]:
    """Export from a Gr00tPolicy, capturing shapes during one `policy.get_action(observation)`; the prompt axes are
    given room for instructions of `max_language_tokens` tokens (serve's --max-language-tokens) beyond the sample's."""
    if not (isinstance(max_language_tokens, int) and max_language_tokens >= 1):
        raise BackendError(f"max_language_tokens must be an int >= 1 (serve's --max-language-tokens), got "
                           f"{max_language_tokens!r}")
    model = model_of(policy)
    tag = getattr(policy, "embodiment_tag_value", None) or str(getattr(policy, "embodiment_tag", ""))
    extra: dict[str, Any] = {"embodiment_tag": tag, "model_path": str(getattr(policy, "checkpoint_dir", "")),
                             "max_language_tokens": max_language_tokens}
    frames = [value for value in (observation.get("video") or {}).values() if getattr(value, "ndim", 0) >= 3]
    if frames:  # the camera size the sample had: a full_pipeline ViT serves the image grid it gives, and no other
        extra["sample_image_size"] = [int(frames[0].shape[-3]), int(frames[0].shape[-2])]
    return export_model(
        model, lambda: policy.get_action(observation, {"seed": 0}), output_dir, mode, precision, extra_metadata=extra,
    )


def default_embodiment_tag(model_path: Union[str, Path]) -> str:
    """The embodiment tag export and verify use when given none: `serve`'s default (new_embodiment) when the
    checkpoint supports it, else the first of its tags in name order."""
    from gr00t_server.model.checkpoint import resolve_checkpoint_dir
    from gr00t_server.processing.config import load_processor_config

    from gr00t_client import EmbodimentTag

    tags = load_processor_config(resolve_checkpoint_dir(model_path)).embodiment_tags
    if not tags:
        raise BackendError(f"{model_path} supports no embodiment tags")
    serves_by_default = EmbodimentTag.NEW_EMBODIMENT.value  # gr00t-server serve --embodiment-tag's default
    return serves_by_default if serves_by_default in tags else sorted(tags)[0]


DEFAULT_SAMPLE_IMAGE_SIZE = (256, 256)


def sample_observation(policy: Any, batch_size: int = 1, seed: int = 0,
                       image_size: Optional[Sequence[int]] = None) -> dict[str, Any]:
    """A random observation built from the policy's modality configs and state statistics, its camera frames
    `image_size` (height, width): by default the size the policy's export was traced with (apply_onnxruntime notes
    it as `sample_image_size`), else 256x256."""
    from gr00t_server.test_checkpoint import example_observation

    size = image_size or getattr(policy, "sample_image_size", None) or DEFAULT_SAMPLE_IMAGE_SIZE
    return example_observation(policy.checkpoint_dir, policy.embodiment_tag_value, batch_size=batch_size, seed=seed,
                               image_size=(int(size[0]), int(size[1])))


def export_checkpoint(
    model_path: Union[str, Path],
    output_dir: Union[str, Path],
    mode: str = "full_pipeline",
    precision: Optional[str] = None,
    batch_size: int = 1,
    embodiment_tag: Optional[str] = None,
    device: str = "cuda",
    image_size: Sequence[int] = DEFAULT_SAMPLE_IMAGE_SIZE,
    max_language_tokens: int = DEFAULT_MAX_LANGUAGE_TOKENS,
) -> dict[str, Any]:
    """Load a checkpoint as a Gr00tPolicy, run one sample observation (camera frames `image_size`, height and
    width) and export `mode`, its prompt axes sized for instructions of `max_language_tokens` tokens."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    tag = embodiment_tag or default_embodiment_tag(model_path)
    dtype = TORCH_DTYPES[precision] if precision else None
    policy = Gr00tPolicy(model_path, tag, device=device, strict=True, dtype=dtype)
    observation = sample_observation(policy, batch_size=batch_size, image_size=image_size)
    return export_policy(policy, observation, output_dir, mode, precision, max_language_tokens)


def clear_export_dir(output_dir: Union[str, Path]) -> None:
    """Remove the files of the export in `output_dir`, as its metadata lists them; nothing a user put there."""
    from gr00t_server.backends.export_dir import own_files

    out = Path(output_dir)
    for name in reversed(own_files(out)):  # metadata first: a half-cleared folder never looks whole
        if (out / name).is_file() or (out / name).is_symlink():
            (out / name).unlink()
