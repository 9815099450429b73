"""torch.compile mode: compile only the DiT forward, as the reference benchmark does (model.md §7.4)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from gr00t_server.backends.common import BackendError, model_of

logger = logging.getLogger(__name__)


def apply_torch_compile(policy: Any, mode: str = "max-autotune", dynamic: bool = True) -> list[str]:
    """Replace `action_head.model.forward` with a compiled version; everything else stays eager.

    Compilation happens lazily at the first call (slow); later calls with the same shapes are fast.
    """
    if not hasattr(torch, "compile"):
        raise BackendError(f"inference mode 'torch-compile' needs torch>=2.0; this is torch {torch.__version__}")
    model = model_of(policy)
    dit = model.action_head.model
    if model.device.type == "cpu" and mode == "max-autotune":
        mode = "default"  # max-autotune tunes GPU kernels only
    dit.forward = torch.compile(dit.forward, mode=mode, dynamic=dynamic)
    logger.info("compiled the DiT forward with torch.compile(mode=%r)", mode)
    return ["dit"]
