"""ModalityConfig and ActionConfig: what a policy reads and writes, with the reference JSON form."""

from __future__ import annotations

import copy
import json
import numbers
from dataclasses import dataclass, field
from enum import Enum
from collections.abc import Mapping  # isinstance with typing.Mapping is twice as slow (hot paths)
from typing import Any, Dict, Iterable, List, Optional


class ActionRepresentation(Enum):
    """How an action relates to the state: relative to it, a per-step delta, or absolute."""

    RELATIVE = "relative"
    DELTA = "delta"
    ABSOLUTE = "absolute"


class ActionType(Enum):
    """Whether an action group is an end-effector pose or joint-space values."""

    EEF = "eef"
    NON_EEF = "non_eef"


class ActionFormat(Enum):
    """Layout of an action group's values."""

    DEFAULT = "default"
    XYZ_ROT6D = "xyz+rot6d"
    XYZ_ROTVEC = "xyz+rotvec"


def _parse_enum(enum_cls: type, value: Any, field_name: str) -> Enum:
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        for member in enum_cls:  # names as the reference writes them, values as a courtesy
            if value == member.name or value.lower() == member.value:
                return member
    known = ", ".join(m.name for m in enum_cls)
    raise ValueError(f"ActionConfig.{field_name}: unknown value {value!r}; expected one of {known}")


@dataclass
class ActionConfig:
    """Representation, type and format of one action group, and the state key it is relative to."""

    rep: ActionRepresentation
    type: ActionType
    format: ActionFormat = ActionFormat.DEFAULT
    state_key: Optional[str] = None

    def __post_init__(self) -> None:
        self.rep = _parse_enum(ActionRepresentation, self.rep, "rep")
        self.type = _parse_enum(ActionType, self.type, "type")
        self.format = _parse_enum(ActionFormat, self.format, "format")
        if self.state_key is not None and not isinstance(self.state_key, str):
            raise ValueError(f"ActionConfig.state_key must be a str or None, got {self.state_key!r}")

    def to_json_dict(self) -> Dict[str, Any]:
        """The reference JSON form: enums by name."""
        return {"rep": self.rep.name, "type": self.type.name, "format": self.format.name, "state_key": self.state_key}


_FIELD_ORDER = ("delta_indices", "modality_keys", "sin_cos_embedding_keys", "mean_std_embedding_keys", "action_configs")


@dataclass
class ModalityConfig:
    """Which keys a modality has and which relative time steps (delta_indices) a policy reads or writes."""

    delta_indices: List[int]
    modality_keys: List[str]
    sin_cos_embedding_keys: Optional[List[str]] = None
    mean_std_embedding_keys: Optional[List[str]] = None
    action_configs: Optional[List[ActionConfig]] = field(default=None)

    def __post_init__(self) -> None:
        # Each iterable is made a list once, before any check: a generator checked first was stored empty.
        if self.delta_indices is None or isinstance(self.delta_indices, (str, bytes)):
            raise ValueError(f"delta_indices must be a non-None list, got {self.delta_indices!r}")
        indices = _as_list(self.delta_indices, "delta_indices", "a list of ints")
        self.delta_indices = [_delta_index(index, indices) for index in indices]
        keys = self.modality_keys
        if not isinstance(keys, (str, bytes)):
            keys = _as_list(keys, "modality_keys", "a non-empty list of str")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"modality_keys must be a non-empty list of str, got {keys!r}")
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"modality_keys must not repeat a key, got {duplicates} more than once in {keys}")
        self.modality_keys = keys
        for name in ("sin_cos_embedding_keys", "mean_std_embedding_keys"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (str, bytes)):
                    value = _as_list(value, name, "a list of str or None")
                if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
                    raise ValueError(f"{name} must be a list of str or None, got {value!r}")
                setattr(self, name, value)
        if self.action_configs is not None:
            if isinstance(self.action_configs, (str, bytes, Mapping)):
                raise ValueError(f"action_configs must be a list of action configs, one per modality key, or None; got "
                                 f"{self.action_configs!r}")
            configs = [c if isinstance(c, ActionConfig) else _action_config_from(c)
                       for c in _as_list(self.action_configs, "action_configs", "a list of action configs or None")]
            if len(configs) != len(self.modality_keys):
                raise ValueError(
                    f"action_configs has {len(configs)} entries but modality_keys has {len(self.modality_keys)}; "
                    "expected one action config per key"
                )
            self.action_configs = configs

    @property
    def horizon(self) -> int:
        """Number of time steps (len(delta_indices))."""
        return len(self.delta_indices)

    def to_json_dict(self) -> Dict[str, Any]:
        """The reference JSON form, fields in reference order, enums by name."""
        return {
            "delta_indices": list(self.delta_indices),
            "modality_keys": list(self.modality_keys),
            "sin_cos_embedding_keys": None if self.sin_cos_embedding_keys is None else list(self.sin_cos_embedding_keys),
            "mean_std_embedding_keys": None if self.mean_std_embedding_keys is None else list(self.mean_std_embedding_keys),
            "action_configs": None if self.action_configs is None else [c.to_json_dict() for c in self.action_configs],
        }

    def to_json(self) -> str:
        """The JSON form (to_json_dict) as a string."""
        return json.dumps(self.to_json_dict())

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> "ModalityConfig":
        """Build from the JSON form; unknown fields are an error naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"ModalityConfig JSON must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELD_ORDER))
        if unknown:
            raise ValueError(f"ModalityConfig has unknown fields {unknown}; expected a subset of {list(_FIELD_ORDER)}")
        missing = [k for k in ("delta_indices", "modality_keys") if k not in data]
        if missing:
            raise ValueError(f"ModalityConfig is missing required fields {missing}")
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str) -> "ModalityConfig":
        """Build from the JSON form as a string (from_json_dict's checks apply)."""
        return cls.from_json_dict(json.loads(text))


def _as_list(value: Any, field_name: str, expected: str) -> List[Any]:
    """`value` as a list, or a ValueError naming the field."""
    try:
        return list(value)
    except TypeError as exc:
        raise ValueError(f"{field_name} must be {expected}, got {value!r}") from exc


def _delta_index(index: Any, indices: List[Any]) -> int:
    """One delta index as an int: ints (numpy's too) and integral numbers (2.0); bools, strings and 0.9 refused."""
    if not isinstance(index, bool) and isinstance(index, numbers.Real):
        if isinstance(index, numbers.Integral):
            return int(index)
        if float(index).is_integer():  # False for NaN and inf too
            return int(index)
    raise ValueError(f"delta_indices must be a list of ints, got {index!r} in {indices!r}")


def _action_config_from(data: Any) -> ActionConfig:
    if not isinstance(data, Mapping):
        raise ValueError(f"action_configs entries must be objects or ActionConfig, got {data!r}")
    unknown = sorted(set(data) - {"rep", "type", "format", "state_key"})
    if unknown:
        raise ValueError(f"ActionConfig has unknown fields {unknown}")
    if "rep" not in data or "type" not in data:
        raise ValueError(f"ActionConfig needs 'rep' and 'type', got {dict(data)!r}")
    return ActionConfig(**dict(data))


def modality_configs_to_json(configs: Mapping[str, ModalityConfig]) -> Dict[str, Any]:
    """{modality: ModalityConfig} -> JSON-ready dict."""
    return {name: cfg.to_json_dict() for name, cfg in configs.items()}


def copy_modality_configs(configs: Mapping[str, ModalityConfig]) -> Dict[str, ModalityConfig]:
    """Copies sharing no list or ActionConfig with `configs`: what a policy hands out, so that a caller editing its
    configs in place (sorting the keys) cannot change which columns the policy reads and writes."""
    return {name: _copied_config(config) for name, config in configs.items()}


def _copied_config(config: ModalityConfig) -> ModalityConfig:
    # copy.copy, not __init__ (its checks ran when `config` was made), with a user's subclass's __slots__ fields too
    copied = copy.copy(config)
    for name in ("delta_indices", "modality_keys", "sin_cos_embedding_keys", "mean_std_embedding_keys"):
        value = getattr(config, name)
        if value is not None:
            setattr(copied, name, list(value))
    if config.action_configs is not None:
        copied.action_configs = [copy.copy(action) for action in config.action_configs]
    return copied


def consecutive_action_deltas_problem(delta_indices: Iterable[int]) -> Optional[str]:
    """Why action `delta_indices` are not 0..H-1, or None: chunk row j must be the step j after the query, and a chunk
    of other steps ([0, 2, 4, 6], or one starting at 1) is executed, or scored, as the wrong steps (the reference's
    check; ActionChunker's and gr00t-eval's)."""
    deltas = [int(d) for d in delta_indices]
    if deltas == list(range(len(deltas))):
        return None
    shown = deltas if len(deltas) <= 8 else [*deltas[:8], "..."]
    return (f"the policy's action delta_indices are {shown}; this needs 0..{len(deltas) - 1} (one action per step from "
            "the query on)")


def modality_configs_from_json(data: Mapping[str, Any]) -> Dict[str, ModalityConfig]:
    """JSON dict {modality: fields} -> {modality: ModalityConfig}, naming the modality on error."""
    out: Dict[str, ModalityConfig] = {}
    for name, fields in data.items():
        if isinstance(fields, ModalityConfig):
            out[name] = fields
            continue
        try:
            out[name] = ModalityConfig.from_json_dict(fields)
        except ValueError as exc:
            raise ValueError(f"modality config {name!r}: {exc}") from exc
    return out
