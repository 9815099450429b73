"""State normalization, action unnormalization and its inverse (model.md §3.5, §3.6), one small function each."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from gr00t_client.modality import ModalityConfig
from gr00t_client.policy import NonFiniteActionError, ObservationError


@dataclass(frozen=True)
class KeyNormParams:
    """Normalization parameters of one state/action key; `low`/`high` are q01/q99 or min/max. `data_min`/`data_max`:
    the statistics' min/max, the training data's full range whichever `low`/`high` are (None where they lack them)."""

    low: np.ndarray
    high: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    dim: int
    data_min: Optional[np.ndarray] = None
    data_max: Optional[np.ndarray] = None

    @cached_property
    def minmax_divisor(self) -> Tuple[np.ndarray, np.ndarray]:
        """minmax_divisor(low, high), worked out once: every request's state is normalized by it."""
        return minmax_divisor(self.low, self.high)

    @cached_property
    def magnitude(self) -> np.ndarray:
        """Per column, the size of the values this key held in training: the largest of |low|, |high|, |mean| + |std|
        and 1 (a std-0 column's constant is its mean; a column of one value has low == high), worked out once: every
        request's states anchoring a relative action are held to it (actions.beyond_magnitude)."""
        sizes = (np.abs(self.low), np.abs(self.high), np.abs(self.mean) + np.abs(self.std), 1.0)
        return np.maximum.reduce(np.broadcast_arrays(*sizes))

    @cached_property
    def data_range_divisor(self) -> Tuple[np.ndarray, np.ndarray]:
        """minmax_divisor(data_min, data_max), worked out once (a state's range warning reads it every request)."""
        return minmax_divisor(self.data_min, self.data_max)


def key_norm_params(stats: Mapping[str, np.ndarray], use_percentiles: bool, where: str,
                    mean_std: bool = False) -> KeyNormParams:
    """Pick the range (q01/q99 when `use_percentiles`, else min/max) from one key's statistics; `mean_std`: the key
    is normalized by mean/std (in mean_std_embedding_keys), so those must be there too (0 and 1 stood in for them)."""
    low_name, high_name = ("q01", "q99") if use_percentiles else ("min", "max")
    missing = [n for n in (low_name, high_name, *(("mean", "std") if mean_std else ())) if n not in stats]
    if missing:
        raise KeyError(f"statistics for {where} lack {missing}; have {sorted(stats)}")
    low, high = np.asarray(stats[low_name], np.float64), np.asarray(stats[high_name], np.float64)
    mean = np.asarray(stats.get("mean", np.zeros_like(low)), np.float64)
    std = np.asarray(stats.get("std", np.ones_like(low)), np.float64)
    full = [np.asarray(stats[name], np.float64) if name in stats else None for name in ("min", "max")]
    return KeyNormParams(low=low, high=high, mean=mean, std=std, dim=int(low.shape[-1]), data_min=full[0],
                         data_max=full[1])


# --- elementary steps -----------------------------------------------------------------------------


def minmax_normalize(x: np.ndarray, low: np.ndarray, high: np.ndarray, clip: bool = True,
                     divisor: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """2 * (x - low) / (high - low) - 1, 0 where high ~= low, optionally clipped to [-1, 1]. `divisor`:
    minmax_divisor(low, high) when the caller has it (KeyNormParams keeps its own)."""
    x = np.asarray(x, np.float64)
    degenerate, span = minmax_divisor(low, high) if divisor is None else divisor
    out = np.where(degenerate, 0.0, 2.0 * (x - low) / span - 1.0)
    return np.clip(out, -1.0, 1.0) if clip else out


def minmax_divisor(low: np.ndarray, high: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(where high ~= low, high - low with 1 there): what minmax_normalize divides by, from the statistics alone."""
    degenerate = np.isclose(high, low)
    return degenerate, np.where(degenerate, 1.0, high - low)


def minmax_unnormalize(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(clip(x, -1, 1) + 1) / 2 * (high - low) + low."""
    x = np.clip(np.asarray(x, np.float64), -1.0, 1.0)
    return (x + 1.0) / 2.0 * (high - low) + low


def mean_std_normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std where std != 0, x unchanged elsewhere; no clipping."""
    x = np.asarray(x, np.float64)
    nonzero = std != 0
    return np.where(nonzero, (x - mean) / np.where(nonzero, std, 1.0), x)


def mean_std_unnormalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """x * std + mean where std != 0, x unchanged elsewhere."""
    x = np.asarray(x, np.float64)
    return np.where(std != 0, x * std + mean, x)


def sin_cos_encode(x: np.ndarray) -> np.ndarray:
    """[sin(x), cos(x)] along the last axis (doubles D); no normalization."""
    x = np.asarray(x, np.float64)
    return np.concatenate([np.sin(x), np.cos(x)], axis=-1)


def pad_last_dim(x: np.ndarray, width: int, what: str = "state") -> np.ndarray:
    """Zero-pad the last axis to `width`; wider inputs are an error naming both widths."""
    if x.shape[-1] > width:
        raise ValueError(f"{what} dimension {x.shape[-1]} exceeds max_{what}_dim {width}")
    out = np.zeros(x.shape[:-1] + (width,), dtype=x.dtype)  # np.pad's result, without its per-axis setup
    out[..., : x.shape[-1]] = x
    return out


# --- state ----------------------------------------------------------------------------------------


def normalize_state_key(
    key: str,
    x: np.ndarray,
    params: KeyNormParams,
    state_config: ModalityConfig,
    apply_sincos: bool,
    clip_outliers: bool,
) -> np.ndarray:
    """Normalize one state group (T, D) by the rule of model.md §3.5 that applies to `key`."""
    # A sin/cos key too: its statistics hold its raw width (only its encoding is 2x wider); a wider one moved every
    # later state key onto other columns of the model's state vector.
    if x.shape[-1] != params.dim:
        raise ObservationError(f"State key '{key}' has dimension {x.shape[-1]}; the checkpoint statistics expect "
                               f"{params.dim}")
    if apply_sincos and key in (state_config.sin_cos_embedding_keys or []):
        return sin_cos_encode(x)
    if key in (state_config.mean_std_embedding_keys or []):
        return mean_std_normalize(x, params.mean, params.std)
    return minmax_normalize(x, params.low, params.high, clip=clip_outliers, divisor=params.minmax_divisor)


# --- actions --------------------------------------------------------------------------------------


def split_action(action: np.ndarray, keys: Sequence[str], dims: Mapping[str, int], horizon: int) -> Dict[str, np.ndarray]:
    """Slice (B, H_max, D_max) into {key: (B, horizon, dim)} in key order; extra rows/columns are dropped."""
    out: Dict[str, np.ndarray] = {}
    start = 0
    for key in keys:
        dim = int(dims[key])
        out[key] = action[..., :horizon, start : start + dim]
        start += dim
    if start > action.shape[-1]:
        raise ValueError(f"action keys need {start} values per step but the model output has {action.shape[-1]}")
    if horizon > action.shape[-2]:
        raise ValueError(f"action horizon {horizon} exceeds the model's action horizon {action.shape[-2]}")
    return out


def relative_stats_for_horizon(stats: Mapping[str, np.ndarray], horizon: int, where: str) -> Dict[str, np.ndarray]:
    """Relative-action min/max (and mean/std where present) as (horizon, D) arrays (statistics hold one row per
    horizon step). A relative key replaces its action statistics with these whole, as upstream's normalization
    parameters do: min/max for a min/max key (never q01/q99), mean/std for a key in mean_std_embedding_keys."""
    out = {}
    for name in ("min", "max", "mean", "std"):
        if name not in stats:
            if name in ("mean", "std"):  # needed only by a mean/std key, which asks for them by name
                continue
            raise ValueError(f"Relative action statistics for {where} lack '{name}'")
        value = np.asarray(stats[name], np.float64)
        if value.ndim == 2:
            if value.shape[0] < horizon:
                raise ValueError(
                    f"Relative action statistics for {where} have {value.shape[0]} steps; the action horizon is {horizon}"
                )
            value = value[:horizon]
        out[name] = value
    return out


def relative_to_absolute_joint(relative: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Joint-space relative actions (B, H, D) + last state (B, D) -> absolute (B, H, D)."""
    return relative + reference[:, None, :]


def absolute_to_relative_joint(absolute: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Inverse of `relative_to_absolute_joint`: absolute (B, H, D) - last state (B, D)."""
    return absolute - reference[:, None, :]


# --- poses for EEF relative actions ---------------------------------------------------------------


def rot6d_to_matrix(rot6d: np.ndarray) -> np.ndarray:
    """(..., 6) first two ROWS of a rotation matrix -> (..., 3, 3) by Gram-Schmidt."""
    row1, row2 = rot6d[..., 0:3], rot6d[..., 3:6]
    row1 = row1 / np.linalg.norm(row1, axis=-1, keepdims=True)
    row2 = row2 - np.sum(row1 * row2, axis=-1, keepdims=True) * row1
    row2 = row2 / np.linalg.norm(row2, axis=-1, keepdims=True)
    row3 = np.cross(row1, row2)
    return np.stack([row1, row2, row3], axis=-2)


def matrix_to_rot6d(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 6): the first two rows, flattened."""
    return matrix[..., :2, :].reshape(matrix.shape[:-2] + (6,))


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """(..., 3) axis * angle -> (..., 3, 3) by Rodrigues' formula."""
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    safe = np.where(angle < 1e-12, 1.0, angle)
    axis = rotvec / safe
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    skew = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(rotvec.shape[:-1] + (3, 3))
    a = angle[..., None]
    eye = np.broadcast_to(np.eye(3), skew.shape)
    out = eye + np.sin(a) * skew + (1.0 - np.cos(a)) * (skew @ skew)
    return np.where(a < 1e-12, eye, out)


def matrix_to_rotvec(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 3) rotation vector with angle in [0, pi]."""
    trace = np.trace(matrix, axis1=-2, axis2=-1)
    cos = np.clip((trace - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    vee = np.stack(
        [matrix[..., 2, 1] - matrix[..., 1, 2], matrix[..., 0, 2] - matrix[..., 2, 0], matrix[..., 1, 0] - matrix[..., 0, 1]],
        axis=-1,
    )
    sin = np.sin(angle)
    small = angle < 1e-6
    near_pi = np.pi - angle < 1e-4
    regular = vee * (angle / np.where(small | near_pi, 1.0, 2.0 * sin))[..., None]
    # Near pi the skew part vanishes; take the axis from the symmetric part instead.
    sym = (matrix + np.swapaxes(matrix, -1, -2)) / 2.0 - np.eye(3) * cos[..., None, None]
    diag = np.diagonal(sym, axis1=-2, axis2=-1)
    column = np.argmax(diag, axis=-1)
    axis_pi = np.take_along_axis(sym, column[..., None, None].repeat(3, axis=-1), axis=-2)[..., 0, :]
    axis_pi = axis_pi / np.maximum(np.linalg.norm(axis_pi, axis=-1, keepdims=True), 1e-12)
    signs = np.where(np.sum(axis_pi * vee, axis=-1, keepdims=True) < 0, -1.0, 1.0)
    at_pi = axis_pi * signs * angle[..., None]
    out = np.where(small[..., None], vee / 2.0, regular)
    return np.where(near_pi[..., None], at_pi, out)


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> the nearest rotation matrix (U V^T of the SVD, a reflection turned into a rotation), as scipy's
    Rotation.from_matrix takes it; a block with NaN or inf stays NaN."""
    finite = np.isfinite(matrix).all(axis=(-2, -1))[..., None, None]
    u, _, vt = np.linalg.svd(np.where(finite, matrix, np.eye(3)))
    reflection = np.linalg.det(u @ vt) < 0
    u[..., :, 2] *= np.where(reflection, -1.0, 1.0)[..., None]
    return np.where(finite, u @ vt, np.nan)


def rigid_pose(matrix: np.ndarray) -> np.ndarray:
    """(..., 4, 4) -> [R t; 0 0 0 1]: R the nearest rotation of the 3x3 block, t column 3, as the reference's
    EndEffectorPose(homogeneous=...) rebuilds a DEFAULT pose."""
    out = np.zeros(matrix.shape[:-2] + (4, 4))
    out[..., :3, :3] = nearest_rotation(matrix[..., :3, :3])
    out[..., :3, 3] = matrix[..., :3, 3]
    out[..., 3, 3] = 1.0
    return out


# Values of one end-effector pose per ActionFormat name: a flattened 4x4 matrix, xyz + rot6d, xyz + rotation vector.
POSE_WIDTHS = {"DEFAULT": 16, "XYZ_ROT6D": 9, "XYZ_ROTVEC": 6}


def pose_to_matrix(values: np.ndarray, action_format: str) -> np.ndarray:
    """(..., D) pose in `action_format` ('XYZ_ROT6D', 'XYZ_ROTVEC' or 'DEFAULT' 4x4) -> (..., 4, 4) rigid transform."""
    if action_format == "DEFAULT":
        if values.shape[-1] != 16:
            raise ValueError(f"DEFAULT EEF pose must be a flattened 4x4 matrix (16 values), got {values.shape[-1]}")
        return rigid_pose(values.reshape(values.shape[:-1] + (4, 4)))
    out = np.zeros(values.shape[:-1] + (4, 4))
    out[..., 3, 3] = 1.0
    out[..., :3, 3] = values[..., :3]
    if action_format == "XYZ_ROT6D":
        if values.shape[-1] != 9:
            raise ValueError(f"XYZ_ROT6D pose needs 9 values, got {values.shape[-1]}")
        out[..., :3, :3] = rot6d_to_matrix(values[..., 3:9])
    elif action_format == "XYZ_ROTVEC":
        if values.shape[-1] != 6:
            raise ValueError(f"XYZ_ROTVEC pose needs 6 values, got {values.shape[-1]}")
        out[..., :3, :3] = rotvec_to_matrix(values[..., 3:6])
    else:
        raise ValueError(f"unknown EEF action format {action_format!r}")
    return out


def matrix_to_pose(matrix: np.ndarray, action_format: str) -> np.ndarray:
    """(..., 4, 4) -> (..., D) in `action_format`."""
    if action_format == "DEFAULT":
        return rigid_pose(matrix).reshape(matrix.shape[:-2] + (16,))
    xyz = matrix[..., :3, 3]
    if action_format == "XYZ_ROT6D":
        return np.concatenate([xyz, matrix_to_rot6d(matrix[..., :3, :3])], axis=-1)
    if action_format == "XYZ_ROTVEC":
        return np.concatenate([xyz, matrix_to_rotvec(matrix[..., :3, :3])], axis=-1)
    raise ValueError(f"unknown EEF action format {action_format!r}")


def relative_to_absolute_eef(relative: np.ndarray, reference: np.ndarray, action_format: str) -> np.ndarray:
    """EEF relative poses (B, H, D) composed onto the last state pose (B, D): T_abs = T_ref @ T_rel."""
    t_ref = pose_to_matrix(reference, action_format)[:, None]
    t_rel = pose_to_matrix(relative, action_format)
    return matrix_to_pose(t_ref @ t_rel, action_format)


def absolute_to_relative_eef(
    absolute: np.ndarray, reference: np.ndarray, action_format: str, key: str = "eef"
) -> np.ndarray:
    """Inverse of `relative_to_absolute_eef`: T_rel = inv(T_ref) @ T_abs, in `action_format`."""
    try:
        t_ref_inv = np.linalg.inv(pose_to_matrix(reference, action_format))[:, None]
    except np.linalg.LinAlgError:
        raise ValueError(f"the reference state pose of relative key '{key}' is singular (not invertible)") from None
    return matrix_to_pose(t_ref_inv @ pose_to_matrix(absolute, action_format), action_format)


def normalize_action_key(x: np.ndarray, params: KeyNormParams, mean_std: bool, clip: bool = True) -> np.ndarray:
    """Inverse of `unnormalize_action_key`: mean/std, or min/max clipped to [-1, 1] like training targets (unless
    not `clip`: what an outlier check looks at)."""
    if mean_std:
        return mean_std_normalize(x, params.mean, params.std)
    return minmax_normalize(x, params.low, params.high, clip=clip, divisor=params.minmax_divisor)


def relative_stat(stats: Mapping[str, np.ndarray], name: str, rows: int, where: str) -> np.ndarray:
    """Relative statistic `name` for the first `rows` horizon steps; ValueError naming it when absent."""
    if name not in stats:
        raise ValueError(f"Relative action statistics for {where} lack '{name}' (the key is in mean_std_embedding_keys)")
    value = stats[name]
    return value[:rows] if value.ndim == 2 else value


def unnormalize_action_key(x: np.ndarray, params: KeyNormParams, mean_std: bool) -> np.ndarray:
    """Unnormalize one action key with its mean/std or (clipped) min/max rule."""
    if mean_std:
        return mean_std_unnormalize(x, params.mean, params.std)
    return minmax_unnormalize(x, params.low, params.high)


def _last_reference_step(key: str, reference_state: Optional[np.ndarray], action_dim: int, conversion: str,
                         state_key: Optional[str] = None) -> np.ndarray:
    """The last time step (B, D) of a raw reference state (B, T, D) or (T, D), checked against the action dim."""
    if reference_state is None:
        raise ValueError(f"State dict required for {conversion} conversion of key '{key}'")
    reference = np.asarray(reference_state, np.float64)
    if reference.ndim == 2:
        reference = reference[None]
    reference = reference[:, -1, :]
    if reference.shape[-1] != action_dim:
        raise ValueError(f"{_reference_name(key, state_key)} has dimension {reference.shape[-1]}; expected "
                         f"{action_dim}, the width of the action")
    return reference


def _reference_name(key: str, state_key: Optional[str]) -> str:
    """How an error names the state that anchors relative action `key`: by the state key a client sends."""
    return f"the reference state 'state.{state_key or key}' of relative key '{key}'"


def _singular_pose_rows(reference: np.ndarray) -> List[int]:
    """Rows (B, 16) whose 4x4 pose np.linalg.inv refuses: the criterion `absolute_to_relative_eef` (RTC's encode)
    applies, so a pose decode takes is one encode takes too (float32 round-off in a real pose is invertible)."""
    matrices = reference.reshape(reference.shape[:-1] + (4, 4))
    try:
        np.linalg.inv(matrices)
        return []
    except np.linalg.LinAlgError:
        pass
    rows = []
    for row, matrix in enumerate(matrices):
        try:
            np.linalg.inv(matrix)
        except np.linalg.LinAlgError:
            rows.append(row)
    return rows


# How far a DEFAULT pose's last row may be from [0, 0, 0, 1]: float32 round-off of a computed pose is ~1e-7; a pose
# flattened column-major holds its translation there, which rigid_pose would drop.
HOMOGENEOUS_ROW_TOLERANCE = 1e-4


def non_homogeneous_rows(poses: np.ndarray) -> List[int]:
    """Rows of flattened 4x4 poses (N, 16) whose last row (values 12:16) is not [0, 0, 0, 1] within
    HOMOGENEOUS_ROW_TOLERANCE (NaN counts as not)."""
    off = np.abs(poses[..., 12:16] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=-1)
    return np.flatnonzero(~(off <= HOMOGENEOUS_ROW_TOLERANCE)).tolist()


def last_row_text(pose: np.ndarray) -> str:
    """The last row of a flattened 4x4 `pose` as an error shows it: [0.5, 0.1, 0.3, 1] (a float32 0.1 too)."""
    return f"[{', '.join(f'{float(value):.6g}' for value in pose[12:16])}]"


# What a refusal of such a last row says was expected, and its likely cause.
NON_HOMOGENEOUS_ADVICE = (
    f"expected [0, 0, 0, 1] (within {HOMOGENEOUS_ROW_TOLERANCE:g}), the last row of a homogeneous transform "
    "[R t; 0 0 0 1] flattened row-major. The pose may be flattened column-major (as Eigen, OpenGL and T.T.flatten() "
    "give it, the translation in the last row): send T.reshape(-1) of the 4x4 matrix")


def _check_reference_pose(key: str, reference: np.ndarray, action_type: str, action_format: str,
                          state_key: Optional[str] = None) -> None:
    """Refuse a reference state that cannot anchor relative actions: NaN/inf values, an XYZ_ROT6D pose whose
    rotation rows are zero or parallel (no rotation matrix has them; Gram-Schmidt would turn them into NaN), or a
    singular DEFAULT 4x4 pose (T_ref @ T_rel is then no pose: all zeros for an all-zero state, finite and plausible),
    or one whose last row is not [0, 0, 0, 1] (a column-major pose: its translation would be read as zero)."""
    bad = ~np.isfinite(reference).all(axis=-1)
    if bad.any():
        raise ValueError(f"{_reference_name(key, state_key)} has NaN or infinite values in rows "
                         f"{np.flatnonzero(bad).tolist()[:8]}; relative actions need a finite reference state")
    if action_type != "EEF":
        return
    rows = degenerate_pose_rows(reference, action_format)[:8]
    if rows and action_format == "DEFAULT":
        raise ValueError(
            f"{_reference_name(key, state_key)} (a flattened 4x4 pose) is singular (not invertible) in rows "
            f"{rows}: it must be an invertible homogeneous transform "
            f"(rotation, translation, last row [0, 0, 0, 1]), got {reference[rows[0]].tolist()}")
    if rows:
        raise ValueError(
            f"{_reference_name(key, state_key)} (xyz + rot6d) has a degenerate rotation in rows {rows}: values 3:9 "
            f"must be the first two rows of a rotation matrix, got {reference[rows[0], 3:9].tolist()} (zero or "
            "parallel rows)")
    rows = non_homogeneous_rows(reference)[:8] if action_format == "DEFAULT" and reference.shape[-1] == 16 else []
    if rows:
        raise ValueError(f"{_reference_name(key, state_key)} (a flattened 4x4 pose) has last row "
                         f"{last_row_text(reference[rows[0]])} in rows {rows}; {NON_HOMOGENEOUS_ADVICE}")


def degenerate_pose_rows(poses: np.ndarray, action_format: str) -> List[int]:
    """Rows of finite EEF poses (N, D) that no rigid transform has: an XYZ_ROT6D pose whose rotation rows (values
    3:9) are zero or parallel, a DEFAULT 4x4 pose that is singular; [] for other formats and widths."""
    if action_format == "DEFAULT" and poses.shape[-1] == 16:
        return _singular_pose_rows(poses)
    if action_format != "XYZ_ROT6D" or poses.shape[-1] != 9:
        return []
    row1, row2 = poses[..., 3:6], poses[..., 6:9]
    norm1 = np.linalg.norm(row1, axis=-1)
    cross = np.linalg.norm(np.cross(row1, row2), axis=-1)  # |row1| |row2| sin(angle): 0 when either is 0 or parallel
    bad = ~(norm1 > 1e-9) | ~(cross > 1e-9 * np.maximum(norm1 * np.linalg.norm(row2, axis=-1), 1e-300))
    return np.flatnonzero(bad).tolist()


def decode_relative(
    key: str,
    absolute_or_relative: np.ndarray,
    reference_state: Optional[np.ndarray],
    action_type: str,
    action_format: str,
    state_key: Optional[str] = None,
    statistics: Optional[Mapping[str, np.ndarray]] = None,
) -> np.ndarray:
    """Relative action (B, H, D) -> absolute with the last time step of the raw reference state (B, T, D);
    `statistics`: the relative_action statistics it was unnormalized with, which an error names."""
    action_dim = absolute_or_relative.shape[-1]
    reference = _last_reference_step(key, reference_state, action_dim, "relative->absolute", state_key)
    _check_reference_pose(key, reference, action_type, action_format, state_key)
    if action_type == "EEF":
        if action_format == "XYZ_ROT6D":
            _check_relative_rotation(key, absolute_or_relative, statistics)
        return relative_to_absolute_eef(absolute_or_relative, reference, action_format)
    return relative_to_absolute_joint(absolute_or_relative, reference)


def _check_relative_rotation(key: str, relative: np.ndarray, statistics: Optional[Mapping[str, np.ndarray]]) -> None:
    """NonFiniteActionError naming `key`, the steps and the relative_action statistics when unnormalized xyz + rot6d
    relative actions (B, H, 9) have a zero or parallel rotation row: Gram-Schmidt made NaN of them, blamed on the
    reference state, and the model's output only has the range the statistics give it."""
    flat = relative.reshape(-1, relative.shape[-1])
    finite = np.isfinite(flat).all(axis=-1)  # beyond float64 is refused after decoding, naming the statistics
    with np.errstate(all="ignore"):
        bad = [index for index in degenerate_pose_rows(flat, "XYZ_ROT6D") if finite[index]]
    if not bad:
        return
    rows = sorted({index // relative.shape[1] for index in bad})[:8]
    steps = sorted({index % relative.shape[1] for index in bad})
    step = steps[0]
    at_step = {name: value[min(step, len(value) - 1)] if value.ndim == 2 else value
               for name, value in (statistics or {}).items()}
    named = "; ".join(f"{name} [{', '.join(f'{v:.3g}' for v in value[3:9])}]" for name, value in at_step.items())
    raise NonFiniteActionError(
        f"relative action key '{key}' (xyz + rot6d) decodes to a degenerate rotation (values 3:9 with a zero or "
        f"parallel row, which no rotation matrix has) in rows {rows}, steps {steps[:8]}, before it is composed with "
        f"the reference state; the action was not sent. Its relative_action statistics in values 3:9 at step {step}: "
        f"{named or 'not given'}; check them in the checkpoint's statistics.json", key=key, rows=rows)


def encode_relative(
    key: str,
    absolute: np.ndarray,
    reference_state: Optional[np.ndarray],
    action_type: str,
    action_format: str,
    state_key: Optional[str] = None,
) -> np.ndarray:
    """Inverse of `decode_relative`: absolute action (B, H, D) -> relative to the last reference state step."""
    absolute = np.asarray(absolute, np.float64)
    reference = _last_reference_step(key, reference_state, absolute.shape[-1], "absolute->relative", state_key)
    _check_reference_pose(key, reference, action_type, action_format, state_key)
    if action_type == "EEF":
        return absolute_to_relative_eef(absolute, reference, action_format, key)
    return absolute_to_relative_joint(absolute, reference)
