"""LeRobotDataset: lazy, read-only access to a LeRobot v2.x / v3.0 dataset through GR00T's modality.json."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import DatasetColumnNotFoundError, DatasetError, DatasetFileNotFoundError, require_file
from .meta import EpisodeRecord, codebase_major, read_episodes, read_json, read_modality, read_stats, read_tasks
from .modality import ArrayGroup, DatasetModality
from .stats import group_stats
from .video import decode_frames_at, video_frame_times, video_stream_facts

logger = logging.getLogger(__name__)

DEFAULT_FPS = 30
# How far (in frame intervals) a step of the `timestamp` column may be from 1/fps (float32 timestamps of long
# episodes carry rounding; a rate of 30 under fps 10, or a dropped frame, is far outside).
TIMESTAMP_TOLERANCE = 0.1
# LeRobot's per-row bookkeeping columns: one number per row (info.json declares them with shape [1])
SCALAR_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


class LeRobotDataset:
    """A LeRobot dataset with GR00T's meta/modality.json. Reads metadata only; episodes load on demand.

    `dataset.episode(pos)` indexes by position in the episode list (as GR00T does),
    `dataset.episode_by_index(i)` by the `episode_index` field. `frames_decoded` counts every video
    frame decoded through this object (to check that only the frames asked for are decoded).
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.root = Path(path)
        if not self.root.is_dir():
            raise DatasetFileNotFoundError(f"dataset directory not found: {self.root}")
        meta_dir = self.root / "meta"
        info_path = meta_dir / "info.json"
        info = read_json(info_path, "dataset info file (meta/info.json)")
        if not isinstance(info, dict):
            raise DatasetError(f"{info_path}: expected a JSON object, got {type(info).__name__}")
        self.info: Dict[str, Any] = info
        self.codebase_version = str(info.get("codebase_version", "v2.1"))
        self._major = codebase_major(info, info_path)
        if "fps" not in info:
            logger.warning("%s has no 'fps' field; using %d like GR00T's loader", info_path, DEFAULT_FPS)
        fps = info.get("fps", DEFAULT_FPS)
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0:
            raise DatasetError(f"{info_path}: field 'fps' must be a positive number, got {fps!r}")
        self._fps = fps
        self._modality = read_modality(meta_dir)
        features = info.get("features")
        if isinstance(features, dict):
            for group in self._modality.video.values():
                if group.original_key not in features:
                    raise DatasetError(
                        f"{info_path}: 'features' has no entry '{group.original_key}' for video key '{group.name}' "
                        f"(from meta/modality.json)"
                    )
        self.tasks: Dict[int, str] = read_tasks(meta_dir, self._major)
        # Cameras stored as images in the parquet rows (dtype "image", as many LIBERO/ALOHA conversions are) have no
        # mp4 to find: the episode list is read without them, and frames() refuses them by name. A replay never
        # reads cameras, so it serves such a dataset.
        self._image_cameras = {
            g.original_key for g in self._modality.video.values()
            if isinstance(features, dict) and isinstance(features.get(g.original_key), dict)
            and features[g.original_key].get("dtype") == "image"
        }
        video_columns = [g.original_key for g in self._modality.video.values() if g.original_key not in self._image_cameras]
        self._records: List[EpisodeRecord] = read_episodes(self.root, info, self._major, video_columns)
        self._by_index = {r.episode_index: r for r in self._records}
        if len(self._by_index) != len(self._records):
            raise DatasetError(f"{meta_dir}: episode list repeats an episode_index")
        self._check_segments_apart()
        # Each column's width as info.json declares it (features[...].shape [D]): an episode's column of another
        # width is refused when read, as LeRobot's schema refuses it at load (modality.json's slices of it would cut
        # the wrong values).
        self._declared_widths: Dict[str, int] = {
            key: int(feature["shape"][0]) for key, feature in features.items()
            if isinstance(feature, dict) and isinstance(feature.get("shape"), list) and len(feature["shape"]) == 1
            and isinstance(feature["shape"][0], int) and not isinstance(feature["shape"][0], bool)
        } if isinstance(features, dict) else {}
        self._stats: Optional[Dict[str, Any]] = None
        self._relative_stats: Optional[Dict[str, Any]] = None
        self._video_facts: Dict[Path, Any] = {}  # path -> (frame count, frame rate), read once per file
        self._frame_times: Dict[Path, Any] = {}  # path -> each frame's presentation time (video_frame_times), read once
        self.frames_decoded = 0
        logger.debug("opened %s: %d episodes, %s", self.root, len(self._records), self.codebase_version)

    def _check_segments_apart(self) -> None:
        """DatasetError when two episodes' video segments (v3.0) in one shared mp4 overlap: one of them would be given
        the other's frames, each span still its own length (LeRobot's aggregate wrote such metadata before
        huggingface/lerobot#2550). Read from the episode list alone, at open."""
        segments: Dict[Any, List[Any]] = {}
        for record in self._records:
            for column, segment in record.videos.items():
                if segment.to_timestamp is not None:
                    segments.setdefault((column, segment.path), []).append((segment.from_timestamp, segment.to_timestamp,
                                                                           record.episode_index))
        slack = 0.5 / self._fps  # half a frame: timestamps are floats
        for (column, path), spans in segments.items():
            spans.sort()
            for (start, end, episode), (next_start, next_end, next_episode) in zip(spans, spans[1:]):
                if next_start < end - slack:
                    raise DatasetError(
                        f"{self.root / 'meta' / 'episodes'}: the video segments of episode {episode} ({start:g}..{end:g} "
                        f"s) and episode {next_episode} ({next_start:g}..{next_end:g} s) overlap in {path} (camera "
                        f"'{column}'): one episode would be given the other's frames; each episode's segment of a "
                        "shared video must be its own"
                    )

    def check_data_files(self) -> None:
        """Read every data file's parquet footer: DatasetError naming the first file that is missing, unreadable
        (truncated, not parquet) or has fewer rows than the episode list gives its episodes. Reads no rows, so a
        server can run it at start-up instead of meeting a broken file at the request that needs it."""
        rows_needed: Dict[Path, List[EpisodeRecord]] = {}
        for record in self._records:
            rows_needed.setdefault(record.data_path, []).append(record)
        for path, records in rows_needed.items():
            episodes = ", ".join(str(r.episode_index) for r in records[:5]) + (", ..." if len(records) > 5 else "")
            require_file(path, f"data file of episode {episodes}")
            try:
                metadata = pq.read_metadata(path)
                rows = metadata.num_rows
            except (pa.ArrowInvalid, OSError) as exc:
                raise DatasetError(f"{path}: cannot read parquet (episode {episodes}): {exc}") from exc
            needed = sum(r.length for r in records)
            if rows < needed:
                raise DatasetError(f"{path}: {rows} rows, fewer than the {needed} the episode list gives episode {episodes}")
            names = set(metadata.schema.to_arrow_schema().names)
            for kind in ("state", "action"):
                for group in self._groups(kind).values():
                    if group.original_key not in names:
                        raise DatasetError(f"{path}: no column '{group.original_key}' (episode {episodes}), which "
                                           f"meta/modality.json reads {kind} key '{group.name}' from")

    # -- metadata ---------------------------------------------------------------------------------
    @property
    def fps(self) -> float:
        """Frames per second of the data and videos."""
        return self._fps

    @property
    def num_episodes(self) -> int:
        """Number of episodes in the episode list."""
        return len(self._records)

    def __len__(self) -> int:
        return len(self._records)

    @property
    def episode_indices(self) -> List[int]:
        """The `episode_index` of each episode, in list (position) order."""
        return [r.episode_index for r in self._records]

    @property
    def episode_lengths(self) -> List[int]:
        """Length of each episode from the metadata, in position order."""
        return [r.length for r in self._records]

    @property
    def modality(self) -> DatasetModality:
        """The parsed meta/modality.json."""
        return self._modality

    @property
    def video_keys(self) -> List[str]:
        """GR00T camera names (e.g. "image"), not the raw `observation.images.*` keys."""
        return list(self._modality.video)

    @property
    def state_keys(self) -> List[str]:
        """State keys as meta/modality.json names them (without a `state.` prefix)."""
        return list(self._modality.state)

    @property
    def action_keys(self) -> List[str]:
        """Action keys as meta/modality.json names them (without an `action.` prefix)."""
        return list(self._modality.action)

    @property
    def language_keys(self) -> List[str]:
        """Language keys with their `annotation.` prefix, e.g. "annotation.human.task_description"."""
        return list(self._modality.language)

    def state_dims(self) -> Dict[str, int]:
        """Each state key's width (its slice of observation.state)."""
        return {k: g.dim for k, g in self._modality.state.items()}

    def action_dims(self) -> Dict[str, int]:
        """Each action key's width (its slice of action)."""
        return {k: g.dim for k, g in self._modality.action.items()}

    def _load_stats(self) -> None:
        if self._stats is None:
            self._stats, self._relative_stats = read_stats(self.root / "meta")

    @property
    def stats(self) -> Dict[str, Any]:
        """meta/stats.json keyed by raw column (loaded on first use; '__fingerprints__' dropped)."""
        self._load_stats()
        return self._stats  # type: ignore[return-value]

    @property
    def relative_stats(self) -> Optional[Dict[str, Any]]:
        """meta/relative_stats.json when present, else None."""
        self._load_stats()
        return self._relative_stats

    def group_stats(self, kind: str, key: str) -> Dict[str, np.ndarray]:
        """Statistics of one state or action group, sliced from its raw column: {mean, std, min, max, q01, q99}."""
        groups = self._groups(kind)
        if key not in groups:
            raise KeyError(f"no {kind} key {key!r}; expected one of {list(groups)}")
        return group_stats(self.stats, groups[key], str(self.root / "meta" / "stats.json"))

    def _groups(self, kind: str) -> Mapping[str, ArrayGroup]:
        if kind not in ("state", "action"):
            raise ValueError(f"kind must be 'state' or 'action', got {kind!r}")
        return getattr(self._modality, kind)

    # -- episodes ---------------------------------------------------------------------------------
    def episode(self, position: int) -> "Episode":
        """The episode at `position` in the episode list (reads its parquet rows, no video)."""
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
            raise TypeError(f"episode position must be an int, got {position!r}")
        if not 0 <= position < len(self._records):
            raise IndexError(f"episode position {position} out of range; the dataset has {len(self._records)} episodes")
        return Episode(self, self._records[int(position)])

    def episode_extras(self, position: int) -> Dict[str, Any]:
        """Episode-level fields beyond LeRobot's own (e.g. "seed") of the episode at `position`, without reading its rows."""
        if not 0 <= int(position) < len(self._records):
            raise IndexError(f"episode position {position} out of range; the dataset has {len(self._records)} episodes")
        return dict(self._records[int(position)].extras)

    def episode_data_path(self, position: int) -> Path:
        """The parquet file holding the rows of the episode at `position`, without reading it."""
        if not 0 <= int(position) < len(self._records):
            raise IndexError(f"episode position {position} out of range; the dataset has {len(self._records)} episodes")
        return self._records[int(position)].data_path

    def episode_by_index(self, episode_index: int) -> "Episode":
        """The episode whose `episode_index` field is `episode_index`."""
        record = self._by_index.get(int(episode_index))
        if record is None:
            raise IndexError(f"no episode with episode_index {episode_index}; known: {self.episode_indices[:20]}")
        return Episode(self, record)

    def __iter__(self) -> Iterator["Episode"]:
        for position in range(len(self._records)):
            yield self.episode(position)

    def check_video(self, record: EpisodeRecord, column: str) -> None:
        """DatasetError when a camera's video cannot hold this episode's frames as its steps: a frame rate other than
        `fps` (step k would get the frame of another instant), a file of its own (v2.x) with more or fewer frames
        than the episode has steps (another episode's video?), or a segment (v3.0) whose span is not the episode's
        length (decoding would reach into the neighbouring episode's frames)."""
        segment = record.videos[column]
        if segment.path not in self._video_facts:
            self._video_facts[segment.path] = video_stream_facts(segment.path)
        count, rate = self._video_facts[segment.path]
        where = f"{segment.path} (camera '{column}', episode {record.episode_index})"
        if rate is not None and abs(rate - self._fps) > 0.01 * self._fps:
            raise DatasetError(f"{where}: the video runs at {rate:g} frames/s and meta/info.json says fps {self._fps:g}; "
                               "step k would show the frame of another instant")
        if segment.to_timestamp is not None:
            span = (segment.to_timestamp - segment.from_timestamp) * self._fps
            if abs(span - record.length) > 0.5:
                raise DatasetError(f"{where}: its video segment {segment.from_timestamp:g}..{segment.to_timestamp:g} s "
                                   f"holds {span:.1f} frames at {self._fps:g} fps and the episode has {record.length} "
                                   "steps; its frames would come from the neighbouring episode")
        elif count is not None and count != record.length:
            if abs(count - record.length) > 1:
                raise DatasetError(f"{where}: the video holds {count} frames and the episode has {record.length} steps "
                                   "(the video of another episode?)")
            logger.warning("%s: the video holds %d frames and the episode %d steps", where, count, record.length)

    def _decode_segment_frames(self, path: Path, from_timestamp: float, steps: Sequence[int]) -> np.ndarray:
        """Frames `steps` (0 = the segment's first) of the segment of a video that starts at `from_timestamp`: by the
        frames' own presentation times (video_frame_times), so that a 29.97 frames/s video under fps 30, a shared
        v3.0 file of such a video, a stream that does not start at time 0, or a frame that came late still give frame
        k for step k (times derived from fps drifted onto a neighbouring frame)."""
        if path not in self._frame_times:
            self._frame_times[path] = video_frame_times(path)
        times = self._frame_times[path]
        _count, rate = self._video_facts.get(path, (None, None))
        rate = rate or self._fps
        if times is None:  # packets without timestamps: the frames' grid on the video's clock
            first = int(round(from_timestamp * rate))
            wanted = [(first + int(k)) / rate for k in steps]
        else:
            # The segment's first frame, with from_timestamp measured from the file's first frame (as GR00T counts
            # frames by index): a video whose stream starts at 0.2 s otherwise gave a later episode of a shared v3.0
            # file two frames of the episode before it.
            origin = times[0] if len(times) else 0.0
            first = int(np.searchsorted(times, origin + from_timestamp - 0.5 / rate))
            last = first + max(int(k) for k in steps)
            if last >= len(times):
                raise DatasetError(f"{path}: the segment from {from_timestamp:g} s needs frame {last - first} of it, and "
                                   f"the video holds {len(times) - first} frames from there (video shorter than the "
                                   "episode?)")
            wanted = [times[first + int(k)] for k in steps]
        frames, decoded = decode_frames_at(path, wanted, rate)
        self.frames_decoded += decoded
        return frames


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
        by one, and `timestamp` stepping by 1/fps (timestamps()). Rows shuffled, repeated or missing in the file would
        otherwise be replayed and scored in file order without a word; LeRobot refuses such a dataset at load."""
        if "frame_index" in self.table.column_names and self.length > 1:
            steps = self.column("frame_index").reshape(-1)
            off = np.flatnonzero(np.diff(steps) != 1) if steps.dtype.kind in "iuf" else np.zeros(1, np.int64)
            if off.size:
                first = int(off[0])
                raise DatasetError(f"{self.record.data_path}: column 'frame_index' of episode {self.episode_index} goes "
                                   f"from {steps[first]} to {steps[first + 1]} at row {first + 1}; the rows of an "
                                   "episode must be its steps in order, each frame_index one more than the last")
        self.timestamps()

    def check_finite(self, kind: str, keys: Sequence[str], dtype: Any = np.float64) -> None:
        """DatasetError naming the file, column, row and key when a state or action group holds NaN or inf as `dtype`
        holds it: a recorded action with a hole would be replayed to a robot or scored against as if it were a number
        (np.float32, what a replay serves, also refuses a float64 recording's values beyond float32's range)."""
        for key in keys:
            values = self._group_array(kind, key, np.float64)
            with np.errstate(over="ignore"):
                bad = ~np.isfinite(values.astype(dtype))
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
        if values.dtype.kind in "iu":
            tasks = self._dataset.tasks
            unknown = sorted(set(int(v) for v in np.unique(values)) - set(tasks))
            if unknown:
                raise DatasetError(
                    f"{self.record.data_path}: column '{column}' holds task indices {unknown} that the task list lacks"
                )
            return [tasks[int(v)] for v in values]
        if values.dtype.kind in "OUS":
            return [str(v) for v in values]
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
        return self._dataset._decode_segment_frames(segment.path, segment.from_timestamp, steps.tolist())


def _read_episode_table(record: EpisodeRecord) -> pa.Table:
    path = record.data_path
    require_file(path, f"data file of episode {record.episode_index}")
    try:
        table = _scalar_columns(pq.read_table(path), path) if record.row_range is None else _shared_file_rows(record)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"{path}: cannot read parquet ({exc})") from exc
    if "episode_index" in table.column_names and table.num_rows:
        found = pc.unique(table.column("episode_index")).to_pylist()
        if found != [record.episode_index]:
            raise DatasetError(f"{path}: rows for episode {record.episode_index} carry episode_index values {found}")
    if table.num_rows < record.length:
        raise DatasetError(
            f"{path}: {table.num_rows} rows but the episode list says episode {record.episode_index} has length {record.length}"
        )
    if table.num_rows > record.length:
        logger.warning("%s: %d rows, episode length %d; using the first %d", path, table.num_rows, record.length, record.length)
        table = table.slice(0, record.length)
    return table


def _shared_file_rows(record: EpisodeRecord) -> pa.Table:
    """A v3.0 episode's rows of a data file it shares: its `index` range, else its `episode_index`."""
    path = record.data_path
    schema = pq.read_schema(path)
    if "index" in schema.names:
        start, stop = record.row_range
        column, keep = "index", (pc.field("index") >= start) & (pc.field("index") < stop)
    elif "episode_index" in schema.names:
        column, keep = "episode_index", pc.field("episode_index") == record.episode_index
    else:
        raise DatasetError(f"{path}: a multi-episode data file needs an 'index' or 'episode_index' column")
    if _is_list(schema.field(column).type):  # parquet filters cannot compare lists: read all, then pick
        return _scalar_columns(pq.read_table(path), path).filter(keep)
    return _scalar_columns(pq.read_table(path, filters=keep), path)


def _scalar_columns(table: pa.Table, path: Path) -> pa.Table:
    """`table` with LeRobot's scalar columns stored as 1-element lists (info.json's shape [1], as some converters
    write them) read as the scalars they are; DatasetError naming the file and column for lists of other lengths."""
    for name in SCALAR_COLUMNS:
        if name not in table.column_names or not _is_list(table.schema.field(name).type):
            continue
        column = table.column(name).combine_chunks()
        if pc.any(pc.not_equal(pc.fill_null(pc.list_value_length(column), 0), 1)).as_py():
            raise DatasetError(f"{path}: column '{name}' holds lists ({column.type}) not all one value long; it "
                               "must hold one number per row (a scalar, or a list of one)")
        table = table.set_column(table.column_names.index(name), name, pc.list_flatten(column))
    return table


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _column_to_numpy(column: pa.ChunkedArray, name: str, path: Path) -> np.ndarray:
    array = column.combine_chunks()
    if array.null_count:
        raise DatasetError(f"{path}: column '{name}' has {array.null_count} null cells")
    kind = array.type
    if _is_list(kind):
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        if lengths.size and (lengths != lengths[0]).any():
            raise DatasetError(f"{path}: column '{name}' has rows of different lengths {sorted(set(lengths.tolist()))[:5]}")
        flat = pc.list_flatten(array)
        if flat.null_count:  # numpy would make them NaN: a state or action with a hole, scored or replayed silently
            first = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0]) // max(int(lengths[0]), 1)
            raise DatasetError(f"{path}: column '{name}' has {flat.null_count} null values inside its rows "
                               f"(the first in row {first})")
        values = flat.to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if lengths.size else 0
        return values.reshape(len(array), width)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.asarray(array.to_pylist(), dtype=object)
    return array.to_numpy(zero_copy_only=False)
