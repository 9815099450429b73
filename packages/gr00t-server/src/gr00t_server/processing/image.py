"""Eval image transform of model.md §3.4: letter-box, INTER_AREA resize, fractional center crop.

The albumentations path runs OpenCV's `cv2.resize(..., INTER_AREA)` itself, as the reference does, so it is
bit-for-bit the reference's transform. The torchvision-style path (`use_albumentations=false`) runs torch's
antialiased bilinear resize exactly as torchvision does (see `torch_resize`). Batch variants take all frames
of one camera, (N, H, W, 3), and transform them together (a letter-boxed frame is padded on its own, so one
padded square per frame in flight is held, not one per frame); OpenCV releases the GIL, so large frames are
resized on a small thread pool.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Tuple, Union

import cv2
import numpy as np
import torch

from gr00t_client.policy import ObservationError
from gr00t_client.usable_cpus import usable_cpu_count

from ..threads import block_stop_signals
from .torch_resize import resize_uint8

# (h, w), or an int: torchvision's shortest side for a resize, a square for a crop.
ImageSize = Union[int, Tuple[int, int]]
# transformers' smart_resize (the Qwen image processor) refuses frames with an aspect ratio above 200; a thinner
# frame would be scaled up along its long side (1 x 100000 -> 256 x 25.6M pixels) before it ever got there.
MAX_ASPECT_RATIO = 200
# A letter-boxed frame is padded to a square of its long side before any resize: the square's pixels are held to this
# limit unless a smaller one is given (Gr00tPolicy gives the server's --max-image-pixels).
MAX_LETTER_BOX_PIXELS = 8192 * 8192
# A checkpoint that scales the shortest side to `shortest_edge` keeps the aspect ratio, so a thin frame's long side
# is scaled up with it (1 x 199 -> 256 x 50944: 51,000 vision patches, a minute of CPU and gigabytes per row, from a
# request of a few hundred bytes). Frames that scale to more than this many times a square frame are refused.
MAX_SCALED_ASPECT_RATIO = 16
# Below this many source pixels per frame a thread hand-off costs more than the resize it saves.
_POOL_MIN_PIXELS = 200_000
_pool: Optional[ThreadPoolExecutor] = None
_pool_lock = threading.Lock()


def _frame_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=min(8, usable_cpu_count()), thread_name_prefix="gr00t-frames",
                                       initializer=block_stop_signals)
        return _pool


def _forget_inherited_frame_pool() -> None:
    """In a forked child: the pool came without its threads (its map would wait for ever); make a new one on use."""
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_inherited_frame_pool)


def check_frame_size(height: int, width: int, letter_box: bool = False, where: str = "image",
                     shortest_edge: Optional[int] = None, max_pixels: int = MAX_LETTER_BOX_PIXELS) -> None:
    """Refuse, before any resize, a frame the eval transform cannot handle sanely: an empty side, an aspect ratio
    over MAX_ASPECT_RATIO, (letter-boxed) a padded square over `max_pixels`, or (scaled to `shortest_edge` without a
    letter box) an aspect ratio over MAX_SCALED_ASPECT_RATIO; ObservationError (a ValueError) naming `where`."""
    if height < 1 or width < 1:
        raise ObservationError(f"{where} has {height}x{width} images; an image needs at least one pixel on each side")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ObservationError(
            f"{where} has {height}x{width} images, aspect ratio {ratio:.0f}; this model accepts an aspect ratio of at "
            f"most {MAX_ASPECT_RATIO} (the image processor's limit); send a frame closer to square"
        )
    if shortest_edge is not None and not letter_box and ratio > MAX_SCALED_ASPECT_RATIO:
        scaled_h, scaled_w = smallest_max_size_shape(height, width, shortest_edge)
        raise ObservationError(
            f"{where} has {height}x{width} images, aspect ratio {ratio:.1f}; this checkpoint scales a frame's shortest "
            f"side to {shortest_edge} and keeps its aspect ratio, so each would become {scaled_h}x{scaled_w} "
            f"({ratio:.1f}x a square frame's vision tokens, and more than that in vision-encoder time: its attention "
            f"grows faster than the tokens). This server accepts an aspect ratio of at most {MAX_SCALED_ASPECT_RATIO} "
            "here; crop or pad the frame closer to square"
        )
    side = max(height, width)
    if letter_box and side * side > max_pixels:
        raise ObservationError(
            f"{where} has {height}x{width} images; this checkpoint letter-boxes frames to a square of the long side, "
            f"{side}x{side}, over the limit of {max_pixels} pixels per image (--max-image-pixels); send smaller frames "
            "or frames closer to square"
        )


def resize_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a uint8 (H, W, C) image to (height, width) with `cv2.resize(..., interpolation=cv2.INTER_AREA)`."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"resize_area expects a uint8 (H, W, C) image, got dtype {image.dtype} shape {image.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"resize_area target size must be positive, got {(height, width)}")
    if image.shape[:2] == (height, width):
        return image.copy()
    out = cv2.resize(image, (int(width), int(height)), interpolation=cv2.INTER_AREA)
    return out.reshape(height, width, image.shape[2])  # cv2 drops a single channel axis


def letter_box_pad(image: np.ndarray) -> np.ndarray:
    """Zero-pad to a square of side max(H, W); top = pad_h // 2, left = pad_w // 2."""
    h, w = image.shape[:2]
    side = max(h, w)
    if h == w:
        return image.copy()
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
    out[top : top + h, left : left + w] = image
    return out


def smallest_max_size_shape(height: int, width: int, max_size: int) -> Tuple[int, int]:
    """Output (h, w) of albumentations SmallestMaxSize: shortest side -> max_size, Python round."""
    scale = max_size / min(height, width)
    return int(round(height * scale)), int(round(width * scale))


def smallest_max_size(image: np.ndarray, max_size: int) -> np.ndarray:
    """Scale so the shortest side is `max_size` (INTER_AREA); identity when already that size."""
    h, w = image.shape[:2]
    new_h, new_w = smallest_max_size_shape(h, w, max_size)
    if (new_h, new_w) == (h, w):
        return image
    return resize_area(image, new_h, new_w)


def crop_box(height: int, width: int, fraction: float) -> Tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) of the fractional center crop: int(H * fraction), offsets floor((H - ch) / 2)."""
    ch, cw = max(1, int(height * fraction)), max(1, int(width * fraction))
    return (height - ch) // 2, (width - cw) // 2, ch, cw


def fractional_center_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    """Center crop to (int(H * fraction), int(W * fraction)), offsets floor((H - ch) / 2)."""
    y0, x0, ch, cw = crop_box(image.shape[0], image.shape[1], fraction)
    return image[y0 : y0 + ch, x0 : x0 + cw]


def _albumentations_resize(shortest_edge: Optional[int], target_size: Optional[Tuple[int, int]]) -> Callable:
    def resize(img: np.ndarray) -> np.ndarray:
        if shortest_edge is not None:
            return smallest_max_size(img, shortest_edge)
        return resize_area(img, int(target_size[0]), int(target_size[1]))

    return resize


def eval_image_transform(
    image: np.ndarray,
    shortest_edge: Optional[int],
    crop_fraction: float,
    letter_box: bool = False,
    target_size: Optional[Tuple[int, int]] = None,
) -> np.ndarray:
    """The albumentations eval transform: [letter-box] -> resize -> fractional center crop -> resize.

    Resizes are SmallestMaxSize(shortest_edge) with INTER_AREA; when `shortest_edge` is None they are a
    plain INTER_AREA resize to `target_size` (h, w), as in the newer reference code.
    """
    _check_frame(image)
    if shortest_edge is None and target_size is None:
        raise ValueError("eval_image_transform needs shortest_edge or target_size")
    if letter_box:
        image = letter_box_pad(image)
    resize = _albumentations_resize(shortest_edge, target_size)
    return np.ascontiguousarray(resize(fractional_center_crop(resize(image), crop_fraction)))


def eval_image_transform_batch(
    frames: np.ndarray,
    shortest_edge: Optional[int],
    crop_fraction: float,
    letter_box: bool = False,
    target_size: Optional[Tuple[int, int]] = None,
) -> np.ndarray:
    """`eval_image_transform` of every frame of a uint8 (N, H, W, 3) batch -> (N, h, w, 3), one output array."""
    _check_frames(frames)
    if shortest_edge is None and target_size is None:
        raise ValueError("eval_image_transform needs shortest_edge or target_size")
    resize = _albumentations_resize(shortest_edge, target_size)
    letter_box = letter_box and frames.shape[1] != frames.shape[2]

    def transform(frame: np.ndarray) -> np.ndarray:
        if letter_box:  # one padded square per frame in flight, not one per frame of the request
            frame = letter_box_pad(frame)
        return resize(fractional_center_crop(resize(frame), crop_fraction))

    if len(frames) == 0:
        raise ValueError("eval_image_transform_batch needs at least one frame")
    first = transform(frames[0])
    out = np.empty((len(frames),) + first.shape, dtype=np.uint8)
    out[0] = first
    if len(frames) > 1:
        rest = frames[1:]
        side = max(frames.shape[1], frames.shape[2])
        if (side * side if letter_box else frames.shape[1] * frames.shape[2]) >= _POOL_MIN_PIXELS:
            results = _frame_pool().map(transform, rest)
        else:
            results = map(transform, rest)
        for index, result in enumerate(results, start=1):
            out[index] = result
    return out


def eval_image_transform_torchvision_style(
    image: np.ndarray, target_size: ImageSize, crop_size: ImageSize, letter_box: bool = False
) -> np.ndarray:
    """The `use_albumentations=false` eval transform: [letter-box] -> resize -> center crop -> resize.

    Resizes are torchvision's antialiased bilinear resize on uint8 tensors (bit-for-bit, see `torch_resize`). A size
    is (h, w) or, as torchvision reads an int, the shortest side after a resize (aspect kept) and a square crop.
    """
    _check_frame(image)
    return eval_image_transform_torchvision_style_batch(image[None], target_size, crop_size, letter_box)[0]


def torchvision_resize_shape(height: int, width: int, size: ImageSize) -> Tuple[int, int]:
    """Output (h, w) of torchvision's Resize(size): (h, w) as given; an int is the shortest side, the long side
    int(size * long / short)."""
    if not isinstance(size, int):
        return int(size[0]), int(size[1])
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def eval_image_transform_torchvision_style_batch(
    frames: np.ndarray, target_size: ImageSize, crop_size: ImageSize, letter_box: bool = False
) -> np.ndarray:
    """`eval_image_transform_torchvision_style` of a uint8 (N, H, W, 3) batch in two batched torch resizes (letter-boxed
    frames that are not square: one frame at a time, so that one padded square is held, not one per frame)."""
    _check_frames(frames)
    if not letter_box or frames.shape[1] == frames.shape[2]:
        return _torchvision_style_batch(frames, target_size, crop_size)
    out = np.empty((len(frames),) + torchvision_style_transform_shape(target_size, crop_size) + (3,), np.uint8)
    for index, frame in enumerate(frames):
        out[index] = _torchvision_style_batch(letter_box_pad(frame)[None], target_size, crop_size)[0]
    return out


def _torchvision_style_batch(frames: np.ndarray, target_size: ImageSize, crop_size: ImageSize) -> np.ndarray:
    th, tw = torchvision_resize_shape(frames.shape[1], frames.shape[2], target_size)
    ch, cw = _crop_pair(crop_size)
    if ch > th or cw > tw:
        raise ValueError(f"crop size {crop_size} is larger than the resized image {(th, tw)}")
    images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # NCHW view, channels-last memory
    images = resize_uint8(images, (th, tw), "bilinear")
    top, left = int(round((th - ch) / 2.0)), int(round((tw - cw) / 2.0))
    images = resize_uint8(images[:, :, top : top + ch, left : left + cw], torchvision_resize_shape(ch, cw, target_size),
                          "bilinear")
    return np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())


def _crop_pair(crop_size: ImageSize) -> Tuple[int, int]:
    return (crop_size, crop_size) if isinstance(crop_size, int) else (int(crop_size[0]), int(crop_size[1]))


def eval_transform_shape(height: int, width: int, shortest_edge: Optional[int], crop_fraction: float,
                         letter_box: bool = False, target_size: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
    """(h, w) `eval_image_transform` makes of a (height, width) frame, from the shape alone."""
    if letter_box:
        height = width = max(height, width)

    def resize(h: int, w: int) -> Tuple[int, int]:
        if shortest_edge is not None:
            return smallest_max_size_shape(h, w, shortest_edge)
        return int(target_size[0]), int(target_size[1])

    _, _, crop_h, crop_w = crop_box(*resize(height, width), crop_fraction)
    return resize(crop_h, crop_w)


def torchvision_style_transform_shape(target_size: ImageSize, crop_size: ImageSize) -> Tuple[int, int]:
    """(h, w) `eval_image_transform_torchvision_style` makes of any frame: its fixed-size crop, resized."""
    return torchvision_resize_shape(*_crop_pair(crop_size), target_size)


def _check_frame(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image frames must be uint8 (H, W, 3), got dtype {image.dtype} shape {image.shape}")


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"image frames must be uint8 (N, H, W, 3), got dtype {frames.dtype} shape {frames.shape}")
