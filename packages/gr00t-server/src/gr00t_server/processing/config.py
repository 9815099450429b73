"""Read a checkpoint's processor files: processor_config.json, statistics.json and embodiment_id.json."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from gr00t_client.embodiment import EMBODIMENT_TAG_TO_PROJECTOR_INDEX
from gr00t_client.modality import ActionRepresentation, ModalityConfig
from gr00t_server.model.backbone_config import BACKBONE_FAMILIES, is_backbone_family

logger = logging.getLogger(__name__)

PROCESSOR_CONFIG_NAME = "processor_config.json"
STATISTICS_NAME = "statistics.json"
EMBODIMENT_ID_NAME = "embodiment_id.json"
PROCESSOR_SUBFOLDER = "processor"

# Keys older internal checkpoints carry; they mean nothing at inference (model.md §1.4).
_LEGACY_PROCESSOR_KEYS = frozenset(
    {
        "vlm_backend",
        "vlm_model_path",
        "random_history_crop",
        "do_human_interpolation",
        "interpolation_steps",
        "human_embodiment_tags",
        "eagle_path",
        "state_gaussian_noise_std",
    }
)
_LEGACY_MODALITY_KEYS = frozenset({"normalization_mode", "exclude_state", "normalize_rotation"})
_MODALITY_FIELDS = frozenset(
    {"delta_indices", "modality_keys", "sin_cos_embedding_keys", "mean_std_embedding_keys", "action_configs"}
)
_ACTION_CONFIG_FIELDS = frozenset({"rep", "type", "format", "state_key"})
_CORE_MODALITIES = ("video", "state", "action", "language")

PathLike = Union[str, Path]


@dataclass(frozen=True)
class ProcessorConfig:
    """The inference-relevant part of `processor_kwargs` in processor_config.json (model.md §1.4)."""

    modality_configs: Dict[str, Dict[str, ModalityConfig]]
    image_crop_size: Optional[Tuple[int, int]] = (230, 230)
    image_target_size: Optional[Tuple[int, int]] = (256, 256)
    use_albumentations: bool = True
    shortest_image_edge: Optional[int] = None
    crop_fraction: Optional[float] = None
    letter_box_transform: bool = False
    model_name: str = "nvidia/Cosmos-Reason2-2B"
    model_type: str = "qwen"
    formalize_language: bool = True
    max_state_dim: int = 132
    max_action_dim: int = 132
    max_action_horizon: int = 40
    strict_action_padding_mask: bool = False
    use_percentiles: bool = True
    use_mean_std: bool = False
    clip_outliers: bool = True
    apply_sincos_state_encoding: bool = False
    use_relative_action: bool = False
    exclude_state: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def embodiment_tags(self) -> List[str]:
        """Tag values this checkpoint has modality configs for, sorted."""
        return sorted(self.modality_configs)

    @property
    def resolved_crop_fraction(self) -> float:
        """Center-crop fraction: `crop_fraction`, else image_crop_size[0] / image_target_size[0]."""
        if self.crop_fraction is not None:
            return float(self.crop_fraction)
        if self.image_crop_size is None or self.image_target_size is None:
            raise ValueError("processor config has neither crop_fraction nor image_crop_size/image_target_size")
        return float(self.image_crop_size[0]) / float(self.image_target_size[0])

    def to_processor_kwargs(self) -> Dict[str, Any]:
        """The JSON form written under `processor_kwargs`."""
        kwargs: Dict[str, Any] = {
            "modality_configs": {
                tag: {name: cfg.to_json_dict() for name, cfg in configs.items()}
                for tag, configs in self.modality_configs.items()
            }
        }
        for name in _SCALAR_FIELDS:
            value = getattr(self, name)
            kwargs[name] = list(value) if isinstance(value, tuple) else value
        kwargs.update(self.extra)
        return kwargs


# What the reference's Gr00tN1d7Processor takes for these keys when processor_kwargs lacks them (its __init__
# defaults; its from_pretrained back-fills only model_name, model_type and clip_outliers). ProcessorConfig's own
# defaults are the released checkpoints' values, which differ for all four.
ABSENT_KEY_DEFAULTS: Dict[str, Any] = {
    "use_percentiles": False, "use_albumentations": False, "shortest_image_edge": 256, "crop_fraction": 0.95,
}

_SCALAR_FIELDS = (
    "image_crop_size",
    "image_target_size",
    "use_albumentations",
    "shortest_image_edge",
    "crop_fraction",
    "letter_box_transform",
    "model_name",
    "model_type",
    "formalize_language",
    "max_state_dim",
    "max_action_dim",
    "max_action_horizon",
    "strict_action_padding_mask",
    "use_percentiles",
    "use_mean_std",
    "clip_outliers",
    "apply_sincos_state_encoding",
    "use_relative_action",
    "exclude_state",
)


def _refuse_broken_link(path: Path) -> None:
    """FileNotFoundError naming the target of a link that points nowhere (an interrupted hub-cache download leaves
    them), which would otherwise read as a file that is not there."""
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"{path} is a broken link to {os.readlink(path)}; download or copy the checkpoint again")


def find_processor_dir(checkpoint_dir: PathLike) -> Path:
    """The folder holding processor_config.json: the checkpoint root, else its `processor/` sub-folder."""
    root = Path(checkpoint_dir)
    for folder in (root, root / PROCESSOR_SUBFOLDER):
        _refuse_broken_link(folder / PROCESSOR_CONFIG_NAME)
        if (folder / PROCESSOR_CONFIG_NAME).is_dir():
            raise IsADirectoryError(f"{folder / PROCESSOR_CONFIG_NAME} is a directory; expected a JSON file")
    if (root / PROCESSOR_CONFIG_NAME).is_file():
        return root
    if (root / PROCESSOR_SUBFOLDER / PROCESSOR_CONFIG_NAME).is_file():
        return root / PROCESSOR_SUBFOLDER
    raise FileNotFoundError(
        f"No {PROCESSOR_CONFIG_NAME} in checkpoint {str(root)!r} (looked in the root and in "
        f"{PROCESSOR_SUBFOLDER}/); a GR00T N1.7 checkpoint needs processor_config.json and statistics.json"
    )


def _read_json(path: Path) -> Any:
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def _parse_modality(tag: str, modality: str, fields: Mapping[str, Any]) -> ModalityConfig:
    if not isinstance(fields, Mapping):
        raise ValueError(f"modality_configs[{tag!r}][{modality!r}] must be an object, got {type(fields).__name__}")
    cleaned = {k: v for k, v in fields.items() if k not in _LEGACY_MODALITY_KEYS}
    unknown = sorted(set(cleaned) - _MODALITY_FIELDS)
    if unknown:
        logger.warning("modality_configs[%r][%r]: ignoring unknown fields %s", tag, modality, unknown)
        cleaned = {k: v for k, v in cleaned.items() if k in _MODALITY_FIELDS}
    if cleaned.get("action_configs") is not None:
        cleaned["action_configs"] = [
            {k: v for k, v in ac.items() if k in _ACTION_CONFIG_FIELDS} if isinstance(ac, Mapping) else ac
            for ac in cleaned["action_configs"]
        ]
    try:
        return ModalityConfig.from_json_dict(cleaned)
    except ValueError as exc:
        raise ValueError(f"modality_configs[{tag!r}][{modality!r}]: {exc}") from exc


def parse_modality_configs(data: Mapping[str, Any]) -> Dict[str, Dict[str, ModalityConfig]]:
    """{tag: {modality: JSON}} -> {tag: {modality: ModalityConfig}}; non-core modalities that fail are skipped."""
    out: Dict[str, Dict[str, ModalityConfig]] = {}
    for tag, modalities in data.items():
        if not isinstance(modalities, Mapping):
            raise ValueError(f"modality_configs[{tag!r}] must be an object of modalities, got {type(modalities).__name__}")
        parsed: Dict[str, ModalityConfig] = {}
        for modality, fields in modalities.items():
            try:
                parsed[modality] = _parse_modality(tag, modality, fields)
            except ValueError:
                if modality in _CORE_MODALITIES:
                    raise
                logger.warning("modality_configs[%r]: skipping unparsable extra modality %r", tag, modality)
        out[str(tag)] = parsed
    return out


_BOOL_FIELDS = (
    "use_albumentations", "letter_box_transform", "formalize_language", "strict_action_padding_mask", "use_percentiles",
    "use_mean_std", "clip_outliers", "apply_sincos_state_encoding", "use_relative_action", "exclude_state",
)
_POSITIVE_INT_FIELDS = ("max_state_dim", "max_action_dim", "max_action_horizon")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field_error(name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"field {name!r} is {json.dumps(value)} ({type(value).__name__}); expected {expected}")


def _as_size(value: Any, name: str) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    if _is_int(value) and value >= 1:
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value):
        return (int(value[0]), int(value[1]))
    raise _field_error(name, value, "[h, w] of ints >= 1, or null")


def processor_config_from_kwargs(kwargs: Mapping[str, Any]) -> ProcessorConfig:
    """Build a ProcessorConfig from a `processor_kwargs` dict, back-filling absent keys as the reference processor
    does (ABSENT_KEY_DEFAULTS, with a warning naming them; ProcessorConfig's defaults for the rest); ValueError naming
    the field for a value of the wrong type (a string "false" is not a bool, 132.9 is not an int)."""
    if "modality_configs" not in kwargs:
        raise ValueError("processor_kwargs has no 'modality_configs'; cannot know the embodiments of this checkpoint")
    if not isinstance(kwargs["modality_configs"], Mapping):
        raise _field_error("modality_configs", kwargs["modality_configs"], "an object {embodiment tag: {modality: config}}")
    defaults = ProcessorConfig(modality_configs={})
    values: Dict[str, Any] = {"modality_configs": parse_modality_configs(kwargs["modality_configs"])}
    extra: Dict[str, Any] = {}
    for key, value in kwargs.items():
        if key == "modality_configs" or key in _LEGACY_PROCESSOR_KEYS:
            continue
        if key in _SCALAR_FIELDS:
            values[key] = value
        elif key not in ("statistics", "embodiment_id_mapping"):
            extra[key] = value
    absent = [key for key in ABSENT_KEY_DEFAULTS if key not in kwargs]
    if absent:  # save_pretrained writes every one: these files came from elsewhere (a converter, a hand edit)
        logger.warning("processor_kwargs lacks %s; taking the reference processor's defaults for them (%s), as its "
                       "from_pretrained does. Check them against the checkpoint's training recipe: they decide the "
                       "normalization and the image transform", ", ".join(absent),
                       ", ".join(f"{key}={ABSENT_KEY_DEFAULTS[key]}" for key in absent))
        values.update({key: ABSENT_KEY_DEFAULTS[key] for key in absent})
    if kwargs.get("use_relative_action") is None:
        _warn_relative_keys_decoded_absolute(values["modality_configs"])
    for key in _SCALAR_FIELDS:
        if values.get(key) is None and key not in ("shortest_image_edge", "crop_fraction", "image_crop_size", "image_target_size"):
            values[key] = getattr(defaults, key)
    values["image_crop_size"] = _as_size(values.get("image_crop_size", defaults.image_crop_size), "image_crop_size")
    values["image_target_size"] = _as_size(values.get("image_target_size", defaults.image_target_size), "image_target_size")
    for key in _POSITIVE_INT_FIELDS:
        if not (_is_int(values[key]) and values[key] >= 1):
            raise _field_error(key, values[key], "an int >= 1")
    for key in _BOOL_FIELDS:
        if not isinstance(values[key], bool):
            raise _field_error(key, values[key], "true or false")
    for key in ("model_name", "model_type"):
        if not isinstance(values[key], str):
            raise _field_error(key, values[key], "a string")
    # The processor's model_name is the tokenizer's hub id and model_type its collator: N1.7 has one of each.
    if not is_backbone_family(values["model_name"]):
        raise _field_error("model_name", values["model_name"],
                           f"a backbone id containing one of {list(BACKBONE_FAMILIES)}, e.g. \"nvidia/Cosmos-Reason2-2B\"")
    if values["model_type"] != "qwen":
        raise _field_error("model_type", values["model_type"], '"qwen" (the Qwen3-VL collator of GR00T N1.7)')
    edge = values.get("shortest_image_edge")
    if edge is not None and not (_is_int(edge) and edge >= 1):
        raise _field_error("shortest_image_edge", edge, "an int >= 1, or null")
    fraction = values.get("crop_fraction")
    if fraction is not None and not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
                                     and 0 < fraction <= 1):
        raise _field_error("crop_fraction", fraction, "a number in (0, 1], or null")
    config = ProcessorConfig(**values, extra=extra)
    _validate_horizons(config)
    _check_image_transform(config)
    return config


def _warn_relative_keys_decoded_absolute(modality_configs: Mapping[str, Mapping[str, ModalityConfig]]) -> None:
    """use_relative_action absent or null is false, as in the reference; say so when action_configs say RELATIVE."""
    relative = [
        f"{tag}.{key}"
        for tag, modalities in modality_configs.items() if modalities.get("action") is not None
        for key, action_config in zip(modalities["action"].modality_keys, modalities["action"].action_configs or [])
        if action_config.rep is ActionRepresentation.RELATIVE
    ]
    if relative:
        logger.warning("processor_config.json sets no use_relative_action (absent or null), so it is false, the "
                       "reference's default: the action keys whose action_configs say RELATIVE (%s) are decoded as "
                       "absolute actions, the state never added. Set use_relative_action to true if the checkpoint was "
                       "trained with relative actions (its statistics.json then has relative_action statistics)",
                       ", ".join(relative))


def _check_image_transform(config: ProcessorConfig) -> None:
    """ValueError naming the fields when no frame could be transformed with the image settings (else every request
    failed). A torchvision-style crop larger than the resize is refused: the reference pads it, which is not done here."""
    target, crop = config.image_target_size, config.image_crop_size
    if not config.use_albumentations:
        missing = [name for name, size in (("image_target_size", target), ("image_crop_size", crop)) if size is None]
        if missing:
            raise ValueError(f"use_albumentations is false, whose transform resizes to image_target_size and center "
                             f"crops image_crop_size, but {' and '.join(missing)} is null")
        if crop[0] > target[0] or crop[1] > target[1]:
            raise ValueError(f"image_crop_size {list(crop)} is larger than image_target_size {list(target)} "
                             "(use_albumentations false): the center crop must fit in the resized image")
        return
    if config.shortest_image_edge is None and target is None:
        raise ValueError("shortest_image_edge and image_target_size are both null; the image transform "
                         "(use_albumentations true) resizes to one of them")
    if config.crop_fraction is None and (crop is None or target is None):
        missing = " and ".join(name for name, size in (("image_crop_size", crop), ("image_target_size", target))
                               if size is None)
        raise ValueError(f"crop_fraction and {missing} are null; the center crop (use_albumentations true) takes "
                         "crop_fraction, or image_crop_size / image_target_size")


def _validate_horizons(config: ProcessorConfig) -> None:
    """Video, state and action need at least one step (an empty action delta_indices returns chunks of 0 rows), and
    no action horizon may exceed max_action_horizon."""
    for tag, modalities in config.modality_configs.items():
        for modality in ("video", "state", "action"):
            if modality in modalities and not modalities[modality].delta_indices:
                raise ValueError(
                    f"modality_configs[{tag!r}][{modality!r}]['delta_indices'] is []; expected a non-empty list of ints "
                    f"(one per {'action step' if modality == 'action' else 'frame'})"
                )
        action = modalities.get("action")
        if action is not None and action.horizon > config.max_action_horizon:
            raise ValueError(
                f"embodiment {tag!r}: action horizon {action.horizon} exceeds max_action_horizon "
                f"{config.max_action_horizon} of the processor config"
            )


def load_processor_config(checkpoint_dir: PathLike) -> ProcessorConfig:
    """Read processor_config.json from a checkpoint (or its `processor/` sub-folder)."""
    path = find_processor_dir(checkpoint_dir) / PROCESSOR_CONFIG_NAME
    data = _read_json(path)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} must hold a JSON object")
    kwargs = data.get("processor_kwargs", data)
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{path}: 'processor_kwargs' must be an object")
    try:
        return processor_config_from_kwargs(kwargs)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


# --- statistics.json ------------------------------------------------------------------------------

Statistics = Dict[str, Dict[str, Dict[str, Dict[str, np.ndarray]]]]
STAT_NAMES = ("min", "max", "mean", "std", "q01", "q99")


_STAT_RANGES = (("min", "max"), ("q01", "q99"))
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _parse_stat(values: Any, where: str) -> np.ndarray:
    """One stat as a float64 array of at least one axis; ValueError unless it is finite numbers."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} is not a list of numbers (or of equal-length rows): {exc}") from None
    if array.ndim == 0 or array.shape[-1] == 0:
        raise ValueError(f"{where} must be a non-empty list of numbers, got {json.dumps(values)[:60]}")
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0].tolist()
        raise ValueError(f"{where} has a non-finite value ({array[tuple(bad)]}) at index {bad}; statistics must be finite")
    if (np.abs(array) > _FLOAT32_MAX).any():  # the action is unnormalized into float32: 1e39 became inf on every call
        bad = np.argwhere(np.abs(array) > _FLOAT32_MAX)[0].tolist()
        raise ValueError(f"{where} value {array[tuple(bad)]:g} at index {bad} is beyond float32's range "
                         f"({_FLOAT32_MAX:.4g}); states and actions are float32, so statistics must fit in it")
    return array


def check_key_statistics(stats: Mapping[str, np.ndarray], where: str, absolute: bool = False) -> int:
    """Every stat of one key (each parsed by _parse_stat, so within float32's range and every span finite) has the
    same width (the key's dimension), low <= high, std >= 0, and for an `absolute` key (a state or action key) one
    row; ValueError naming `where` and the stat. Returns the width."""
    widths = {name: int(value.shape[-1]) for name, value in stats.items()}
    if len(set(widths.values())) > 1:
        listed = ", ".join(f"{name} {width}" for name, width in widths.items())
        raise ValueError(f"{where}: stats have different lengths ({listed}); each must have one value per dimension")
    rows = [name for name, value in stats.items() if value.ndim != 1]
    if absolute and rows:  # normalizing a (T, D) state by (2, D) statistics failed in numpy on every call
        shape = stats[rows[0]].shape
        raise ValueError(f"{where}[{rows[0]!r}] has shape {shape}; a state or action key's statistics must be 1-D, one "
                         f"value per dimension (shape ({shape[-1]},)): per-step rows are the layout of relative_action "
                         "keys only")
    for low_name, high_name in _STAT_RANGES:
        if low_name in stats and high_name in stats:
            low, high = stats[low_name], stats[high_name]
            if low.shape != high.shape:
                raise ValueError(f"{where}: {low_name} has shape {low.shape} but {high_name} has {high.shape}")
            if (low > high).any():
                index = np.argwhere(low > high)[0].tolist()
                raise ValueError(f"{where}: {low_name} {low[tuple(index)]} > {high_name} {high[tuple(index)]} at index "
                                 f"{index}; the range is inverted")
    if "std" in stats and (stats["std"] < 0).any():
        raise ValueError(f"{where}: std has a negative value")
    return next(iter(widths.values()), 0)


def parse_statistics(data: Mapping[str, Any], errors: Optional[Dict[str, str]] = None) -> Statistics:
    """{tag: {group: {key: {stat: list}}}} -> the same with float64 arrays; ValueError naming tag, group, key and
    stat for a value that is not finite numbers, stats of one key with different lengths, or an inverted range.
    With `errors`, a tag whose statistics are invalid is left out and its message put there instead (a checkpoint of
    many embodiments stays usable for the others, as the reference's, which reads only the served tag's)."""
    out: Statistics = {}
    for tag, groups in data.items():
        try:
            out[tag] = _parse_tag_statistics(tag, groups)
        except ValueError as exc:
            if errors is None:
                raise
            errors[str(tag)] = str(exc)
    return out


def _parse_tag_statistics(tag: str, groups: Any) -> Dict[str, Dict[str, Dict[str, np.ndarray]]]:
    if not isinstance(groups, Mapping):
        raise ValueError(f"statistics[{tag!r}] must be an object of groups, got {type(groups).__name__}")
    out: Dict[str, Dict[str, Dict[str, np.ndarray]]] = {}
    for group, keys in groups.items():
        if not isinstance(keys, Mapping):
            raise ValueError(f"statistics[{tag!r}][{group!r}] must be an object of keys")
        out[group] = {}
        for key, stats in keys.items():
            where = f"statistics[{tag!r}][{group!r}][{key!r}]"
            if not isinstance(stats, Mapping):
                raise ValueError(f"{where} must be an object of stats")
            parsed = {name: _parse_stat(values, f"{where}[{name!r}]") for name, values in stats.items() if name in STAT_NAMES}
            check_key_statistics(parsed, where, absolute=group in ("state", "action"))
            out[group][key] = parsed
    return out


def load_statistics(checkpoint_dir: PathLike, errors: Optional[Dict[str, str]] = None) -> Statistics:
    """Read statistics.json next to processor_config.json (`errors`: as for parse_statistics, messages naming the
    file)."""
    path = find_processor_dir(checkpoint_dir) / STATISTICS_NAME
    _refuse_broken_link(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; expected a JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"No {STATISTICS_NAME} next to {PROCESSOR_CONFIG_NAME} in {str(path.parent)!r}")
    data = _read_json(path)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} must hold a JSON object")
    try:
        statistics = parse_statistics(data, errors)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    for tag, message in (errors or {}).items():
        errors[tag] = f"{path}: {message}"
    return statistics


# --- embodiment_id.json ---------------------------------------------------------------------------


def merge_embodiment_ids(from_checkpoint: Optional[Mapping[str, int]]) -> Dict[str, int]:
    """Checkpoint ids plus built-in ids for tags the checkpoint does not list (never overriding it); ValueError
    for an id that is not an int >= 0 (2.7 or true would pick another embodiment's projector)."""
    merged: Dict[str, int] = {}
    for tag, index in (from_checkpoint or {}).items():
        if not (_is_int(index) and index >= 0):
            raise ValueError(f"embodiment {str(tag)!r} has id {json.dumps(index)} ({type(index).__name__}); expected an int >= 0")
        merged[str(tag)] = index
    for tag, index in EMBODIMENT_TAG_TO_PROJECTOR_INDEX.items():
        merged.setdefault(tag, index)
    return merged


def embodiment_id_path(checkpoint_dir: PathLike) -> Path:
    """The embodiment_id.json the processor reads: the one next to processor_config.json, as in the reference (one
    elsewhere in the checkpoint is never read)."""
    return find_processor_dir(checkpoint_dir) / EMBODIMENT_ID_NAME


def load_embodiment_ids(checkpoint_dir: PathLike) -> Dict[str, int]:
    """Read embodiment_id.json (optional) next to processor_config.json, merged with the built-in table."""
    path = embodiment_id_path(checkpoint_dir)
    _refuse_broken_link(path)
    unread = Path(checkpoint_dir) / EMBODIMENT_ID_NAME
    if not path.exists() and unread != path and unread.is_file():
        logger.warning("%s is not read: embodiment_id.json is read only next to processor_config.json, as %s (the "
                       "reference's rule); the built-in projector indices are used", unread, path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; expected a JSON file")
    data = _read_json(path) if path.is_file() else None
    if data is not None and not isinstance(data, Mapping):
        raise ValueError(f"{path} must hold a JSON object {{tag: id}}")
    try:
        return merge_embodiment_ids(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
