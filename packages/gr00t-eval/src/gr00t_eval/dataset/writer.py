"""DatasetWriter: record episodes as a LeRobot v2.1 (or v3.0) dataset with GR00T's modality.json and stats.json."""

from __future__ import annotations

import copy
import json
import logging
import weakref
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..run_dir import remove_quietly
from .meta import V3_BOOKKEEPING_COLUMNS, V3_BOOKKEEPING_PREFIXES
from .modality import ArrayGroup, DatasetModality, LanguageGroup, VideoGroup, layout_from_dims
from .overwrite import OVERWRITE_TRASH, delete_trash, empty_dataset_dir
from .stats import LEROBOT_QUANTILES, RunningColumnStats, episode_stats, image_stats, merge_episode_stats
from .video import ENCODERS, Mp4Encoder, encoder_for, min_frame_side, video_feature_info

logger = logging.getLogger(__name__)

V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
_INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
# LeRobot's v3.0 writer starts a new data / video file past these sizes when it appends to a dataset (its defaults)
V3_DATA_FILE_SIZE_IN_MB = 100
V3_VIDEO_FILE_SIZE_IN_MB = 200


class DatasetWriter:
    """Write episodes to `root` as a LeRobot dataset GR00T can read (v2.1, the layout Isaac-GR00T's loaders read; they
    take v3.0 only after their own conversion to v2) and the `lerobot` library's LeRobotDataset reads back.

    Usage::

        with DatasetWriter("out/demo", fps=10, video_codec="h264") as writer:
            writer.add_episode(
                frames={"image": uint8 (T, H, W, 3), "wrist": ...},   # camera -> observation.images.<camera>
                states={"arm": float32 (T, 5), "gripper": (T, 1)},    # concatenated into observation.state
                actions={"arm": (T, 5), "gripper": (T, 1)},           # concatenated into action
                task="pick the cube",
                step_columns={"next.reward": (T,)},                   # optional extra per-step columns
                metadata={"seed": 7},                                 # optional extra episode-level fields
            )

    Leaving the `with` block (or calling `finalize()`) writes meta/info.json, episodes, tasks,
    modality.json and stats.json (mean/std/min/max/q01/q99 per numeric column; in v3.0 also LeRobot's q10/q50/q90,
    count and each camera's per-channel statistics, which LeRobot reads from there), and each episode's statistics
    as LeRobot keeps them (episodes_stats.jsonl in v2.1, `stats/...` columns of the episode table in v3.0). The first episode
    fixes cameras, group names and dims; later episodes must match. `layout="v3.0"` writes
    LeRobot v3.0 files instead (`episodes_per_file` episodes share one parquet and one mp4 per camera).
    The language key reads `task_index` by default; pass `language_column` to write a separate int column.
    """

    def __init__(
        self,
        root: Union[str, Path],
        fps: int,
        *,
        video_codec: str = "h264",
        layout: str = "v2.1",
        robot_type: Optional[str] = None,
        language_key: str = "annotation.human.action.task_description",
        language_column: str = "task_index",
        chunks_size: int = 1000,
        episodes_per_file: Optional[int] = None,
        gop: int = 8,
        overwrite: bool = False,
        keep: Sequence[str] = (),
    ) -> None:
        # `keep`: names in `root` that neither make it "not empty" nor are deleted by overwrite (a recording's claim)
        if video_codec not in ENCODERS:
            raise ValueError(f"video_codec must be one of {sorted(ENCODERS)}, got {video_codec!r}")
        encoder_for(video_codec)  # a codec this PyAV build cannot encode fails here, before the folder is touched
        if layout not in ("v2.1", "v3.0"):
            raise ValueError(f"layout must be 'v2.1' or 'v3.0', got {layout!r}")
        if not language_key.startswith("annotation."):
            raise ValueError(f"language_key must start with 'annotation.', got {language_key!r}")
        if not isinstance(fps, int) or fps <= 0:
            raise ValueError(f"fps must be a positive int, got {fps!r}")
        if isinstance(chunks_size, bool) or not isinstance(chunks_size, int) or chunks_size < 1:
            raise ValueError(f"chunks_size must be an int >= 1 (episodes per chunk folder), got {chunks_size!r}")
        if (language_column in _INDEX_COLUMNS and language_column != "task_index"
                or language_column in ("observation.state", "action") or language_column.startswith("observation.images.")):
            raise ValueError(f"language_column {language_column!r} is a LeRobot column the writer fills itself; name a "
                             "column of its own (or leave the default, 'task_index')")
        self.root = Path(root)
        delete_trash(self.root / OVERWRITE_TRASH)  # left by an overwrite that was killed
        keep = (*keep, OVERWRITE_TRASH)
        if self.root.exists() and any(entry.name not in keep for entry in self.root.iterdir()):
            if not overwrite:
                raise FileExistsError(f"dataset directory {self.root} is not empty (pass overwrite=True to replace it)")
            empty_dataset_dir(self.root, keep)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self.video_codec = video_codec
        self.layout = layout
        self.robot_type = robot_type
        self.language_key = language_key
        self.language_column = language_column
        self.chunks_size = chunks_size
        self.episodes_per_file = episodes_per_file
        self.gop = gop
        self._cameras: Optional[List[str]] = None
        self._state_dims: Optional[Dict[str, int]] = None
        self._action_dims: Optional[Dict[str, int]] = None
        self._step_columns: Optional[List[str]] = None
        self._frame_sizes: Dict[str, tuple] = {}
        self._schema: Optional[pa.Schema] = None  # the first episode's column types, which later ones are cast to
        self._metadata_types: Dict[str, Any] = {}  # v3.0: each metadata key's column type in the episode list
        self._tasks: Dict[str, int] = {}
        self._episodes: List[Dict[str, Any]] = []
        self._episode_stats: List[Dict[str, Any]] = []  # per episode, LeRobot's per-episode statistics of each feature
        self._episode_stats_on_disk = (0, 0)  # (lines, bytes) of episodes_stats.jsonl as this writer last left it
        self._numeric: Dict[str, RunningColumnStats] = {}  # per numeric column, for stats.json
        self._total_frames = 0
        self._finalized = False
        # v3.0: the file being filled.
        self._file_index = 0
        self._file_tables: List[pa.Table] = []
        self._file_encoders: Dict[str, Mp4Encoder] = {}
        self._file_episode_count = 0
        # Episodes added but not yet listed in meta/: a writer dropped without finalize() (and outside a `with`)
        # says so when collected, or at exit; a v3.0 one had lost them without a word.
        self._unlisted = [0]
        weakref.finalize(self, _warn_unlisted, str(self.root), self.layout, self._unlisted)
        self._listed_values = self._recorded_values()  # as meta/ last listed them: what discard_unlisted() goes back to
        self._file_start_values = self._listed_values  # v3.0: as they were before the file being filled
        self._lost_episodes = 0  # v3.0: episodes dropped with a file that could not be finished

    # -- public API -------------------------------------------------------------------------------
    @property
    def n_episodes(self) -> int:
        """Episodes added so far (in meta/ once write_meta() or finalize() has run since)."""
        return len(self._episodes)

    def add_episode(
        self,
        frames: Mapping[str, np.ndarray],
        states: Mapping[str, np.ndarray],
        actions: Mapping[str, np.ndarray],
        task: str,
        *,
        step_columns: Optional[Mapping[str, np.ndarray]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> int:
        """Append one episode; return its episode_index. An episode that raises (a refused one, Ctrl-C) is not added:
        with layout v2.1 none of its files or values are left."""
        if self._finalized:
            raise RuntimeError(f"{self.root}: writer already finalized")
        if not isinstance(task, str):
            raise TypeError(f"task must be a str, got {type(task).__name__}")
        step_columns = dict(step_columns or {})
        metadata = dict(metadata or {})
        state_arrays = _float_groups(states, "states")
        action_arrays = _float_groups(actions, "actions")
        length = next(iter(state_arrays.values())).shape[0]
        if length == 0:  # LeRobot has no empty episodes: readers and replay servers index their first step
            raise ValueError(f"episode {len(self._episodes)} has 0 steps; an episode needs at least one step")
        # What a refused episode must not leave behind: the layout a first episode fixes (a first episode refused by
        # a full disk made every later one of another frame size "differ from earlier episodes").
        layout = (self._cameras, self._state_dims, self._action_dims, self._step_columns, dict(self._frame_sizes),
                  self._schema)
        # v2.1: nor its files and values, however far it got. Ctrl-C just after its files were renamed into data/ and
        # videos/ left them there, listed nowhere (a loader globbing data/ read them against a meta/ without them).
        recorded = self._recorded_values() if self.layout == "v2.1" else None
        self._episode_files: List[Path] = []
        try:
            return self._add_episode(frames, state_arrays, action_arrays, task, step_columns, metadata, length)
        except BaseException:
            (self._cameras, self._state_dims, self._action_dims, self._step_columns, self._frame_sizes,
             self._schema) = layout
            if recorded is not None:
                self._forget_v2_episode(recorded)
            raise

    def _add_episode(self, frames, state_arrays, action_arrays, task: str, step_columns, metadata, length: int) -> int:
        """add_episode's work; its task, statistics and episode are recorded only once its files are written (a
        refused episode, say on a full disk, left its values in stats.json and its task in the task list)."""
        self._check_layout(frames, state_arrays, action_arrays, step_columns, length)
        self._check_metadata_keys(metadata)
        metadata = _json_metadata(metadata)  # refused now, not at finalize() after every episode is on disk

        episode_index = len(self._episodes)
        task_index = self._tasks.get(task, len(self._tasks))
        # Concatenate in the first episode's group order, whatever order this episode's dicts use.
        state = np.concatenate([state_arrays[k] for k in self._state_dims or {}], axis=1)
        action = np.concatenate([action_arrays[k] for k in self._action_dims or {}], axis=1)
        frame_index = np.arange(length, dtype=np.int64)
        columns: Dict[str, np.ndarray] = {
            "observation.state": state,
            "action": action,
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(length, episode_index, np.int64),
            "index": self._total_frames + frame_index,
            "task_index": np.full(length, task_index, np.int64),
        }
        if self.language_column != "task_index":
            columns[self.language_column] = np.full(length, task_index, np.int64)
        for name, values in step_columns.items():
            columns[name] = np.asarray(values)
        table = self._first_schema_of(_to_table(columns), episode_index)
        metadata_types = self._check_v3_metadata(metadata, episode_index) if self.layout != "v2.1" else {}
        numeric = {name: np.asarray(values).reshape(length, -1) for name, values in columns.items()
                   if np.asarray(values).dtype.kind in "biuf"}
        for name, values in numeric.items():  # checked before the files: a width change must not land half-way
            width = self._numeric[name].width if name in self._numeric else None
            if width is not None and values.shape[1] != width:
                raise ValueError(f"episode {episode_index}: column {name!r} has {values.shape[1]} values per step; "
                                 f"earlier episodes had {width}")

        stats = {name: episode_stats(values) for name, values in numeric.items()}
        stats.update({f"observation.images.{camera}": image_stats(images) for camera, images in frames.items()})
        record: Dict[str, Any] = {"episode_index": episode_index, "tasks": [task], "length": length, **metadata}
        if self.layout == "v2.1":
            self._write_v2_episode(episode_index, table, frames)
        else:
            record.update(self._append_v3_episode(table, frames, length))
        self._tasks.setdefault(task, task_index)
        self._metadata_types.update(metadata_types)
        for name, values in numeric.items():
            self._numeric.setdefault(name, RunningColumnStats()).add(values)
        self._episodes.append(record)
        self._episode_stats.append(stats)
        self._unlisted[0] += 1
        self._total_frames += length
        logger.debug("wrote episode %d (%d steps) to %s", episode_index, length, self.root)
        return episode_index

    def write_meta(self) -> Path:
        """Write meta/ for the episodes added so far (v2.1), so the dataset loads even if the run stops now.

        Each file is replaced atomically; calling it after every episode keeps an interrupted recording loadable.
        """
        if self.layout != "v2.1":
            raise RuntimeError("write_meta() before finalize() needs layout 'v2.1' (v3.0 files are written when full)")
        if not self._episodes:
            raise RuntimeError(f"{self.root}: no episodes were added")
        self._write_meta_files()
        return self.root

    def discard_unlisted(self) -> int:
        """Remove the v2.1 episodes added since meta/ last listed them (a write_meta() that failed on a full disk):
        their files in data/ and videos/ and their values, so the dataset on disk is the one meta/ lists. Returns how
        many were removed."""
        if self.layout != "v2.1":
            raise RuntimeError("discard_unlisted() needs layout 'v2.1' (v3.0 lists its episodes at finalize())")
        listed = self._listed_values[3]
        unlisted = range(listed, len(self._episodes))
        self._remove_v2_files([path for index in unlisted for path in self._v2_episode_paths(index, self._cameras or [])])
        self._restore_values(self._listed_values)
        return len(unlisted)

    def finalize(self) -> Path:
        """Write the metadata files; return the dataset root. Further add_episode calls are refused."""
        if self._finalized:
            return self.root
        if self.layout == "v3.0":
            self._flush_v3_file()
        if not self._episodes:
            lost = f"no episode left to list: the {self._lost_episodes} added were lost with a video file whose write failed"
            raise RuntimeError(f"{self.root}: {lost if self._lost_episodes else 'no episodes were added'}")
        self._write_meta_files()
        self._finalized = True
        logger.info("finalized %s: %d episodes, %d frames", self.root, len(self._episodes), self._total_frames)
        if self._lost_episodes:
            logger.error("%s: %d more episode(s) were lost with a video file whose write failed (see the error "
                         "raised then); they are not in the dataset", self.root, self._lost_episodes)
        return self.root

    def _write_meta_files(self) -> None:
        """Every meta file written under a temporary name, then all renamed into place (info.json last): a full disk
        part-way leaves meta/ as it was, never files that disagree about the episodes."""
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
            if self.layout == "v2.1":
                # LeRobot v2.1 loads it with the rest of meta/ (and refuses, or looks for the dataset on the Hub,
                # without). Appended in place, and cut back if that fails: the last write before the renames.
                self._write_episode_stats(meta / "episodes_stats.jsonl")
        except BaseException:
            staged.discard()
            raise
        staged.commit()
        self._unlisted[0] = 0
        self._listed_values = self._recorded_values()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            for encoder in self._file_encoders.values():
                encoder.close()
            listed, unlisted = len(self._episodes) - self._unlisted[0], self._unlisted[0]
            logger.warning("not finalizing %s after %s; its meta/ lists the %d episode(s) saved before the stop%s", self.root,
                           exc_type.__name__, listed, f", not the {unlisted} added since" if unlisted else "")
            self._unlisted[0] = 0  # said just now

    # -- checks -----------------------------------------------------------------------------------
    def _first_schema_of(self, table: pa.Table, episode_index: int) -> pa.Table:
        """`table` in the first episode's column types (a float64 list where float32 came before), or ValueError
        naming the column and both types: a v3.0 file shared by episodes of two types could not be written at all
        (finalize() failed and every episode of the dataset was lost)."""
        if self._schema is None:
            self._schema = table.schema
            return table
        if table.schema == self._schema:
            return table
        for field in self._schema:
            got = table.schema.field(field.name).type
            if got != field.type:
                try:
                    cast = table.column(field.name).cast(field.type, safe=True)
                    _check_cast_loses_nothing(table.column(field.name), cast)
                    table = table.set_column(table.schema.get_field_index(field.name), field, cast)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
                    raise ValueError(f"episode {episode_index}: column {field.name!r} holds {got}, and earlier episodes "
                                     f"{field.type}; give it the same type in every episode ({exc})") from None
        return table

    def _check_v3_metadata(self, metadata: Mapping[str, Any], episode_index: int) -> Dict[str, Any]:
        """ValueError naming the key when v3.0's episode list (one parquet table) cannot hold this episode's metadata
        beside the earlier episodes' (an int then a str, a list of mixed types, an empty map): it failed at
        finalize(), and every episode was lost. Returns each key's column type with this episode in; a value of the
        type the column already has is checked alone (all earlier values only when the type is new)."""
        types: Dict[str, Any] = {}
        for key, value in metadata.items():
            if value is None:
                continue
            try:
                column = pa.array([value])
                if self._metadata_types.get(key) != column.type:
                    column = pa.array([record.get(key) for record in self._episodes] + [value])
                    pq.write_table(pa.table({key: column}), pa.BufferOutputStream())
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise ValueError(f"episode {episode_index}: metadata[{key!r}] = {value!r:.80} cannot be stored in a "
                                 f"v3.0 episode list beside the earlier episodes' values ({type(exc).__name__}: {exc}); "
                                 "give each key one type (not an empty map) in every episode") from None
            types[key] = column.type
        return types

    def _check_metadata_keys(self, metadata: Mapping[str, Any]) -> None:
        """ValueError naming a metadata key that is a column of LeRobot's episode list: the writer fills those itself
        (and in v3.0 the reader takes every `data/`, `videos/`, `meta/` and `stats/` column for its own)."""
        reserved = {"episode_index", "length", "tasks"}
        if reserved & set(metadata):
            raise ValueError(f"metadata keys {sorted(reserved & set(metadata))} are reserved by LeRobot")
        if self.layout != "v3.0":
            return
        for key in metadata:
            if key in V3_BOOKKEEPING_COLUMNS or str(key).startswith(V3_BOOKKEEPING_PREFIXES):
                raise ValueError(f"metadata key {key!r} is reserved by LeRobot v3.0: its episode list keeps "
                                 f"{sorted(V3_BOOKKEEPING_COLUMNS)} and the columns starting with "
                                 f"{', '.join(V3_BOOKKEEPING_PREFIXES)} for its own bookkeeping; rename the key")

    def _check_layout(self, frames, states, actions, step_columns, length: int) -> None:
        for kind, groups in (("states", states), ("actions", actions)):
            for key, value in groups.items():
                if value.shape[0] != length:
                    raise ValueError(f"{kind}['{key}'] has {value.shape[0]} steps; expected {length} like the first state group")
        for camera, value in frames.items():
            if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim != 4 or value.shape[-1] != 3:
                raise ValueError(f"frames['{camera}'] must be uint8 (T, H, W, 3), got {getattr(value, 'dtype', type(value))} {getattr(value, 'shape', '')}")
            if value.shape[0] != length:
                raise ValueError(f"frames['{camera}'] has {value.shape[0]} frames; expected {length} (the episode length)")
            if value.shape[1] % 2 or value.shape[2] % 2:  # before any camera is encoded (v3.0 files are shared)
                raise ValueError(f"frames['{camera}'] has size {value.shape[1]}x{value.shape[2]}; the videos are "
                                 "yuv420p, whose height and width must be even")
            smallest = min_frame_side(self.video_codec)
            if min(value.shape[1:3]) < smallest:
                raise ValueError(f"frames['{camera}'] has size {value.shape[1]}x{value.shape[2]}; {self.video_codec} "
                                 f"videos ({encoder_for(self.video_codec)}) need a height and width of at least "
                                 f"{smallest} pixels")
            size = self._frame_sizes.setdefault(camera, value.shape[1:3])
            if value.shape[1:3] != size:
                raise ValueError(f"frames['{camera}'] has size {value.shape[1:3]}; earlier episodes had {size}")
        for name, value in step_columns.items():
            if (name in _INDEX_COLUMNS or name in ("observation.state", "action") or name.startswith("observation.images.")
                    or name == self.language_column):
                raise ValueError(f"step column {name!r} clashes with a LeRobot column")
            if np.asarray(value).shape[:1] != (length,):
                raise ValueError(f"step_columns['{name}'] must have {length} rows, got shape {np.asarray(value).shape}")
            if np.asarray(value).ndim > 2:
                raise ValueError(f"step_columns['{name}'] must be (T,) or (T, D), got shape {np.asarray(value).shape} "
                                 "(a parquet step cell holds a scalar or a flat list; flatten it)")
        shape = (list(frames), {k: v.shape[1] for k, v in states.items()}, {k: v.shape[1] for k, v in actions.items()}, sorted(step_columns))
        if self._cameras is None:
            self._cameras, self._state_dims, self._action_dims, self._step_columns = shape
            return
        expected = (self._cameras, self._state_dims, self._action_dims, self._step_columns)
        for label, got, want in zip(("cameras", "state dims", "action dims", "step columns"), shape, expected):
            if (sorted(got) if label == "cameras" else got) != (sorted(want) if label == "cameras" else want):
                raise ValueError(f"episode {len(self._episodes)}: {label} {got} differ from the first episode's {want}")

    # -- v2.1 -------------------------------------------------------------------------------------
    def _write_v2_episode(self, episode_index: int, table: pa.Table, frames: Mapping[str, np.ndarray]) -> None:
        """The episode's parquet and mp4s, each written under a hidden partial name and renamed once all are
        complete: an episode cut short (Ctrl-C while encoding) leaves no file a loader globbing data/ would count
        (and add_episode removes the renamed ones, self._episode_files, of an episode that does not finish)."""
        data_path, *videos = self._v2_episode_paths(episode_index, frames)
        video_paths = dict(zip(frames, videos))
        partial = {path: path.with_name(f".partial-{path.name}") for path in [data_path, *videos]}
        try:
            data_path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, partial[data_path])
            for camera, images in frames.items():
                encoder = Mp4Encoder(partial[video_paths[camera]], self.fps, self.video_codec, self.gop)
                try:
                    encoder.write(images)
                finally:
                    encoder.close()
        except BaseException:
            for path in partial.values():
                remove_quietly(path)  # a read-only folder refuses this too: never in place of the write's error
            raise
        self._episode_files.extend(partial)  # before the renames: one cut short between two is removed too
        for final, temporary in partial.items():
            temporary.replace(final)

    def _v2_episode_paths(self, episode_index: int, cameras: Sequence[str]) -> List[Path]:
        """The episode's parquet, then its mp4 of each camera."""
        chunk = episode_index // self.chunks_size
        return [self.root / V2_DATA_PATH.format(episode_chunk=chunk, episode_index=episode_index),
                *(self.root / V2_VIDEO_PATH.format(episode_chunk=chunk, episode_index=episode_index,
                                                   video_key=f"observation.images.{camera}") for camera in cameras)]

    def _recorded_values(self) -> Tuple[Any, ...]:
        """What add_episode changes besides the layout, as it is now (see _forget_v2_episode)."""
        numeric = {name: copy.copy(running) for name, running in self._numeric.items()}  # add() replaces, never edits, arrays
        return (dict(self._tasks), dict(self._metadata_types), numeric, len(self._episodes), self._unlisted[0],
                self._total_frames)

    def _forget_v2_episode(self, recorded: Tuple[Any, ...]) -> None:
        """Undo a v2.1 episode add_episode did not finish: its files in data/ and videos/, and its values."""
        self._remove_v2_files(self._episode_files)
        self._restore_values(recorded)

    @staticmethod
    def _remove_v2_files(paths: Sequence[Path]) -> None:
        for path in paths:  # after an error: a delete refused too (read-only) never replaces it
            remove_quietly(path.with_name(f".partial-{path.name}"))
            remove_quietly(path)

    def _restore_values(self, recorded: Tuple[Any, ...]) -> None:
        """Put back what add_episode changes besides the layout, as `_recorded_values()` took it."""
        tasks, metadata_types, numeric, n_episodes, unlisted, total_frames = recorded
        # copies: `recorded` may be gone back to again (discard_unlisted() twice without a write_meta() between)
        self._tasks, self._metadata_types = dict(tasks), dict(metadata_types)
        self._numeric = {name: copy.copy(running) for name, running in numeric.items()}
        del self._episodes[n_episodes:]
        del self._episode_stats[n_episodes:]
        self._unlisted[0], self._total_frames = unlisted, total_frames

    # -- v3.0 -------------------------------------------------------------------------------------
    def _append_v3_episode(self, table: pa.Table, frames: Mapping[str, np.ndarray], length: int) -> Dict[str, Any]:
        if self.episodes_per_file is not None and self._file_episode_count >= self.episodes_per_file:
            self._flush_v3_file()
        if not self._file_tables:
            self._file_start_values = self._recorded_values()
        chunk, file_index = divmod(self._file_index, self.chunks_size)
        record: Dict[str, Any] = {
            "data/chunk_index": chunk,
            "data/file_index": file_index,
            "dataset_from_index": self._total_frames,
            "dataset_to_index": self._total_frames + length,
        }
        for camera, images in frames.items():
            key = f"observation.images.{camera}"
            encoder = self._file_encoders.get(key)
            if encoder is None:
                path = self.root / V3_VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file_index)
                encoder = self._file_encoders[key] = Mp4Encoder(path, self.fps, self.video_codec, self.gop)
            start = encoder.frames_written
            self._write_v3_frames(key, encoder, images)
            record[f"videos/{key}/chunk_index"] = chunk
            record[f"videos/{key}/file_index"] = file_index
            record[f"videos/{key}/from_timestamp"] = start / self.fps
            record[f"videos/{key}/to_timestamp"] = encoder.frames_written / self.fps
        self._file_tables.append(table)
        self._file_episode_count += 1
        return record

    def _write_v3_frames(self, key: str, encoder: Mp4Encoder, images: np.ndarray) -> None:
        """Append a camera's frames to this file's video. An encoder that failed before holding any frame (one that
        would not open) is dropped with its file, so the next episode starts the video afresh: kept, it refused
        every later episode of the file. One that failed later leaves the file unfinishable (_drop_v3_file)."""
        try:
            encoder.write(images)
        except BaseException as exc:
            if encoder.frames_written == 0:
                encoder.discard()
                del self._file_encoders[key]
            elif encoder.broken:
                self._drop_v3_file(exc, encoder.path)
            raise

    def _flush_v3_file(self) -> None:
        if not self._file_tables:
            return
        chunk, file_index = divmod(self._file_index, self.chunks_size)
        path = self.root / V3_DATA_PATH.format(chunk_index=chunk, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(self._file_tables), path)
        for encoder in self._file_encoders.values():
            try:
                encoder.close()
            except BaseException as exc:
                remove_quietly(path)
                self._drop_v3_file(exc, encoder.path)
                raise
        self._file_tables, self._file_encoders, self._file_episode_count = [], {}, 0
        self._file_index += 1

    def _drop_v3_file(self, exc: BaseException, video: Path) -> None:
        """Forget the v3.0 file being filled, whose `video` a failed write left unfinishable (no PyAV write may follow
        one that failed): its mp4s are deleted, its episodes leave the dataset, and the next episode starts the file
        anew. Raises an OSError naming the lost episodes for an OSError `exc` (the caller re-raises any other)."""
        first = self._file_start_values[3]
        lost = len(self._episodes) - first
        for encoder in self._file_encoders.values():
            encoder.discard()
        self._file_tables, self._file_encoders, self._file_episode_count = [], {}, 0
        self._restore_values(self._file_start_values)
        if not lost:
            return
        self._lost_episodes += lost
        message = (f"{video}: {getattr(exc, 'strerror', None) or repr(exc)}; the file cannot be finished, so the {lost} "
                   f"episode(s) already in it (episodes {first}..{first + lost - 1}) are lost: they were dropped from "
                   f"the dataset, which now holds {first} episode(s), and the next episode starts that file anew")
        logger.error("%s", message)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, message) from exc

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
        pq.write_table(pa.table({name: [row.get(name) for row in rows] for name in names}), staged.temporary(path))
        pq.write_table(_tasks_table(self._tasks), staged.temporary(meta / "tasks.parquet"))

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
                with open(path, "r+b", buffering=0) as handle:
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


def _warn_unlisted(root: str, layout: str, unlisted: List[int]) -> None:
    """A DatasetWriter's finalizer: warn when episodes it added are in no meta file (finalize() was never called)."""
    if unlisted[0]:
        where = ("and those of its unfinished data file are not on disk at all" if layout == "v3.0"
                 else "so readers do not see them")
        logger.warning("DatasetWriter(%s) was dropped without finalize(): its last %d episode(s) are not in meta/, %s; "
                       "call finalize() (or write_meta() after each episode) or use `with DatasetWriter(...)`",
                       root, unlisted[0], where)


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


def _float_groups(groups: Mapping[str, np.ndarray], kind: str) -> Dict[str, np.ndarray]:
    if not groups:
        raise ValueError(f"{kind} must name at least one group")
    out = {}
    for key, value in groups.items():
        array = np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise ValueError(f"{kind}['{key}'] must be numeric (T, D), got dtype {array.dtype}")
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2:
            raise ValueError(f"{kind}['{key}'] must have shape (T, D), got {array.shape}")
        if array.shape[1] == 0:  # modality.json cannot describe an empty slice: the reader refused the dataset
            raise ValueError(f"{kind}['{key}'] has shape {array.shape}, no values per step; a group needs D >= 1 "
                             "(leave out a group that has no values)")
        with np.errstate(over="ignore", invalid="ignore"):
            cast = array.astype(np.float32)
        bad = ~np.isfinite(cast).all(axis=1)
        if bad.any():  # NaN/inf, or finite float64 beyond float32 (1e39 became inf): stats.json turned to NaN
            step = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{kind}['{key}'] has a value float32 cannot hold finitely at step {step} "
                             f"({array[step].tolist()!r:.120}; {int(bad.sum())} step(s) in all); states and actions "
                             "are stored as float32 and must be finite numbers")
        out[key] = cast
    return out


def _check_cast_loses_nothing(original: Any, cast: Any) -> None:
    """ValueError when casting a later episode's column to the first episode's type changed a value: pyarrow's safe
    cast checks integer overflow and truncation, not float overflow (1e300 into float32 became inf) nor a cast to
    bool (ints and floats became True for any non-zero value). Float-to-float rounding to the column's precision is
    kept; every other cast must give back the original values when cast back."""
    before, after = original.combine_chunks(), cast.combine_chunks()
    while pa.types.is_list(before.type) or pa.types.is_large_list(before.type) or pa.types.is_fixed_size_list(before.type):
        before, after = before.flatten(), after.flatten()
    if pa.types.is_floating(before.type) and pa.types.is_floating(after.type):
        was = np.isfinite(before.to_numpy(zero_copy_only=False))
        now = np.isfinite(after.to_numpy(zero_copy_only=False))
        if (was & ~now).any():
            raise ValueError(f"{int((was & ~now).sum())} finite value(s) are out of {after.type}'s range")
        return
    back = after.cast(before.type, safe=False)
    same = pc.fill_null(pc.equal(back, before), True).to_numpy(zero_copy_only=False)
    if not same.all():
        kept = "True/False" if pa.types.is_boolean(after.type) else "what that type holds"
        raise ValueError(f"{int((~same).sum())} value(s) would change (a {after.type} column keeps only {kept})")


def _to_table(columns: Mapping[str, np.ndarray]) -> pa.Table:
    """The episode's columns as a table: (T, D) as lists, (T,) and (T, 1) as scalars (LeRobot declares a one-value
    feature as shape [1] and reads it as a scalar: a list column of width 1 failed its whole dataset's load)."""
    arrays = {}
    for name, values in columns.items():
        values = np.asarray(values)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim == 2:
            arrays[name] = pa.array(list(values), type=pa.list_(pa.from_numpy_dtype(values.dtype)))
        elif values.dtype.kind in "OUS":
            arrays[name] = pa.array([str(v) for v in values], type=pa.string())
        else:
            arrays[name] = pa.array(values)
    return pa.table(arrays)


def _json_metadata(metadata: Mapping[str, Any]) -> Dict[str, Any]:
    """Episode metadata as JSON values: numpy scalars and arrays become Python ones; ValueError naming the key for
    anything JSON cannot hold (an object, NaN or infinity)."""
    out: Dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise ValueError(f"metadata keys must be str, got {key!r}")
        if isinstance(value, (np.generic, np.ndarray)):
            value = value.tolist()
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata[{key!r}] = {value!r} cannot be stored in the episode list ({exc}); pass "
                             "str, int, float (finite), bool, None, or lists and dicts of those") from None
        out[key] = value
    return out


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # a reader (or a crash) never sees half a file
    except BaseException:
        remove_quietly(tmp)  # a full disk: no partial file left in meta/ (a read-only one: the write's error shown)
        raise


class _StagedFiles:
    """Files written under temporary names and renamed into place together, in the order they were written."""

    def __init__(self) -> None:
        self._staged: Dict[Path, Path] = {}

    def temporary(self, path: Path) -> Path:
        """The name to write `path` under until commit()."""
        self._staged[path] = path.with_name(path.name + ".tmp")
        return self._staged[path]

    def write_json(self, path: Path, data: Any) -> None:
        self.temporary(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    def write_jsonl(self, path: Path, rows: List[Mapping[str, Any]]) -> None:
        self.temporary(path).write_text("".join(json.dumps(dict(row)) + "\n" for row in rows), encoding="utf-8")

    def commit(self) -> None:
        for path, temporary in self._staged.items():
            temporary.replace(path)

    def discard(self) -> None:
        for temporary in self._staged.values():
            remove_quietly(temporary)  # a full disk: no partial file left in meta/ (a read-only one: the write's error shown)
