"""Antialiased bilinear/bicubic resizes of uint8 image batches, the way torchvision's v2 `resize` does them.

torchvision (and therefore transformers' fast image processors, which the reference runs) interpolates uint8
images natively on a CPU: bicubic always, bilinear only where torch reports an "AVX2" CPU capability (a
substring test, so not on AVX512 or ARM CPUs). Elsewhere (those CPUs for bilinear, and GPUs) it interpolates in
float32, clamps bicubic results to [0, 255], rounds half to even and casts back. Mirroring that choice keeps
our results bit-for-bit equal to theirs on the same machine, without depending on torchvision.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

RESIZE_MODES = ("bilinear", "bicubic")


def native_uint8_resize(device: torch.device, mode: str) -> bool:
    """Whether torchvision would interpolate uint8 directly here: on a CPU, bicubic always and bilinear when the
    CPU capability string contains "AVX2" (torchvision's own test; "AVX512" does not, so an AVX512 or ARM CPU takes
    the float path for bilinear)."""
    if device.type != "cpu":
        return False
    return mode == "bicubic" or "AVX2" in torch.backends.cpu.get_cpu_capability()


def resize_uint8(images: torch.Tensor, size: Tuple[int, int], mode: str, native: Optional[bool] = None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, h, w), antialiased `mode` resize; the input itself when sizes agree.

    `native` forces the uint8 kernel (True) or the float32 path (False); by default torchvision's choice.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"resize_uint8 expects a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
    height, width = int(size[0]), int(size[1])
    if (height, width) == tuple(images.shape[-2:]):
        return images
    if images.shape[0] == 0:
        return images.new_empty(images.shape[:2] + (height, width))
    if native_uint8_resize(images.device, mode) if native is None else native:
        return F.interpolate(images, size=[height, width], mode=mode, align_corners=False, antialias=True)
    out = F.interpolate(images.to(torch.float32), size=[height, width], mode=mode, align_corners=False, antialias=True)
    if mode == "bicubic":
        out = out.clamp_(min=0, max=255)
    return out.round_().to(torch.uint8)
