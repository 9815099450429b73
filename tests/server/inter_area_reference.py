"""OpenCV's INTER_AREA written out in numpy, as the formulas of its source: the spec our cv2 path is checked against.

- shrinking on both axes by integer factors: block mean rounded half up (OpenCV's fast path);
- shrinking by other factors: area averaging with OpenCV's area table (1e-3 edge threshold), rounded half
  to even, in float64 (OpenCV accumulates in float32, so rare near-ties may differ by one level);
- enlarging on any axis: OpenCV's two-tap "area-mode linear" coefficients in 11-bit fixed point with the
  vertical pass of its SIMD kernel (the last W*C mod vector-width values of a row may differ by one level).
"""

import math
from typing import Tuple

import numpy as np

_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def _area_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) averaging weights for shrinking one axis (OpenCV computeResizeAreaTab)."""
    scale = src / dst
    weights = np.zeros((dst, src), dtype=np.float64)
    for d in range(dst):
        fs1 = d * scale
        fs2 = fs1 + scale
        cell = min(scale, src - fs1)
        s1 = min(int(math.ceil(fs1)), src - 1)
        s2 = min(int(math.floor(fs2)), src - 1)
        s1 = min(s1, s2)
        if s1 - fs1 > 1e-3:
            weights[d, s1 - 1] += (s1 - fs1) / cell
        for s in range(s1, s2):
            weights[d, s] += 1.0 / cell
        if fs2 - s2 > 1e-3:
            weights[d, s2] += min(min(fs2 - s2, 1.0), cell) / cell
    return weights


def _linear_area_taps(src: int, dst: int) -> Tuple[np.ndarray, np.ndarray]:
    """Source index and fixed-point (1-f, f) coefficients of OpenCV's INTER_AREA enlarging path."""
    scale = src / dst
    inv_scale = dst / src
    index = np.zeros(dst, dtype=np.int64)
    coef = np.zeros((dst, 2), dtype=np.int64)
    for d in range(dst):
        s = int(math.floor(d * scale))
        f = np.float32((d + 1) - (s + 1) * inv_scale)
        f = np.float32(0.0) if f <= 0 else np.float32(f - math.floor(f))
        if s < 0:
            s, f = 0, np.float32(0.0)
        if s >= src - 1:
            s, f = src - 1, np.float32(0.0)
        index[d] = s
        coef[d, 0] = int(np.rint(np.float32(1.0 - f) * _COEF_SCALE))
        coef[d, 1] = int(np.rint(f * _COEF_SCALE))
    return index, coef


def reference_resize_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a uint8 (H, W, C) image to (height, width) like cv2.INTER_AREA (see module docstring)."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"resize_area expects a uint8 (H, W, C) image, got dtype {image.dtype} shape {image.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"resize_area target size must be positive, got {(height, width)}")
    src_h, src_w = image.shape[:2]
    if (src_h, src_w) == (height, width):
        return image.copy()
    if src_h >= height and src_w >= width:
        return _shrink_area(image, height, width)
    iy, cy = _linear_area_taps(src_h, height)
    ix, cx = _linear_area_taps(src_w, width)
    img = image.astype(np.int64)
    ix1 = np.minimum(ix + 1, src_w - 1)
    horizontal = img[:, ix, :] * cx[None, :, 0, None] + img[:, ix1, :] * cx[None, :, 1, None]
    iy1 = np.minimum(iy + 1, src_h - 1)
    # OpenCV's vectorised vertical pass: (((S0 >> 4) * b0) >> 16) + (((S1 >> 4) * b1) >> 16), then (+2) >> 2.
    top = ((horizontal[iy] >> 4) * cy[:, 0, None, None]) >> 16
    bottom = ((horizontal[iy1] >> 4) * cy[:, 1, None, None]) >> 16
    out = (top + bottom + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def _shrink_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    src_h, src_w = image.shape[:2]
    if src_h % height == 0 and src_w % width == 0:
        # OpenCV's integer-factor fast path: block mean rounded half up.
        fy, fx = src_h // height, src_w // width
        blocks = image.reshape(height, fy, width, fx, -1).astype(np.int64).sum(axis=(1, 3))
        area = fy * fx
        return np.clip((2 * blocks + area) // (2 * area), 0, 255).astype(np.uint8)
    out = _apply_taps(image.astype(np.float64), *_dense_to_taps(_area_weights(src_h, height)), axis=0)
    out = _apply_taps(out, *_dense_to_taps(_area_weights(src_w, width)), axis=1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _dense_to_taps(weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(dst, src) weights -> (dst, K) source indices and weights of the non-zero band (K taps)."""
    nonzero = weights > 0
    taps = int(nonzero.sum(axis=1).max())
    first = nonzero.argmax(axis=1)
    index = np.minimum(first[:, None] + np.arange(taps)[None, :], weights.shape[1] - 1)
    tap_weights = np.take_along_axis(weights, index, axis=1)
    tap_weights[first[:, None] + np.arange(taps)[None, :] >= weights.shape[1]] = 0.0
    return index, tap_weights


def _apply_taps(image: np.ndarray, index: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    out = 0.0
    for k in range(index.shape[1]):
        gathered = np.take(image, index[:, k], axis=axis)
        shape = [1] * image.ndim
        shape[axis] = -1
        out = out + gathered * weights[:, k].reshape(shape)
    return out
