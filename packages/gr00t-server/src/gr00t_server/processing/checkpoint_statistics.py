"""Read and check a checkpoint's statistics.json: per-key normalization statistics as float64 arrays."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Collection, Dict, List, Mapping, Optional, Set, Tuple

import numpy as np

from .checkpoint_files import (PROCESSOR_CONFIG_NAME, STATISTICS_NAME, PathLike, _read_json, _refuse_broken_link,
                               find_processor_dir)

Statistics = Dict[str, Dict[str, Dict[str, Dict[str, np.ndarray]]]]
# {tag: {group: {key: the stat names normalization reads}}}
UsedStatistics = Mapping[str, Mapping[str, Mapping[str, Collection[str]]]]
STAT_NAMES = ("min", "max", "mean", "std", "q01", "q99")

logger = logging.getLogger(__name__)
# (file, warning) pairs already logged: a file read twice in a process (a policy's load, then example_observation on
# the export/verify path) warns once about the statistics it ignores
_WARNED_IGNORED: Set[Tuple[str, str]] = set()


_STAT_RANGES = (("min", "max"), ("q01", "q99"))
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _parse_stat(values: Any, where: str) -> np.ndarray:
    """One stat as a float64 array of at least one axis; ValueError unless it is finite numbers."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} is not a list of numbers (or of equal-length rows): {exc}") from None
    except OverflowError:  # an integer literal such as 1 and 400 zeros, which json reads as an exact int
        raise ValueError(f"{where} holds an integer beyond float64's range; statistics must be finite numbers within "
                         f"float32's range ({_FLOAT32_MAX:.4g})") from None
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
    same width (the key's dimension), low <= high, std >= 0, for an `absolute` key (a state or action key) one row,
    and for any other key per-step rows of one shape; ValueError naming `where` and the stat. Returns the width."""
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
    if not absolute:
        _check_per_step_shapes(stats, where)
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


def _check_per_step_shapes(stats: Mapping[str, np.ndarray], where: str) -> None:
    """A relative_action key's stats are one row per action-horizon step, [T][D] (or one row [D] for every step), all
    of one shape; ValueError naming `where` and the stat otherwise."""
    deep = [name for name, value in stats.items() if value.ndim > 2]
    if deep:  # a (2, T, D) stat decoded row 1 of a batch with the second set of statistics
        shape = stats[deep[0]].shape
        raise ValueError(f"{where}[{deep[0]!r}] has shape {shape}; a relative_action key's statistics must be one row per "
                         f"action-horizon step, shape (T, {shape[-1]}), or one row, shape ({shape[-1]},)")
    shapes = [(name, value.shape) for name, value in stats.items()]
    for name, shape in shapes[1:]:
        if shape != shapes[0][1]:
            raise ValueError(f"{where}: {shapes[0][0]} has shape {shapes[0][1]} but {name} has {shape}; every stat "
                             "of a relative_action key must have the same steps and dimensions")


def parse_statistics(data: Mapping[str, Any], errors: Optional[Dict[str, str]] = None,
                     used: Optional[UsedStatistics] = None, source: Optional[str] = None) -> Statistics:
    """{tag: {group: {key: {stat: list}}}} -> the same with float64 arrays; ValueError naming tag, group, key and
    stat for a value that is not finite numbers, stats of one key with different lengths, or an inverted range.
    With `errors`, a tag whose statistics are invalid is left out and its message put there instead (a checkpoint of
    many embodiments stays usable for the others, as the reference's, which reads only the served tag's). With `used`
    ({tag: {group: {key: stat names}}}, what serving a tag normalizes with), only those stats of a listed tag are held
    to the checks: the others' faults are logged and the stats left out (the reference reads only the modality keys'
    statistics), once per process for the file `source` (a path) names."""
    out: Statistics = {}
    for tag, groups in data.items():
        try:
            out[tag] = _parse_tag_statistics(tag, groups, None if used is None else used.get(tag), source)
        except ValueError as exc:
            if errors is None:
                raise
            errors[str(tag)] = str(exc)
    return out


def _parse_tag_statistics(tag: str, groups: Any, used: Optional[Mapping[str, Mapping[str, Collection[str]]]] = None,
                          source: Optional[str] = None) -> Dict[str, Dict[str, Dict[str, np.ndarray]]]:
    if not isinstance(groups, Mapping):
        raise ValueError(f"statistics[{tag!r}] must be an object of groups, got {type(groups).__name__}")
    out: Dict[str, Dict[str, Dict[str, np.ndarray]]] = {}
    ignored: List[str] = []  # faults of stats serving `tag` does not use
    for group, keys in groups.items():
        used_keys = None if used is None else used.get(group, {})
        if not isinstance(keys, Mapping):
            if used_keys is None or used_keys:
                raise ValueError(f"statistics[{tag!r}][{group!r}] must be an object of keys")
            ignored.append(f"statistics[{tag!r}][{group!r}] is not an object of keys")
            continue
        out[group] = {}
        for key, stats in keys.items():
            where = f"statistics[{tag!r}][{group!r}][{key!r}]"
            absolute = group in ("state", "action")
            if used_keys is None:
                out[group][key] = _parse_key_statistics(stats, where, absolute)
                continue
            parsed = _parse_used_key_statistics(stats, where, absolute, used_keys.get(key, ()), ignored)
            if parsed is not None:
                out[group][key] = parsed
    warning = (f"{Path(source).name if source else STATISTICS_NAME}: ignoring statistics "
               f"of {tag!r} that serving it does not use and that are invalid: {'; '.join(ignored)}")
    if ignored and (source is None or (source, warning) not in _WARNED_IGNORED):
        logger.warning("%s", warning)
        if source is not None:
            _WARNED_IGNORED.add((source, warning))
    return out


def _parse_key_statistics(stats: Any, where: str, absolute: bool) -> Dict[str, np.ndarray]:
    """One key's stats as float64 arrays, checked (check_key_statistics); ValueError naming `where` and the stat."""
    if not isinstance(stats, Mapping):
        raise ValueError(f"{where} must be an object of stats")
    parsed = {name: _parse_stat(values, f"{where}[{name!r}]") for name, values in stats.items() if name in STAT_NAMES}
    check_key_statistics(parsed, where, absolute=absolute)
    return parsed


def _parse_used_key_statistics(stats: Any, where: str, absolute: bool, used: Collection[str],
                               ignored: List[str]) -> Optional[Dict[str, np.ndarray]]:
    """As _parse_key_statistics, but only the `used` stats must pass: a fault of the others is appended to `ignored`
    and they are left out (None: the key's stats left out whole, none being used)."""
    try:
        return _parse_key_statistics(stats, where, absolute)
    except ValueError as exc:
        fault = str(exc)
    if not used:
        ignored.append(fault)
        return None
    if not isinstance(stats, Mapping):
        raise ValueError(fault)
    used_stats = {name: values for name, values in stats.items() if name in used}
    parsed = _parse_key_statistics(used_stats, where, absolute)  # a used stat's fault is refused, naming that stat
    ignored.append(fault)
    return parsed


def load_statistics(checkpoint_dir: PathLike, errors: Optional[Dict[str, str]] = None,
                    used: Optional[UsedStatistics] = None) -> Statistics:
    """Read statistics.json next to processor_config.json (`errors`, `used`: as for parse_statistics, messages naming
    the file)."""
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
        statistics = parse_statistics(data, errors, used, source=str(path.resolve()))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    for tag, message in (errors or {}).items():
        errors[tag] = f"{path}: {message}"
    return statistics
