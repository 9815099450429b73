"""Inference backends: ONNX export, ONNX Runtime and TensorRT serving, torch.compile, and parity checks.

`apply_inference_mode(policy, mode, onnx_dir=None, engine_dir=None)` swaps the exported sub-modules
of a Gr00tPolicy's model for wrappers that run them outside PyTorch (model.md §7.3).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Union

from gr00t_server.backends.names import EXPORT_MODES, BackendError

logger = logging.getLogger(__name__)

INFERENCE_MODES = ("pytorch", "torch-compile", "onnxruntime", "tensorrt")

__all__ = ["BackendError", "EXPORT_MODES", "INFERENCE_MODES", "apply_inference_mode", "check_backend_before_load",
           "check_inference_mode_files", "export_precision"]


def check_inference_mode_files(mode: str, onnx_dir: Optional[Union[str, Path]] = None,
                               engine_dir: Optional[Union[str, Path]] = None) -> str:
    """The normalized mode name, after checking that the folder it needs is given and is a folder: BackendError
    otherwise (the CLI asks before loading the checkpoint, which can take minutes)."""
    normalized = mode.replace("_", "-").lower()
    needs = {"onnxruntime": ("--onnx-dir", onnx_dir, "gr00t-server export"),
             "tensorrt": ("--engine-dir", engine_dir, "gr00t-server build-engine")}.get(normalized)
    if needs is not None:
        flag, folder, made_by = needs
        if folder is None:
            raise BackendError(f"inference mode '{normalized}' needs {flag} (made by `{made_by}`)")
        if not Path(folder).is_dir():
            raise BackendError(f"{flag} {folder} is not a folder{'' if Path(folder).exists() else ' (it does not exist)'}; "
                               f"give the folder `{made_by}` wrote")
    return normalized


def export_precision(mode: str, onnx_dir: Optional[Union[str, Path]] = None,
                     engine_dir: Optional[Union[str, Path]] = None) -> Optional[str]:
    """The precision ("bf16", "fp16", "fp32") recorded by the export or engines `mode` serves, read without loading
    them; None for a mode that serves none. BackendError when the folder or its metadata is missing or malformed."""
    normalized = check_inference_mode_files(mode, onnx_dir, engine_dir)
    if normalized == "onnxruntime":
        from gr00t_server.backends.common import read_export_metadata

        return read_export_metadata(onnx_dir).get("precision")
    if normalized == "tensorrt":
        from gr00t_server.backends.common import ENGINE_METADATA, read_json
        from gr00t_server.backends.tensorrt_backend import engine_export_metadata

        metadata = read_json(Path(engine_dir) / ENGINE_METADATA, "TensorRT engine metadata")
        return engine_export_metadata(metadata).get("precision")
    return None


def _check_dtype_fits_export(precision: Optional[str], dtype: Optional[str], folder: Any) -> None:
    """BackendError naming both when `dtype` (serve's --dtype) and an export's precision differ with fp16 on one side:
    fp16 rounding alone changes the weights fingerprint, so the model would be refused once loaded (minutes)."""
    if dtype is None or precision is None:
        return
    from gr00t_server.backends.common import PRECISION_OF_DTYPE
    from gr00t_server.model.modeling import resolve_dtype

    loaded = PRECISION_OF_DTYPE.get(resolve_dtype("cpu", dtype))
    if loaded != precision and "fp16" in (loaded, precision):
        article = "an" if precision.startswith("f") else "a"
        raise BackendError(f"{folder} holds {article} {precision} export, and --dtype {dtype} loads the model in another "
                           f"precision ({loaded}): fp16 rounding alone changes the weights fingerprint, so the export "
                           f"would be refused once the checkpoint loaded; serve with --dtype {precision} (or leave "
                           f"--dtype out), or re-export with --precision {loaded}")


def check_backend_before_load(mode: str, onnx_dir: Optional[Union[str, Path]] = None,
                              engine_dir: Optional[Union[str, Path]] = None, device: Optional[str] = None,
                              max_language_tokens: Optional[int] = None, dtype: Optional[str] = None) -> str:
    """check_inference_mode_files, and what else needs no model: the backend is installed, its metadata is there and
    well formed, TensorRT gets a CUDA device and a bf16 ONNX export a CUDA one, `dtype` (serve's --dtype) fits the
    export's precision, and TensorRT engines whose prompt profiles hold instructions of `max_language_tokens` (serve's
    flag). The CLI calls it before the checkpoint loads (minutes for the 3B model, which `serve` spent before saying
    the export had no metadata or TensorRT was not installed)."""
    normalized = check_inference_mode_files(mode, onnx_dir, engine_dir)
    if normalized == "onnxruntime":
        from gr00t_server.backends.common import read_export_metadata
        from gr00t_server.backends.onnxruntime_backend import CPU_LACKS_BF16, import_onnxruntime

        import_onnxruntime()
        from gr00t_client.file_names import non_utf8_path_problem

        problem = non_utf8_path_problem(onnx_dir, "--onnx-dir", "onnxruntime")  # it said only 'incompatible arguments'
        if problem is not None:
            raise BackendError(problem)
        precision = read_export_metadata(onnx_dir).get("precision")
        if precision == "bf16" and device is not None and not str(device).startswith("cuda"):
            raise BackendError(f"{onnx_dir} holds a bf16 export, which --device {device} cannot run "
                               f"({CPU_LACKS_BF16}); or give a CUDA --device")
        _check_dtype_fits_export(precision, dtype, onnx_dir)
    elif normalized == "tensorrt":
        from gr00t_server.backends.common import ENGINE_METADATA, check_export_structure, read_json
        from gr00t_server.backends.tensorrt_backend import import_tensorrt

        import_tensorrt()
        if device is not None and not str(device).startswith("cuda"):
            raise BackendError(f"inference mode 'tensorrt' needs a CUDA --device; got {device}")
        import torch

        if not torch.cuda.is_available():  # a --device cuda given here failed in the load, advising device 'cpu'
            raise BackendError("inference mode 'tensorrt' needs a CUDA GPU; torch sees none on this machine")
        path = Path(engine_dir) / ENGINE_METADATA
        metadata = read_json(path, "TensorRT engine metadata")
        check_export_structure(metadata.get("export_metadata", {}), path)
        from gr00t_server.backends.tensorrt_backend import engine_export_metadata

        _check_dtype_fits_export(engine_export_metadata(metadata).get("precision"), dtype, engine_dir)
        if max_language_tokens is not None:
            from gr00t_server.backends.tensorrt_backend import check_engine_language_room

            check_engine_language_room(metadata, max_language_tokens, engine_dir)
    return normalized


def apply_inference_mode(
    policy: Any,
    mode: str,
    onnx_dir: Optional[Union[str, Path]] = None,
    engine_dir: Optional[Union[str, Path]] = None,
) -> list[str]:
    """Switch `policy` to `mode` in place; returns the names of the swapped sub-modules.

    Raises BackendError (one line) when the backend is not installed or the files do not fit the
    model (another config or weights) or the GPU.
    """
    normalized = check_inference_mode_files(mode, onnx_dir, engine_dir)
    if normalized == "pytorch":
        return []
    if normalized == "torch-compile":
        from gr00t_server.backends.torch_compile import apply_torch_compile

        swapped = apply_torch_compile(policy)
    elif normalized == "onnxruntime":
        from gr00t_server.backends.onnxruntime_backend import apply_onnxruntime

        swapped = apply_onnxruntime(policy, onnx_dir)
    elif normalized == "tensorrt":
        from gr00t_server.backends.tensorrt_backend import apply_tensorrt

        swapped = apply_tensorrt(policy, engine_dir)
    else:
        raise BackendError(f"unknown inference mode {mode!r}; expected one of {list(INFERENCE_MODES)}")
    policy.inference_mode = normalized  # reported by Gr00tPolicy.runtime() in get_server_info
    return swapped
