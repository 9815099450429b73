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

__all__ = ["BackendError", "EXPORT_MODES", "INFERENCE_MODES", "apply_inference_mode"]


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
    normalized = mode.replace("_", "-").lower()
    if normalized == "pytorch":
        return []
    if normalized == "torch-compile":
        from gr00t_server.backends.torch_compile import apply_torch_compile

        return apply_torch_compile(policy)
    if normalized == "onnxruntime":
        if onnx_dir is None:
            raise BackendError("inference mode 'onnxruntime' needs --onnx-dir (made by `gr00t-server export`)")
        from gr00t_server.backends.onnxruntime_backend import apply_onnxruntime

        return apply_onnxruntime(policy, onnx_dir)
    if normalized == "tensorrt":
        if engine_dir is None:
            raise BackendError("inference mode 'tensorrt' needs --engine-dir (made by `gr00t-server build-engine`)")
        from gr00t_server.backends.tensorrt_backend import apply_tensorrt

        return apply_tensorrt(policy, engine_dir)
    raise BackendError(f"unknown inference mode {mode!r}; expected one of {list(INFERENCE_MODES)}")
