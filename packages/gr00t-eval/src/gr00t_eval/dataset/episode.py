"""Episode: one episode of a LeRobotDataset, its per-step columns, states, actions, language, timestamps and frames."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Union

import numpy as np

from .errors import DatasetColumnNotFoundError, DatasetError
from .meta import EpisodeRecord, text_value
from .tables import _column_to_numpy, _read_episode_table

if TYPE_CHECKING:
    from .reader import LeRobotDataset

# How far (in frame intervals) a step of the `timestamp` column may be from 1/fps (float32 timestamps of long
# episodes carry rounding; a rate of 30 under fps 10, or a dropped frame, is far outside).
TIMESTAMP_TOLERANCE = 0.1


class Episode:
    """One episode: per-step arrays sliced by modality.json, language per step and on-demand video frames."""

    def __init__(self, dataset: LeRobotDataset, record: EpisodeRecord) -> None:
        self._dataset = dataset
        self.record = record
        self.table = _read_episode_table(record)
        self.length = record.length
        self._arrays: Dict[str, np.ndarray] = {}
        self._check_row_order()

    def _check_row_order(self) -> None:
        """DatasetError unless the rows are the episode's steps in order: `frame_index` (where present) counting up
        by one from 0 (or from another number, as a dataset-wide numbering does, where `timestamp` starts at 0), and
        `timestamp` stepping by 1/fps (timestamps()) from 0 where no frame_index says which step a row is. Rows
        shuffled, repeated or missing in the file (its first row lost: row k is paired with video frame k) would
        otherwise be replayed and scored in file order without a word; LeRobot refuses such a dataset at load."""
        steps = self.column("frame_index").reshape(-1) if "frame_index" in self.table.column_names else None
        if steps is not None and self.length > 1:
            off = np.flatnonzero(np.diff(steps) != 1) if steps.dtype.kind in "iuf" else np.zeros(1, np.int64)
            if off.size:
                first = int(off[0])
                raise DatasetError(f"{self.record.data_path}: column 'frame_index' of episode {self.episode_index} goes "
                                   f"from {steps[first]} to {steps[first + 1]} at row {first + 1}; the rows of an "
                                   "episode must be its steps in order, each frame_index one more than the last")
        times = self.timestamps()
        fps = self._dataset.fps
        if steps is not None and steps.size and steps.dtype.kind in "iuf" and steps[0] != 0:
            # Numbered from the dataset's start (as some converters write frame_index; LeRobot never reads it): the
            # rows are all there when the timestamps start at 0 and step by 1/fps (timestamps()) and the file has
            # `length` rows (_read_episode_table refuses fewer), so row k is step k.
            if "timestamp" in self.table.column_names and times.size and abs(times[0]) <= TIMESTAMP_TOLERANCE / fps:
                return
            started = (f"; its 'timestamp' starts at {times[0]:.6g} s" if "timestamp" in self.table.column_names
                       else "")
            raise DatasetError(f"{self.record.data_path}: column 'frame_index' of episode {self.episode_index} starts "
                               f"at {steps[0]}, expected 0{started}: its first rows are missing, and row k would be "
                               "paired with the video frame of another step")
        if steps is None and times.size and abs(times[0]) > TIMESTAMP_TOLERANCE / fps:
            raise DatasetError(f"{self.record.data_path}: column 'timestamp' of episode {self.episode_index} starts at "
                               f"{times[0]:.6g} s, expected 0 (within {TIMESTAMP_TOLERANCE / fps:.6g} s): its first rows "
                               "are missing, and row k would be paired with the video frame of another step")

    def check_finite(self, kind: str, keys: Sequence[str], dtype: Any = np.float64,
                     rows: Union[None, int, Sequence[int]] = None) -> None:
        """DatasetError naming the file, column, row and key when a state or action group holds NaN or inf as `dtype`
        holds it: a recorded action with a hole would be replayed to a robot or scored against as if it were a number
        (np.float32, what a replay serves, also refuses a float64 recording's values beyond float32's range).
        `rows`: an int checks only the first rows (those open-loop scores), a sequence only those rows (the steps
        open-loop sends); None checks the whole episode."""
        for key in keys:
            values = self._group_array(kind, key, np.float64)
            with np.errstate(over="ignore"):
                bad = ~np.isfinite(values.astype(dtype))
            if isinstance(rows, (int, np.integer)):
                bad[rows:] = False
            elif rows is not None:
                checked = np.zeros(len(bad), dtype=bool)
                checked[list(rows)] = True
                bad &= checked[:, None]
            if bad.any():
                row, index = (int(i) for i in np.argwhere(bad)[0])
                group = self._dataset._groups(kind)[key]
                value = values[row, index]
                served = np.dtype(dtype).name
                expected = "finite numbers" if not np.isfinite(value) else (
                    f"finite numbers within {served}'s range (|value| <= {np.finfo(dtype).max:.4g}), as served")
                raise DatasetError(f"{self.record.data_path}: column '{group.original_key}' holds {value} at "
                                   f"row {row} ({kind} key '{key}', value {index}) of episode {self.episode_index}; "
                                   f"recorded {kind}s must be {expected}")

    @property
    def episode_index(self) -> int:
        """The episode's index as the dataset numbers it."""
        return self.record.episode_index

    @property
    def position(self) -> int:
        """The episode's place in the dataset's episode list (0-based)."""
        return self.record.position

    @property
    def tasks(self) -> List[str]:
        """The episode's task strings from the episode list."""
        return list(self.record.tasks)

    @property
    def extras(self) -> Dict[str, Any]:
        """Episode-level fields beyond LeRobot's own (e.g. a "seed" the recorder stored)."""
        return dict(self.record.extras)

    @property
    def columns(self) -> List[str]:
        """Names of the per-step parquet columns."""
        return list(self.table.column_names)

    def column(self, name: str) -> np.ndarray:
        """A raw per-step column: (T,) for scalars, (T, D) for fixed-length lists."""
        if name not in self._arrays:
            if name not in self.table.column_names:
                raise DatasetColumnNotFoundError(f"{self.record.data_path}: no column {name!r}; columns are "
                                                 f"{self.table.column_names}")
            self._arrays[name] = _column_to_numpy(self.table.column(name), name, self.record.data_path)
        return self._arrays[name]

    def _numeric_column(self, name: str, read_as: str) -> np.ndarray:
        """column(name), DatasetError naming the file, column and episode unless it holds numbers (`read_as` says
        what it is read as): text or nested lists ended a whole evaluation with numpy's conversion error."""
        values = self.column(name)
        if values.size and values.dtype.kind not in "biuf":
            raise DatasetError(f"{self.record.data_path}: column '{name}' of episode {self.episode_index} holds "
                               f"{values.dtype} values ({values.reshape(-1)[0]!r}, ...) where {read_as} must be numbers")
        return values

    def _group_array(self, kind: str, key: str, dtype: Any = np.float32) -> np.ndarray:
        groups = self._dataset._groups(kind)
        if key not in groups:
            raise KeyError(f"no {kind} key {key!r}; expected one of {list(groups)}")
        group = groups[key]
        raw = self._numeric_column(group.original_key, f"{kind} key '{key}' (meta/modality.json)")
        if raw.shape[0] == 0:  # an empty episode: its list columns have no rows to tell their width
            return np.zeros((0, group.dim), dtype=dtype)
        if raw.ndim == 1:
            raw = raw[:, None]
        declared = self._dataset._declared_widths.get(group.original_key)
        if declared is not None and raw.shape[1] != declared:
            raise DatasetError(
                f"{self.record.data_path}: column '{group.original_key}' of episode {self.episode_index} has "
                f"{raw.shape[1]} values per step and meta/info.json declares {declared} (features."
                f"{group.original_key}.shape); meta/modality.json's slices of it would pick the wrong values"
            )
        first = self._dataset._first_file_width(group.original_key) if declared is None else None
        if first is not None and raw.shape[1] != first[0]:
            raise DatasetError(
                f"{self.record.data_path}: column '{group.original_key}' of episode {self.episode_index} has "
                f"{raw.shape[1]} values per step and the first data file, {first[1]}, has {first[0]}; without a "
                f"features.{group.original_key}.shape in meta/info.json every episode's column must be as wide, or "
                "meta/modality.json's slices of it would pick the wrong values"
            )
        if raw.shape[1] < group.end:
            raise DatasetError(
                f"{self.record.data_path}: column '{group.original_key}' has {raw.shape[1]} values per step; "
                f"{kind} key '{key}' (meta/modality.json) needs [{group.start}:{group.end}]"
            )
        return np.ascontiguousarray(group.select(raw), dtype=dtype)

    def states(self, key: str) -> np.ndarray:
        """float32 (T, D) of one state group."""
        return self._group_array("state", key)

    def actions(self, key: str, dtype: Any = np.float32) -> np.ndarray:
        """(T, D) of one action group: float32 (what policies take and send), or `dtype` (np.float64 keeps a float64
        recording's values whole, for scoring against them)."""
        return self._group_array("action", key, dtype)

    def state_array(self) -> np.ndarray:
        """All state groups concatenated in modality.json order: float32 (T, sum D)."""
        return np.concatenate([self.states(k) for k in self._dataset.state_keys], axis=1)

    def action_array(self) -> np.ndarray:
        """All action groups concatenated in modality.json order: float32 (T, sum D)."""
        return np.concatenate([self.actions(k) for k in self._dataset.action_keys], axis=1)

    def language(self, key: str) -> List[str]:
        """One string per step for a language key; integer cells are task indices resolved through the task list."""
        groups = self._dataset.modality.language
        if key in groups:
            column = groups[key].original_key
        elif key == "task" and "task_index" in self.table.column_names:
            column = "task_index"
        else:
            raise KeyError(f"no language key {key!r}; expected one of {list(groups)}")
        values = self.column(column)
        if values.ndim > 1:  # lists of one per row (LeRobot's shape-[1] columns, as converters write them)
            if values.shape[0] and values.shape[1:] != (1,):
                raise DatasetError(f"{self.record.data_path}: column '{column}' of episode {self.episode_index} holds "
                                   f"{values.shape[1]} values per row; a language column holds one task index or "
                                   "string per row (a scalar, or a list of one)")
            values = values.reshape(values.shape[0])
        if values.dtype.kind in "iu":
            tasks = self._dataset.tasks
            unknown = sorted(set(int(v) for v in np.unique(values)) - set(tasks))
            if unknown:
                raise DatasetError(
                    f"{self.record.data_path}: column '{column}' holds task indices {unknown} that the task list lacks"
                )
            served = [tasks[int(v)] for v in values]
            if column == "task_index" and self.record.tasks:
                stray = next((int(v) for v, task in zip(values, served) if task not in self.record.tasks), None)
                if stray is not None:  # the task list reordered, or another dataset's: another episode's instruction
                    v3 = self._dataset._major >= 3
                    task_file, episode_list = ("tasks.parquet", "episodes/") if v3 else ("tasks.jsonl",
                                                                                         "episodes.jsonl")
                    raise DatasetError(
                        f"{self.record.data_path}: column 'task_index' of episode {self.episode_index} holds task "
                        f"index {stray}, which meta/{task_file} names {tasks[stray]!r}, and meta/{episode_list} gives "
                        f"the episode the tasks {list(self.record.tasks)}; expected a task of the episode's own"
                    )
            return served
        if values.dtype.kind in "OUS":
            where = f"{self.record.data_path}: column '{column}' of episode {self.episode_index}"
            return [text_value(v, f"{where}, row {row},") for row, v in enumerate(values)]
        raise DatasetError(f"{self.record.data_path}: column '{column}' must hold task indices or strings, got {values.dtype}")

    def timestamps(self) -> np.ndarray:
        """Per-step timestamps (seconds from episode start): the `timestamp` column, else step / fps.

        Each step must be within 10% of 1/fps (as LeRobot checks at load): a gap is a dropped row, whose neighbours
        would be paired with the wrong frames (frames() pairs by index). DatasetError naming the file and the first
        bad step otherwise."""
        fps = self._dataset.fps
        if "timestamp" not in self.table.column_names:
            return np.arange(self.length, dtype=np.float64) / fps
        if "timestamps" not in self._arrays:  # converted and checked once per episode
            times = self._numeric_column("timestamp", "timestamps (seconds)").astype(np.float64).reshape(-1)
            off = np.flatnonzero(np.abs(np.diff(times) - 1.0 / fps) > TIMESTAMP_TOLERANCE / fps)
            if off.size:
                first = int(off[0])
                raise DatasetError(f"{self.record.data_path}: column 'timestamp' of episode {self.episode_index} steps "
                                   f"from {times[first]:.6g} s to {times[first + 1]:.6g} s at step {first}; at fps "
                                   f"{fps:g} (meta/info.json) each step is {1.0 / fps:.6g} s")
            self._arrays["timestamps"] = times
        return self._arrays["timestamps"]

    def frames(self, video_key: str, step_indices: Union[int, Sequence[int], np.ndarray]) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB frames of camera `video_key` at the given steps; decodes only those frames."""
        groups = self._dataset.modality.video
        if video_key not in groups:
            raise KeyError(f"no video key {video_key!r}; expected one of {list(groups)}")
        steps = np.atleast_1d(np.asarray(step_indices))
        if steps.size == 0:
            raise ValueError("frames() needs at least one step index")
        if steps.dtype.kind not in "iu":
            raise TypeError(f"step indices must be integers, got dtype {steps.dtype}")
        bad = steps[(steps < 0) | (steps >= self.length)]
        if bad.size:
            raise IndexError(f"step indices {bad[:5].tolist()} out of range for episode {self.episode_index} of length {self.length}")
        column = groups[video_key].original_key
        if column in self._dataset._image_cameras:
            raise DatasetError(
                f"{self._dataset.root / 'meta' / 'info.json'}: camera '{video_key}' ({column}) is stored as images in "
                "the parquet files (dtype 'image'), and this reader decodes cameras from mp4 videos only; convert the "
                "dataset's images to videos (dtype 'video'), e.g. with LeRobot's dataset tools"
            )
        self._dataset.check_video(self.record, column)
        segment = self.record.videos[column]
        self.timestamps()  # a `timestamp` column with gaps (dropped frames) is refused
        # Step k shows frame k of its segment, as GR00T decodes (get_frames_by_indices; a v3.0 file's segment starts
        # at from_timestamp). By the `timestamp` column, errors that passed each step's check added up: a 29 Hz column
        # under fps 30 gave step 16 the frame of step 17, and a column starting at 0.2 s reached into the next
        # episode's frames in a shared file.
        return self._dataset._decode_segment_frames(column, segment.path, segment.from_timestamp, steps.tolist())
