"""Parity of a backend against PyTorch: cosine similarity, max abs error and relative error per sub-module and for
actions.

Cosine thresholds follow the reference verifier (model.md §7.3): > 0.999 PASS, > 0.99 WARN, else FAIL. The cosine
is blind to scale (an output twice too large has cosine 1.0), so the relative error must pass too: the RMS of the
difference over the RMS of the reference, for actions over the RMS of their motion within the chunk.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import torch

from gr00t_client.policy import NonFiniteActionError
from gr00t_server.backends.common import TORCH_DTYPES, BackendError, model_of
from gr00t_server.backends.export import CapturedCall, capture_calls, detached

logger = logging.getLogger(__name__)

PASS_COSINE = 0.999
WARN_COSINE = 0.99

# Relative error (PASS below, WARN below) by the dtype the model runs in. On the tiny checkpoint real backends measure
# about 1e-6 in fp32, 1e-3 per sub-module in fp16 and 8e-3 in bf16; deeper models and TF32 kernels add to that.
RELATIVE_ERROR_LIMITS = {
    torch.float32: (0.02, 0.05),
    torch.float16: (0.05, 0.1),
    torch.bfloat16: (0.1, 0.2),
}
# An action key that barely moves within the chunk (a closed gripper) is measured against this fraction of its size.
MIN_ACTION_SPREAD = 0.1
# Sub-modules that take the denoising timestep, checked at every Euler step: an export that froze the traced t=0
# into a constant is right at the first step only.
TIMESTEP_CONDITIONED = ("action_encoder", "dit")
# Sub-modules that take the embodiment id (attribute names of the action head): an export serves every embodiment of
# the checkpoint, so these are also fed the recorded inputs with each other served embodiment's id.
EMBODIMENT_CONDITIONED = ("state_encoder", "action_encoder", "action_decoder")
STATUS_SEVERITY = {"PASS": 0, "WARN": 1, "FAIL": 2}
# The padded-batch pass gives its rows these prompts in turn: of different token lengths, so every row of the short
# one is padded and an export that ignores the attention mask fails (the sample's rows share one prompt: none is).
PADDED_BATCH_PROMPTS = ("Pick up the bowl.", "Pick up the red bowl and place it on the big plate, then open the top drawer.")
PADDED_BATCH = "padded batch"


def cosine_similarity(reference: Any, candidate: Any) -> float:
    """Cosine of the flattened arrays in float64; 1.0 when both are all zeros."""
    a = _as_float64(reference).ravel()
    b = _as_float64(candidate).ravel()
    if a.shape != b.shape:
        raise ValueError(f"cannot compare arrays of {a.size} and {b.size} values")
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms == 0.0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a, b) / norms)


def max_abs_error(reference: Any, candidate: Any) -> float:
    """Largest absolute elementwise difference."""
    return float(np.max(np.abs(_as_float64(reference) - _as_float64(candidate)), initial=0.0))


def relative_error(reference: Any, candidate: Any, scale: Any = None) -> float:
    """||candidate - reference|| / ||scale|| (default: the reference); 0.0 when both are all zeros."""
    difference = np.linalg.norm(_as_float64(candidate) - _as_float64(reference))
    norm = np.linalg.norm(_as_float64(reference if scale is None else scale))
    if norm == 0.0:
        return 0.0 if difference == 0.0 else float("inf")
    return float(difference / norm)


def action_spread(reference: Any) -> np.ndarray:
    """The reference actions less each action dimension's mean over batch and chunk (a constant offset, such as a
    joint's resting angle, would hide a large error), floored at MIN_ACTION_SPREAD of their size."""
    values = _as_float64(reference)
    motion = values - values.reshape(-1, values.shape[-1]).mean(axis=0)
    floor = MIN_ACTION_SPREAD * np.linalg.norm(values)
    return motion if np.linalg.norm(motion) >= floor else values * MIN_ACTION_SPREAD


def _as_float64(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


def status_for(cosine: float) -> str:
    """PASS / WARN / FAIL by the reference thresholds (NaN fails)."""
    if cosine > PASS_COSINE:
        return "PASS"
    if cosine > WARN_COSINE:
        return "WARN"
    return "FAIL"


def relative_error_status(error: float, dtype: torch.dtype = torch.float32) -> str:
    """PASS / WARN / FAIL of a relative error by the limits of `dtype` (NaN fails)."""
    pass_below, warn_below = RELATIVE_ERROR_LIMITS.get(dtype, RELATIVE_ERROR_LIMITS[torch.float32])
    if error < pass_below:
        return "PASS"
    if error < warn_below:
        return "WARN"
    return "FAIL"


def _worst(statuses: Any) -> str:
    statuses = set(statuses)
    return next((s for s in ("FAIL", "WARN") if s in statuses), "PASS")


@dataclass(frozen=True)
class Comparison:
    """One compared output."""

    name: str
    cosine: float
    max_abs_error: float
    relative_error: float = 0.0
    dtype: torch.dtype = torch.float32  # the model's, whose limits the relative error is held to
    at: str = ""  # where the worst of several compared calls was, such as "t=500"

    @property
    def status(self) -> str:
        """PASS / WARN / FAIL: the worse of the cosine's and the relative error's."""
        return _worst((status_for(self.cosine), relative_error_status(self.relative_error, self.dtype)))

    @property
    def label(self) -> str:
        """The row's name in the report: the output, and where its worst call was when it has one."""
        return f"{self.name} (worst at {self.at})" if self.at else self.name

    @property
    def severity(self) -> tuple[int, float, float]:
        """Sort key: worse status first, then larger relative error, then smaller cosine."""
        return STATUS_SEVERITY[self.status], self.relative_error, -self.cosine


def compare(
    name: str, reference: Any, candidate: Any, dtype: torch.dtype = torch.float32, scale: Any = None
) -> Comparison:
    """Compare two arrays or tensors; the relative error is over `scale` (default: the reference)."""
    return Comparison(name, cosine_similarity(reference, candidate), max_abs_error(reference, candidate),
                      relative_error(reference, candidate, scale), dtype)


@dataclass
class VerifyReport:
    """All comparisons of one verification run."""

    mode: str
    comparisons: list[Comparison]
    embodiment_tag: Optional[str] = None  # the embodiment the sample observation and the model ran as
    notes: list[str] = field(default_factory=list)  # what was not checked, and why

    @property
    def status(self) -> str:
        """The worst status of all comparisons."""
        return _worst(c.status for c in self.comparisons)

    def format(self) -> str:
        """A printable table."""
        width = max([len(c.label) for c in self.comparisons] + [10])
        lines = [f"embodiment: {self.embodiment_tag}"] if self.embodiment_tag else []
        lines += [f"{'output':<{width}}  {'cosine':>10}  {'max_abs_err':>12}  {'rel_err':>10}  status",
                  "-" * (width + 46)]
        for c in self.comparisons:
            lines.append(f"{c.label:<{width}}  {c.cosine:>10.6f}  {c.max_abs_error:>12.4e}  {c.relative_error:>10.3e}  "
                         f"{c.status}")
        lines += [f"note: {note}" for note in self.notes]
        lines.append(self._limits())
        lines.append(f"overall ({self.mode}): {self.status}")
        return "\n".join(lines)

    def _limits(self) -> str:
        """The limits the statuses were given by (a PASS says nothing without them), per dtype the model ran in."""
        limits = []
        for dtype in sorted({c.dtype for c in self.comparisons}, key=str):
            pass_below, warn_below = RELATIVE_ERROR_LIMITS.get(dtype, RELATIVE_ERROR_LIMITS[torch.float32])
            limits.append(f"rel_err in {str(dtype).replace('torch.', '')} PASS below {pass_below:g}, WARN below "
                          f"{warn_below:g}")
        limits.append(f"cosine PASS above {PASS_COSINE:g}, WARN above {WARN_COSINE:g}; a row passes when both do")
        return f"limits: {'; '.join(limits)}"


def _primary(output: Any) -> Any:
    if isinstance(output, dict):
        return output.get("backbone_features", next(iter(output.values())))
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def submodule_targets(model: torch.nn.Module, swapped: list[str]) -> dict[str, torch.nn.Module]:
    """The (possibly swapped) modules to check in isolation, by report name."""
    head = model.action_head
    targets: dict[str, torch.nn.Module] = {}
    if "vit" in swapped:
        targets["vit"] = model.backbone.visual
    if "llm" in swapped:
        targets["backbone"] = model.backbone
    for name, module in (
        ("vl_self_attention", head.vl_self_attention),
        ("state_encoder", head.state_encoder),
        ("action_encoder", head.action_encoder),
        ("dit", head.model),
        ("action_decoder", head.action_decoder),
    ):
        if name in swapped:
            targets[name] = module
    return targets


def _recorder(calls: list[CapturedCall]) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        calls.append(CapturedCall(detached(args), detached(kwargs), detached(output)))

    return hook


def reference_calls(model: torch.nn.Module, run_sample: Callable[[], Any]) -> dict[str, list[CapturedCall]]:
    """PyTorch sub-module calls (inputs and outputs) of one sample run, keyed by report name: the backbone's and the
    timestep-conditioned sub-modules' every call (one per denoising step), the other sub-modules' first call."""
    head = model.action_head
    recorded = {"backbone": model.backbone, "action_encoder": head.action_encoder, "dit": head.model}
    every_call: dict[str, list[CapturedCall]] = {name: [] for name in recorded}
    handles = [module.register_forward_hook(_recorder(every_call[name]), with_kwargs=True)
               for name, module in recorded.items()]
    try:
        first_calls = capture_calls(model, run_sample)
    finally:
        for handle in handles:
            handle.remove()
    calls = {name: [call] for name, call in first_calls.items()}
    calls.update({name: recorded_calls for name, recorded_calls in every_call.items() if recorded_calls})
    return calls


def compare_calls(name: str, module: torch.nn.Module, calls: list[CapturedCall], dtype: torch.dtype,
                  timestep_for_step: Callable[[int, int], int]) -> Comparison:
    """`module` fed each recorded PyTorch call, against its output: the worst comparison, naming the timestep of
    its denoising step when `name` is timestep-conditioned and ran more than once."""
    rows = [compare(name, _primary(call.output), _primary(module(*call.args, **call.kwargs)), dtype) for call in calls]
    step = max(range(len(rows)), key=lambda index: rows[index].severity)
    if name in TIMESTEP_CONDITIONED and len(rows) > 1:
        return dataclasses.replace(rows[step], at=f"t={timestep_for_step(step, len(rows))}")
    return rows[step]


def with_embodiment_id(module: torch.nn.Module, calls: list[CapturedCall], embodiment_id: int) -> list[CapturedCall]:
    """`calls` of the PyTorch `module` with their `embodiment_id` argument replaced by `embodiment_id`, each with the
    module's output for it."""
    signature = inspect.signature(module.forward)
    rerun = []
    for call in calls:
        bound = signature.bind(*call.args, **call.kwargs)
        bound.arguments["embodiment_id"] = torch.full_like(bound.arguments["embodiment_id"], embodiment_id)
        rerun.append(CapturedCall(bound.args, bound.kwargs, detached(module(*bound.args, **bound.kwargs))))
    return rerun


def other_embodiment_ids(policy: Any) -> tuple[dict[str, int], list[str]]:
    """The projector index of each embodiment the policy's checkpoint serves besides the policy's own (tags sharing an
    index joined by "/"), and the tags its embodiment_id.json lists that serve refuses (no modality configs or usable
    statistics, or an index beyond the model's), which are not checked."""
    from gr00t_server.processing.checkpoint_files import EMBODIMENT_ID_NAME

    processor = policy.processor
    listed_in = processor.source_files.get(EMBODIMENT_ID_NAME)
    listed = json.loads(Path(listed_in).read_text(encoding="utf-8")) if listed_in else {}
    tags_by_id: dict[int, list[str]] = {}
    unserved = []
    for tag in sorted(set(listed) | set(processor.config.embodiment_tags)):
        try:
            processor.norm_params(tag)  # as a Gr00tPolicy loading for `tag` does
            index = processor.embodiment_id(tag)
        except (KeyError, ValueError):
            unserved.append(tag)
            continue
        if not 0 <= index < policy.model_config.max_num_embodiments:
            unserved.append(tag)
        elif index != policy.embodiment_id:
            tags_by_id.setdefault(index, []).append(tag)
    return {"/".join(tags): index for index, tags in tags_by_id.items()}, unserved


def padded_batch(observation: dict[str, Any]) -> dict[str, Any]:
    """`observation` with its rows' prompts of different token lengths (PADDED_BATCH_PROMPTS in turn); it needs at
    least 2 rows."""
    language = {key: [[PADDED_BATCH_PROMPTS[row % len(PADDED_BATCH_PROMPTS)]] for row in range(len(prompts))]
                for key, prompts in observation["language"].items()}
    return {**observation, "language": language}


@torch.no_grad()
def verify_policy(
    policy: Any,
    observation: dict[str, Any],
    apply_backend: Callable[[Any], list[str]],
    mode: str,
    seed: int = 0,
    padded_observation: Optional[dict[str, Any]] = None,
    other_embodiments: Optional[Mapping[str, int]] = None,
) -> VerifyReport:
    """Run PyTorch, swap the backend in with `apply_backend(policy)`, run again with the same noise.

    Each swapped sub-module is also fed the PyTorch inputs in isolation, so its own error is visible; the
    timestep-conditioned ones at every denoising step, reporting their worst. A `padded_observation` (see
    padded_batch) is compared too, in rows named `(padded batch)`. The embodiment-conditioned ones are also fed those
    inputs with the id of each of `other_embodiments` (tag: projector index), in rows named `(embodiment TAG)`.
    """
    model = model_of(policy)
    dtype = next(model.parameters()).dtype
    options = {"seed": seed}
    passes = {"": observation, **({PADDED_BATCH: padded_observation} if padded_observation is not None else {})}
    references: dict[str, tuple[dict[str, list[CapturedCall]], dict[str, Any]]] = {}
    for name, sample in passes.items():
        references[name] = _reference_run(policy, sample, options)
    head, sample_calls = model.action_head, references[""][0]
    embodiment_calls = {tag: {target: with_embodiment_id(getattr(head, target), sample_calls[target], index)
                              for target in EMBODIMENT_CONDITIONED if sample_calls.get(target)}
                        for tag, index in (other_embodiments or {}).items()}
    swapped = apply_backend(policy)
    if not swapped:  # the actions would compare PyTorch with itself and pass
        raise BackendError(f"the {mode} backend swapped no sub-module into the model: nothing to verify")
    targets = submodule_targets(model_of(policy), swapped)
    comparisons = []
    for name, sample in passes.items():
        calls, reference_actions = references[name]
        rows = []
        for target, module in targets.items():
            if calls.get(target):
                rows.append(compare_calls(target, module, calls[target], dtype, head.timestep_for_step))
        rows += _action_comparisons(policy, sample, options, reference_actions, dtype, mode)
        for tag, calls_by_target in embodiment_calls.items() if not name else ():  # after the sample's rows
            for target, tag_calls in calls_by_target.items():
                if target in targets:
                    row = compare_calls(target, targets[target], tag_calls, dtype, head.timestep_for_step)
                    rows.append(dataclasses.replace(row, name=f"{target} (embodiment {tag})"))
        comparisons += [dataclasses.replace(row, name=f"{row.name} ({name})") if name else row for row in rows]
    return VerifyReport(mode, comparisons)


def _reference_run(policy: Any, observation: dict[str, Any],
                   options: dict[str, Any]) -> tuple[dict[str, list[CapturedCall]], dict[str, Any]]:
    """PyTorch's sub-module calls (reference_calls) and actions for `observation`."""
    reference_actions: dict[str, Any] = {}

    def run_reference() -> None:
        reference_actions.clear()
        reference_actions.update(policy.get_action(observation, dict(options))[0])

    return reference_calls(model_of(policy), run_reference), reference_actions


def _action_comparisons(policy: Any, observation: dict[str, Any], options: dict[str, Any],
                        reference_actions: dict[str, Any], dtype: torch.dtype, mode: str) -> list[Comparison]:
    """The backend's actions for `observation` against PyTorch's: per action key, and all keys together."""
    keys = sorted(reference_actions)
    try:
        actions = policy.get_action(observation, dict(options))[0]
    except NonFiniteActionError as exc:  # a report to print, not a request to refuse: the action rows FAIL
        logger.warning("the %s backend's model output was refused in action key '%s' rows %s (NaN, inf or beyond "
                       "the bound of a plausible output); its actions are reported as NaN", mode, exc.key, exc.rows)
        actions = exc.action if exc.action is not None else {
            key: np.full(np.shape(reference_actions[key]), np.nan) for key in keys}
    spreads = {key: action_spread(reference_actions[key]) for key in keys}
    comparisons = [compare(f"action.{key}", reference_actions[key], actions[key], dtype, spreads[key]) for key in keys]
    comparisons.append(compare(
        "actions (all keys)",
        np.concatenate([np.ravel(reference_actions[k]) for k in keys]),
        np.concatenate([np.ravel(actions[k]) for k in keys]),
        dtype,
        np.concatenate([np.ravel(spreads[k]) for k in keys]),
    ))
    return comparisons


def _tag_recorded_at_export(
    model_path: Union[str, Path], metadata: dict[str, Any], folder: Union[str, Path], device: str,
    dtype: Optional[torch.dtype],
) -> Optional[str]:
    """The embodiment tag the export in `folder` recorded, when the checkpoint has it. A tag it lacks likely means
    another checkpoint's export: BackendError naming the model mismatch, or, for this model, the tag and the flag."""
    from gr00t_server.backends.common import EXPORT_METADATA
    from gr00t_server.backends.export import default_embodiment_tag
    from gr00t_server.backends.onnxruntime_backend import check_export_metadata
    from gr00t_server.model.checkpoint import resolve_checkpoint_dir
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.processing.config import load_processor_config

    recorded = metadata.get("embodiment_tag")
    if not recorded:
        return None
    tags = load_processor_config(resolve_checkpoint_dir(model_path)).embodiment_tags
    if recorded in tags:
        return recorded
    policy = Gr00tPolicy(model_path, default_embodiment_tag(model_path), device=device, strict=True, dtype=dtype)
    check_export_metadata(metadata, model_of(policy), folder)
    raise BackendError(f"{folder} was exported for embodiment tag {recorded!r} (its {EXPORT_METADATA}), which "
                       f"{model_path} does not have (its tags: {sorted(tags)}); choose one with --embodiment-tag")


def verify_checkpoint(
    model_path: Union[str, Path],
    onnx_dir: Optional[Union[str, Path]] = None,
    engine_dir: Optional[Union[str, Path]] = None,
    embodiment_tag: Optional[str] = None,
    device: Optional[str] = None,
    batch_size: int = 1,
    seed: int = 0,
    torch_compile: bool = False,
) -> VerifyReport:
    """Load the checkpoint and verify one backend against PyTorch: ONNX Runtime on `onnx_dir`, TensorRT on
    `engine_dir` (both in the export's precision), or torch.compile of the DiT when `torch_compile`."""
    from gr00t_server.backends import apply_inference_mode, check_backend_before_load
    from gr00t_server.backends.common import ENGINE_METADATA, read_export_metadata, read_json
    from gr00t_server.backends.export import default_embodiment_tag, sample_observation
    from gr00t_server.backends.tensorrt_backend import engine_export_metadata
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    if (onnx_dir is not None) + (engine_dir is not None) + bool(torch_compile) != 1:
        raise ValueError("verify needs exactly one of onnx_dir, engine_dir or torch_compile")
    metadata: dict[str, Any] = {}
    if engine_dir is not None:
        # As `serve` does, before the checkpoint loads: without CUDA, the load's "use device 'cpu'" can never work here.
        check_backend_before_load("tensorrt", engine_dir=engine_dir, device=device or "cuda")
        metadata = engine_export_metadata(read_json(Path(engine_dir) / ENGINE_METADATA, "TensorRT engine metadata"))
        mode = "tensorrt"
        device = device or "cuda"
    elif onnx_dir is not None:
        # as `serve` does, before the checkpoint loads: a bf16 export on CPU failed only once it had loaded
        check_backend_before_load("onnxruntime", onnx_dir=onnx_dir,
                                  device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
        metadata = read_export_metadata(onnx_dir)
        mode = "onnxruntime"
    else:
        mode = "torch-compile"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = TORCH_DTYPES.get(metadata.get("precision", ""), None)
    tag = (embodiment_tag or _tag_recorded_at_export(model_path, metadata, onnx_dir or engine_dir, device, dtype)
           or default_embodiment_tag(model_path))
    policy = Gr00tPolicy(model_path, tag, device=device, strict=True, dtype=dtype)
    observation = sample_observation(policy, batch_size=batch_size, seed=seed, image_size=metadata.get("sample_image_size"))
    # the sample's rows share one prompt, so none is padded: a second pass pads them (2 rows even at batch size 1),
    # within the batch TensorRT engines were built for (an engine of one row runs no padded batch: none is made)
    padded_rows = min(max(batch_size, 2), int(metadata.get("max_batch_size") or max(batch_size, 2)))
    padded = padded_batch(sample_observation(policy, batch_size=padded_rows, seed=seed,
                                             image_size=metadata.get("sample_image_size"))) if padded_rows >= 2 else None
    # an export serves every embodiment of the checkpoint (serve takes any tag with it): check each one's id too
    other_embodiments, unserved = other_embodiment_ids(policy)
    report = verify_policy(
        policy, observation,
        lambda p: apply_inference_mode(p, mode, onnx_dir=onnx_dir, engine_dir=engine_dir),
        mode, seed=seed, padded_observation=padded, other_embodiments=other_embodiments,
    )
    report.embodiment_tag = policy.embodiment_tag_value
    if unserved:
        report.notes.append(f"embodiments not checked, as serve refuses them (the checkpoint has no modality configs or "
                            f"usable statistics for them, or their projector index is beyond the model's): "
                            f"{', '.join(unserved)}")
    return report
