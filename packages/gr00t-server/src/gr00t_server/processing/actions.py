"""Action decoding and encoding for Gr00tN1d7Processor: the model's normalized, padded action output -> absolute
actions per key, and back (for real-time chunking), with the checks on reference states that relative keys need."""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from gr00t_client.modality import ActionConfig, ModalityConfig
from gr00t_client.policy import NonFiniteActionError, ObservationError, non_finite_rows

from . import normalization as norm
from .config import ProcessorConfig
from .norm_params import EmbodimentNormParams

# A normalized state (or RTC previous action) this far beyond its statistics' range (about [-1, 1]) is in other units
# than the training data's, and the likelier cause of a non-finite model output than the weights. A model output
# this far out is no action either (training targets lie in about [-1, 1]).
STATE_OUTLIER_LIMIT = 1e3
# A normalized state this far out (unclipped) is about ten times its training range away: served, but warned about,
# as the mark of a unit slip (degrees for radians is x57.3, millimetres for metres x1000) below the refusal's limit.
STATE_WARNING_LIMIT = 10.0
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def beyond_limit_text(value: float, limit: float) -> str:
    """`value`, refused for lying beyond +-`limit`, with enough digits to show it does: 3 where they do, else 6, else
    all of them (at 3, 100.4 read "100, beyond +-100")."""
    for text in (f"{value:.3g}", f"{value:.6g}"):
        if abs(float(text)) > limit:
            return text
    return repr(float(value))


def decode_action(
    action: np.ndarray,
    tag: str,
    configs: Mapping[str, ModalityConfig],
    params: EmbodimentNormParams,
    config: ProcessorConfig,
    raw_states: Optional[Mapping[str, np.ndarray]] = None,
    clip_to_statistics: bool = False,
    inpainted: Optional[np.ndarray] = None,
) -> Dict[str, np.ndarray]:
    """Gr00tN1d7Processor.decode_action, given embodiment `tag`'s modality configs and normalization parameters."""
    action = np.asarray(action, np.float64)
    if action.ndim == 2:
        action = action[None]
    action_config = configs["action"]
    dims = {key: p.dim for key, p in params.action.items()}
    parts = norm.split_action(action, action_config.modality_keys, dims, action_config.horizon)
    given = {} if inpainted is None else norm.split_action(np.asarray(inpainted, np.float64),
                                                           action_config.modality_keys, dims, inpainted.shape[1])
    for key, part in parts.items():  # before unnormalizing: its clip to [-1, 1] made an inf a plausible q99 action
        judged, start_steps = part, 0
        if key in given:  # an RTC start row is the caller's (a relative mean/std one may lie beyond the limit)
            judged, start_steps = part.copy(), given[key].shape[1]
            judged[:, :start_steps] -= given[key]
        if not (np.abs(judged) <= STATE_OUTLIER_LIMIT).all():  # NaN too: one pass on the happy path
            _refuse_raw_output(key, judged, tag, configs, params, config, raw_states, start_steps)
    mean_std_keys = set(action_config.mean_std_embedding_keys or [])
    out: Dict[str, np.ndarray] = {}
    for index, key in enumerate(action_config.modality_keys):
        if key in params.relative_action:
            rel = params.relative_action[key]
            if key in mean_std_keys:  # upstream checks mean/std keys first, with the relative statistics
                rows = parts[key].shape[1]
                where = f"key '{key}' of '{tag}'"
                used = {name: norm.relative_stat(rel, name, rows, where) for name in ("mean", "std")}
                value = norm.mean_std_unnormalize(parts[key], used["mean"], used["std"])
            else:
                used = {"min": rel["min"], "max": rel["max"]}
                value = norm.minmax_unnormalize(parts[key], rel["min"], rel["max"])
            spec = action_config.action_configs[index]
            reference = _reference_state(tag, key, spec, raw_states, "relative->absolute")
            value = norm.decode_relative(key, value, reference, spec.type.name, spec.format.name, spec.state_key, used)
        else:
            value = norm.unnormalize_action_key(parts[key], params.action[key], key in mean_std_keys)
            if clip_to_statistics and key in mean_std_keys:
                value = np.clip(value, params.action[key].low, params.action[key].high)
        with np.errstate(over="ignore"):  # beyond float32's range becomes inf: refused just below
            out[key] = value.astype(np.float32)
        _check_decoded_finite(out[key], key, tag, action_config, params, raw_states)
    return out


def _refuse_raw_output(key: str, part: np.ndarray, tag: str, configs: Mapping[str, ModalityConfig],
                       params: EmbodimentNormParams, config: ProcessorConfig,
                       raw_states: Optional[Mapping[str, np.ndarray]], start_steps: int = 0) -> None:
    """NonFiniteActionError naming action `key`, its rows and the likely cause when the model's normalized output
    for it holds NaN or inf, or |values| beyond +-STATE_OUTLIER_LIMIT (a finite 1e6 clipped to the statistics' edge
    at every step: a constant, plausible chunk from a blown-up layer). Its first `start_steps` steps hold the model's
    movement of the RTC start rows, named as such when only they are beyond the limit."""
    rows = non_finite_rows(part)
    subject = "the model's output"
    if rows:
        what = f"holds non-finite values (NaN or inf) in rows {rows}"
        # The loader refuses a weight non-finite on disk or once cast to the served dtype (checkpoint._read_tensor)
        weights = ("The checkpoint's weights were finite when loaded, in the dtype served: for a float16 model, check "
                   "activations beyond its range (65504) and serve in bf16 or fp32")
    else:
        beyond = np.abs(part) > STATE_OUTLIER_LIMIT
        rows = flagged_rows(beyond)
        if start_steps and not beyond[:, start_steps:].any():
            steps = "step 0" if start_steps == 1 else f"steps 0-{start_steps - 1}"
            subject = f"the model's movement of the RTC start rows ({steps})"
        what = (f"reaches |values| up to {beyond_limit_text(float(np.max(np.abs(part))), STATE_OUTLIER_LIMIT)} in "
                f"rows {rows}, beyond "
                f"+-{STATE_OUTLIER_LIMIT:g} of the about [-1, 1] it was trained to produce (unnormalization would clip "
                "it to the statistics' edge)")
        weights = ("The checkpoint's weights are likely damaged (a diverged fine-tune, a layer scaled wrong): compare "
                   "them with a good checkpoint's")
    # With exclude_state the model saw zeros for every state key: none of them made its output
    outliers = [] if config.exclude_state else state_outliers(raw_states or {}, rows, configs.get("state"),
                                                              params.state, config)
    cause = (f" Likely cause: {'; '.join(outliers)}, far outside the range the model was trained on; send states in "
             "the units of the checkpoint's statistics." if outliers else
             f" {weights}; for an ONNX, TensorRT or torch.compile backend, compare it with eager PyTorch (gr00t-server "
             "verify --onnx-dir, --engine-dir or --torch-compile).")
    raise NonFiniteActionError(f"{subject} for action key '{key}' of '{tag}' {what}, before unnormalization; "
                               f"the action was not sent.{cause}", key=key, rows=rows)


def _check_decoded_finite(value: np.ndarray, key: str, tag: str, action_config: ModalityConfig,
                          params: EmbodimentNormParams, raw_states: Optional[Mapping[str, np.ndarray]]) -> None:
    """NonFiniteActionError naming action `key`, its rows and the likely cause when its decoded float32 values are
    not finite (a strict=False policy checks no action of its own: an inf reached the robot)."""
    rows = non_finite_rows(value)
    if not rows:
        return
    mean_std = key in (action_config.mean_std_embedding_keys or [])
    if key in params.relative_action:
        state_key = action_config.action_configs[action_config.modality_keys.index(key)].state_key or key
        reference = np.asarray((raw_states or {}).get(state_key, np.zeros(0)), np.float64)
        largest = float(np.max(np.abs(reference))) if reference.size else float("nan")
        if not largest < _FLOAT32_MAX / 2:  # else the relative action, not the state, made most of the overflow
            cause = (f"its reference state 'state.{state_key}' (|values| up to {largest:.3g}) is beyond float32's "
                     "range once the relative action is added; send states that fit float32")
        else:
            rel = params.relative_action[key]
            cause = (f"its relative_action statistics ({_statistics_magnitudes(rel, mean_std)}) unnormalize the "
                     f"model's output beyond float32's range (its reference state 'state.{state_key}' is within it, "
                     f"|values| up to {largest:.3g}); check the checkpoint's statistics.json")
    else:
        action = params.action[key]
        stats = {"mean": action.mean, "std": action.std, "min": action.low, "max": action.high}
        cause = (f"its statistics ({_statistics_magnitudes(stats, mean_std)}) unnormalize the model's output beyond "
                 "float32's range; check the checkpoint's statistics.json")
    raise NonFiniteActionError(
        f"action key '{key}' of '{tag}' holds non-finite values (NaN or inf) in rows {rows} once decoded to float32; "
        f"the action was not sent. Likely cause: {cause}.", key=key, rows=rows)


def _statistics_magnitudes(stats: Mapping[str, np.ndarray], mean_std: bool) -> str:
    """The statistics an action key is unnormalized with, for an error: a mean/std key's largest |std| and |mean|,
    another's range [low, high]."""
    if mean_std:
        return (f"mean/std: |std| up to {float(np.max(np.abs(stats['std']))):.3g}, |mean| up to "
                f"{float(np.max(np.abs(stats['mean']))):.3g}")
    return f"range [{float(np.min(stats['min'])):.3g}, {float(np.max(stats['max'])):.3g}]"


def flagged_rows(mask: np.ndarray) -> List[int]:
    """The rows (leading axis) of a boolean array holding a True, at most 8; [0] for an array without rows."""
    if mask.ndim < 2:
        return [0]
    return np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)).tolist()[:8]


def outlier_magnitude(key: str, normalized: np.ndarray, params: norm.KeyNormParams, state_config: ModalityConfig,
                      sincos: bool) -> np.ndarray:
    """|normalized| where state `key` can be an outlier, 0 elsewhere: a sin/cos-encoded key (`sincos`: within +-1, and
    twice as wide as its statistics) never is, nor a mean/std column whose std is 0, which passes its raw value to the
    model unchanged, as in training (model.md §3.5)."""
    if sincos:
        return np.zeros(normalized.shape)
    magnitude = np.abs(normalized)
    if key in (state_config.mean_std_embedding_keys or []):
        magnitude = np.where(np.broadcast_to(np.asarray(params.std) != 0, magnitude.shape), magnitude, 0.0)
    return magnitude


def check_state_outliers(tag: str, key: str, value: np.ndarray, normalized: np.ndarray, params: norm.KeyNormParams,
                         state_config: ModalityConfig, sincos: bool, anchors: bool = False) -> None:
    """ObservationError when state `key` normalizes beyond +-STATE_OUTLIER_LIMIT (outlier_magnitude), naming its rows,
    the value and the statistics it was normalized by: refused before the model, whose answer to it depended on the
    backend (PyTorch made NaN, ONNX Runtime finite actions computed from it). Only unclipped keys can get there
    (mean/std keys, and min/max keys with clip_outliers off; a key anchoring a relative action also has
    check_anchor_magnitude, whatever its normalization, which also judges its std-0 columns: `anchors`)."""
    if not sincos and not anchors and key in (state_config.mean_std_embedding_keys or []):
        # a std-0 column reaches the model raw, so the z-score check cannot judge it: its raw value is held to 1000
        # times its statistics' magnitude (1e20 there gave finite actions on ONNX Runtime, NaN on PyTorch at 1e30)
        beyond = _constant_columns_beyond(value, params)
        if beyond.any():
            raise ObservationError(
                f"State key '{key}' of '{tag}' is beyond its training data in rows {flagged_rows(beyond)}: "
                f"{_constant_column_text(value, params, beyond)}; the model only ever saw the constant there, so "
                "this state is likely in other units: send states in the units of the checkpoint's statistics")
    magnitude = outlier_magnitude(key, normalized, params, state_config, sincos)
    outlier = magnitude > STATE_OUTLIER_LIMIT
    if not outlier.any():
        return
    worst = np.unravel_index(int(np.argmax(magnitude)), magnitude.shape)
    column, raw = int(worst[-1]), float(value[worst])
    advice = ("the model was trained on states within about +-1 of them, so this one is likely in other units: send "
              "states in the units of the checkpoint's statistics")
    if key in (state_config.mean_std_embedding_keys or []):
        mean = float(np.broadcast_to(params.mean, value.shape)[worst])
        std = float(np.broadcast_to(params.std, value.shape)[worst])
        statistics = f"mean {mean:.3g}, std {std:.3g}"
        if abs(std) < 1e-6 * max(1.0, abs(mean)):  # rounding's std of a column that was constant in training
            advice = (f"a std that small is that of a column constant in training (the model saw about 0 there), so "
                      f"any state off {mean:.6g} by more than {STATE_OUTLIER_LIMIT * abs(std):.3g} is far outside "
                      "what it was trained on: send the training value in that column, or, if the statistics are "
                      "wrong, correct its std in the checkpoint's statistics.json")
    else:
        statistics = (f"range [{float(np.broadcast_to(params.low, value.shape)[worst]):.3g}, "
                      f"{float(np.broadcast_to(params.high, value.shape)[worst]):.3g}], not clipped (clip_outliers off)")
    raise ObservationError(
        f"State key '{key}' of '{tag}' normalizes to |values| up to "
        f"{beyond_limit_text(float(magnitude[worst]), STATE_OUTLIER_LIMIT)} in rows "
        f"{flagged_rows(outlier)}, beyond +-{STATE_OUTLIER_LIMIT:g}: column {column} holds {raw:.3g} against this "
        f"checkpoint's statistics {statistics}; {advice}")


def state_range_warning(tag: str, key: str, value: np.ndarray, normalized: np.ndarray, params: norm.KeyNormParams,
                        state_config: ModalityConfig, sincos: bool) -> Optional[str]:
    """A warning for state `key` when it lies beyond +-STATE_WARNING_LIMIT (outlier_magnitude) of its training data:
    a mean/std key as a z-score, a min/max key normalized by its statistics' full min/max, not by the q01/q99 the model
    normalizes by (a gripper closed in 98% of the frames has q01..q99 a sliver of what it was seen at), and before
    clip_outliers' clip, which hid it from the model but not from its relative actions. It names the largest value,
    the statistics it was compared with and the usual unit slips; None otherwise."""
    if sincos:
        return None
    mean_std = key in (state_config.mean_std_embedding_keys or [])
    full_range = params.data_min is not None and params.data_max is not None
    low, high = (params.data_min, params.data_max) if full_range else (params.low, params.high)
    if not mean_std:
        divisor = params.data_range_divisor if full_range else params.minmax_divisor
        normalized = norm.minmax_normalize(value, low, high, clip=False, divisor=divisor)
    magnitude = outlier_magnitude(key, normalized, params, state_config, sincos)
    largest = float(np.max(magnitude)) if magnitude.size else 0.0
    if not largest > STATE_WARNING_LIMIT:
        return None
    worst = np.unravel_index(int(np.argmax(magnitude)), magnitude.shape)
    bounds = tuple(float(np.broadcast_to(bound, value.shape)[worst]) for bound in (low, high))
    range_name = "min/max" if full_range else "q01/q99"
    statistics = f"{range_name} [{bounds[0]:.3g}, {bounds[1]:.3g}]"
    if mean_std:
        statistics = (f"mean {float(np.broadcast_to(params.mean, value.shape)[worst]):.3g}, std "
                      f"{float(np.broadcast_to(params.std, value.shape)[worst]):.3g} ({statistics})")
    scale = "as a z-score (mean/std)" if mean_std else f"by its statistics' {range_name}"
    return (f"State key '{key}' of '{tag}' normalizes to |values| up to {largest:.3g} {scale}, beyond "
            f"+-{STATE_WARNING_LIMIT:g} (about ten times its training range): column {int(worst[-1])} holds "
            f"{float(value[worst]):.3g} against this checkpoint's statistics {statistics}. Served, but likely in other "
            "units than the training data's: degrees for radians (x57.3) or millimetres for metres (x1000)? Send "
            "states in the units of the checkpoint's statistics (warned once per state key)")


def state_outliers(raw_states: Mapping[str, np.ndarray], rows: Sequence[int], state_config: Optional[ModalityConfig],
                   params: Mapping[str, norm.KeyNormParams], config: ProcessorConfig) -> List[str]:
    """For each state key whose values in `rows` normalize beyond +-STATE_OUTLIER_LIMIT: its name, largest
    normalized and raw |value| in those rows, and its statistics' range."""
    found = []
    for key in state_config.modality_keys if state_config else []:
        value = np.asarray(raw_states.get(key, np.zeros((0,))), np.float64)
        picked = value[[row for row in rows if row < len(value)]] if value.ndim == 3 else value
        if picked.size == 0 or picked.shape[-1] != params[key].dim:
            continue
        with np.errstate(all="ignore"):
            normalized = norm.normalize_state_key(key, picked, params[key], state_config,
                                                  config.apply_sincos_state_encoding,
                                                  config.clip_outliers)
        sincos = config.apply_sincos_state_encoding and key in (state_config.sin_cos_embedding_keys or [])
        largest = float(np.max(outlier_magnitude(key, normalized, params[key], state_config, sincos)))
        if largest > STATE_OUTLIER_LIMIT:
            low, high = float(np.min(params[key].low)), float(np.max(params[key].high))
            found.append(f"state key '{key}' normalizes to |values| up to "
                         f"{beyond_limit_text(largest, STATE_OUTLIER_LIMIT)} in those rows (raw "
                         f"{float(np.max(np.abs(picked))):.3g}; its statistics' range is [{low:.3g}, {high:.3g}])")
        elif not sincos and key in (state_config.mean_std_embedding_keys or []):
            found.extend(_constant_column_outlier(key, picked, params[key]))
    return found


def _constant_column_outlier(key: str, value: np.ndarray, params: norm.KeyNormParams) -> List[str]:
    """For mean/std state `key`: its std-0 column (constant in training, passed raw to the model) whose `value` lies
    beyond STATE_OUTLIER_LIMIT times its statistics' magnitude (KeyNormParams.magnitude), named; none otherwise."""
    beyond = _constant_columns_beyond(value, params)
    return [f"state key '{key}' {_constant_column_text(value, params, beyond)}"] if beyond.any() else []


def _constant_columns_beyond(value: np.ndarray, params: norm.KeyNormParams) -> np.ndarray:
    """Where mean/std state `value` lies in a std-0 column (passed raw to the model) beyond beyond_magnitude."""
    return beyond_magnitude(value, params) & np.broadcast_to(np.asarray(params.std) == 0, value.shape)


def _constant_column_text(value: np.ndarray, params: norm.KeyNormParams, beyond: np.ndarray) -> str:
    """The largest entry `beyond` flags (_constant_columns_beyond, some set): its column, value and bound."""
    worst = np.unravel_index(int(np.argmax(np.where(beyond, np.abs(value), -1.0))), value.shape)
    mean = float(np.broadcast_to(params.mean, value.shape)[worst])
    bound = _magnitude_bound(params, value.shape, worst)
    return (f"column {int(worst[-1])} holds {beyond_limit_text(float(value[worst]), bound)} in those rows, its std 0 "
            f"(constant {mean:.6g} in training), so passed raw to the model, beyond {STATE_OUTLIER_LIMIT:g} times its "
            f"statistics' magnitude (+-{bound:.6g})")


def beyond_magnitude(value: np.ndarray, params: norm.KeyNormParams) -> np.ndarray:
    """Where raw state `value` lies beyond STATE_OUTLIER_LIMIT times its statistics' magnitude: other units than the
    training data's, whatever the key's normalization made of it."""
    return np.abs(value) > STATE_OUTLIER_LIMIT * np.broadcast_to(params.magnitude, value.shape)


def _magnitude_bound(params: norm.KeyNormParams, shape: Tuple[int, ...], where: Tuple[int, ...]) -> float:
    """The bound beyond_magnitude holds the state entry at index `where` (of a state of `shape`) to."""
    return STATE_OUTLIER_LIMIT * float(np.broadcast_to(params.magnitude, shape)[where])


def check_anchor_magnitude(tag: str, key: str, value: np.ndarray, params: norm.KeyNormParams,
                           anchoring: Sequence[str], state_config: ModalityConfig, sincos: bool, clip: bool) -> None:
    """ObservationError when state `key`, anchoring relative action keys `anchoring` (decoded against its raw value),
    holds a value beyond STATE_OUTLIER_LIMIT times its statistics' magnitude (beyond_magnitude): units other than the
    training data's, whose decoded target would be sent as good, whatever the model saw of it (_model_input: clipped,
    sin/cos of it, a std-0 column's raw value, a column of one value's 0; `sincos`, `clip` as in normalize_state)."""
    beyond = beyond_magnitude(value, params)
    if not beyond.any():
        return
    worst = np.unravel_index(int(np.argmax(np.where(beyond, np.abs(value), -1.0))), value.shape)
    column, bound = int(worst[-1]), _magnitude_bound(params, value.shape, worst)
    raise ObservationError(
        f"State key '{key}' of '{tag}' holds |values| up to "
        f"{beyond_limit_text(float(np.max(np.abs(value))), bound)} in rows "
        f"{flagged_rows(beyond)}, beyond {STATE_OUTLIER_LIMIT:g} times its statistics' magnitude; it is "
        f"{_model_input(key, column, params, state_config, sincos, clip)} but anchors relative action "
        f"key{'s' if len(anchoring) > 1 else ''} {', '.join(repr(name) for name in anchoring)}, decoded against its "
        f"raw value: column {column} holds "
        f"{beyond_limit_text(float(value[worst]), bound)}, expected within +-{bound:.6g}; send states in the units of "
        "the checkpoint's statistics")


def _model_input(key: str, column: int, params: norm.KeyNormParams, state_config: ModalityConfig, sincos: bool,
                 clip: bool) -> str:
    """How column `column` of state `key` reaches the model, for check_anchor_magnitude's refusal."""
    if sincos:
        return "encoded as sin/cos for the model"
    if key in (state_config.mean_std_embedding_keys or []):
        if float(np.asarray(params.std)[column]) == 0:
            return "passed raw to the model (its std is 0)"
        return "normalized by mean/std for the model"
    if bool(np.broadcast_to(params.minmax_divisor[0], np.shape(params.low))[column]):  # as normalization judges it
        return "normalized to 0 for the model (its statistics' range is one value)"
    return "clipped for the model" if clip else "normalized unclipped for the model (clip_outliers off)"


def relative_anchors(action_config: ModalityConfig, params: EmbodimentNormParams) -> Dict[str, List[str]]:
    """{state key: the relative action keys decoded against its raw value} (an action config's state_key, else the
    action key's own name)."""
    anchors: Dict[str, List[str]] = {}
    for index, key in enumerate(action_config.modality_keys):
        if key in params.relative_action:
            anchors.setdefault(action_config.action_configs[index].state_key or key, []).append(key)
    return anchors


def check_reference_states(tag: str, action_config: ModalityConfig, params: EmbodimentNormParams,
                           raw_states: Mapping[str, np.ndarray]) -> None:
    """ValueError unless every relative action key's reference state can anchor it (finite, for xyz+rot6d a
    real rotation, for a 4x4 pose an invertible matrix): the checks decode_action makes, here before the model
    runs rather than after it."""
    for index, key in enumerate(action_config.modality_keys):
        if key not in params.relative_action:
            continue
        spec = action_config.action_configs[index]
        state = raw_states.get(spec.state_key or key)
        if state is None:  # decode_action names the missing key; the observation checks do first
            continue
        reference = norm._last_reference_step(key, state, params.action[key].dim, "relative->absolute", spec.state_key)
        norm._check_reference_pose(key, reference, spec.type.name, spec.format.name, spec.state_key)


def encode_action(
    action: Mapping[str, np.ndarray],
    tag: str,
    action_config: ModalityConfig,
    params: EmbodimentNormParams,
    max_action_dim: int,
    raw_states: Optional[Mapping[str, np.ndarray]] = None,
    clip: bool = True,
) -> np.ndarray:
    """Inverse of `decode_action`: {key: (B, T, D_key)} absolute actions -> (B, T, max_action_dim) float32.

    Row t is normalized with step t's statistics; relative keys are first expressed relative to the last
    step of their raw reference state. Min/max values outside the statistics range are clipped to [-1, 1],
    so they decode to the range's edge (unless not `clip`: what an outlier check looks at).
    """
    missing = [key for key in action_config.modality_keys if key not in action]
    if missing:
        raise KeyError(f"Action keys {missing} not found in actions to encode for embodiment '{tag}'")
    mean_std_keys = set(action_config.mean_std_embedding_keys or [])
    parts: List[np.ndarray] = []
    batch_rows: Optional[tuple] = None
    for index, key in enumerate(action_config.modality_keys):
        value = np.asarray(action[key], np.float64)
        dim = params.action[key].dim
        if value.ndim != 3 or value.shape[-1] != dim or value.shape[1] > action_config.horizon:
            raise ValueError(
                f"Action key '{key}' must have shape (B, T, {dim}) with T <= action horizon "
                f"{action_config.horizon}; got {value.shape}"
            )
        if batch_rows is not None and value.shape[:2] != batch_rows:
            raise ValueError(f"Action key '{key}' has (B, T) = {value.shape[:2]}; earlier keys have {batch_rows}")
        batch_rows = value.shape[:2]
        if key in params.relative_action:
            parts.append(_encode_relative_key(tag, index, key, value, raw_states, action_config, params, clip))
        else:
            parts.append(norm.normalize_action_key(value, params.action[key], key in mean_std_keys, clip))
    encoded = np.concatenate(parts, axis=-1)
    return norm.pad_last_dim(encoded, max_action_dim, "action").astype(np.float32)


def _reference_state(tag: str, key: str, spec: ActionConfig, raw_states: Optional[Mapping[str, np.ndarray]],
                     conversion: str) -> np.ndarray:
    """The raw state relative action `key` is converted against (its action config's state_key, else its own name)."""
    state_key = spec.state_key or key
    if raw_states is None:
        raise ValueError(f"State dict required for {conversion} conversion of key '{key}' in embodiment '{tag}'")
    if state_key not in raw_states:
        raise KeyError(f"Reference state key '{state_key}' not found in state dict for embodiment '{tag}'")
    return raw_states[state_key]


def _encode_relative_key(
    tag: str, index: int, key: str, value: np.ndarray, raw_states: Optional[Mapping[str, np.ndarray]],
    action_config: ModalityConfig, params: EmbodimentNormParams, clip: bool = True,
) -> np.ndarray:
    """Absolute (B, T, D) -> relative to the reference state, normalized with the first T relative-stat rows."""
    spec = action_config.action_configs[index]
    reference = _reference_state(tag, key, spec, raw_states, "absolute->relative")
    relative = norm.encode_relative(key, value, reference, spec.type.name, spec.format.name, spec.state_key)
    stats = params.relative_action[key]
    rows, where = value.shape[1], f"key '{key}' of '{tag}'"
    if key in set(action_config.mean_std_embedding_keys or []):
        return norm.mean_std_normalize(relative, norm.relative_stat(stats, "mean", rows, where),
                                       norm.relative_stat(stats, "std", rows, where))
    return norm.minmax_normalize(relative, norm.relative_stat(stats, "min", rows, where),
                                 norm.relative_stat(stats, "max", rows, where), clip=clip)
