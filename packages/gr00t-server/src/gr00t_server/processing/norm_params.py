"""Per-embodiment normalization parameters: statistics.json and processor_config.json -> the state, action and
relative-action parameters the processor normalizes with, checked once at load."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Dict, Mapping, Set

import numpy as np

from gr00t_client.modality import ActionConfig, ActionRepresentation, ActionType, ModalityConfig

from . import normalization as norm
from .config import ProcessorConfig

logger = logging.getLogger(__name__)

_MISSING_STATISTICS_REMEDY = ("copy or download the checkpoint's statistics.json again, or recompute it from the "
                              "training data")


@dataclass(frozen=True)
class EmbodimentNormParams:
    """Per-key normalization parameters of one embodiment (state, action, relative action)."""

    state: Dict[str, norm.KeyNormParams]
    action: Dict[str, norm.KeyNormParams]
    relative_action: Dict[str, Dict[str, np.ndarray]]  # key -> {"min", "max"} as (H, D)


def _check_relative_decodable(tag: str, key: str, spec: ActionConfig, state: Mapping[str, norm.KeyNormParams],
                              action_dim: int) -> None:
    """ValueError unless relative action `key` can be decoded: its reference state is a state key of the same width
    (statistics.json's), and an EEF pose has its format's width."""
    where = f"processor_config.json: relative action key '{key}' of '{tag}'"
    state_key = spec.state_key or key
    if state_key not in state:
        raise ValueError(f"{where} is decoded against state key '{state_key}' (its action_configs state_key), which is "
                         f"not one of the state keys {list(state)}")
    if state[state_key].dim != action_dim:
        raise ValueError(f"{where} has {action_dim} values but its reference state '{state_key}' has "
                         f"{state[state_key].dim} (statistics.json); a relative action is decoded against a state of "
                         "its own width")
    pose_width = norm.POSE_WIDTHS[spec.format.name]
    if spec.type is ActionType.EEF and action_dim != pose_width:
        raise ValueError(f"{where} has {action_dim} values but its action_configs format {spec.format.name} is an "
                         f"end-effector pose of {pose_width}")


# Values of a relative EEF pose that hold its rotation, per ActionFormat name: rot6d's two rows, a 4x4 pose's 3x3 block.
# A rotation vector has none to check: every finite one is a rotation (zero is the identity).
_ROTATION_VALUES = {"XYZ_ROT6D": slice(3, 9), "DEFAULT": [0, 1, 2, 4, 5, 6, 8, 9, 10]}
# A mean/std value with a nonzero std at most this (the tolerance degenerate_pose_rows judges rows by) decodes to its
# mean for the model's outputs; a std of 0 passes the model's output through (mean_std_unnormalize).
_FIXED_STD = 1e-9


def _check_rotation_rows_can_vary(tag: str, key: str, spec: ActionConfig, relative: Mapping[str, np.ndarray],
                                  mean_std: bool) -> None:
    """ValueError when the relative_action statistics of an EEF key fix its rotation at some step (min == max, or a
    mean/std key's tiny std) to values no rotation has as decoding judges them (degenerate_pose_rows): a zero or two
    parallel rot6d rows (every action refused), a singular 4x4 block (every action silently the reference's rotation:
    the nearest rotation of a zero block is the identity)."""
    if spec.type is not ActionType.EEF or spec.format.name not in _ROTATION_VALUES:
        return
    if mean_std:
        values, std = np.broadcast_arrays(np.atleast_2d(relative["mean"]), np.atleast_2d(relative["std"]))
        fixed, how = (std != 0) & (np.abs(std) <= _FIXED_STD), f"the mean, its std nonzero and at most {_FIXED_STD:g}"
    else:
        values, high = np.broadcast_arrays(np.atleast_2d(relative["min"]), np.atleast_2d(relative["max"]))
        fixed, how = values == high, "min == max"
    fmt = spec.format.name
    steps = [step for step in range(len(values)) if _fixed_rotation_is_degenerate(values[step], fixed[step], fmt)]
    if not steps:
        return
    rotation = values[steps[0]][_ROTATION_VALUES[fmt]]
    shown = ", ".join(f"{v:.3g}" if f else "varies" for v, f in zip(rotation, fixed[steps[0]][_ROTATION_VALUES[fmt]]))
    if fmt == "DEFAULT":
        what, values_are = "(a flattened 4x4 pose) fixes its 3x3 rotation block", "block (values 0:3, 4:7, 8:11) is"
        why = ("singular. Every action would silently keep the reference state's rotation there (the nearest rotation "
               "of a zero block is the identity); the block must be able to take a rotation matrix's values")
    else:
        what, values_are = "(xyz + rot6d) fixes a rotation row", "values 3:9 are"
        why = ("a zero row or two parallel rows. Every action would be refused there; a rot6d row must be able to take "
               "the values of a rotation matrix's rows")
    raise ValueError(f"statistics.json: relative_action key '{key}' of '{tag}' {what} at steps {steps[:8]} ({how}) to "
                     f"values no rotation matrix has: step {steps[0]}'s {values_are} [{shown}], {why}")


def _fixed_rotation_is_degenerate(values: np.ndarray, fixed: np.ndarray, action_format: str) -> bool:
    """Whether every pose decoding can give at a step is degenerate (degenerate_pose_rows), its fixed rotation values
    being `values`: a DEFAULT block fixed whole, or a fixed rot6d row, the other row taken at its most favourable
    (a unit row orthogonal to it) unless fixed too."""
    if action_format == "DEFAULT":
        if not fixed[_ROTATION_VALUES["DEFAULT"]].all():
            return False
        pose = np.eye(4).reshape(-1)
        pose[_ROTATION_VALUES["DEFAULT"]] = values[_ROTATION_VALUES["DEFAULT"]]
        return bool(norm.degenerate_pose_rows(pose[None], "DEFAULT"))
    rows = [values[3:6], values[6:9]]
    rows_fixed = [bool(fixed[3:6].all()), bool(fixed[6:9].all())]
    if not any(rows_fixed):
        return False
    for index in (0, 1):
        if not rows_fixed[index]:
            rows[index] = _orthogonal_unit_row(rows[1 - index])
    with np.errstate(all="ignore"):
        return bool(norm.degenerate_pose_rows(np.concatenate([np.zeros(3), *rows])[None], "XYZ_ROT6D"))


def _orthogonal_unit_row(row: np.ndarray) -> np.ndarray:
    """A unit 3-vector orthogonal to `row` (an axis for a zero row)."""
    axis = np.eye(3)[int(np.argmin(np.abs(row)))]
    cross = np.cross(row, axis)
    length = float(np.linalg.norm(cross))
    return cross / length if length > 0 else axis


def _warn_unlisted_embedding_keys(tag: str, modality: str, config: ModalityConfig) -> None:
    """Warn for each mean_std/sin_cos_embedding_keys entry that is none of the modality's keys: a typo ("joint" for
    "joints") left the key it meant normalized by min/max, another model input, without a word."""
    for field in ("mean_std_embedding_keys", "sin_cos_embedding_keys"):
        for entry in getattr(config, field) or []:
            if entry not in config.modality_keys:
                logger.warning("processor_config.json: modality_configs[%r][%r][%r] lists %r, which is none of its "
                               "modality_keys %s; the entry is ignored", tag, modality, field, entry,
                               list(config.modality_keys))


def used_statistics(config: ProcessorConfig) -> Dict[str, Dict[str, Dict[str, Set[str]]]]:
    """{tag: {group: {key: stat names}}}: the statistics compute_norm_params and decoding read for each embodiment
    with modality configs, which must be valid to serve it (the others may hold NaN, as the reference ignores them)."""
    low_high = {"q01", "q99"} if config.use_percentiles else {"min", "max"}
    used: Dict[str, Dict[str, Dict[str, Set[str]]]] = {}
    for tag, configs in config.modality_configs.items():
        groups: Dict[str, Dict[str, Set[str]]] = {"state": {}, "action": {}, "relative_action": {}}
        state_config = configs.get("state")
        for key in state_config.modality_keys if state_config else []:
            mean_std = key in (state_config.mean_std_embedding_keys or [])
            groups["state"][key] = low_high | ({"mean", "std"} if mean_std else set())
        action_config = configs.get("action")
        for index, key in enumerate(action_config.modality_keys if action_config else []):
            mean_std = key in (action_config.mean_std_embedding_keys or [])
            relative = _is_relative(config, action_config, index)
            # "min": the output width comes from the absolute min (model.md §1.5)
            groups["action"][key] = low_high | {"min"} | ({"mean", "std"} if mean_std and not relative else set())
            if relative:
                groups["relative_action"][key] = {"min", "max"} | ({"mean", "std"} if mean_std else set())
        used[tag] = groups
    return used


def _warn_std_below_float32_resolution(source: str, where: str, params: norm.KeyNormParams) -> None:
    """Warn where a mean/std column's std is not 0 but below float32's resolution at its mean: rounding's std of a
    column constant in training (numpy's std of 1000 float64 0.1s is 1.4e-17). States and actions are float32, so
    no value sent normalizes near 0 there: the training value itself is refused as 1e8 standard deviations out."""
    mean = np.broadcast_to(params.mean, np.shape(params.std))
    with np.errstate(over="ignore"):
        resolution = np.spacing(np.abs(mean).astype(np.float32)).astype(np.float64)
    unresolvable = (params.std != 0) & (np.abs(params.std) < resolution)
    if unresolvable.any():
        index = tuple(int(i) for i in np.argwhere(unresolvable)[0])
        logger.warning("%s: %s column %d has std %.3g, below float32's resolution at its mean %.9g (%.3g): a column "
                       "constant in training whose std is rounding, so even the training value, sent as float32, is "
                       "refused as far outside its statistics; set that std to 0 (the column then passes raw, as a "
                       "constant one does)", source, where, index[-1], float(params.std[index]), float(mean[index]),
                       float(resolution[index]))


def compute_norm_params(tag: str, stats: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
                        configs: Mapping[str, ModalityConfig], config: ProcessorConfig,
                        source: str = "statistics.json") -> EmbodimentNormParams:
    """Normalization parameters of embodiment `tag` from its statistics and modality configs; ValueError/KeyError
    naming the key (and `source`, the statistics file, for one it lacks) when they cannot serve it."""
    pct = config.use_percentiles
    for modality in ("state", "action"):
        if modality in configs:
            _warn_unlisted_embedding_keys(tag, modality, configs[modality])
    state: Dict[str, norm.KeyNormParams] = {}
    for key in configs["state"].modality_keys if "state" in configs else []:
        if key not in stats.get("state", {}):
            raise KeyError(f"{source}: Joint group '{key}' not found in state statistics for embodiment '{tag}'; "
                           f"it must hold each state and action key the modality configs list: "
                           f"{_MISSING_STATISTICS_REMEDY}")
        state[key] = norm.key_norm_params(stats["state"][key], pct, f"state key '{key}' of '{tag}'",
                                          mean_std=key in (configs["state"].mean_std_embedding_keys or []))
        if key in (configs["state"].mean_std_embedding_keys or []):
            _warn_std_below_float32_resolution(source, f"state key '{key}' of '{tag}'", state[key])
    action: Dict[str, norm.KeyNormParams] = {}
    relative: Dict[str, Dict[str, np.ndarray]] = {}
    action_config = configs.get("action")
    for index, key in enumerate(action_config.modality_keys if action_config else []):
        if key not in stats.get("action", {}):
            raise KeyError(f"{source}: Action key '{key}' not found in action statistics for embodiment '{tag}'; "
                           f"it must hold each state and action key the modality configs list: "
                           f"{_MISSING_STATISTICS_REMEDY}")
        z_scored = key in (action_config.mean_std_embedding_keys or []) and not _is_relative(config, action_config, index)
        params = norm.key_norm_params(stats["action"][key], pct, f"action key '{key}' of '{tag}'", mean_std=z_scored)
        if z_scored:
            _warn_std_below_float32_resolution(source, f"action key '{key}' of '{tag}'", params)
        if "min" in stats["action"][key]:  # the output width comes from the absolute min (model.md §1.5)
            params = replace(params, dim=int(stats["action"][key]["min"].shape[-1]))
        action[key] = params
        if _is_relative(config, action_config, index):
            if "relative_action" not in stats:
                raise ValueError(
                    f"{source}: Relative action statistics required for embodiment '{tag}' but 'relative_action' not "
                    f"found in statistics; it must hold them for each relative action key: {_MISSING_STATISTICS_REMEDY}"
                )
            if key not in stats["relative_action"]:
                raise ValueError(
                    f"{source}: Relative action statistics required for key '{key}' in embodiment '{tag}' but not "
                    f"found; it must hold them for each relative action key: {_MISSING_STATISTICS_REMEDY}"
                )
            relative[key] = norm.relative_stats_for_horizon(
                stats["relative_action"][key], action_config.horizon, f"key '{key}' of '{tag}'"
            )
            lacking = [name for name in ("mean", "std") if name not in relative[key]]
            if key in (action_config.mean_std_embedding_keys or []) and lacking:  # at load, not after every call
                raise ValueError(f"Relative action statistics for key '{key}' of '{tag}' lack '{lacking[0]}' (the key "
                                 "is in mean_std_embedding_keys)")
            width = relative[key]["min"].shape[-1]
            if width != params.dim:
                raise ValueError(
                    f"statistics.json: relative_action key '{key}' of '{tag}' has {width} values per step but "
                    f"action key '{key}' has {params.dim}"
                )
            _check_relative_decodable(tag, key, action_config.action_configs[index], state, params.dim)
            _check_rotation_rows_can_vary(tag, key, action_config.action_configs[index], relative[key],
                                          key in (action_config.mean_std_embedding_keys or []))
    state_config = configs.get("state")
    sincos = set()
    if state_config is not None and config.apply_sincos_state_encoding:
        sincos = set(state_config.sin_cos_embedding_keys or [])
    total = sum(params.dim * (2 if key in sincos else 1) for key, params in state.items())  # sin and cos: 2 values
    if total > config.max_state_dim:  # else every request fails
        raise ValueError(
            f"statistics.json: the state keys of {tag!r} have {total} dimensions together, more than "
            f"processor_config.json's max_state_dim {config.max_state_dim}{config.absent_note('max_state_dim')}"
        )
    total = sum(params.dim for params in action.values())
    if total > config.max_action_dim:
        raise ValueError(
            f"statistics.json: the action keys of '{tag}' have {total} dimensions together, more than the "
            f"processor's max_action_dim {config.max_action_dim}{config.absent_note('max_action_dim')}"
        )
    return EmbodimentNormParams(state=state, action=action, relative_action=relative)


def _is_relative(config: ProcessorConfig, action_config: ModalityConfig, index: int) -> bool:
    if not config.use_relative_action or action_config.action_configs is None:
        return False
    return action_config.action_configs[index].rep == ActionRepresentation.RELATIVE
