"""Qwen3-VL image processor in numpy: smart resize, rescale + normalize, temporal repeat, patchify (model.md §2.3).

Matches transformers' slow Qwen2VLImageProcessor (PIL bicubic when a resize is needed). The reference runs the
fast (torchvision) processor, whose fused rescale/normalize differs by float rounding (~1e-7) and whose
antialiased bicubic resize differs slightly, only for frames whose size is not already a multiple of 32.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Sequence, Tuple

import numpy as np
from PIL import Image

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"


@dataclass(frozen=True)
class VisionPatchConfig:
    """Image-processor settings (preprocessor_config.json of the Qwen3-VL backbone)."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1.0 / 255.0
    min_pixels: int = 65536
    max_pixels: int = 16777216

    @property
    def factor(self) -> int:
        """Side lengths are rounded to multiples of patch_size * merge_size (32)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Values per patch row: 3 * temporal_patch_size * patch_size**2 (1536)."""
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VisionPatchConfig":
        """Read a preprocessor_config.json dict (Qwen3-VL `size` or Qwen2-VL `min_pixels`/`max_pixels`)."""
        defaults = cls()
        size = data.get("size") or {}
        min_pixels = size.get("shortest_edge", data.get("min_pixels", defaults.min_pixels))
        max_pixels = size.get("longest_edge", data.get("max_pixels", defaults.max_pixels))
        return cls(
            patch_size=int(data.get("patch_size", defaults.patch_size)),
            temporal_patch_size=int(data.get("temporal_patch_size", defaults.temporal_patch_size)),
            merge_size=int(data.get("merge_size", defaults.merge_size)),
            image_mean=tuple(float(v) for v in data.get("image_mean", defaults.image_mean)),
            image_std=tuple(float(v) for v in data.get("image_std", defaults.image_std)),
            rescale_factor=float(data.get("rescale_factor", defaults.rescale_factor)),
            min_pixels=int(min_pixels),
            max_pixels=int(max_pixels),
        )

    @classmethod
    def from_file(cls, path: Path) -> "VisionPatchConfig":
        with open(path, "r", encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    def to_dict(self) -> dict:
        """The preprocessor_config.json form (Qwen3-VL style)."""
        return {
            "image_processor_type": "Qwen2VLImageProcessorFast",
            "processor_class": "Qwen3VLProcessor",
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "do_convert_rgb": True,
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "rescale_factor": self.rescale_factor,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
        }


def smart_resize(height: int, width: int, factor: int = 32, min_pixels: int = 65536, max_pixels: int = 16777216) -> Tuple[int, int]:
    """Qwen2-VL smart resize: sides to multiples of `factor`, area kept within [min_pixels, max_pixels]."""
    if min(height, width) < 1:
        raise ValueError(f"image size must be positive, got {(height, width)}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be at most 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return int(h_bar), int(w_bar)


def patchify_image(image: np.ndarray, config: VisionPatchConfig = VisionPatchConfig()) -> Tuple[np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) -> (pixel rows (N, 1536) float32, grid_thw (3,) int64), Qwen2-VL patch order.

    Rows run over (grid_t, h/2 blocks, w/2 blocks, 2, 2); each row is laid out (C, T, 16, 16).
    Resizing (only when smart_resize changes the size) uses PIL bicubic, like transformers' slow processor.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got dtype {image.dtype} shape {image.shape}")
    height, width = image.shape[:2]
    new_h, new_w = smart_resize(height, width, config.factor, config.min_pixels, config.max_pixels)
    if (new_h, new_w) != (height, width):
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=Image.BICUBIC))
    pixels = image.astype(np.float32) * np.float32(config.rescale_factor)
    pixels = (pixels - np.asarray(config.image_mean, np.float32)) / np.asarray(config.image_std, np.float32)
    frames = np.repeat(pixels.transpose(2, 0, 1)[None], config.temporal_patch_size, axis=0)  # (T, C, H, W)
    p, m, tp = config.patch_size, config.merge_size, config.temporal_patch_size
    grid_t, grid_h, grid_w = 1, new_h // p, new_w // p
    patches = frames.reshape(grid_t, tp, 3, grid_h // m, m, p, grid_w // m, m, p)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    rows = patches.reshape(grid_t * grid_h * grid_w, 3 * tp * p * p)
    return np.ascontiguousarray(rows, dtype=np.float32), np.array([grid_t, grid_h, grid_w], dtype=np.int64)


def num_image_tokens(grid_thw: Sequence[int], merge_size: int = 2) -> int:
    """How many <|image_pad|> tokens one image becomes: t * h * w / merge_size**2."""
    t, h, w = (int(v) for v in grid_thw)
    return t * h * w // (merge_size * merge_size)


def patchify_images(images: List[np.ndarray], config: VisionPatchConfig = VisionPatchConfig()) -> Tuple[np.ndarray, np.ndarray]:
    """Patchify images in order and concatenate: (sum N_i, 1536) float32 and (n_images, 3) int64."""
    if not images:
        return np.zeros((0, config.patch_dim), np.float32), np.zeros((0, 3), np.int64)
    rows, grids = zip(*(patchify_image(img, config) for img in images))
    return np.concatenate(rows, axis=0), np.stack(grids, axis=0)
