"""The meta/ files DatasetWriter writes for the episodes it added: info.json, stats.json, modality.json, the
episode and task lists and per-episode statistics, all renamed into place together."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import pyarrow as pa

from ..run_dir import remove_quietly
from . import parquet_files
from .modality import ArrayGroup, DatasetModality, LanguageGroup, VideoGroup, layout_from_dims
from .stats import LEROBOT_QUANTILES, merge_episode_stats
from .video import video_feature_info
from .writer_files import V2_DATA_PATH, V2_VIDEO_PATH, V3_DATA_PATH, V3_VIDEO_PATH, naming_file

logger = logging.getLogger(__name__)

# LeRobot's v3.0 writer starts a new data / video file past these sizes when it appends to a dataset (its defaults)
V3_DATA_FILE_SIZE_IN_MB = 100
V3_VIDEO_FILE_SIZE_IN_MB = 200


class _MetaFiles:
    """DatasetWriter's meta/ files, written from the values add_episode recorded."""

    def _write_meta_files(self) -> None:
        """Every meta file written under a temporary name, then all renamed into place (info.json last), and only then
        v2.1's episodes_stats.jsonl appended: a kill part-way never leaves it holding an episode the others do not list.
        A full disk part-way leaves meta/ as it was (an append that fails puts the renamed files back)."""
        meta = self.root / "meta"
        meta.mkdir(exist_ok=True)
        staged = _StagedFiles()
        try:
            staged.write_json(meta / "modality.json", self._modality().to_json_dict())
            staged.write_json(meta / "stats.json", self._dataset_stats())
            if self.layout == "v2.1":
                staged.write_jsonl(meta / "tasks.jsonl", [{"task_index": i, "task": t} for t, i in self._tasks.items()])
                staged.write_jsonl(meta / "episodes.jsonl", self._episodes)
            else:
                self._write_v3_meta(meta, staged)
            staged.write_json(meta / "info.json", self._info())  # last: its total_episodes never counts an unlisted episode
            staged.keep_previous()
            staged.commit()
            if self.layout == "v2.1":
                # LeRobot v2.1 loads it with the rest of meta/ (and refuses, or looks for the dataset on the Hub,
                # without), and aggregates every line of it. Appended in place, and cut back if that fails.
                self._write_episode_stats(meta / "episodes_stats.jsonl")
        except BaseException:
            staged.roll_back()
            raise
        finally:
            staged.discard()
        self._unlisted[0] = 0
        self._listed_values = self._recorded_values()

    def _write_v3_meta(self, meta: Path, staged: "_StagedFiles") -> None:
        rows = []
        for record, stats in zip(self._episodes, self._episode_stats):
            row = dict(record, **{"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            # LeRobot v3.0 keeps per-episode stats in the episode table (it merges them when it appends episodes)
            for feature, values in stats.items():
                row.update({f"stats/{feature}/{name}": value for name, value in values.items()})
            rows.append(row)
        path = meta / "episodes" / "chunk-000" / "file-000.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Column by column over every row's keys: from_pylist takes its schema from the first row, and dropped a
        # field (a seed) that episode 0 lacked from every episode.
        names = list(dict.fromkeys(name for row in rows for name in row))
        with naming_file(staged.temporary(path)):
            parquet_files.write_table(pa.table({name: [row.get(name) for row in rows] for name in names}),
                                      staged.temporary(path))
        with naming_file(staged.temporary(meta / "tasks.parquet")):
            parquet_files.write_table(_tasks_table(self._tasks), staged.temporary(meta / "tasks.parquet"))

    def _write_episode_stats(self, path: Path) -> None:
        """episodes_stats.jsonl: the lines of episodes added since the last write appended to the file as this writer
        left it (rewritten whole when it is not so). Rewriting it after every episode wrote about 10 GB over a
        2,000-episode recording (each line is ~5 KB). An append cut short is cut back, so the file never ends in half
        a line."""
        lines, size = self._episode_stats_on_disk
        total = len(self._episode_stats)
        try:
            if 0 < lines <= total and path.stat().st_size == size:
                new = self._episode_stats_text(lines).encode("utf-8")
                # unbuffered: a buffered file's truncate() flushes first, and that flush fails again on a full disk
                with naming_file(path), open(path, "r+b", buffering=0) as handle:
                    handle.seek(size)
                    try:
                        written = 0
                        while written < len(new):  # a raw write may write part and return its count
                            written += handle.write(new[written:])
                    except BaseException:
                        handle.truncate(size)
                        raise
                self._episode_stats_on_disk = (total, size + len(new))
                return
        except FileNotFoundError:
            pass
        text = self._episode_stats_text(0)
        _replace_text(path, text)
        self._episode_stats_on_disk = (total, len(text.encode("utf-8")))

    def _episode_stats_text(self, first: int) -> str:
        """The episodes_stats.jsonl lines of the episodes from position `first` on."""
        return "".join(json.dumps({"episode_index": record["episode_index"], "stats": stats}) + "\n"
                       for record, stats in zip(self._episodes[first:], self._episode_stats[first:]))

    def _dataset_stats(self) -> Dict[str, Any]:
        """stats.json: each numeric column's statistics over every row (GR00T's mean/std/min/max/q01/q99, exact); in
        v3.0 with LeRobot's other quantiles and `count`, and each camera's, merged from the episodes' as LeRobot does
        (lerobot 0.4 reads a v3.0 dataset's statistics from this file, and merges by count when it appends). v2.1
        keeps GR00T's own form: LeRobot reads v2.1 statistics from episodes_stats.jsonl, and Isaac-GR00T N1.5's
        loader slices every statistic of a column by its groups (a one-element `count` made it fail on every
        dataset)."""
        if self.layout == "v2.1":
            return {name: running.stats() for name, running in self._numeric.items()}
        stats: Dict[str, Any] = {
            name: {**running.stats(), **{q_name: running.quantile(q) for q_name, q in LEROBOT_QUANTILES.items()},
                   "count": [running.count]}
            for name, running in self._numeric.items()
        }
        for camera in self._cameras or []:
            key = f"observation.images.{camera}"
            stats[key] = merge_episode_stats([episode[key] for episode in self._episode_stats])
        return stats

    # -- metadata ---------------------------------------------------------------------------------
    def _modality(self) -> DatasetModality:
        sub = self.language_key[len("annotation.") :]
        return DatasetModality(
            state={n: ArrayGroup(n, "observation.state", s, e) for n, s, e in layout_from_dims(self._state_dims or {})},
            action={n: ArrayGroup(n, "action", s, e) for n, s, e in layout_from_dims(self._action_dims or {})},
            video={c: VideoGroup(c, f"observation.images.{c}") for c in self._cameras or []},
            language={self.language_key: LanguageGroup(f"annotation.{sub}", self.language_column)},
        )

    def _info(self) -> Dict[str, Any]:
        state_names = [f"{k}_{i}" for k, d in (self._state_dims or {}).items() for i in range(d)]
        action_names = [f"{k}_{i}" for k, d in (self._action_dims or {}).items() for i in range(d)]
        features: Dict[str, Any] = {
            "observation.state": {"dtype": "float32", "shape": [len(state_names)], "names": state_names},
            "action": {"dtype": "float32", "shape": [len(action_names)], "names": action_names},
        }
        for camera in self._cameras or []:
            height, width = self._frame_sizes[camera]
            features[f"observation.images.{camera}"] = dict(video_feature_info(self.video_codec, self.fps, height, width))
        features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for name in ("frame_index", "episode_index", "index", "task_index"):
            features[name] = {"dtype": "int64", "shape": [1], "names": None}
        # every other column of the data files (step columns, a language column): LeRobot v3.0 reads the parquet
        # files with these features and refused a column they do not declare
        for field in self._schema or []:
            if field.name not in features:
                running = self._numeric.get(field.name)
                features[field.name] = _feature_of(field, running.width if running is not None else None)
        v3 = self.layout == "v3.0"
        num_files = self._file_index if v3 else len(self._episodes)
        sizes = {"data_files_size_in_mb": V3_DATA_FILE_SIZE_IN_MB, "video_files_size_in_mb": V3_VIDEO_FILE_SIZE_IN_MB} if v3 else {}
        return {
            "codebase_version": self.layout,
            "robot_type": self.robot_type,
            "fps": self.fps,
            "chunks_size": self.chunks_size,
            **sizes,
            "total_episodes": len(self._episodes),
            "total_frames": self._total_frames,
            "total_tasks": len(self._tasks),
            "total_videos": num_files * len(self._cameras or []),
            "total_chunks": (num_files - 1) // self.chunks_size + 1,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": V3_DATA_PATH if v3 else V2_DATA_PATH,
            "video_path": (V3_VIDEO_PATH if v3 else V2_VIDEO_PATH) if self._cameras else None,
            "features": features,
        }


def _feature_of(field: pa.Field, width: Optional[int]) -> Dict[str, Any]:
    """LeRobot's info.json feature of a data column: its dtype name and per-step shape ([1] for a scalar; `width`
    values per step for a list column)."""
    kind = field.type
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    if is_list:
        kind = kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        dtype = "string"
    else:
        # float32, int64, bool, ... (not to_pandas_dtype: pyarrow before 17 imports pandas for it)
        dtype = pa.array([], type=kind).to_numpy(zero_copy_only=False).dtype.name
    return {"dtype": dtype, "shape": [width if is_list and width else 1], "names": None}


def _tasks_table(tasks: Mapping[str, int]) -> pa.Table:
    """v3.0's meta/tasks.parquet as LeRobot writes it with pandas: the task strings are the table's index (the
    `__index_level_0__` column, named so in the pandas metadata) beside a `task_index` column. As two plain columns,
    LeRobot read the row number as each frame's task (0, 1, ...) without an error."""
    ordered = sorted(tasks.items(), key=lambda item: item[1])
    table = pa.table({"task_index": pa.array([i for _, i in ordered], pa.int64()),
                      "__index_level_0__": pa.array([t for t, _ in ordered], pa.string())})
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _replace_text(path: Path, text: str) -> None:
    tmp = staged_name(path)
    try:
        with naming_file(tmp):
            tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # a reader (or a crash) never sees half a file
    except BaseException:
        remove_quietly(tmp)  # a full disk: no partial file left in meta/ (a read-only one: the write's error shown)
        raise


class _StagedFiles:
    """Files written under temporary names and renamed into place together, in the order they were written; the files
    they replace are kept until discard(), so that roll_back() can put them back."""

    def __init__(self) -> None:
        self._staged: Dict[Path, Path] = {}
        self._committed: List[Path] = []

    def temporary(self, path: Path) -> Path:
        """The name to write `path` under until commit()."""
        self._staged[path] = staged_name(path)
        return self._staged[path]

    def write_json(self, path: Path, data: Any) -> None:
        with naming_file(self.temporary(path)):
            self.temporary(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    def write_jsonl(self, path: Path, rows: List[Mapping[str, Any]]) -> None:
        with naming_file(self.temporary(path)):
            self.temporary(path).write_text("".join(json.dumps(dict(row)) + "\n" for row in rows), encoding="utf-8")

    def keep_previous(self) -> None:
        """Keep each file commit() will replace under a second name (a hard link: no data written)."""
        for path in self._staged:
            if path.exists():
                previous = _previous(path)
                remove_quietly(previous)
                try:
                    os.link(path, previous)
                except OSError:  # a file system without hard links
                    shutil.copyfile(path, previous)

    def commit(self) -> None:
        for path, temporary in self._staged.items():
            temporary.replace(path)
            self._committed.append(path)

    def roll_back(self) -> None:
        """Put back the files commit() replaced, last renamed first (info.json before the lists it counts)."""
        for path in reversed(self._committed):
            previous = _previous(path)
            if not previous.exists():
                remove_quietly(path)  # new in this commit
                continue
            try:
                previous.replace(path)
            except OSError as exc:  # the error that made it roll back is the one to show
                logger.warning("could not put back the previous %s: %s", path, exc)
        self._committed.clear()

    def discard(self) -> None:
        """Remove the temporary files and kept previous files left (a full disk: no partial file left in meta/; a
        read-only one: the write's error shown)."""
        for path, temporary in self._staged.items():
            remove_quietly(temporary)
            remove_quietly(_previous(path))


def staged_name(path: Path) -> Path:
    """Where a meta file is written before it is renamed into place: .NAME.tmp, hidden, so that one a kill -9 left is
    no file of the dataset (a replay's identity hashes the visible files of meta/)."""
    return path.with_name(f".{path.name}.tmp")


def _previous(path: Path) -> Path:
    return path.with_name(f".{path.name}.prev")
