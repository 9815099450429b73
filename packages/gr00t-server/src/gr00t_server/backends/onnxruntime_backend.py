"""ONNX Runtime backend: one InferenceSession per exported sub-module, fed torch tensors via IOBinding."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch

from gr00t_client.usable_cpus import usable_cpu_count
from gr00t_server.backends.common import (
    MODEL_VERSION,
    TORCH_DTYPES,
    BackendError,
    check_export_files,
    check_model_identity,
    check_unchanged,
    model_of,
    read_export_metadata,
)
from gr00t_server.backends.wrappers import swap_exported_modules

logger = logging.getLogger(__name__)

# ONNX TensorProto element types <-> torch dtypes (IOBinding takes the ONNX integer, which covers bf16).
_ONNX_TYPES = {
    "tensor(float)": (1, torch.float32),
    "tensor(uint8)": (2, torch.uint8),
    "tensor(int8)": (3, torch.int8),
    "tensor(int32)": (6, torch.int32),
    "tensor(int64)": (7, torch.int64),
    "tensor(bool)": (9, torch.bool),
    "tensor(float16)": (10, torch.float16),
    "tensor(double)": (11, torch.float64),
    "tensor(bfloat16)": (16, torch.bfloat16),
}


# fp16 exports run on ONNX Runtime's CPU provider (served with --dtype fp16); bf16 ones do not
CPU_LACKS_BF16 = ("ONNX Runtime's CPU provider lacks bf16 kernels: for CPU serving export with --precision fp32, or "
                  "--precision fp16 and serve with --dtype fp16")


def import_onnxruntime() -> Any:
    """Import onnxruntime or raise BackendError saying which extra to install, or why an installed one failed."""
    try:
        import onnxruntime
    except Exception as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "onnxruntime":
            raise BackendError(
                "inference mode 'onnxruntime' needs onnxruntime: pip install 'gr00t-server[onnx]' "
                "(or [onnx-gpu] for CUDA)"
            ) from exc
        raise BackendError(_import_failure(exc)) from exc  # installed, but cannot load (built for numpy 1, say)
    return onnxruntime


def import_onnx() -> Any:
    """Import onnx, which `gr00t-server export` writes its files with, or raise BackendError saying which extra to
    install, or why an installed one failed."""
    try:
        import onnx
    except Exception as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "onnx":
            raise BackendError("ONNX export needs onnx: pip install 'gr00t-server[onnx]' (or [onnx-gpu] for CUDA)") from exc
        raise BackendError(_import_failure(exc, "ONNX export", ("onnx",))) from exc
    return onnx


def _import_failure(exc: Exception, purpose: str = "inference mode 'onnxruntime'",
                    distributions: tuple[str, ...] = ("onnxruntime", "onnxruntime-gpu")) -> str:
    """Why an installed module failed to import: its error, its release and numpy's, and the extra to upgrade."""
    import importlib.metadata

    import numpy

    name = installed = distributions[0]
    for distribution in distributions:
        try:
            installed = f"{distribution} {importlib.metadata.version(distribution)}"
            name = distribution
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__  # onnxruntime 1.18 raises a bare one
    # The module that failed is upgraded by name: `--upgrade 'gr00t-server[onnx]'` would let pip take gr00t-server
    # itself from the index (README "Install": the gr00t names are unclaimed there).
    return (f"{purpose}: {installed} is installed but failed to import ({error}) beside numpy "
            f"{numpy.__version__}: pip install --upgrade {name}")


def providers_for(device: torch.device) -> list[Any]:
    """Execution providers for `device`; CUDA needs onnxruntime-gpu."""
    ort = import_onnxruntime()
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendError(
                "the model is on CUDA but onnxruntime has no CUDAExecutionProvider; "
                "pip install 'gr00t-server[onnx-gpu]' (onnxruntime-gpu) or serve on CPU"
            )
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtRunner:
    """An InferenceSession called with named torch tensors; inputs and outputs stay on `device`."""

    def __init__(self, path: Union[str, Path], device: torch.device, providers: Optional[list[Any]] = None) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        self.device = device
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if device.type == "cpu":
            # One session per sub-module, each with its own intra-op pool: pools that spin after a run take the
            # cores from the next session and from torch's preprocessing (3-4x slower calls on a small machine).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.intra_op_num_threads = usable_cpu_count()
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers or providers_for(device))
        except Exception as exc:  # onnxruntime raises its own exception types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = ""
            if device.type == "cpu" and "NOT_IMPLEMENTED" in reason:
                hint = f" ({CPU_LACKS_BF16})"
            raise BackendError(f"onnxruntime could not load {self.path.name}: {reason}{hint}") from exc
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = {o.name: o for o in self.session.get_outputs()}
        self.input_names = list(self.inputs)
        self.output_names = list(self.outputs)
        for value in (*self.inputs.values(), *self.outputs.values()):
            if value.type not in _ONNX_TYPES:
                raise BackendError(f"{self.path.name}: unsupported ONNX type {value.type} for {value.name}")

    def _output_shape(self, name: str, dims: dict[str, int]) -> list[int]:
        shape = []
        for dim in self.outputs[name].shape:
            if isinstance(dim, int):
                shape.append(dim)
            elif dim in dims:
                shape.append(dims[dim])
            else:
                raise BackendError(f"{self.path.name}: cannot infer output {name} dim {dim!r} from the inputs")
        return shape

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the session on `feeds` (converted to the session's dtypes) and return torch outputs."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"{self.path.name} needs inputs {missing}; got {sorted(feeds)}")
        binding = self.session.io_binding()
        device_type, device_id = self.device.type, self.device.index or 0
        dims: dict[str, int] = {}
        keep_alive = []
        for name, meta in self.inputs.items():
            onnx_type, dtype = _ONNX_TYPES[meta.type]
            tensor = feeds[name].to(device=self.device, dtype=dtype).contiguous()
            if len(meta.shape) != tensor.dim():
                raise ValueError(f"{self.path.name} input {name} expects rank {len(meta.shape)}, got {tuple(tensor.shape)}")
            for dim, size in zip(meta.shape, tensor.shape):
                if isinstance(dim, str):
                    dims.setdefault(dim, int(size))
                elif dim != size:
                    raise ValueError(
                        f"{self.path.name} input {name} has shape {tuple(tensor.shape)}; the export fixed it to {meta.shape}"
                    )
            keep_alive.append(tensor)
            binding.bind_input(name, device_type, device_id, onnx_type, list(tensor.shape), tensor.data_ptr())
        results = {}
        for name, meta in self.outputs.items():
            onnx_type, dtype = _ONNX_TYPES[meta.type]
            out = torch.empty(self._output_shape(name, dims), dtype=dtype, device=self.device)
            results[name] = out
            binding.bind_output(name, device_type, device_id, onnx_type, list(out.shape), out.data_ptr())
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs come from torch's stream
        self.session.run_with_iobinding(binding)
        return results


def load_runners(onnx_dir: Union[str, Path], device: torch.device, metadata: dict[str, Any]) -> dict[str, OrtRunner]:
    """One OrtRunner per exported sub-module listed in the metadata (read_export_metadata's, its structure checked),
    after checking that every file is there and is the exported one (check_export_files)."""
    providers = providers_for(device)
    start = time.perf_counter()
    identities = check_export_files(onnx_dir, metadata)
    logger.info("checked the sha256 of the files in %s in %.1f s", onnx_dir, time.perf_counter() - start)
    submodules = metadata["submodules"]
    runners = {name: OrtRunner(Path(onnx_dir) / info["file"], device, providers) for name, info in submodules.items()}
    check_unchanged(identities, onnx_dir)  # the sessions read the files after their check: none may have changed
    return runners


def check_export_metadata(metadata: dict[str, Any], model: Any, onnx_dir: Union[str, Path]) -> None:
    """Raise BackendError when the export does not belong to this model."""
    if metadata.get("model_version") != MODEL_VERSION:
        raise BackendError(f"{onnx_dir} holds a {metadata.get('model_version')!r} export; expected {MODEL_VERSION!r}")
    check_model_identity(metadata.get("model_identity", {}), model, onnx_dir, metadata.get("precision"))


def apply_onnxruntime(policy: Any, onnx_dir: Union[str, Path]) -> list[str]:
    """Swap the sub-modules exported in `onnx_dir` into the policy's model, run by ONNX Runtime."""
    import_onnxruntime()
    model = model_of(policy)
    metadata = read_export_metadata(onnx_dir)
    check_export_metadata(metadata, model, onnx_dir)
    if TORCH_DTYPES.get(metadata.get("precision")) not in (None, model.dtype):
        logger.warning(
            "%s was exported in %s but the model runs in %s; tensors are cast at every sub-module boundary",
            onnx_dir, metadata.get("precision"), model.dtype,
        )
    runners = load_runners(onnx_dir, model.device, metadata)
    return swap_exported_modules(policy, runners, metadata)
