"""DatasetWriter: record episodes as a LeRobot v2.1 (or v3.0) dataset with GR00T's modality.json and stats.json."""

from __future__ import annotations

import copy
import logging
import numbers
import weakref
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa

from gr00t_client.cli_flags import home_expanded_path

from .overwrite import OVERWRITE_TRASH, delete_trash, empty_dataset_dir
from .stats import RunningColumnStats, episode_stats, image_stats
from .video import ENCODERS, Mp4Encoder, encoder_for, max_fps
from .writer_checks import _INDEX_COLUMNS, _EpisodeChecks, _check_task_text, _float_groups, _json_metadata, _to_table
from .writer_files import _EpisodeFiles
from .writer_meta import _MetaFiles

logger = logging.getLogger(__name__)


class DatasetWriter(_EpisodeChecks, _EpisodeFiles, _MetaFiles):
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

    `chunks_size` counts what one chunk folder (chunk-000, chunk-001, ...) holds: episodes in v2.1; in v3.0 data
    files, and each camera's video files. `episodes_per_file` (v3.0): episodes per data file and per mp4; None puts
    all episodes in one data file and one mp4 per camera. `gop`: frames from one video keyframe to the next (a
    smaller one decodes a frame asked for sooner, a larger one makes smaller files).
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
        _check_file_settings(fps, video_codec, layout, chunks_size, episodes_per_file, gop)
        if not language_key.startswith("annotation."):
            raise ValueError(f"language_key must start with 'annotation.', got {language_key!r}")
        if (language_column in _INDEX_COLUMNS and language_column != "task_index"
                or language_column in ("observation.state", "action") or language_column.startswith("observation.images.")):
            raise ValueError(f"language_column {language_column!r} is a LeRobot column the writer fills itself; name a "
                             "column of its own (or leave the default, 'task_index')")
        # '~' is the home folder, as in the CLI's --output (a folder named '~' was made in the working directory); on
        # the text: Path() drops the './' of './~/ds', a folder named '~'
        self.root = Path(home_expanded_path(root)).absolute()
        delete_trash(self.root / OVERWRITE_TRASH)  # left by an overwrite that was killed
        keep = (*keep, OVERWRITE_TRASH)
        if self.root.exists() and any(entry.name not in keep for entry in self.root.iterdir()):
            if not overwrite:
                raise FileExistsError(f"dataset directory {self.root} is not empty (pass overwrite=True to replace it)")
            empty_dataset_dir(self.root, keep)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fps = int(fps)  # numpy ints as plain ints: info.json and the encoders take them
        self.video_codec = video_codec
        self.layout = layout
        self.robot_type = robot_type
        self.language_key = language_key
        self.language_column = language_column
        self.chunks_size = int(chunks_size)
        self.episodes_per_file = None if episodes_per_file is None else int(episodes_per_file)
        self.gop = int(gop)
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
        _check_task_text(task, len(self._episodes))  # v3.0's finalize() failed on it, losing every episode
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

    # -- recorded values --------------------------------------------------------------------------
    def _recorded_values(self) -> Tuple[Any, ...]:
        """What add_episode changes besides the layout, as it is now (see _forget_v2_episode)."""
        numeric = {name: copy.copy(running) for name, running in self._numeric.items()}  # add() replaces, never edits, arrays
        return (dict(self._tasks), dict(self._metadata_types), numeric, len(self._episodes), self._unlisted[0],
                self._total_frames)

    def _restore_values(self, recorded: Tuple[Any, ...]) -> None:
        """Put back what add_episode changes besides the layout, as `_recorded_values()` took it."""
        tasks, metadata_types, numeric, n_episodes, unlisted, total_frames = recorded
        # copies: `recorded` may be gone back to again (discard_unlisted() twice without a write_meta() between)
        self._tasks, self._metadata_types = dict(tasks), dict(metadata_types)
        self._numeric = {name: copy.copy(running) for name, running in numeric.items()}
        del self._episodes[n_episodes:]
        del self._episode_stats[n_episodes:]
        self._unlisted[0], self._total_frames = unlisted, total_frames


_MAX_GOP = 2**31 - 1  # FFmpeg's keyframe interval option 'g' is a C int
_MAX_FPS = 2**31 - 1  # a video's frame rate and time base (1/fps) are FFmpeg rationals of C ints


def _check_file_settings(fps: Any, video_codec: Any, layout: Any, chunks_size: Any, episodes_per_file: Any,
                         gop: Any) -> None:
    """ValueError naming the first DatasetWriter setting its files cannot be written with, before the folder is
    touched (overwrite=True deletes the old dataset there)."""
    if video_codec not in ENCODERS:
        raise ValueError(f"video_codec must be one of {sorted(ENCODERS)}, got {video_codec!r}")
    encoder = encoder_for(video_codec)  # a codec this PyAV build cannot encode fails here
    if layout not in ("v2.1", "v3.0"):
        raise ValueError(f"layout must be 'v2.1' or 'v3.0', got {layout!r}")
    if not _is_int(fps) or not 1 <= fps <= _MAX_FPS:
        raise ValueError(f"fps must be an int from 1 to {_MAX_FPS} (frames per second), got {fps!r}")
    highest = max_fps(video_codec)
    if highest is not None and fps > highest:
        raise ValueError(f"fps {fps} is over {highest}, the most the {encoder} encoder of video_codec "
                         f"{video_codec!r} takes; record at fps <= {highest} or use another video_codec")
    if not _is_int(chunks_size) or chunks_size < 1:
        counted = "episodes" if layout == "v2.1" else "data files, and each camera's video files,"
        raise ValueError(f"chunks_size must be an int >= 1 ({counted} per chunk folder in layout {layout}), "
                         f"got {chunks_size!r}")
    if episodes_per_file is not None and (not _is_int(episodes_per_file) or episodes_per_file < 1):
        raise ValueError(f"episodes_per_file must be None (all episodes in one file) or an int >= 1, "
                         f"got {episodes_per_file!r}")
    if not _is_int(gop) or not 1 <= gop <= _MAX_GOP:
        raise ValueError(f"gop must be an int from 1 to {_MAX_GOP} (frames from one keyframe to the next), got {gop!r}")


def _is_int(value: Any) -> bool:
    """A whole-number type (int, numpy's int64: numbers.Integral) and not a bool (True is an int to Python, never a
    count a user meant); a float, even 2.0, is refused."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _warn_unlisted(root: str, layout: str, unlisted: List[int]) -> None:
    """A DatasetWriter's finalizer: warn when episodes it added are in no meta file (finalize() was never called)."""
    if unlisted[0]:
        where = ("and those of its unfinished data file are not on disk at all" if layout == "v3.0"
                 else "so readers do not see them")
        logger.warning("DatasetWriter(%s) was dropped without finalize(): its last %d episode(s) are not in meta/, %s; "
                       "call finalize() (or write_meta() after each episode) or use `with DatasetWriter(...)`",
                       root, unlisted[0], where)
