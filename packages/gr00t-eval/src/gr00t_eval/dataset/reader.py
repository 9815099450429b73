"""LeRobotDataset: lazy, read-only access to a LeRobot v2.x / v3.0 dataset through GR00T's modality.json."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np
import pyarrow as pa

from gr00t_client.cli_flags import home_expanded_path

from . import parquet_files
from .episode import Episode
from .errors import DatasetError, DatasetFileNotFoundError, require_file
from .meta import (EpisodeRecord, VideoSegment, check_layout_declared, codebase_major, declared_frame_size,
                   read_episodes, read_json, read_modality, read_stats, read_tasks)
from .modality import ArrayGroup, DatasetModality
from .stats import group_stats
from .tables import forget_row_groups
from .video import VideoDecoder
from .video_facts import VideoFacts, video_stream_facts

logger = logging.getLogger(__name__)

DEFAULT_FPS = 30
# Each step's interval starts this many frame intervals before its time (pts rounding): a frame up to nine tenths of an
# interval late stays its step's (1e-6: a pts rounded to its time base exactly nine tenths late is no later)
_STEP_EARLY = 0.1 - 1e-6
# The frames on either side of each frame whose offsets from the video's cadence are compared (their medians): a frame
# inserted or dropped shifts every later one by an interval, where jitter and a lone late frame move one
_PACE_WINDOW = 5
_SHIFTED = 0.95  # intervals: a frame inserted or dropped moves the frames after it by one, a late frame by less


def dataset_root(path: Union[str, Path]) -> Path:
    """The dataset folder `path` names, found once, as a checkpoint folder is: '~' expanded, the folders above it
    resolved (a relative `../ds` no longer resolved once the working folder it was given from was renamed or removed),
    its own name kept (a `ds` link re-pointed to another recording is then still seen as a change)."""
    given = Path(home_expanded_path(path))
    if given.name in ("", "..", "."):
        return Path(os.path.realpath(given))
    return Path(os.path.realpath(given.parent)) / given.name


def _check_meta_commit_whole(meta_dir: Path) -> None:
    """DatasetError when meta/ holds the leftovers of a rewrite stopped part-way through its renames (kill -9): a kept
    `.NAME.prev` whose staged `.NAME.tmp` was renamed into place beside another `.NAME.tmp` still waiting, so some
    meta files are the new ones and some the old (stats.json counting an episode episodes.jsonl does not list). Earlier
    `gr00t-eval record` versions staged them as visible `NAME.tmp` / `NAME.prev`: both spellings count."""
    if not meta_dir.is_dir():
        return
    leftovers = [path for path in meta_dir.rglob("*") if path.suffix in (".tmp", ".prev")
                 and _writers_meta_file(path, meta_dir)]  # one walk: a v3.0 meta/episodes/ may hold many files
    staged = [path for path in leftovers if path.suffix == ".tmp"]
    renamed = [path for path in leftovers if path.suffix == ".prev"
               and not path.with_name(path.name[:-len(".prev")] + ".tmp").exists()]
    if staged and renamed:
        left = ", ".join(sorted(str(path.relative_to(meta_dir)) for path in [*staged, *renamed]))
        raise DatasetError(f"{meta_dir} holds {left}: the leftovers of a rewrite of meta/ stopped part-way (the writer "
                           "killed), so some of its files are the new ones and some the old, and its statistics may "
                           "count an episode its episode list does not; record the dataset again (gr00t-eval record "
                           "--overwrite into this folder deletes these files)")


# The meta files a dataset writer rewrites (v2.1 and v3.0); v3.0's episode lists are parquet files under meta/episodes/.
_WRITTEN_META_FILES = frozenset({"info.json", "episodes.jsonl", "stats.json", "tasks.jsonl", "episodes_stats.jsonl",
                                 "modality.json", "tasks.parquet"})


def _writers_meta_file(path: Path, meta_dir: Path) -> bool:
    """`path` is a staged or kept copy of a meta file the writer rewrites (`.NAME.tmp`, `NAME.prev`, ...): a user's
    `notes/draft.tmp` or a `sed -i.prev` backup of a file the writer never stages is none."""
    base = path.name[:-len(path.suffix)]
    base = base[1:] if base.startswith(".") else base
    episodes_list = path.parent.relative_to(meta_dir).parts[:1] == ("episodes",) and base.endswith(".parquet")
    return path.is_file() and ((path.parent == meta_dir and base in _WRITTEN_META_FILES) or episodes_list)


class LeRobotDataset:
    """A LeRobot dataset with GR00T's meta/modality.json. Reads metadata only; episodes load on demand.

    `dataset.episode(pos)` indexes by position in the episode list (as GR00T does),
    `dataset.episode_by_index(i)` by the `episode_index` field. `frames_decoded` counts every video
    frame decoded through this object (to check that only the frames asked for are decoded).
    """

    def __init__(self, path: Union[str, Path]) -> None:
        # '~' is the home folder, as DatasetWriter writes it; on the text: Path() drops the './' of './~/ds', a folder
        # named '~'. Found once (dataset_root): every file is read through the folder it named at start.
        self.root = dataset_root(path)
        if not self.root.is_dir():
            raise DatasetFileNotFoundError(f"dataset directory not found: {home_expanded_path(path)}")
        meta_dir = self.root / "meta"
        _check_meta_commit_whole(meta_dir)
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
        # NaN (which Python's json reads) passed `fps <= 0`, and then every check against fps passed too
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise DatasetError(f"{info_path}: field 'fps' must be a positive finite number, got {fps!r}")
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
        check_layout_declared(meta_dir, info, self._major)  # before the first file of the layout declared is missed
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
        # Built once: the episode list does not change after load, and a replay reads them per row of every request
        self._episode_indices = [r.episode_index for r in self._records]
        self._episode_lengths = [r.length for r in self._records]
        if len(self._by_index) != len(self._records):
            raise DatasetError(f"{meta_dir}: episode list repeats an episode_index")
        self._check_segments_apart()
        self._segments, self._file_spans = self._index_segments()
        # Each column's width as info.json declares it (features[...].shape [D]): an episode's column of another
        # width is refused when read, as LeRobot's schema refuses it at load (modality.json's slices of it would cut
        # the wrong values).
        self._declared_widths: Dict[str, int] = {
            key: int(feature["shape"][0]) for key, feature in features.items()
            if isinstance(feature, dict) and isinstance(feature.get("shape"), list) and len(feature["shape"]) == 1
            and isinstance(feature["shape"][0], int) and not isinstance(feature["shape"][0], bool)
        } if isinstance(features, dict) else {}
        # Each camera's (height, width) as info.json declares it: a video of another size is another camera's.
        self._declared_sizes: Dict[str, Tuple[int, int]] = {
            key: size for key, feature in features.items() if (size := declared_frame_size(feature)) is not None
        } if isinstance(features, dict) else {}
        self._stats: Optional[Dict[str, Any]] = None
        self._relative_stats: Optional[Dict[str, Any]] = None
        self._video_facts: Dict[Path, VideoFacts] = {}  # path -> video_stream_facts, read once per file
        # Each camera's decoder, kept open while its file is read (consecutive windows of an episode, the episodes of
        # a shared v3.0 file) and closed when another file of the camera is read, or at close()
        self._decoders: Dict[str, VideoDecoder] = {}
        self._first_file_widths: Dict[str, Optional[Tuple[int, str]]] = {}  # column -> _first_file_width, read once
        self._frames_checked: Set[Tuple[str, int]] = set()  # (video of an episode, steps) whose frame times passed
        # (shared v3.0 file, segment's from_timestamp) -> its first frame, once its frame times passed (as the file's
        # facts, read once per file): every frames() call read them again (a long open-loop's every window of frames)
        self._segment_first_frames: Dict[Tuple[Path, float], int] = {}
        self.frames_decoded = 0
        logger.debug("opened %s: %d episodes, %s", self.root, len(self._records), self.codebase_version)

    def _check_segments_apart(self) -> None:
        """DatasetError when two episodes' video segments (v3.0) in one shared mp4 overlap: one of them would be given
        the other's frames, each span still its own length (LeRobot's aggregate wrote such metadata before
        huggingface/lerobot#2550). Read from the episode list alone, at open."""
        segments: Dict[Path, List[Any]] = {}  # by file alone: a template may give two cameras one file
        for record in self._records:
            for column, segment in record.videos.items():
                if segment.to_timestamp is not None:
                    segments.setdefault(segment.path, []).append((segment.from_timestamp, segment.to_timestamp,
                                                                  record.episode_index, column))
        slack = 0.5 / self._fps  # half a frame: timestamps are floats
        for path, spans in segments.items():
            spans.sort()
            for (start, end, episode, column), (next_start, next_end, next_episode, next_column) in zip(spans, spans[1:]):
                if next_start < end - slack:
                    cameras = f"camera '{column}'" if column == next_column else f"cameras '{column}' and '{next_column}'"
                    raise DatasetError(
                        f"{self.root / 'meta' / 'episodes'}: the video segments of episode {episode} ({start:g}..{end:g} "
                        f"s) and episode {next_episode} ({next_start:g}..{next_end:g} s) overlap in {path} ({cameras}): "
                        "one episode would be given the other's frames; each episode's segment of a shared video must "
                        "be its own"
                    )

    def _index_segments(self) -> Tuple[Dict[Tuple[Path, float], Tuple[EpisodeRecord, VideoSegment, Optional[int]]],
                                       Dict[Path, Tuple[float, float]]]:
        """Each v3.0 video segment by (file, from_timestamp): its episode, the segment, and the frames of the file
        before it, the steps of the episodes before it in the file where their segments fill it from its start
        without a gap; None after a gap (the frames of an episode the list leaves out may lie there). And each shared
        file's (first from_timestamp, last to_timestamp) of its segments."""
        by_file: Dict[Path, List[Tuple[VideoSegment, EpisodeRecord]]] = {}
        for record in self._records:
            for segment in record.videos.values():
                if segment.to_timestamp is not None:
                    by_file.setdefault(segment.path, []).append((segment, record))
        slack = 0.5 / self._fps  # half a frame: timestamps are floats
        index: Dict[Tuple[Path, float], Tuple[EpisodeRecord, VideoSegment, Optional[int]]] = {}
        spans: Dict[Path, Tuple[float, float]] = {}
        for path, segments in by_file.items():
            segments.sort(key=lambda pair: pair[0].from_timestamp)
            spans[path] = (segments[0][0].from_timestamp, max(s.to_timestamp for s, _ in segments))  # type: ignore
            frames_before: Optional[int] = 0
            end = 0.0
            for segment, record in segments:
                if frames_before is not None and abs(segment.from_timestamp - end) > slack:
                    frames_before = None
                index[(path, segment.from_timestamp)] = (record, segment, frames_before)
                if frames_before is not None:
                    frames_before += record.length
                end = segment.to_timestamp  # type: ignore[assignment]
        return index, spans

    def check_data_files(self) -> None:
        """Read every data file's parquet footer: DatasetError naming the first file that is missing, unreadable
        (truncated, not parquet), has fewer rows than the episode list gives its episodes or a column narrower than a
        meta/modality.json slice of it (its width from the schema's fixed_size_list, else from the first row of the
        first file), and first a slice past its column's meta/info.json width. Reads no other rows, so a server can
        run it at start-up instead of meeting a broken file at the request that needs it."""
        for kind in ("state", "action"):
            for group in self._groups(kind).values():
                width = self._declared_widths.get(group.original_key)
                if width is not None and group.end > width:  # every episode's read of the key would be refused
                    columns = _slice_text(group)
                    raise DatasetError(
                        f"{self.root / 'meta' / 'modality.json'}: {kind} key '{group.name}' reads {columns} of column "
                        f"'{group.original_key}', which {self.root / 'meta' / 'info.json'} declares {width} values wide "
                        f"(features.{group.original_key}.shape [{width}]); expected a slice within [0:{width}]"
                    )
        rows_needed: Dict[Path, List[EpisodeRecord]] = {}
        first_row_widths: Dict[str, Tuple[int, Path]] = {}  # list columns' widths, from the first file with a row
        for record in self._records:
            rows_needed.setdefault(record.data_path, []).append(record)
        for path, records in rows_needed.items():
            episodes = ", ".join(str(r.episode_index) for r in records[:5]) + (", ..." if len(records) > 5 else "")
            require_file(path, f"data file of episode {episodes}")
            try:
                metadata = parquet_files.read_metadata(path)
                rows = metadata.num_rows
            except (pa.ArrowInvalid, OSError) as exc:
                raise DatasetError(f"{path}: cannot read parquet (episode {episodes}): {exc}") from exc
            needed = sum(r.length for r in records)
            if rows < needed:
                raise DatasetError(f"{path}: {rows} rows, fewer than the {needed} the episode list gives episode {episodes}")
            schema = metadata.schema.to_arrow_schema()
            for kind in ("state", "action"):
                for group in self._groups(kind).values():
                    if group.original_key not in schema.names:
                        raise DatasetError(f"{path}: no column '{group.original_key}' (episode {episodes}), which "
                                           f"meta/modality.json reads {kind} key '{group.name}' from")
                    # Without info.json's shape (or with a wider one), every reset of every episode was refused
                    width, source = _column_width(path, schema.field(group.original_key).type, group.original_key,
                                                  first_row_widths)
                    if width is not None and group.end > width:
                        raise DatasetError(
                            f"{path}: {kind} key '{group.name}' (meta/modality.json) reads {_slice_text(group)} of "
                            f"column '{group.original_key}', which holds {width} values per step ({source}; episode "
                            f"{episodes}); expected a slice within [0:{width}]"
                        )

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
        """The `episode_index` of each episode, in list (position) order (one list, built at load: do not change it)."""
        return self._episode_indices

    @property
    def episode_lengths(self) -> List[int]:
        """Length of each episode from the metadata, in position order (one list, built at load: do not change it)."""
        return self._episode_lengths

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
        return Episode(self, self._records[self._position(position)])

    def episode_extras(self, position: int) -> Dict[str, Any]:
        """Episode-level fields beyond LeRobot's own (e.g. "seed") of the episode at `position`, without reading its rows."""
        return dict(self._records[self._position(position)].extras)

    def episode_data_path(self, position: int) -> Path:
        """The parquet file holding the rows of the episode at `position`, without reading it."""
        return self._records[self._position(position)].data_path

    def _position(self, position: Any) -> int:
        """`position` as an index into the episode list: TypeError for a bool or float (int() made 1.7 episode 1),
        IndexError out of range."""
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
            raise TypeError(f"episode position must be an int, got {position!r}")
        if not 0 <= position < len(self._records):
            raise IndexError(f"episode position {position} out of range; the dataset has {len(self._records)} episodes")
        return int(position)

    def episode_by_index(self, episode_index: int) -> "Episode":
        """The episode whose `episode_index` field is `episode_index`."""
        if isinstance(episode_index, bool) or not isinstance(episode_index, (int, np.integer)):
            raise TypeError(f"episode_index must be an int, got {episode_index!r}")
        record = self._by_index.get(int(episode_index))
        if record is None:
            raise IndexError(f"no episode with episode_index {episode_index}; known: {self.episode_indices[:20]}")
        return Episode(self, record)

    def __iter__(self) -> Iterator["Episode"]:
        for position in range(len(self._records)):
            yield self.episode(position)

    def check_video(self, record: EpisodeRecord, column: str) -> None:
        """DatasetError when a camera's video cannot hold this episode's frames as its steps: a frame rate other than
        `fps` (step k would get the frame of another instant), a display matrix other than the identity (players show
        the frames turned, flipped or mirrored),
        a frame size other than info.json declares (another camera's video?), a file with fewer frames than its header
        declares (cut short), a file of its own (v2.x) whose frames are not one per step by their times or whose count
        is not the steps' (another episode's video?), or a segment (v3.0) whose span is not the episode's length
        (decoding would reach into the neighbouring episode's frames)."""
        segment = record.videos[column]
        facts = self._facts(segment.path)
        rate = facts.rate
        where = _video_where(segment.path, column, record.episode_index)
        if facts.declared_frames is not None and facts.packets < facts.declared_frames:
            raise DatasetError(f"{where}: the file holds {facts.packets} of the {facts.declared_frames} frames its header "
                               "declares: cut short (an interrupted copy or download?); copy or re-download it")
        if rate is not None and abs(rate - self._fps) > 0.01 * self._fps:
            raise DatasetError(f"{where}: the video runs at {rate:g} frames/s and meta/info.json says fps {self._fps:g}; "
                               "step k would show the frame of another instant")
        if facts.display is not None:
            raise DatasetError(f"{where}: the video's display matrix {facts.display}, as players show them, and this "
                               "reader decodes the frames as stored; re-encode the video without the matrix (with what "
                               "it does applied to the pixels, as `ffmpeg -i IN.mp4 -c:v libx264 -pix_fmt yuv420p "
                               "OUT.mp4` does)")
        declared = self._declared_sizes.get(column)
        if declared is not None and declared != (facts.height, facts.width):
            raise DatasetError(f"{where}: its frames are {facts.height}x{facts.width} (height x width) and "
                               f"meta/info.json declares {declared[0]}x{declared[1]} for this camera (the video of "
                               "another camera?)")
        if segment.to_timestamp is not None:
            span = (segment.to_timestamp - segment.from_timestamp) * self._fps
            if abs(span - record.length) > 0.5:
                raise DatasetError(f"{where}: its video segment {segment.from_timestamp:g}..{segment.to_timestamp:g} s "
                                   f"holds {span:.1f} frames at {self._fps:g} fps and the episode has {record.length} "
                                   "steps; its frames would come from the neighbouring episode")
        else:
            self._check_own_video_frames(where, facts, record.length)

    def _check_own_video_frames(self, where: str, facts: VideoFacts, length: int) -> None:
        """DatasetError where an episode's video of its own (v2.x) does not show one frame per step, by the frames'
        times as v3.0 segments are checked (_check_frames_keep_pace: a frame dropped, inserted or repeated), or holds
        another count of frames than the steps, but for one trailing frame after the last step's time."""
        times = facts.frame_times
        if times is not None and (where, length) not in self._frames_checked:
            # Steps pair with frames by index in a file of its own, so its frames are held to their own cadence: at
            # fps, a 29.97 frames/s video drifted a frame after 900 steps and was refused as dropping one
            self._check_frames_keep_pace(where, times, _frames_cadence(times) or facts.rate or self._fps)
            self._frames_checked.add((where, length))
        if facts.frames not in (length, length + 1):
            raise _frame_count_error(where, "the video", facts.frames, length,
                                     f"{length} frames, or {length + 1} with one trailing the last step")

    def _step_frame_bounds(self, times: Sequence[float], start: float, length: int) -> np.ndarray:
        """Index in `times` of the first frame shown in each step's interval, and of the first after the last step's:
        step k's interval runs from k/fps after `start` to (k+1)/fps, both _STEP_EARLY of an interval earlier."""
        return np.searchsorted(times, start + (np.arange(length + 1) - _STEP_EARLY) / self._fps)

    def _check_frames_keep_pace(self, where: str, times: Sequence[float], rate: float, first: int = 0) -> None:
        """DatasetError naming the frame where a video's frames (`times`, its frames `first`... paired with steps by
        index) step a whole interval off their cadence `rate`: from there on an interval earlier than before it (a frame
        inserted or repeated: each later step got the frame of the step before) or later (one dropped: the next
        step's). Judged by the median offset of the _PACE_WINDOW frames on either side of each frame (fewer at the
        ends), never by an origin those frames set, so jitter, a lone late frame and frames that all come up to nine
        tenths of an interval late from some frame on (a pause in a variable-frame-rate recording) pass, at the start
        of a video too; the frame named is the first of the new run off by half an interval or more."""
        if len(times) < 2:
            return
        offsets = (np.asarray(times, dtype=np.float64) - times[0]) * rate - np.arange(len(times))
        gap = np.full(_PACE_WINDOW - 1, np.nan)
        windows = np.lib.stride_tricks.sliding_window_view
        up_to = np.nanmedian(windows(np.concatenate([gap, offsets]), _PACE_WINDOW), axis=1)  # frames k-4..k
        from_on = np.nanmedian(windows(np.concatenate([offsets, gap]), _PACE_WINDOW), axis=1)  # frames k..k+4
        steps = from_on[1:] - up_to[:-1]  # at frame k: the frames from it on against those before it
        breaks = np.flatnonzero(np.abs(steps) >= _SHIFTED)
        if not breaks.size:
            return
        frame = int(breaks[0]) + 1
        before, early = up_to[frame - 1], bool(steps[breaks[0]] < 0)
        while (before - offsets[frame] if early else offsets[frame] - before) < 0.5:  # the window may start before it
            frame += 1
        pace = (f"fps {self._fps:g} (meta/info.json)" if abs(rate - self._fps) <= 1e-4 * self._fps
                else f"the {rate:.6g} frames/s its frames are shown at (fps {self._fps:g} in meta/info.json)")
        at = f"its frame {first + frame} is shown at {times[frame]:.6g} s"
        if frame > 0:
            gap = (times[frame] - times[frame - 1]) * rate
            at += f", {gap:.2f} frame intervals after frame {first + frame - 1} ({times[frame - 1]:.6g} s)"
        if early:
            raise DatasetError(f"{where}: {at}, and the frames from it on come an interval early at {pace}; expected "
                               f"one frame every interval (a frame inserted or repeated there gives step {frame} and "
                               "every later step the frame of the step before its own)")
        raise DatasetError(f"{where}: {at} at {pace}; expected one frame every interval (a frame dropped there gives "
                           f"step {frame} and every later step another step's frame)")

    def _decode_segment_frames(self, column: str, path: Path, from_timestamp: float, steps: Sequence[int]) -> np.ndarray:
        """Frames `steps` (0 = the segment's first) of the segment of a video that starts at `from_timestamp`: by the
        frames' own presentation times (video_stream_facts), so that a 29.97 frames/s video under fps 30, a shared
        v3.0 file of such a video (its segments also counted by the steps of the episodes before them), a stream that
        does not start at time 0, or a frame that came late still give frame k for step k (times derived from fps
        drifted onto a neighbouring frame). Camera `column`'s decoder goes on from the frames it decoded last."""
        facts = self._facts(path)
        times = facts.frame_times
        rate = facts.rate or self._fps
        if times is None:  # packets without timestamps: the frames' grid on the video's clock
            first = int(round(from_timestamp * rate))
            wanted = [(first + int(k)) / rate for k in steps]
        else:
            first = self._segment_first_frame(column, path, from_timestamp, times, rate)
            last = first + max(int(k) for k in steps)
            if last >= len(times):
                raise DatasetError(f"{path}: the segment from {from_timestamp:g} s needs frame {last - first} of it, and "
                                   f"the video holds {len(times) - first} frames from there (video shorter than the "
                                   "episode?)")
            wanted = [times[first + int(k)] for k in steps]
        frames, decoded = self._decoder(column, path, facts, rate).frames_at(wanted)
        self.frames_decoded += decoded
        return frames

    def _decoder(self, column: str, path: Path, facts: VideoFacts, rate: float) -> VideoDecoder:
        """Camera `column`'s decoder of `path`: the one open when it reads that file still, else a new one."""
        decoder = self._decoders.get(column)
        if decoder is None or decoder.path != path:
            if decoder is not None:
                decoder.close()
            decoder = self._decoders[column] = VideoDecoder(path, rate, facts.keyframe_times, facts.frame_times)
        return decoder

    def close(self) -> None:
        """Close the video files kept open for the next frames, and drop the data rows kept for the next episode; a
        later read opens them again."""
        decoders, self._decoders = self._decoders, {}
        for decoder in decoders.values():
            decoder.close()
        forget_row_groups()

    def __enter__(self) -> "LeRobotDataset":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _segment_first_frame(self, column: str, path: Path, from_timestamp: float, times: List[float],
                             rate: float) -> int:
        """Index in `times` of the first frame of the segment that starts at `from_timestamp`. DatasetError naming the
        file, camera `column` and episode where a v3.0 segment does not show as many frames as its episode has steps,
        or starts at another frame than the steps of the episodes before it in the file count. Checked once per segment
        of a file (its times are read once per file); a refused one is checked, and refused, again on every read."""
        found = self._segments.get((path, from_timestamp))
        if found is None:  # a file of its own (v2.x): its first frame, as GR00T counts its frames by index (the frame
            return 0  # nearest an origin its first frames set skipped frame 0 where they paused within the first nine)
        first = self._segment_first_frames.get((path, from_timestamp))
        if first is None:
            first = self._checked_segment_first_frame(column, path, times, rate, found)
            self._segment_first_frames[(path, from_timestamp)] = first
        return first

    def _checked_segment_first_frame(self, column: str, path: Path, times: List[float], rate: float,
                                     found: Tuple[EpisodeRecord, VideoSegment, Optional[int]]) -> int:
        """_segment_first_frame of the v3.0 segment `found` (its episode, the segment, the frames before it in the
        file), found by checking its frames' times: DatasetError where they do not hold one frame per step."""
        record, segment, frames_before = found
        # from_timestamp is measured from the file's first frame (as GR00T counts frames by index) on the frames' grid,
        # not from times[0]: a stream starting at 0.2 s gave a later episode two frames of the one before it, and a
        # first frame that came late shifted every later segment by one.
        start = _frames_origin(times, rate) + segment.from_timestamp
        where = _video_where(path, column, record.episode_index)
        self._check_segments_within_file(where, path, times, rate)
        # The segment's frames are those shown in its steps' intervals (_step_frame_bounds; its span, checked against
        # the steps by check_video, within half a frame of theirs): a frame up to nine tenths of an interval late (one
        # that came late, or a 29.97 frames/s video drifting from segments written at fps 30) stays in its own segment.
        # A frame missing inside it moved its later steps onto the next frame and its last onto the next episode's
        # first, within the 1% rate check.
        bounds = self._step_frame_bounds(times, start, record.length)
        first, end = int(bounds[0]), int(bounds[-1])
        span = f"{segment.from_timestamp:g}..{segment.to_timestamp:g} s"
        if end - first != record.length:  # a frame dropped, repeated or shown late
            raise _frame_count_error(where, f"its video segment {span}", end - first, record.length,
                                     f"{record.length} frames, one per step (step k would show another step's frame, "
                                     "or another episode's)")
        if frames_before is not None and first != frames_before:
            # By time alone, a segment whose frames all lie over nine tenths of a frame behind its times (a 29.97
            # frames/s file whose segments were written at fps 30, some 900 frames in) was read a frame off.
            raise DatasetError(f"{where}: its video segment {span} starts at frame {first} of the file by the frames' "
                               f"times, and the episodes before it in the file have {frames_before} steps (a frame "
                               f"dropped or repeated before it, or a video whose rate drifts from fps {self._fps:g}): "
                               "which frame is its step 0 cannot be told")
        # As many frames as steps, one inserted and one dropped (or lost at its end): step k got another step's frame
        shown = times[first:end]
        self._check_frames_keep_pace(where, shown, _frames_cadence(shown) or rate, first)
        return first

    def _check_segments_within_file(self, where: str, path: Path, times: List[float], rate: float) -> None:
        """DatasetError for every episode of a shared v3.0 file whose segments start after its first frame and end
        past its last: segment times all some frames late (as a converter counting the first frame at 1/fps writes
        them) gave each episode but the last the next step's frames, the gap before the first read as an episode the
        list leaves out."""
        first_start, last_end = self._file_spans[path]
        overrun = last_end * self._fps - len(times) * self._fps / rate  # frames the segments need past the file's end
        if first_start * self._fps > 0.5 and overrun > 0.5:
            raise DatasetError(f"{where}: the video segments of the episodes in this "
                               f"file start at {first_start:g} s, {first_start * self._fps:.1f} frames after its first "
                               f"frame, and end at {last_end:g} s, {overrun:.1f} frames past its last ({len(times)} "
                               f"frames at fps {self._fps:g}); expected segments within the file's frames: their times "
                               "look late by that offset, and step k would show a later step's frame")

    def _first_file_width(self, column: str) -> Optional[Tuple[int, str]]:
        """A state or action column's values per step in the first episode's data file, and that file (its width read
        as check_data_files reads it), the width every episode's column must have where meta/info.json declares none;
        None where it cannot be told (no rows, no list of numbers, a file that cannot be read)."""
        if column not in self._first_file_widths:
            path = self._records[0].data_path if self._records else None
            try:
                field = parquet_files.read_schema(path).field(column) if path is not None else None
                width = _column_width(path, field.type, column, {}) if field is not None else (None, "")
            except (pa.ArrowInvalid, OSError, KeyError, DatasetError):
                width = (None, "")  # the episode's own read names what is wrong with the file
            self._first_file_widths[column] = (width[0], str(path)) if width[0] is not None else None
        return self._first_file_widths[column]

    def _facts(self, path: Path) -> VideoFacts:
        if path not in self._video_facts:
            self._video_facts[path] = video_stream_facts(path)
        return self._video_facts[path]


def _video_where(path: Path, column: str, episode_index: int) -> str:
    """How a video error names what it is about: the file, the camera and the episode."""
    return f"{path} (camera '{column}', episode {episode_index})"


def _frame_count_error(where: str, holder: str, found: int, length: int, expected: str) -> DatasetError:
    """DatasetError: `holder` (an episode's video of its own, or its segment of a shared one) holds `found` frames for
    an episode of `length` steps; `expected` says how many it should hold."""
    if abs(found - length) > 1:
        hint = "(the video of another episode?)"
    else:
        hint = "(a frame dropped?)" if found < length else "(a frame repeated or inserted?)"
    return DatasetError(f"{where}: {holder} holds {found} frames and the episode has {length} steps {hint}; expected "
                        f"{expected}")


def _frames_cadence(times: Sequence[float]) -> Optional[float]:
    """The rate a video's frames are shown at (frames/s), from their times: the median over every span of a quarter
    of the frames, so one frame inserted, dropped or late leaves it exact and pts rounded to a coarse clock (33, 34,
    33 ms) average out; None for fewer than two frames or no time between them."""
    span = (len(times) - 1) // 4 or 1
    if len(times) < 2:
        return None
    seconds = float(np.median(np.asarray(times[span:], dtype=np.float64) - np.asarray(times[:-span], dtype=np.float64)))
    return span / seconds if seconds > 0 else None


def _frames_origin(times: Sequence[float], rate: float) -> float:
    """Where a video's frames' grid at `rate` starts: the median offset of its first (up to nine) frames' times from a
    grid starting at 0, so a stream starting at 0.2 s counts from there and a first frame that came late does not."""
    head = min(len(times), 9)
    return float(np.median(np.asarray(times[:head]) - np.arange(head) / rate)) if head else 0.0


def _slice_text(group: ArrayGroup) -> str:
    """The values a modality group reads of its column, as an error names them."""
    return f"indices {list(group.indices)}" if group.indices is not None else f"[{group.start}:{group.end}]"


def _column_width(path: Path, column_type: pa.DataType, column: str,
                  first_row_widths: Dict[str, Tuple[int, Path]]) -> Tuple[Optional[int], str]:
    """A data file column's values per step and where that was read: a fixed_size_list's size, 1 for a number per
    step, else (a variable list) the length of the first row of the first file with one, kept in `first_row_widths`;
    (None, "") when neither tells (no rows yet, or no list of numbers)."""
    if pa.types.is_fixed_size_list(column_type):
        return column_type.list_size, f"its parquet schema: fixed_size_list of {column_type.list_size}"
    if pa.types.is_integer(column_type) or pa.types.is_floating(column_type):
        return 1, "its parquet schema: one number per step"
    if not (pa.types.is_list(column_type) or pa.types.is_large_list(column_type)):
        return None, ""
    if column not in first_row_widths:
        try:
            with parquet_files.parquet_file(path) as parquet:
                batch = next(parquet.iter_batches(batch_size=1, columns=[column]), None)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(f"{path}: cannot read the first row of column '{column}': {exc}") from exc
        first = batch.column(0)[0].as_py() if batch is not None and batch.num_rows else None
        if not isinstance(first, list):
            return None, ""
        first_row_widths[column] = len(first), path
    width, read_from = first_row_widths[column]
    return width, f"its first row in {read_from}"
