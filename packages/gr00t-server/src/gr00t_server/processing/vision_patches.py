"""Qwen3-VL image processor in torch: smart resize, rescale + normalize, temporal repeat, patchify (model.md §2.3).

Bit-for-bit the fast Qwen2VLImageProcessorFast the reference runs: transformers' own `smart_resize`, an
antialiased bicubic resize done as torchvision does it (`torch_resize`), the fused `(x - 255 mean) / (255 std)`
normalization in float32, and the same patch order. A batch of same-size frames is one gather: the uint8
frames are viewed as patches (temporal repeat as a broadcast) and copied once into the float32 output,
normalized in place, on whichever device the frames are sent to. On a CUDA `--preprocess-device` the resize takes
torch's float path (the reference's CPU tensors take the uint8 kernel): about 0.1% of values differ by 1/255 there.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..fork_locks import renew_locks_after_fork
from .checkpoint_files import _read_json
from .torch_resize import resize_uint8

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"

# Switches transformers' image processor honours that this one implements only at the Qwen3-VL values
# (value, as written in the error): bicubic resize, then rescale by rescale_factor, then normalize.
FIXED_SETTINGS: Dict[str, Tuple[Any, str]] = {
    "do_resize": (True, "true"),
    "resample": (3, "3 (bicubic)"),
    "do_rescale": (True, "true"),
    "do_normalize": (True, "true"),
}


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

    def __post_init__(self) -> None:
        # A patch or merge size of 0 divided by zero, and a negative one made negative shapes, at the first request.
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"'{name}' must be an int >= 1, got {value!r}")
        if self.max_pixels < self.min_pixels:
            raise ValueError(f"the longest edge / max_pixels ({self.max_pixels}) is below the shortest edge / min_pixels "
                             f"({self.min_pixels})")
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"'{name}' must be 3 finite numbers (one per RGB channel), got {list(values)!r}")
        if not all(v != 0 for v in self.image_std):
            raise ValueError(f"'image_std' must not hold 0 (pixels are divided by it), got {list(self.image_std)!r}")
        if not (math.isfinite(self.rescale_factor) and self.rescale_factor > 0):
            raise ValueError(f"'rescale_factor' must be a finite number > 0, got {self.rescale_factor!r}")

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
        _refuse_other_settings(data)
        defaults = cls()
        # As transformers' Qwen2-VL image processors read it: a top-level min_pixels/max_pixels overrides `size`
        # (it was the other way round here: another image grid than the reference's), and a `size` must then hold
        # both edges (a missing one fell back to the default without a word).
        size = dict(data.get("size") or {"shortest_edge": defaults.min_pixels, "longest_edge": defaults.max_pixels})
        if data.get("min_pixels") is not None:
            size["shortest_edge"] = data["min_pixels"]
        if data.get("max_pixels") is not None:
            size["longest_edge"] = data["max_pixels"]
        if "shortest_edge" not in size or "longest_edge" not in size:
            raise ValueError(f"'size' must hold shortest_edge and longest_edge (or min_pixels/max_pixels give them), "
                             f"got {data.get('size')!r}")
        min_pixels, max_pixels = size["shortest_edge"], size["longest_edge"]
        return cls(
            patch_size=_whole(data.get("patch_size", defaults.patch_size)),
            temporal_patch_size=_whole(data.get("temporal_patch_size", defaults.temporal_patch_size)),
            merge_size=_whole(data.get("merge_size", defaults.merge_size)),
            image_mean=_floats(data.get("image_mean", defaults.image_mean), "image_mean"),
            image_std=_floats(data.get("image_std", defaults.image_std), "image_std"),
            rescale_factor=_float(data.get("rescale_factor", defaults.rescale_factor), "rescale_factor"),
            min_pixels=_whole(min_pixels),
            max_pixels=_whole(max_pixels),
        )

    @classmethod
    def from_file(cls, path: Path) -> "VisionPatchConfig":
        """Read preprocessor_config.json; ValueError naming the file and the value when one is not usable."""
        data = _read_json(path)
        try:
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            if not isinstance(data.get("size") or {}, dict):
                raise ValueError(f"'size' must be an object with shortest_edge and longest_edge, got {data['size']!r}")
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

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


def _refuse_other_settings(data: Mapping[str, Any]) -> None:
    """ValueError for a FIXED_SETTINGS key set to another value (null means the default, as in transformers)."""
    for key, (supported, shown) in FIXED_SETTINGS.items():
        value = data.get(key)
        if value is not None and (value != supported or type(value) is not type(supported)):
            raise ValueError(f"'{key}' is {json.dumps(value)}, but only {shown} is supported (the Qwen3-VL "
                             f"image processor's setting, which this server implements)")


def _whole(value: Any) -> Any:
    """An int-valued JSON number as int (64.0 -> 64); anything else unchanged, for __post_init__ to refuse by name
    (int() would truncate 4.5 to 4 and turn "16" into 16 silently)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _floats(values: Any, name: str) -> Tuple[float, ...]:
    """A JSON list of numbers as floats; ValueError naming the key for anything else (a string, a bool, a map)."""
    if not isinstance(values, (list, tuple)) or not all(_is_number(v) for v in values):
        raise ValueError(f"'{name}' must be a list of numbers, got {values!r}")
    return tuple(float(v) for v in values)


def _float(value: Any, name: str) -> float:
    if not _is_number(value):
        raise ValueError(f"'{name}' must be a number, got {value!r}")
    return float(value)


def smart_resize(height: int, width: int, factor: int = 32, min_pixels: int = 65536, max_pixels: int = 16777216) -> Tuple[int, int]:
    """Qwen2-VL smart resize (transformers' own): sides to multiples of `factor`, area within [min_pixels, max_pixels]."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as qwen2_vl_smart_resize

    if min(height, width) < 1:
        raise ValueError(f"image size must be positive, got {(height, width)}")
    h_bar, w_bar = qwen2_vl_smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return int(h_bar), int(w_bar)


def _normalization(config: VisionPatchConfig, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fast processor's fused rescale + normalize constants: mean / rescale_factor, std / rescale_factor."""
    mean = torch.tensor(config.image_mean, device=device) * (1.0 / config.rescale_factor)
    std = torch.tensor(config.image_std, device=device) * (1.0 / config.rescale_factor)
    return mean, std


class ReusedRows:
    """CPU memory that patchify_batch writes pixel rows into call after call, lent again only once nothing holds the
    rows it last lent (a caller that keeps them gets a fresh tensor next time).

    A fresh tensor past glibc's 32 MB mmap threshold (B=16 of two 256x256 views is 50 MB) is new pages from the OS
    on every call, and their faults cost more than the copy that fills them. The largest rows lent stay allocated.
    """

    def __init__(self) -> None:
        self._buffer: Optional[torch.Tensor] = None
        self._free_holders = (0, 0)  # _holders(buffer) while nothing else holds it
        self._lock = threading.Lock()
        renew_locks_after_fork(self)  # a forked child lends under no lock a parent thread held at the fork

    def _renew_locks(self) -> None:
        self._lock = threading.Lock()

    def empty(self, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """An uninitialized float32 tensor of `shape` on `device`: the kept buffer's memory when it is free and
        large enough on the CPU, else a new tensor (which the next call may reuse)."""
        numel = math.prod(shape)
        if device.type != "cpu" or not hasattr(torch._C, "_storage_Use_Count"):
            return torch.empty(shape, dtype=torch.float32, device=device)
        with self._lock:
            buffer = self._buffer
            if buffer is None or buffer.numel() < numel or not self._is_free(buffer):
                buffer = torch.empty(numel, dtype=torch.float32)
                self._buffer, self._free_holders = buffer, self._holders(buffer)
            return buffer[:numel].view(shape)

    def _is_free(self, buffer: torch.Tensor) -> bool:
        """Nothing but the kept buffer holds its memory: no tensor or view of it (lent rows, numpy arrays of them)
        and no Python reference to its storage object, counted as when it was new; and the memory was never shared
        with another process (a torch.multiprocessing queue or DataLoader worker moves it into shared memory in place,
        and the other process's mapping is counted nowhere here), so shared memory is never lent again."""
        if buffer.is_shared():
            return False
        return all(now <= free for now, free in zip(self._holders(buffer), self._free_holders))

    @staticmethod
    def _holders(buffer: torch.Tensor) -> Tuple[int, int]:
        """(tensors and arrays sharing the buffer's memory, Python references to its storage object)."""
        storage = buffer.untyped_storage()
        return torch._C._storage_Use_Count(storage._cdata), sys.getrefcount(storage)


def patchify_batch(
    frames: Union[np.ndarray, torch.Tensor],
    config: VisionPatchConfig = VisionPatchConfig(),
    device: Union[str, torch.device, None] = None,
    reused_rows: Optional[ReusedRows] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W, 3) frames of one size -> (pixel rows (N * n, 1536) float32, grid_thw (N, 3) int64) tensors.

    Rows of frame i are rows [i * n, (i + 1) * n), in Qwen2-VL patch order: (grid_t, h/2 blocks, w/2 blocks, 2, 2),
    each laid out (C, T, 16, 16). Runs on `device` (default: where `frames` are; numpy frames: CPU).
    `reused_rows`: where CPU rows are written (ReusedRows), instead of a new tensor each call.
    """
    images = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) frames, got dtype {images.dtype} shape {tuple(images.shape)}")
    if device is not None:
        images = images.to(device, non_blocking=True)
    count, height, width = (int(v) for v in images.shape[:3])
    new_h, new_w = smart_resize(height, width, config.factor, config.min_pixels, config.max_pixels)
    planar = images.permute(0, 3, 1, 2)  # NCHW view
    if (new_h, new_w) != (height, width):
        planar = resize_uint8(planar, (new_h, new_w), "bicubic")
    # Contiguous float32 planes (half the output's values: the temporal repeat is not made yet), normalized here, so
    # that the patch gather below copies runs of patch_size contiguous values (from NHWC it would gather every third
    # value and run ~30x slower) and rescale + normalize touch each pixel once, not once per temporal copy: the same
    # float32 subtraction and division of the same values as on the repeated rows, so the same bits.
    planar = planar.to(torch.float32, memory_format=torch.contiguous_format)
    mean, std = _normalization(config, images.device)
    planar.sub_(mean.view(3, 1, 1)).div_(std.view(3, 1, 1))
    p, m, tp = config.patch_size, config.merge_size, config.temporal_patch_size
    grid_h, grid_w = new_h // p, new_w // p
    # (N, C, h/2m, m, p, w/2m, m, p) with the temporal repeat as a broadcast -> (N, h/2m, w/2m, m, m, C, T, p, p)
    patches = planar.view(count, 3, 1, grid_h // m, m, p, grid_w // m, m, p).expand(-1, -1, tp, -1, -1, -1, -1, -1, -1)
    patches = patches.permute(0, 3, 6, 4, 7, 1, 2, 5, 8)
    if reused_rows is None:
        rows = torch.empty(patches.shape, dtype=torch.float32, device=images.device)
    else:
        rows = reused_rows.empty(patches.shape, images.device)
    rows.copy_(patches)  # the one full-size copy, straight into the output layout
    grids = torch.tensor([[1, grid_h, grid_w]], dtype=torch.int64).expand(count, 3).contiguous()
    return rows.view(count * grid_h * grid_w, config.patch_dim), grids


def patchify_image(image: np.ndarray, config: VisionPatchConfig = VisionPatchConfig()) -> Tuple[np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) -> (pixel rows (N, 1536) float32, grid_thw (3,) int64) numpy arrays; see `patchify_batch`."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got dtype {image.dtype} shape {image.shape}")
    rows, grids = patchify_batch(image[None], config)
    return rows.numpy(), grids[0].numpy()


def num_image_tokens(grid_thw: Sequence[int], merge_size: int = 2) -> int:
    """How many <|image_pad|> tokens one image becomes: t * h * w / merge_size**2."""
    t, h, w = (int(v) for v in grid_thw)
    return t * h * w // (merge_size * merge_size)


def image_tokens(height: int, width: int, config: VisionPatchConfig = VisionPatchConfig()) -> int:
    """How many <|image_pad|> tokens a (height, width) frame becomes, from its size alone (smart resize, patches)."""
    new_h, new_w = smart_resize(height, width, config.factor, config.min_pixels, config.max_pixels)
    return num_image_tokens((1, new_h // config.patch_size, new_w // config.patch_size), config.merge_size)


def patchify_images(
    images: Union[Sequence[np.ndarray], np.ndarray],
    config: VisionPatchConfig = VisionPatchConfig(),
    device: Union[str, torch.device, None] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Patchify images in order: (sum N_i, 1536) float32 and (n_images, 3) int64 tensors.

    A (N, H, W, 3) array is one batch; a list is grouped by size (one `patchify_batch` per size, like the
    fast processor) and its rows are put back in list order.
    """
    target = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return patchify_batch(images, config, target)
    if len(images) == 0:
        return torch.zeros((0, config.patch_dim), dtype=torch.float32, device=target), torch.zeros((0, 3), dtype=torch.int64)
    by_size: Dict[Tuple[int, ...], List[int]] = {}
    for index, image in enumerate(images):
        by_size.setdefault(tuple(np.shape(image)), []).append(index)
    if len(by_size) == 1:
        return patchify_batch(np.stack(images), config, target)
    batches = {size: patchify_batch(np.stack([images[i] for i in indices]), config, target) for size, indices in by_size.items()}
    grids = torch.empty((len(images), 3), dtype=torch.int64)
    parts: List[torch.Tensor] = [None] * len(images)  # type: ignore[list-item]
    for size, indices in by_size.items():
        rows, size_grids = batches[size]
        per_image = rows.shape[0] // len(indices)
        for position, index in enumerate(indices):
            parts[index] = rows[position * per_image : (position + 1) * per_image]
            grids[index] = size_grids[position]
    return torch.cat(parts, dim=0), grids
