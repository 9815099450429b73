"""GR00T's meta/modality.json: named state/action slices, cameras and language columns of a LeRobot dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .errors import DatasetError

DEFAULT_ARRAY_COLUMNS = {"state": "observation.state", "action": "action"}


@dataclass(frozen=True)
class ArrayGroup:
    """A named state or action group: columns [start, end) (or explicit indices) of a raw array column."""

    name: str
    original_key: str
    start: int
    end: int
    indices: Optional[Tuple[int, ...]] = None

    @property
    def dim(self) -> int:
        """Number of values per step in this group."""
        return len(self.indices) if self.indices is not None else self.end - self.start

    def select(self, array: np.ndarray) -> np.ndarray:
        """Slice this group's columns out of a (T, D_raw) array."""
        if self.indices is not None:
            return array[:, list(self.indices)]
        return array[:, self.start : self.end]


@dataclass(frozen=True)
class VideoGroup:
    """A camera: GR00T name and the LeRobot feature / video directory it reads (`original_key`)."""

    name: str
    original_key: str


@dataclass(frozen=True)
class LanguageGroup:
    """A language key such as `annotation.human.task_description` and the parquet column holding it."""

    name: str
    original_key: str


@dataclass(frozen=True)
class DatasetModality:
    """Parsed modality.json; dict order follows the file."""

    state: Dict[str, ArrayGroup]
    action: Dict[str, ArrayGroup]
    video: Dict[str, VideoGroup]
    language: Dict[str, LanguageGroup]
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json_dict(cls, data: Any, source: Path) -> "DatasetModality":
        """Parse the JSON object of a modality.json file; errors name `source` and the offending entry."""
        if not isinstance(data, Mapping):
            raise DatasetError(f"{source}: expected a JSON object at the top level, got {type(data).__name__}")
        for required in ("state", "action"):
            if required not in data:
                raise DatasetError(f"{source}: missing the '{required}' section; got sections {sorted(data)}")
        return cls(
            state=_array_groups(data["state"], "state", source),
            action=_array_groups(data["action"], "action", source),
            video=_video_groups(data.get("video", {}), source),
            language=_language_groups(data.get("annotation", {}), source),
            raw=dict(data),
        )

    def to_json_dict(self) -> Dict[str, Any]:
        """The modality.json form (start/end slices, original keys)."""
        out: Dict[str, Any] = {}
        for kind in ("state", "action"):
            section: Dict[str, Any] = {}
            for group in getattr(self, kind).values():
                entry: Dict[str, Any] = {"start": group.start, "end": group.end}
                if group.indices is not None:
                    entry = {"indices": list(group.indices)}
                if group.original_key != DEFAULT_ARRAY_COLUMNS[kind]:
                    entry["original_key"] = group.original_key
                section[group.name] = entry
            out[kind] = section
        out["video"] = {g.name: {"original_key": g.original_key} for g in self.video.values()}
        out["annotation"] = {
            g.name[len("annotation.") :]: {"original_key": g.original_key} for g in self.language.values()
        }
        return out


def _section(value: Any, kind: str, source: Path) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DatasetError(f"{source}: section '{kind}' must be an object, got {type(value).__name__}")
    return value


def _entry(value: Any, kind: str, name: str, source: Path) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DatasetError(f"{source}: entry '{kind}.{name}' must be an object, got {value!r}")
    return value


def _array_groups(section: Any, kind: str, source: Path) -> Dict[str, ArrayGroup]:
    groups: Dict[str, ArrayGroup] = {}
    for name, entry in _section(section, kind, source).items():
        entry = _entry(entry, kind, name, source)
        original_key = entry.get("original_key", DEFAULT_ARRAY_COLUMNS[kind])
        if not isinstance(original_key, str):
            raise DatasetError(f"{source}: '{kind}.{name}.original_key' must be a str (a parquet column name), "
                               f"got {original_key!r}")
        if "indices" in entry:
            indices = entry["indices"]
            if not isinstance(indices, list) or not indices or not all(isinstance(i, int) and i >= 0 for i in indices):
                raise DatasetError(f"{source}: '{kind}.{name}.indices' must be a non-empty list of ints >= 0, got {indices!r}")
            groups[name] = ArrayGroup(name, original_key, min(indices), max(indices) + 1, tuple(indices))
            continue
        start, end = entry.get("start"), entry.get("end")
        if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool) or isinstance(end, bool):
            raise DatasetError(f"{source}: '{kind}.{name}' needs integer 'start' and 'end', got {dict(entry)!r}")
        if not 0 <= start < end:
            raise DatasetError(f"{source}: '{kind}.{name}' must have 0 <= start < end, got start={start}, end={end}")
        groups[name] = ArrayGroup(name, original_key, start, end)
    return groups


def _video_groups(section: Any, source: Path) -> Dict[str, VideoGroup]:
    groups: Dict[str, VideoGroup] = {}
    for name, entry in _section(section, "video", source).items():
        entry = _entry(entry, "video", name, source)
        original_key = entry.get("original_key", f"observation.images.{name}")
        if not isinstance(original_key, str):
            raise DatasetError(f"{source}: 'video.{name}.original_key' must be a str, got {original_key!r}")
        groups[name] = VideoGroup(name, original_key)
    return groups


def _language_groups(section: Any, source: Path) -> Dict[str, LanguageGroup]:
    groups: Dict[str, LanguageGroup] = {}
    for sub, entry in _section(section, "annotation", source).items():
        entry = _entry(entry, "annotation", sub, source)
        key = f"annotation.{sub}"
        original_key = entry.get("original_key", key)
        if not isinstance(original_key, str):
            raise DatasetError(f"{source}: 'annotation.{sub}.original_key' must be a str, got {original_key!r}")
        groups[key] = LanguageGroup(key, original_key)
    return groups


def layout_from_dims(dims: Mapping[str, int]) -> List[Tuple[str, int, int]]:
    """(name, start, end) for groups concatenated in order, e.g. {"arm": 5, "gripper": 1} -> arm 0:5, gripper 5:6."""
    out, start = [], 0
    for name, dim in dims.items():
        out.append((name, start, start + dim))
        start += dim
    return out
