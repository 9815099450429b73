"""Reading a LeRobot dataset's meta/ directory (v2.x jsonl files or v3.0 parquet files) into plain records."""

from __future__ import annotations

import json
import logging
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import pyarrow as pa

from . import parquet_files
from .errors import DatasetError, require_file
from .modality import DatasetModality

logger = logging.getLogger(__name__)

# v3.0 episode-list columns LeRobot fills itself: the reader keeps every other column as an episode's extras
V3_BOOKKEEPING_PREFIXES = ("data/", "videos/", "meta/", "stats/")
V3_BOOKKEEPING_COLUMNS = {"episode_index", "tasks", "length", "dataset_from_index", "dataset_to_index"}


@dataclass(frozen=True)
class VideoSegment:
    """Where one episode's frames of one camera live: an mp4 file, the time its first frame starts at and (v3.0,
    where several episodes share a file) the time its segment ends at; None for a file of its own (v2.x)."""

    path: Path
    from_timestamp: float = 0.0
    to_timestamp: Optional[float] = None


@dataclass(frozen=True)
class EpisodeRecord:
    """One episode's metadata: index, length, tasks, files, and any extra fields (e.g. a seed)."""

    position: int
    episode_index: int
    length: int
    tasks: Tuple[str, ...]
    data_path: Path
    videos: Mapping[str, VideoSegment]
    row_range: Optional[Tuple[int, int]] = None  # v3.0: [dataset_from_index, dataset_to_index)
    extras: Mapping[str, Any] = field(default_factory=dict)
    file_row_start: Optional[int] = None  # v3.0: the least dataset_from_index of the episodes listed in its data file


def read_json(path: Path, what: str) -> Any:
    """Load a JSON file, raising DatasetError naming the file on missing file or bad JSON."""
    require_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))  # LeRobot writes raw UTF-8, whatever the locale
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: invalid JSON ({exc})") from exc


def read_jsonl(path: Path, what: str, committed: Optional[int] = None) -> List[Dict[str, Any]]:
    """Load a JSON-lines file of objects; errors name the file and line. With `committed` (info.json's
    total_episodes), a line that does not parse after that many rows is the half-written line of a recording that
    stopped before committing it: reading ends there, with a warning."""
    require_file(path, what)
    rows = []
    try:
        text = path.read_text(encoding="utf-8")  # LeRobot writes raw UTF-8, whatever the locale
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc
    # JSON Lines records end at "\n" only (str.splitlines() would also cut at a U+2028 or U+0085 inside a string)
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if committed is not None and len(rows) >= committed:
                logger.warning("%s:%d: a line that does not parse after the %d episodes meta/info.json counts (a "
                               "recording stopped while writing it); reading the first %d", path, number, committed, committed)
                break
            raise DatasetError(f"{path}:{number}: invalid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def require_field(record: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    """Return record[name], raising DatasetError naming `where` if missing or not of `kind`."""
    if name not in record:
        raise DatasetError(f"{where}: missing field '{name}'")
    value = record[name]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise DatasetError(f"{where}: field '{name}' must be {kind.__name__}, got {value!r}")
    return value


def codebase_major(info: Mapping[str, Any], source: Path) -> int:
    """Major version of `codebase_version` ("v2.1" -> 2); default v2.1 as GR00T does."""
    version = info.get("codebase_version", "v2.1")
    try:
        return int(str(version).lstrip("vV").split(".")[0])
    except ValueError as exc:
        raise DatasetError(f"{source}: field 'codebase_version' must look like 'v2.1', got {version!r}") from exc


def check_layout_declared(meta_dir: Path, info: Mapping[str, Any], major: int) -> None:
    """DatasetError naming `codebase_version` and the files found when the layout it declares (v2.1: tasks.jsonl and
    episodes.jsonl; v3.0: tasks.parquet and episodes/*.parquet) misses a file and the other layout's are there (a
    v3.0 folder relabelled v2.1 by hand, or with no version, which reads as v2.1): read as declared, it failed on the
    first missing file, which sent the user looking for a lost tasks file."""
    layouts = {"v2.1": ["tasks.jsonl", "episodes.jsonl"], "v3.0": ["tasks.parquet", "episodes/chunk-*/file-*.parquet"]}
    declared, other = ("v2.1", "v3.0") if major < 3 else ("v3.0", "v2.1")
    missing = [name for name in layouts[declared] if not any(meta_dir.glob(name))]
    found = [path.relative_to(meta_dir).as_posix() for name in layouts[other] for path in sorted(meta_dir.glob(name))]
    if not missing or not found:
        return
    version = info.get("codebase_version")
    said = ("has no codebase_version, which reads as v2.1" if version is None
            else f"says codebase_version {_cut(repr(version))}")
    shown = ", ".join(f"meta/{name}" for name in found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    raise DatasetError(f"{meta_dir.parent}: meta/info.json {said}, but the folder has the LeRobot {other} files "
                       f"{shown} (and no {', '.join(f'meta/{name}' for name in missing)}); set codebase_version to "
                       f"'{other}'")


def read_tasks(meta_dir: Path, major: int) -> Dict[int, str]:
    """task_index -> task string, from tasks.jsonl (v2) or tasks.parquet (v3)."""
    if major < 3:
        path = meta_dir / "tasks.jsonl"
        rows = read_jsonl(path, "tasks file")
        pairs = [(require_field(r, "task_index", int, str(path)), require_field(r, "task", str, str(path))) for r in rows]
        return _task_map(pairs, path)
    path = meta_dir / "tasks.parquet"
    require_file(path, "tasks file")
    table = _read_parquet(path)
    names = table.column_names
    # pandas writes the task strings as the index; it is named "task" or left as __index_level_0__.
    text_column = next((c for c in ("task", "__index_level_0__") if c in names), None)
    if "task_index" not in names or text_column is None:
        raise DatasetError(f"{path}: expected columns 'task_index' and 'task', got {names}")
    indices = table.column("task_index").to_pylist()
    texts = table.column(text_column).to_pylist()
    pairs = []
    for row, (index, text) in enumerate(zip(indices, texts)):
        if isinstance(index, float) and index.is_integer():  # pandas writes an int column holding a null as float
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, int):
            found = "null" if index is None else repr(index)
            raise DatasetError(f"{path} (row {row}): column 'task_index' holds {found}; expected an integer task index")
        pairs.append((index, text_value(text, f"{path} (row {row}): column '{text_column}'")))
    return _task_map(pairs, path)


def text_value(value: Any, where: str) -> str:
    """A text cell as the str it holds: a str, UTF-8 bytes (RLDS/TFDS conversions store text as binary) or a list of
    one of those (a shape-[1] column). DatasetError naming `where` for anything else: its repr ("b'pick up the can'",
    "None") would otherwise reach a policy as the instruction."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{where} holds {_cut(repr(value))}, which is not UTF-8 text ({exc}); "
                               "expected text") from exc
    if not isinstance(value, str):
        raise DatasetError(f"{where} holds {'null' if value is None else _cut(repr(value))}; expected text (a string, "
                           "UTF-8 bytes, or a list of one string)")
    return value


def _task_map(pairs: List[Tuple[int, str]], path: Path) -> Dict[int, str]:
    """task_index -> task; DatasetError naming the file when one task_index is listed with two different strings
    (two datasets' task lists concatenated): the last would otherwise silently become another episode's instruction."""
    tasks: Dict[int, str] = {}
    for index, task in pairs:
        if tasks.setdefault(index, task) != task:
            raise DatasetError(f"{path}: task_index {index} is listed twice, as {tasks[index]!r} and as {task!r}; each "
                               "task_index must name one task (merged datasets need their task indices renumbered)")
    return tasks


def read_episodes(root: Path, info: Mapping[str, Any], major: int, video_keys: List[str]) -> List[EpisodeRecord]:
    """Episode records in file order, with data and video locations resolved.

    info.json is a writer's last meta file (ours, and LeRobot's): an episodes file listing more episodes than its
    `total_episodes` was written by a recording stopped before it could commit them, so only the first
    `total_episodes` are read (the others' files may be incomplete)."""
    records = _read_episodes_v2(root, info, video_keys) if major < 3 else _read_episodes_v3(root, info, video_keys)
    total = info.get("total_episodes")
    if isinstance(total, int) and not isinstance(total, bool) and total > len(records):
        logger.warning("%s: meta/info.json's total_episodes is %d and the episodes file lists %d (a lost tail of the "
                       "episode list, or a stale info.json?); reading the %d listed", root, total, len(records), len(records))
    if isinstance(total, int) and not isinstance(total, bool) and 0 <= total < len(records):
        logger.warning("%s: the episodes file lists %d episodes, meta/info.json's total_episodes %d (a recording stopped "
                       "while writing meta/); reading the first %d", root, len(records), total, total)
        records = records[:total]
    return records


def _read_episodes_v2(root: Path, info: Mapping[str, Any], video_keys: List[str]) -> List[EpisodeRecord]:
    info_path = root / "meta" / "info.json"
    path = root / "meta" / "episodes.jsonl"
    data_template = require_field(info, "data_path", str, str(info_path))
    chunks_size = require_field(info, "chunks_size", int, str(info_path))
    if chunks_size < 1:
        raise DatasetError(f"{info_path}: field 'chunks_size' must be >= 1 (episodes per chunk folder), got {chunks_size}")
    video_template = info.get("video_path")
    if video_keys and not isinstance(video_template, str):
        raise DatasetError(f"{info_path}: field 'video_path' must be a str template when the dataset has videos")
    records = []
    total = info.get("total_episodes")
    committed = total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None
    for position, row in enumerate(read_jsonl(path, "episodes file", committed)):
        where = f"{path} (line for position {position})"
        index = require_field(row, "episode_index", int, where)
        length = _checked_length(require_field(row, "length", int, where), where)
        tasks = row.get("tasks", [])
        if not isinstance(tasks, list):
            raise DatasetError(f"{where}: field 'tasks' must be a list of str, got {tasks!r}")
        chunk = index // chunks_size
        data_path = root / _format(data_template, info_path, "data_path", episode_chunk=chunk, episode_index=index)
        videos = {
            key: VideoSegment(root / _format(video_template, info_path, "video_path", episode_chunk=chunk, episode_index=index, video_key=key))
            for key in video_keys
        }
        _require_own_video_files(videos, video_template, info_path, index)
        extras = {k: v for k, v in row.items() if k not in ("episode_index", "length", "tasks")}
        records.append(EpisodeRecord(position, index, length, tuple(map(str, tasks)), data_path, videos, None, extras))
    return records


def _read_episodes_v3(root: Path, info: Mapping[str, Any], video_keys: List[str]) -> List[EpisodeRecord]:
    info_path = root / "meta" / "info.json"
    data_template = require_field(info, "data_path", str, str(info_path))
    video_template = info.get("video_path")
    if video_keys and not isinstance(video_template, str):
        raise DatasetError(f"{info_path}: field 'video_path' must be a str template when the dataset has videos")
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise DatasetError(f"{root / 'meta' / 'episodes'}: no chunk-*/file-*.parquet episode files found (LeRobot v3.0)")
    rows: List[Tuple[Path, Dict[str, Any]]] = []
    for file in files:
        table = _read_parquet(file, skip_prefix="stats/")
        rows.extend((file, row) for row in table.to_pylist())
    fields: List[Tuple[Any, ...]] = []  # each episode's EpisodeRecord fields but file_row_start
    file_row_starts: Dict[Path, int] = {}
    for position, (file, row) in enumerate(rows):
        where = f"{file} (row for position {position})"
        index = _int_field(row, "episode_index", where)
        length = _checked_length(_int_field(row, "length", where), where)
        data_path = root / _format(
            data_template, info_path, "data_path",
            chunk_index=_int_field(row, "data/chunk_index", where), file_index=_int_field(row, "data/file_index", where),
        )
        videos = {}
        for key in video_keys:
            prefix = f"videos/{key}/"
            videos[key] = VideoSegment(
                root / _format(
                    video_template, info_path, "video_path", video_key=key,
                    chunk_index=_int_field(row, prefix + "chunk_index", where), file_index=_int_field(row, prefix + "file_index", where),
                ),
                float(_number_field(row, prefix + "from_timestamp", where)),
                float(_number_field(row, prefix + "to_timestamp", where)) if row.get(prefix + "to_timestamp") is not None else None,
            )
        _require_own_video_files(videos, video_template, info_path, index)
        row_range = (_int_field(row, "dataset_from_index", where), _int_field(row, "dataset_to_index", where))
        tasks = _v3_tasks(row.get("tasks"), where)
        extras = {
            k: v for k, v in row.items()
            if k not in V3_BOOKKEEPING_COLUMNS and not k.startswith(V3_BOOKKEEPING_PREFIXES)
        }
        fields.append((position, index, length, tasks, data_path, videos, row_range, extras))
        file_row_starts[data_path] = min(file_row_starts.get(data_path, row_range[0]), row_range[0])
    # Where each data file's rows start by the list (LeRobot's files hold their episodes' rows in turn): an episode's
    # rows are found by its offset from there, without reading the file's other rows.
    return [EpisodeRecord(*values, file_row_start=file_row_starts[values[4]]) for values in fields]


def _read_parquet(path: Path, skip_prefix: Optional[str] = None) -> pa.Table:
    """A meta parquet file's table (without the columns starting with `skip_prefix`); DatasetError naming the file when
    it cannot be read (cut short by an interrupted copy, or not parquet at all, a git-lfs pointer among them)."""
    require_file(path, "meta parquet file")
    try:
        columns = (None if skip_prefix is None
                   else [c for c in parquet_files.read_schema(path).names if not c.startswith(skip_prefix)])
        return parquet_files.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"{path}: cannot read parquet ({exc})") from exc


def _require_own_video_files(videos: Mapping[str, VideoSegment], template: str, info_path: Path,
                             episode_index: int) -> None:
    """DatasetError naming the template and the cameras when two cameras' videos of one episode are one file: a
    template without {video_key} would serve one camera's frames as every camera's."""
    cameras_of: Dict[Path, str] = {}
    for camera, segment in videos.items():
        other = cameras_of.setdefault(segment.path, camera)
        if other != camera:
            raise DatasetError(
                f"{info_path}: field 'video_path' {_cut(template)!r} gives cameras '{other}' and '{camera}' of episode "
                f"{episode_index} the same video file {segment.path}; each camera needs a file of its own (LeRobot's "
                "templates hold '{video_key}')"
            )


def _v3_tasks(value: Any, where: str) -> Tuple[str, ...]:
    """An episode row's `tasks` cell: a list of str, or one str (some converters write that) as a list of one."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        return (text_value(value, f"{where}: field 'tasks'"),)
    if not isinstance(value, (list, tuple)):
        raise DatasetError(f"{where}: field 'tasks' must be a list of str, got {value!r}")
    return tuple(text_value(task, f"{where}: field 'tasks' item {i}") for i, task in enumerate(value))


def _checked_length(length: int, where: str) -> int:
    """An episode's `length`, refused when negative: it surfaced only later, as an episode of no rows."""
    if length < 0:
        raise DatasetError(f"{where}: field 'length' must be >= 0 (the episode's number of rows), got {length}")
    return length


def _int_field(row: Mapping[str, Any], name: str, where: str) -> int:
    value = _number_field(row, name, where)
    if int(value) != value:
        raise DatasetError(f"{where}: field '{name}' must be an integer, got {value!r}")
    return int(value)


def _number_field(row: Mapping[str, Any], name: str, where: str) -> float:
    if name not in row or row[name] is None:
        raise DatasetError(f"{where}: missing field '{name}'")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetError(f"{where}: field '{name}' must be a number, got {value!r}")
    return value


MAX_FILLED_PATH_CHARS = 4096  # PATH_MAX on Linux; LeRobot's own templates fill in to a few dozen characters
_EXAMPLE_TEMPLATES = {"data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                      "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"}
_FORMATTER = string.Formatter()
_SPEC_NUMBER = re.compile(r"\d+")


def _format(template: str, source: Path, field_name: str, **values: Any) -> str:
    """info.json's path template `field_name` filled with `values`: a path inside the dataset folder, refused
    (DatasetError naming the field) when it is longer than MAX_FILLED_PATH_CHARS, absolute or climbs out with '..'.

    info.json is anyone's file: a format width such as {episode_index:>100000000} made str.format build 100 MB per
    episode (and print it in an error), and '/elsewhere/...' or '../...' read parquet and mp4 files from outside the
    dataset without a word. So each field is filled on its own, the numbers in its format spec bounded first."""
    where = f"{source}: field '{field_name}' {_cut(template)!r}"
    example = _EXAMPLE_TEMPLATES.get(field_name, _EXAMPLE_TEMPLATES["data_path"])
    too_long = (f"{where} fills in to a path over {MAX_FILLED_PATH_CHARS} characters; LeRobot's templates are short "
                f"paths inside the dataset folder, such as {example!r}")
    pieces: List[str] = []
    length = 0
    try:
        for literal, name, spec, conversion in _FORMATTER.parse(template):
            pieces.append(literal)
            length += len(literal)
            if name is not None:
                if name not in values:  # also {}, {0}, {key.attr} and {key[0]}: a path template names its fields
                    raise KeyError(name)
                if "{" in spec:
                    raise DatasetError(f"{where}: a format spec may not hold another field ({_cut(spec)!r}); LeRobot's "
                                       f"templates are such as {example!r}")
                if any(len(n.lstrip("0")) > 5 or int(n) > MAX_FILLED_PATH_CHARS for n in _SPEC_NUMBER.findall(spec)):
                    raise DatasetError(too_long)
                value = _FORMATTER.convert_field(values[name], conversion) if conversion else values[name]
                piece = format(value, spec)
                pieces.append(piece)
                length += len(piece)
            if length > MAX_FILLED_PATH_CHARS:
                raise DatasetError(too_long)
    except DatasetError:
        raise
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise DatasetError(f"{where} cannot be filled with {sorted(values)} ({_cut(repr(exc))})") from exc
    filled = "".join(pieces)
    relative = Path(filled)
    if relative.anchor or ".." in relative.parts:
        raise DatasetError(f"{where} fills in to {_cut(filled)!r}, which is outside the dataset folder; LeRobot's "
                           f"templates are paths inside it, such as {example!r}")
    return filled


def _cut(text: str, limit: int = 120) -> str:
    """`text`, cut short for a one-line message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def declared_frame_size(feature: Any) -> Optional[Tuple[int, int]]:
    """(height, width) of a camera as its info.json `features` entry declares them: from `shape`, laid out as `names`
    says (LeRobot writes ["height", "width", "channels"]), else from `info` video.height and video.width; None where
    the entry says neither."""
    if not isinstance(feature, dict):
        return None
    shape, names, info = feature.get("shape"), feature.get("names"), feature.get("info")
    if isinstance(shape, list) and isinstance(names, list) and len(names) == len(shape) and "height" in names \
            and "width" in names:
        size = (shape[names.index("height")], shape[names.index("width")])
    elif isinstance(info, dict):
        size = (info.get("video.height"), info.get("video.width"))
    else:
        return None
    return size if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size) else None


def read_modality(meta_dir: Path) -> DatasetModality:
    """Parse meta/modality.json (required: GR00T's mapping from raw columns to named groups)."""
    path = meta_dir / "modality.json"
    return DatasetModality.from_json_dict(read_json(path, "GR00T modality file (meta/modality.json)"), path)


def read_stats(meta_dir: Path) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """(stats.json, relative_stats.json or None), each without the '__fingerprints__' cache map."""
    stats = read_json(meta_dir / "stats.json", "statistics file (meta/stats.json)")
    if not isinstance(stats, dict):
        raise DatasetError(f"{meta_dir / 'stats.json'}: expected a JSON object, got {type(stats).__name__}")
    stats.pop("__fingerprints__", None)
    relative = None
    relative_path = meta_dir / "relative_stats.json"
    if relative_path.is_file():
        relative = read_json(relative_path, "relative statistics file")
        if not isinstance(relative, dict):
            raise DatasetError(f"{relative_path}: expected a JSON object, got {type(relative).__name__}")
        relative.pop("__fingerprints__", None)
    return stats, relative
