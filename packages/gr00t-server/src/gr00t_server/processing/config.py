"""Read a checkpoint's processor_config.json into a checked ProcessorConfig (modality configs, image settings)."""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple, Union

from gr00t_client.modality import ActionRepresentation, ModalityConfig
from gr00t_server.model.backbone_config import BACKBONE_FAMILIES, is_backbone_family

from .checkpoint_files import PROCESSOR_CONFIG_NAME, PathLike, _is_int, _read_json, find_processor_dir
from .checkpoint_statistics import load_statistics, parse_statistics
from .embodiment_ids import load_embodiment_ids, merge_embodiment_ids

__all__ = ["ABSENT_KEY_DEFAULTS", "ProcessorConfig", "find_processor_dir", "load_embodiment_ids", "load_processor_config",
           "load_statistics", "merge_embodiment_ids", "parse_modality_configs", "parse_statistics",
           "processor_config_from_kwargs"]

logger = logging.getLogger(__name__)

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
# Training-only keys the reference processor takes (augmentation); they mean nothing at inference (model.md §1.4).
_TRAINING_PROCESSOR_KEYS = frozenset(
    {"random_rotation_angle", "color_jitter_params", "use_albumentations_transforms", "extra_augmentation_config",
     "state_dropout_prob"}
)
# Keys the reference's from_pretrained adds to processor_kwargs itself: accepted silently.
_INJECTED_KEYS = frozenset({"transformers_loading_kwargs"})
# A key at most this many edits (a swap counts one) from a known one, and close to it by difflib, is a typo of it.
MAX_TYPO_EDITS = 2
_LEGACY_MODALITY_KEYS = frozenset({"normalization_mode", "exclude_state", "normalize_rotation"})
_MODALITY_FIELDS = frozenset(
    {"delta_indices", "modality_keys", "sin_cos_embedding_keys", "mean_std_embedding_keys", "action_configs"}
)
_ACTION_CONFIG_FIELDS = frozenset({"rep", "type", "format", "state_key"})
_CORE_MODALITIES = ("video", "state", "action", "language")


@dataclass(frozen=True)
class ProcessorConfig:
    """The inference-relevant part of `processor_kwargs` in processor_config.json (model.md §1.4)."""

    modality_configs: Dict[str, Dict[str, ModalityConfig]]
    # (h, w), or an int as torchvision's Resize/CenterCrop read it: the shortest side / a square crop.
    image_crop_size: Optional[Union[int, Tuple[int, int]]] = (230, 230)
    image_target_size: Optional[Union[int, Tuple[int, int]]] = (256, 256)
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
    # The keys processor_kwargs lacked that took ABSENT_KEY_DEFAULTS: a refusal quoting one says it is not the file's
    absent_keys: FrozenSet[str] = field(default=frozenset(), compare=False)

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

    def absent_note(self, key: str) -> str:
        """' (the reference processor's default; processor_kwargs has no KEY)' when `key` was back-filled from
        ABSENT_KEY_DEFAULTS, for a message that quotes its value; '' when the file gave it."""
        return f" (the reference processor's default; processor_kwargs has no {key})" if key in self.absent_keys else ""

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
# defaults are the released checkpoints' values, which differ for all of these (132, 132 and 40 for the dimensions and
# the horizon); the other keys' __init__ defaults are ProcessorConfig's.
ABSENT_KEY_DEFAULTS: Dict[str, Any] = {
    "use_percentiles": False, "use_albumentations": False, "shortest_image_edge": 256, "crop_fraction": 0.95,
    "max_state_dim": 29, "max_action_dim": 29, "max_action_horizon": 50,
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


def _parse_modality(tag: str, modality: str, fields: Mapping[str, Any]) -> ModalityConfig:
    if not isinstance(fields, Mapping):
        raise ValueError(f"modality_configs[{tag!r}][{modality!r}] must be an object, got {type(fields).__name__}")
    where = f"modality_configs[{tag!r}][{modality!r}]"
    cleaned = {k: v for k, v in fields.items() if k not in _LEGACY_MODALITY_KEYS}
    unknown = sorted(set(cleaned) - _MODALITY_FIELDS)
    if unknown:
        _refuse_near_miss_fields(where, unknown, _MODALITY_FIELDS)
        logger.warning("%s: ignoring unknown fields %s", where, unknown)
        cleaned = {k: v for k, v in cleaned.items() if k in _MODALITY_FIELDS}
    if isinstance(cleaned.get("action_configs"), list):
        for index, ac in enumerate(cleaned["action_configs"]):
            unknown = sorted(set(ac) - _ACTION_CONFIG_FIELDS) if isinstance(ac, Mapping) else []
            if unknown:
                _refuse_near_miss_fields(f"{where}.action_configs[{index}]", unknown, _ACTION_CONFIG_FIELDS)
                logger.warning("%s.action_configs[%d]: ignoring unknown fields %s", where, index, unknown)
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


def _field_error(name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"field {name!r} is {json.dumps(value)} ({type(value).__name__}); expected {expected}")


def _as_size(value: Any, name: str) -> Optional[Union[int, Tuple[int, int]]]:
    if value is None:
        return None
    if _is_int(value) and value >= 1:
        return int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value):
        return (int(value[0]), int(value[1]))
    raise _field_error(name, value, "[h, w] of ints >= 1, an int >= 1, or null")


def _as_pair(size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


def processor_config_from_kwargs(kwargs: Mapping[str, Any]) -> ProcessorConfig:
    """Build a ProcessorConfig from a `processor_kwargs` dict, back-filling absent keys as the reference processor
    does (ABSENT_KEY_DEFAULTS, with a warning naming them; ProcessorConfig's defaults for the rest), a null true/false
    field as false (the reference tests its truth), with a warning naming it; ValueError naming
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
    _refuse_near_miss_keys(extra)
    absent = [key for key in ABSENT_KEY_DEFAULTS if key not in kwargs]
    if absent:  # save_pretrained writes every one: these files came from elsewhere (a converter, a hand edit)
        logger.warning("processor_kwargs lacks %s; taking the reference processor's defaults for them (%s), as its "
                       "from_pretrained does. Check them against the checkpoint's training recipe: they decide the "
                       "normalization, the image transform and the state and action padding", ", ".join(absent),
                       ", ".join(f"{key}={ABSENT_KEY_DEFAULTS[key]}" for key in absent))
        values.update({key: ABSENT_KEY_DEFAULTS[key] for key in absent})
    if kwargs.get("use_relative_action") is None:
        _warn_relative_keys_decoded_absolute(values["modality_configs"])
    _read_null_bools_as_false(kwargs, values)
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
    config = ProcessorConfig(**values, extra=extra, absent_keys=frozenset(absent))
    _validate_horizons(config)
    _check_image_transform(config)
    return config


def _read_null_bools_as_false(kwargs: Mapping[str, Any], values: Dict[str, Any]) -> None:
    """A true/false field given as null is false, with a warning naming it: the reference keeps None and tests its
    truth (`if self.formalize_language:`), where ProcessorConfig's default (true for formalize_language, clip_outliers,
    use_percentiles, use_albumentations) would serve another prompt or normalization than the reference's."""
    nulls = [key for key in _BOOL_FIELDS if key in kwargs and kwargs[key] is None]
    values.update({key: False for key in nulls})
    for key in nulls:
        logger.warning("processor_kwargs sets %s to null; it is served as false, as the reference reads null (falsy). "
                       "Write true or false to say which the checkpoint was trained with", key)


_warned_unknown_keys: set = set()  # once per process, not at each load of the same checkpoint


def _refuse_near_miss_keys(extra: Mapping[str, Any]) -> None:
    """A key that is a near miss of a known processor_kwargs key (close by difflib and at most
    MAX_TYPO_EDITS edits from it) is a typo (the field it meant would silently keep its value: the reference processor
    fails on it); other unknown keys are kept and warned about once (`action_horizon` is no typo of
    `max_action_horizon`)."""
    known = sorted({*_SCALAR_FIELDS, *_TRAINING_PROCESSOR_KEYS, "modality_configs"})
    unknown = sorted(key for key in extra if key not in _TRAINING_PROCESSOR_KEYS and key not in _INJECTED_KEYS
                     and not str(key).startswith("_"))
    for key in unknown:
        close = _near_miss(key, known)
        if close:
            raise ValueError(f"processor_kwargs has unknown key {key!r} (did you mean {close!r}?); the reference "
                             f"processor refuses it, and {close!r} would not take its value")
    new = [key for key in unknown if key not in _warned_unknown_keys]
    if new:
        _warned_unknown_keys.update(new)
        logger.warning("processor_kwargs has keys this server does not know: %s; they are ignored (the reference "
                       "processor may refuse them)", ", ".join(map(str, new)))


def _near_miss(key: Any, known: Any) -> Optional[str]:
    """The known key `key` is a typo of (close by difflib and at most MAX_TYPO_EDITS edits from it), or None."""
    close = [match for match in difflib.get_close_matches(str(key), sorted(known), n=3, cutoff=0.85)
             if _edit_distance(str(key), match) <= MAX_TYPO_EDITS]
    return close[0] if close else None


def _refuse_near_miss_fields(where: str, unknown: List[Any], known: frozenset) -> None:
    """ValueError for the first unknown field of a modality config (or action config) that is a near miss of a
    known one: dropped, it left the field it meant at its default (relative actions decoded as absolute)."""
    for key in unknown:
        close = _near_miss(key, known)
        if close:
            raise ValueError(f"{where} has unknown field {key!r} (did you mean {close!r}?); {close!r} would not "
                             f"take its value (expected fields of {sorted(known)})")


def _edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment): insertions, deletions, substitutions and swaps of
    two neighbouring characters count 1 each."""
    previous, row = None, list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, char_b in enumerate(b, 1):
            current[j] = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + (char_a != char_b))
            if previous is not None and i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                current[j] = min(current[j], previous[j - 2] + 1)
        previous, row = row, current
    return row[-1]


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
        # An int target is the shortest side after the resize, so a crop within it always fits.
        if any(c > t for c, t in zip(_as_pair(crop), _as_pair(target))):
            raise ValueError(f"image_crop_size {json.dumps(crop)} is larger than image_target_size {json.dumps(target)} "
                             "(use_albumentations false): the center crop must fit in the resized image")
        return
    _refuse_int_sizes_albumentations_reads(config)
    if config.shortest_image_edge is None and target is None:
        raise ValueError("shortest_image_edge and image_target_size are both null; the image transform "
                         "(use_albumentations true) resizes to one of them")
    if config.crop_fraction is None and (crop is None or target is None):
        missing = " and ".join(name for name, size in (("image_crop_size", crop), ("image_target_size", target))
                               if size is None)
        raise ValueError(f"crop_fraction and {missing} are null; the center crop (use_albumentations true) takes "
                         "crop_fraction, or image_crop_size / image_target_size")


def _refuse_int_sizes_albumentations_reads(config: ProcessorConfig) -> None:
    """The albumentations transform takes image_target_size[0] (without shortest_image_edge) and, without
    crop_fraction, image_crop_size[0] / image_target_size[0]: the reference fails on an int there."""
    read = []
    if config.shortest_image_edge is None:
        read.append("image_target_size")
    if config.crop_fraction is None:
        read += ["image_crop_size", "image_target_size"]
    ints = [name for name in dict.fromkeys(read) if isinstance(getattr(config, name), int)]
    if ints:
        raise ValueError(f"{' and '.join(f'{name} is {getattr(config, name)}' for name in ints)}, an int; the "
                         "albumentations transform (use_albumentations true) reads it as [h, w]: give [h, w]")


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
            source = (config.absent_note("max_action_horizon") + "; set max_action_horizon to the checkpoint's "
                      "(config.json's action_horizon)") if "max_action_horizon" in config.absent_keys else (
                " of the processor config")
            raise ValueError(
                f"embodiment {tag!r}: action horizon {action.horizon} exceeds max_action_horizon "
                f"{config.max_action_horizon}{source}"
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
