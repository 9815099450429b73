"""Rollout videos: camera views side by side, task and outcome written in a band under the frame (PyAV mp4)."""

from __future__ import annotations

import collections.abc
import contextlib
import logging
import os
import re
import tempfile
import textwrap
from fractions import Fraction
from pathlib import Path
from typing import IO, List, Mapping, Optional, Sequence, Tuple, Union

import av
import numpy as np

from .run_claim import partial_path
from .run_dir import remove_quietly

logger = logging.getLogger(__name__)

CAPTION_HEIGHT = 48
# Raw frames an episode's recorder holds in memory; later ones wait in a temporary file beside the video (the caption
# names the outcome, so no frame can be encoded before the episode ends).
FRAME_MEMORY_BUDGET_BYTES = 64 * 2**20
# A rollout episode's video: episode_<index, 4+ digits>_<success|failure|error>.mp4 (episode_video_name).
EPISODE_OUTCOMES = ("success", "failure", "error")
EPISODE_VIDEO_NAME = re.compile(rf"episode_(?P<index>[0-9]{{4,}})_(?P<outcome>{'|'.join(EPISODE_OUTCOMES)})\.mp4")


def episode_outcome(success: bool, errored: bool = False) -> str:
    """How an episode ended, as its video's name and caption say it: error (unscored), success or failure."""
    return "error" if errored else "success" if success else "failure"


def episode_video_name(episode_index: int, success: bool, errored: bool = False) -> str:
    """The file name (without .mp4) of a rollout episode's video, e.g. episode_0007_success; an errored episode's,
    which is neither a success nor a failure, e.g. episode_0007_error."""
    return f"episode_{episode_index:04d}_{episode_outcome(success, errored)}"


def episode_videos(video_dir: Union[str, Path], skip: Optional[Path] = None) -> List[Path]:
    """The rollout episode videos in `video_dir`: files named like episode_video_name there or in a folder one level
    down (a task's folder when a run has several tasks), `skip` (a folder) left out. Other files are not listed."""
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        return []
    folders = [video_dir] + sorted(p for p in video_dir.iterdir() if p.is_dir() and not p.is_symlink()
                                   and (skip is None or p.resolve() != skip.resolve()))
    return [path for folder in folders for path in sorted(folder.iterdir())
            if EPISODE_VIDEO_NAME.fullmatch(path.name) and (path.is_file() or path.is_symlink())]


def tile_views(views: Sequence[np.ndarray], names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Concatenate uint8 (H, W, 3) camera views horizontally, scaling each (nearest) to the tallest height; `names`
    (the views' keys) name a view of another shape in the error."""
    if not views:
        raise ValueError("tile_views needs at least one view")
    for index, view in enumerate(views):
        if view.ndim != 3 or view.shape[-1] != 3:
            camera = f"camera {names[index]!r}" if names is not None else "a camera view"
            raise ValueError(f"{camera} has shape {view.shape}; a video frame takes (H, W, 3) views: convert the "
                             "frames in the env, or record no videos (--no-video)")
    height = max(v.shape[0] for v in views)
    scaled = []
    for view in views:
        if view.shape[0] != height:
            rows = (np.arange(height) * view.shape[0] // height).clip(0, view.shape[0] - 1)
            width = max(1, round(view.shape[1] * height / view.shape[0]))
            cols = (np.arange(width) * view.shape[1] // width).clip(0, view.shape[1] - 1)
            view = view[rows][:, cols]
        scaled.append(np.asarray(view, dtype=np.uint8))
    return np.concatenate(scaled, axis=1)


def frame_from_observation(observation: Mapping[str, object]) -> Optional[np.ndarray]:
    """The `video.*` views of one (unbatched, unstacked) flat observation tiled into one frame, or None."""
    keys = sorted(key for key in observation if key.startswith("video."))
    views = [np.asarray(observation[key]) for key in keys]
    views = [v[-1] if v.ndim == 4 else v for v in views]  # a stacked history: show the newest frame
    return tile_views(views, keys) if views else None


def caption_band(text: str, width: int, height: int = CAPTION_HEIGHT) -> np.ndarray:
    """A black uint8 (height, width, 3) band with white `text` (wrapped to fit), drawn with matplotlib's Agg."""
    from .extras import require

    require("matplotlib", "plots", "captioning rollout videos")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="black")
    canvas = FigureCanvasAgg(fig)
    font_px = 11
    chars_per_line = max(8, int(width / (font_px * 0.75)))
    lines = textwrap.wrap(text, chars_per_line)[: max(1, height // (font_px + 3))]
    fig.text(0.02, 0.5, "\n".join(lines), color="white", fontsize=font_px * 72 / dpi, va="center", ha="left", family="monospace",
             parse_math=False)  # the instruction as written: "$5 then $10" is no formula, and "$x^$" no valid one
    canvas.draw()
    band = np.asarray(canvas.buffer_rgba())[:, :, :3]
    return np.ascontiguousarray(band[:height, :width])


def _even(n: int) -> int:
    return n + (n % 2)


class _FrameSpill:
    """An episode's frames past its recorder's memory budget, raw in an unnamed temporary file (removed when closed, and
    by the OS when the process dies), read back one at a time."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(exist_ok=True)  # its own folder only, as finish() does
        # unbuffered: a full disk fails the write of the frame, not a later seek or the close
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=folder, prefix=".episode_frames_", buffering=0)
        self._places: List[Tuple[int, Tuple[int, ...]]] = []  # (offset, shape) of each frame
        self._end = 0

    def append(self, frame: np.ndarray) -> None:
        self._file.seek(self._end)
        self._file.write(np.ascontiguousarray(frame).data)
        self._places.append((self._end, frame.shape))
        self._end += frame.nbytes

    def __len__(self) -> int:
        return len(self._places)

    def __getitem__(self, index: int) -> np.ndarray:
        offset, shape = self._places[index]
        self._file.seek(offset)
        return np.frombuffer(self._file.read(int(np.prod(shape))), dtype=np.uint8).reshape(shape)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # nothing is buffered; the frames are dropped either way
            self._file.close()


class _EpisodeFrames(collections.abc.Sequence):
    """The frames held in memory followed by those spilled to disk, as one sequence for write_mp4."""

    def __init__(self, held: List[np.ndarray], spill: Optional[_FrameSpill]) -> None:
        self._held, self._spill = held, spill

    def __len__(self) -> int:
        return len(self._held) + (len(self._spill) if self._spill is not None else 0)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index < len(self._held):
            return self._held[index]
        return self._spill[index - len(self._held)]  # type: ignore[index]


class EpisodeVideoRecorder:
    """Buffers the frames of one episode and writes `<name>.mp4` with a task/outcome caption when it ends.

    Frames narrower than `min_width` are upscaled by an integer factor (nearest) so the caption is readable. Frames past
    `memory_budget_bytes` wait in a temporary file in `video_dir` until the episode ends; close() removes it.
    """

    def __init__(self, video_dir: Union[str, Path], fps: int = 20, steps_per_frame: int = 1, min_width: int = 256,
                 memory_budget_bytes: int = FRAME_MEMORY_BUDGET_BYTES) -> None:
        self.video_dir = Path(video_dir)
        self.fps = fps
        self.steps_per_frame = max(1, int(steps_per_frame))
        self.min_width = min_width
        self.memory_budget_bytes = memory_budget_bytes
        self._frames: List[np.ndarray] = []  # the episode's first frames, within the memory budget
        self._held_bytes = 0
        self._spill: Optional[_FrameSpill] = None  # the episode's later frames
        self._spill_error: Optional[OSError] = None  # why the spill failed: the video is lost, raised by finish()
        self._lost = 0  # frames kept since the spill failed (counted, not held)
        self._steps = 0
        self._last_skipped: Optional[np.ndarray] = None  # the newest frame offered, when it was not kept

    def start(self) -> None:
        """Forget the frames of the previous episode."""
        self.close()
        self._steps, self._last_skipped = 0, None

    def close(self) -> None:
        """Drop the current episode's frames and remove its temporary file, if any."""
        if self._spill is not None:
            self._spill.close()
        self._frames, self._held_bytes, self._spill = [], 0, None
        self._spill_error, self._lost = None, 0

    def add(self, frame: Optional[np.ndarray]) -> None:
        """Offer one env step's frame; every `steps_per_frame`-th one is kept, and the episode's last one (at finish)."""
        if frame is not None:
            frame = np.asarray(frame, dtype=np.uint8)
            if self._steps % self.steps_per_frame == 0:
                self._keep(frame)
                self._last_skipped = None
            else:
                self._last_skipped = frame
        self._steps += 1

    def _keep(self, frame: np.ndarray) -> None:
        if self._spill_error is not None:  # the video is lost already; finish() says why
            self._lost += 1
            return
        if self._spill is None and self._held_bytes + frame.nbytes <= self.memory_budget_bytes:
            self._frames.append(frame)
            self._held_bytes += frame.nbytes
            return
        try:
            if self._spill is None:
                self._spill = _FrameSpill(self.video_dir)
            self._spill.append(frame)
        except OSError as exc:  # from an env step: raised there it lost the episode, not just its video
            if exc.filename is None:  # an unnamed file's error: name its folder, as a storage error's line needs
                exc = type(exc)(exc.errno, exc.strerror, str(self.video_dir))
            self._spill_error = exc
            self._lost += 1

    @property
    def n_frames(self) -> int:
        """Frames kept for the current episode (in memory, spilled, or lost to a spill that failed)."""
        return len(self._frames) + (len(self._spill) if self._spill is not None else 0) + self._lost

    def finish(self, name: str, task: str, success: bool, note: str = "", errored: bool = False) -> Optional[str]:
        """Write the kept episode as `<video_dir>/<name>.mp4`; return its path (None without frames)."""
        try:
            return self._write(name, task, success, note, errored)
        finally:
            self.start()  # the frames go, and their temporary file, whether the video was written or not

    def _write(self, name: str, task: str, success: bool, note: str, errored: bool) -> Optional[str]:
        if not self.n_frames:
            return None
        if self._spill_error is not None:  # a storage error stops the run as at encoding; another loses the video
            raise self._spill_error
        if self._last_skipped is not None:  # the episode's final observation, which its caption's outcome describes
            self._keep(self._last_skipped)
        outcome = episode_outcome(success, errored)
        text = f"{task} ({outcome}{', ' + note if note else ''})"
        path = self.video_dir / f"{name}.mp4"
        self.video_dir.mkdir(exist_ok=True)  # its own folder only: never the run's folder, should that vanish mid-run
        write_mp4(path, _EpisodeFrames(self._frames, self._spill), text, fps=self.fps, min_width=self.min_width)
        # An earlier attempt at this episode (a run interrupted after its video, then resumed) may have ended the
        # other way: its video would stand beside this one, telling another outcome.
        episode = EPISODE_VIDEO_NAME.fullmatch(path.name)
        if episode is not None:
            for other in EPISODE_OUTCOMES:
                if other != episode.group("outcome"):
                    path.with_name(f"{path.name[:episode.start('outcome')]}{other}.mp4").unlink(missing_ok=True)
        return str(path)


def write_mp4(path: Union[str, Path], frames: Sequence[np.ndarray], caption: str, fps: int = 20, min_width: int = 256) -> Path:
    """Encode RGB frames as an h264 (or mpeg4) mp4 with `caption` in a black band under every frame."""
    path = Path(path)
    first = np.asarray(frames[0])
    scale = max(1, -(-min_width // first.shape[1]))
    height, width = _even(first.shape[0] * scale), _even(first.shape[1] * scale)
    band = caption_band(caption, width)
    canvas = np.zeros((height + band.shape[0], width, 3), dtype=np.uint8)
    canvas[height:] = band
    codec = "libx264" if has_encoder("libx264") else "mpeg4"
    # Written aside and renamed: a run killed mid-encode leaves no truncated video under the episode's name.
    partial = partial_path(path)
    try:
        _encode(partial, frames, canvas, height, width, scale, codec, fps)
        os.replace(partial, path)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc  # the video's name, not the temporary's
    finally:
        remove_quietly(partial)  # a read-only folder refuses it too: never in place of the encoder's error
    logger.debug("wrote %d frames to %s", len(frames), path)
    return path


def _encode(path: Path, frames: Sequence[np.ndarray], canvas: np.ndarray, height: int, width: int, scale: int, codec: str,
            fps: int) -> None:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, canvas.shape[0], "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "22"}
        for image in frames:
            image = np.asarray(image, dtype=np.uint8)
            if scale > 1:
                image = image.repeat(scale, axis=0).repeat(scale, axis=1)
            canvas[:height] = 0
            canvas[: min(height, image.shape[0]), : min(width, image.shape[1])] = image[:height, :width]
            for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def has_encoder(name: str) -> bool:
    """True when this PyAV build's FFmpeg has the encoder `name` (e.g. libx264, libsvtav1)."""
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:  # noqa: BLE001 - any failure means "not available in this build"
        return False
