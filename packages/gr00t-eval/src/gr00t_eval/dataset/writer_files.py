"""Where DatasetWriter puts an episode's parquet rows and mp4 frames: v2.1's files of their own per episode, or
v3.0's shared files that episodes fill in turn, and what a failed write takes back out of them."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np
import pyarrow as pa

from ..run_dir import remove_quietly
from . import parquet_files
from .video import Mp4Encoder

logger = logging.getLogger(__package__ + ".writer")  # DatasetWriter's logger: one name for all its records

V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
# Rows per row group of a v3.0 data file: a reader decodes whole row groups, so one episode's read costs the few
# holding it, not the file (one row group a file cost the whole file per episode)
V3_ROW_GROUP_ROWS = 10_000


@contextlib.contextmanager
def naming_file(path: Path) -> Iterator[None]:
    """An OSError that names no file re-raised as OSError(errno, strerror, `path`): a write that fails when the file
    is closed names none, and pyarrow's may give its errno only in its text ('... [errno 28] No space left ...')."""
    try:
        yield
    except OSError as exc:
        if exc.filename:
            raise
        code = exc.errno
        if code is None:
            found = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)
            code = int(found.group(1)) if found else None
        raise OSError(code, os.strerror(code) if code else str(exc), str(path)) from exc


class _EpisodeFiles:
    """DatasetWriter's data and video files (its `_file_*` state for v3.0, `_episode_files` for v2.1)."""

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
            with naming_file(partial[data_path]):
                parquet_files.write_table(table, partial[data_path])
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

    def _forget_v2_episode(self, recorded: Tuple[Any, ...]) -> None:
        """Undo a v2.1 episode add_episode did not finish: its files in data/ and videos/, and its values."""
        self._remove_v2_files(self._episode_files)
        self._restore_values(recorded)

    @staticmethod
    def _remove_v2_files(paths: Sequence[Path]) -> None:
        for path in paths:  # after an error: a delete refused too (read-only) never replaces it
            remove_quietly(path.with_name(f".partial-{path.name}"))
            remove_quietly(path)

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
        with naming_file(path):
            parquet_files.write_table(pa.concat_tables(self._file_tables), path, row_group_size=V3_ROW_GROUP_ROWS)
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
