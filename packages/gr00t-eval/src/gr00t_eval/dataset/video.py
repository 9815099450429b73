"""MP4 access with PyAV: decode only the frames asked for (seek to a keyframe, decode forward, stop early, go on from
there for the next frames asked for) and encode."""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import av
import numpy as np

from ..video import has_encoder
from .errors import DatasetError, require_file
from .video_facts import check_decoder, decode_failure, video_stream

logger = logging.getLogger(__name__)

# Encoders of each codec, preferred first. LeRobot encodes av1 with SVT-AV1, as newer PyAV wheels can; av 12's
# wheels lack it but have libaom-av1 (slower).
ENCODERS: Dict[str, Tuple[str, ...]] = {"h264": ("libx264",), "av1": ("libsvtav1", "libaom-av1")}
# Per-encoder options beyond gop and crf: libaom's default effort is minutes per episode; cpu-used 8 is its fastest.
_ENCODER_OPTIONS: Dict[str, Dict[str, str]] = {
    "libx264": {"bf": "0"},  # no B-frames: pts == frame index, easy to reason about
    "libaom-av1": {"cpu-used": "8", "row-mt": "1", "b": "0"},  # b=0: crf alone sets the quality
}
# The smallest height and width each encoder opens with, where above yuv420p's 2: SVT-AV1 refuses a side under 4
# ("Source Height must be at least 4") only when the first frame is encoded, after a v3.0 file was opened.
_MIN_FRAME_SIDE: Dict[str, int] = {"libsvtav1": 4}
# The highest frame rate each encoder opens with, where it has one: SVT-AV1 refuses over 240 fps (saying why on stderr
# only) when the first frame is encoded, after the folder was made.
_MAX_FPS: Dict[str, int] = {"libsvtav1": 240}


def encoder_for(codec: str) -> str:
    """The first encoder of `codec` (a key of ENCODERS) this PyAV build has; ValueError naming them otherwise."""
    if codec not in ENCODERS:
        raise ValueError(f"video codec {codec!r} is not supported; expected one of {sorted(ENCODERS)}")
    for name in ENCODERS[codec]:
        if has_encoder(name):
            return name
    others = [c for c in available_codecs() if c != codec]
    raise ValueError(
        f"video codec {codec!r} needs one of the encoders {', '.join(ENCODERS[codec])}, and this PyAV build "
        f"(av {av.__version__}) has none of them; "
        + (f"use video codec {others[0]!r} instead, or " if others else "")
        + "install a PyAV wheel whose FFmpeg has one"
    )


def min_frame_side(codec: str) -> int:
    """The smallest frame height and width, in pixels, that this PyAV build's encoder of `codec` accepts."""
    return _MIN_FRAME_SIDE.get(encoder_for(codec), 2)


def max_fps(codec: str) -> Optional[int]:
    """The highest frame rate this PyAV build's encoder of `codec` accepts; None where it sets no limit."""
    return _MAX_FPS.get(encoder_for(codec))


def decode_frames_at(path: Path, timestamps: Sequence[float], fps: float) -> Tuple[np.ndarray, int]:
    """Decode the frames shown at `timestamps` (seconds) as uint8 (N, H, W, 3) RGB; also return frames decoded.

    Seeks to the keyframe at or before the earliest timestamp and decodes forward until the latest one,
    so the cost is bounded by the GOP size plus the span asked for, not the video length; where the first frame
    decoded is after the earliest timestamp (the seek landed too late), it seeks further back. Each timestamp gets
    the frame nearest to it; one with no frame within half a frame interval (of `fps`, the dataset's rate) is an
    error (never a black or neighbouring frame). Nearest, not the first within reach: a video that really runs
    faster than `fps` has several frames within half an interval, and the first of them is an earlier one (in a
    v3 file of several episodes, possibly the previous episode's last).
    """
    with VideoDecoder(path, fps) as decoder:
        return decoder.frames_at(timestamps)


_STEP_BACK_FRAMES = 16  # the first step back when a seek lands too late; each further one doubles
# Frames served that a decoder keeps for the next call, counted back from the last one decoded: open-loop's next window
# asks again for the history rows (delta_indices down to -15 in GR00T's configs) of the last window's last steps. At
# most _RECENT_BYTES of them (32 frames of 4K video are 800 MB): a history row older than those kept costs a seek.
_RECENT_FRAMES = 32
_RECENT_BYTES = 128 << 20


def _newest(found: Dict[float, np.ndarray], since: float) -> Dict[float, np.ndarray]:
    """The frames of `found` shown at `since` or later, newest first until _RECENT_BYTES."""
    kept: Dict[float, np.ndarray] = {}
    size = 0
    for t in sorted((t for t in found if t >= since), reverse=True):
        size += found[t].nbytes
        if size > _RECENT_BYTES:
            break
        kept[t] = found[t]
    return kept


class VideoDecoder:
    """One video file's decoder, kept open across calls of frames_at (decode_frames_at's reading): a call whose first
    frame lies ahead of the last one decoded (or among the last served), with no keyframe between, goes on decoding
    from there instead of seeking (open-loop's consecutive windows of a video with one keyframe each decoded it again
    from the start)."""

    def __init__(self, path: Path, fps: float, keyframe_times: Optional[Sequence[float]] = None,
                 frame_times: Optional[Sequence[float]] = None) -> None:
        require_file(path, "video file")
        self.path = path
        self._fps = fps
        self._tolerance = 0.5 / fps
        self._same_instant = min(_SAME_INSTANT_S, self._tolerance / 2)  # at 10,000 fps and up, 1e-4 s reached the next frame
        self._keyframe_times = None if keyframe_times is None else sorted(keyframe_times)
        self._frame_times = frame_times  # to name a frame by its index in the file; None: by its time
        self._container: Any = None
        self._stream: Any = None
        self._size = (0, 0)  # (height, width) the stream's header declares
        self._frames: Optional[Iterator[Any]] = None  # the decode, suspended after the last frame taken
        self._previous: Optional[_Decoded] = None  # the last frame decoded
        self._seeked = False  # the decode started at a seek, not at the file's first frame
        self._recent: Dict[float, np.ndarray] = {}  # the frames served last within _RECENT_FRAMES of the last decoded
        self._lock = threading.RLock()  # one decode (or close) at a time: another would move this one's position

    def frames_at(self, timestamps: Sequence[float]) -> Tuple[np.ndarray, int]:
        """The frames shown at `timestamps` and the frames decoded for them, as decode_frames_at returns them."""
        if len(timestamps) == 0:
            raise ValueError("decode_frames_at needs at least one timestamp")
        wanted = sorted(set(float(t) for t in timestamps))
        with self._lock:
            # Frames served lately again (the history rows the next window shares with the last) are no reason to go
            # back: only the frames after them are decoded
            kept = {t: self._recent[t] for t in wanted if t in self._recent}
            try:
                found, decoded = self._decode([t for t in wanted if t not in kept]) if len(kept) < len(wanted) else ({}, 0)
            except av.error.FFmpegError as exc:
                stream = self._stream
                self.close()
                raise decode_failure(self.path, exc, stream) from exc
            except BaseException:
                self.close()  # where the decode stopped is unknown: the next call starts afresh
                raise
            found.update(kept)
            last = self._previous.time if self._previous is not None else max(found, default=0.0)
            self._recent = _newest(found, since=last - _RECENT_FRAMES / self._fps)
        missing = [t for t in wanted if t not in found]
        if missing:
            raise DatasetError(
                f"{self.path}: no frame within {self._tolerance:.4f}s of timestamps {missing[:5]} "
                f"(video shorter than the episode, or timestamps off the frame grid)"
            )
        return np.stack([found[float(t)] for t in timestamps]), decoded

    def _decode(self, wanted: List[float]) -> Tuple[Dict[float, np.ndarray], int]:
        if self._goes_on_to(wanted[0]):
            found, decoded = self._decode_forward(wanted)
            return found or {}, decoded
        decoded = 0
        seek_to = wanted[0] - self._tolerance
        step_back = _STEP_BACK_FRAMES / self._fps
        while True:
            self._open_at(seek_to)
            found, count = self._decode_forward(wanted)
            decoded += count
            if found is not None:
                return found, decoded
            # The seek landed after the first wanted frame (a keyframe flag on a frame that is none, or a keyframe
            # whose decode time is before the target and its display time after it, as MPEG-4 Part 2 B-frames give):
            # seek further back, doubling the step, until decoding from the start.
            logger.debug("%s: seeking to %.3fs decoded from after %.3fs; seeking %.3fs earlier", self.path, seek_to,
                         wanted[0], step_back)
            seek_to, step_back = seek_to - step_back, step_back * 2

    def _goes_on_to(self, first: float) -> bool:
        """Whether decoding on from the last frame decoded reaches `first` at no more cost than a seek: `first` settles
        after that frame (so the frames nearest it are still to come, or that frame), and no keyframe a seek would
        land on lies between."""
        previous = self._previous
        if self._frames is None or previous is None or first <= previous.time + self._same_instant:
            return False
        if self._keyframe_times is None:
            return True
        seek_to = first - self._tolerance
        after = bisect.bisect_right(self._keyframe_times, previous.time)
        return after == len(self._keyframe_times) or self._keyframe_times[after] > seek_to

    def _open_at(self, seek_to: float) -> None:
        """A decode from the keyframe before `seek_to`, in a container of its own (from the start when `seek_to` is
        not after 0 s): as each call decoded before, so a seek gives the frames it gave."""
        self.close()
        self._container = av.open(str(self.path))
        stream = video_stream(self._container, self.path)
        check_decoder(stream, self.path)
        stream.thread_type = "AUTO"
        self._stream = stream
        self._size = (stream.height, stream.width)  # the header's: the codec context's change with a new SPS
        if seek_to > 0:
            # backward=True lands on the keyframe at or before the target (by its decode time); checked below.
            self._container.seek(int(seek_to / stream.time_base), stream=stream, backward=True, any_frame=False)
        self._seeked = seek_to > 0
        self._frames = iter(self._container.decode(stream))

    def _decode_forward(self, wanted: List[float]) -> Tuple[Optional[Dict[float, np.ndarray]], int]:
        """(frames of `wanted` found, frames decoded) decoding on from the last frame decoded; found is None when the
        first frame decoded after a seek is after wanted[0], as then a frame wanted may have been skipped."""
        found: Dict[float, np.ndarray] = {}
        decoded = 0
        pending = list(wanted)
        time_base = self._stream.time_base
        for frame in self._frames:  # type: ignore[union-attr]
            decoded += 1
            if frame.pts is None:
                raise DatasetError(f"{self.path}: decoded a frame without a timestamp (pts)")
            current = _Decoded(float(frame.pts * time_base), frame)
            if self._previous is None and self._seeked and current.time > wanted[0] + self._same_instant:
                return None, decoded
            # A timestamp is settled by the first frame at (or a rounding error before) it: the nearest frame is
            # that one or the one before.
            while pending and current.time >= pending[0] - self._same_instant:
                self._take_nearest(pending.pop(0), (self._previous, current), found)
            self._previous = current
            if not pending:
                break
        if self._previous is None and self._seeked:  # the seek landed past every frame the decoder would show
            return None, decoded
        for t in pending:  # past the last frame: only that frame may be near enough
            self._take_nearest(t, (self._previous,), found)
        return found, decoded

    def _take_nearest(self, t: float, candidates: Sequence[Optional[_Decoded]], found: Dict[float, np.ndarray]) -> None:
        """found[t] = the candidate frame nearest to t, if one is within the tolerance; DatasetError where that frame
        is of another size than the stream declares (and meta/info.json was checked against)."""
        near = [c for c in candidates if c is not None and abs(c.time - t) <= self._tolerance]
        if not near:
            return
        nearest = min(near, key=lambda c: abs(c.time - t))
        size, declared = nearest.size, self._size
        if size != declared:
            raise DatasetError(
                f"{self.path}: {self._frame_name(nearest.time)} decodes to {size[0]}x{size[1]} (height x width) and the "
                f"video's stream declares {declared[0]}x{declared[1]}, the size checked against meta/info.json: the "
                "frame size changes within the video (recordings joined with `-c copy`, a camera stream that changed "
                "resolution); expected one size throughout: re-encode the video at one size"
            )
        found[t] = nearest.image()

    def _frame_name(self, time: float) -> str:
        if self._frame_times:
            index = bisect.bisect_left(self._frame_times, time - self._same_instant)
            return f"frame {min(index, len(self._frame_times) - 1)} (shown at {time:.6g} s)"
        return f"the frame shown at {time:.6g} s"

    def close(self) -> None:
        """Release the file; a later frames_at opens it again."""
        with self._lock:
            container, self._container = self._container, None
            self._stream = self._frames = self._previous = None
            self._recent = {}
            if container is not None:
                container.close()

    def __enter__(self) -> "VideoDecoder":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


_SAME_INSTANT_S = 1e-4  # timestamps this close are one instant (float error of t = 0.1 * 3, pts rounding)


class _Decoded:
    """A decoded frame and its time; converted to RGB once, when some timestamp takes it."""

    def __init__(self, time: float, frame: Any) -> None:
        self.time = time
        self._frame = frame
        self._image: Optional[np.ndarray] = None

    @property
    def size(self) -> Tuple[int, int]:
        """(height, width) the frame decodes to."""
        return self._frame.height, self._frame.width

    def image(self) -> np.ndarray:
        if self._image is None:
            self._image = self._frame.to_ndarray(format="rgb24")
        return self._image


class Mp4Encoder:
    """Appends uint8 (T, H, W, 3) RGB frames to one mp4 file at a fixed frame rate."""

    def __init__(self, path: Path, fps: int, codec: str = "h264", gop: int = 8, crf: int = 18) -> None:
        self.encoder = encoder_for(codec)  # before any file is made: an unknown or missing codec raises here
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fps = fps
        self.codec = codec
        self._gop = gop
        self._crf = crf
        self._container: Optional[av.container.OutputContainer] = None
        self._stream = None
        self.frames_written = 0
        self._broken = False  # a write failed (a full disk): close() must not encode or mux into the container again

    def _open(self, height: int, width: int) -> None:
        if self.encoder == "libsvtav1":
            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr unless told otherwise
        self._container = av.open(str(self.path), "w")
        stream = self._container.add_stream(self.encoder, rate=Fraction(self.fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, self.fps)
        stream.options = {"g": str(self._gop), "crf": str(self._crf), **_ENCODER_OPTIONS.get(self.encoder, {})}
        self._stream = stream

    def write(self, frames: np.ndarray) -> None:
        """Encode frames; the first call fixes the size (H and W must be even for yuv420p)."""
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"{self.path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
        if self._container is None:
            height, width = frames.shape[1:3]
            if height % 2 or width % 2:
                raise ValueError(f"{self.path}: frame size {height}x{width} must be even for yuv420p")
            self._open(height, width)
        elif frames.shape[1:3] != (self._stream.height, self._stream.width):
            raise ValueError(
                f"{self.path}: frame size {frames.shape[1:3]} differs from this file's {(self._stream.height, self._stream.width)}"
            )
        if self._broken:
            raise OSError(f"{self.path}: an earlier write to this file failed; it cannot be written to again")
        try:
            for image in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts = self.frames_written
                frame.time_base = Fraction(1, self.fps)
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
                self.frames_written += 1
        except BaseException:
            self._broken = True
            raise

    @property
    def broken(self) -> bool:
        """Whether a write failed: the file cannot be finished."""
        return self._broken

    def discard(self) -> None:
        """Release the file without finishing it and delete it."""
        self._broken = True
        self.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)

    @property
    def size(self) -> Optional[Tuple[int, int]]:
        """(height, width) once the first frame was written."""
        return None if self._stream is None else (self._stream.height, self._stream.width)

    def close(self) -> None:
        """Flush the encoder and finish the file. After a failed write (the file is to be deleted) only release it:
        muxing into a container whose write failed (a full disk while its header was written) crashed PyAV with a
        segmentation fault, taking the process and its cleanup with it."""
        if self._container is None:
            return
        container, self._container = self._container, None
        if self._broken or self._stream is None:  # no stream: _open failed (the encoder refused a setting); its error
            with contextlib.suppress(Exception):  # is the one on its way, not one of this close
                container.close()
            return
        try:
            for packet in self._stream.encode():
                container.mux(packet)
        except BaseException:
            with contextlib.suppress(Exception):
                container.close()
            raise
        container.close()


def video_feature_info(codec: str, fps: int, height: int, width: int) -> Mapping[str, object]:
    """The info.json `features[...]` entry of a camera, as LeRobot writes it."""
    return {
        "dtype": "video",
        "shape": [height, width, 3],
        "names": ["height", "width", "channels"],
        "info": {
            "video.codec": codec,
            "video.fps": fps,
            "video.height": height,
            "video.width": width,
            "video.pix_fmt": "yuv420p",
            "video.channels": 3,
            "video.is_depth_map": False,
            "has_audio": False,
        },
    }


def available_codecs() -> List[str]:
    """Codecs of ENCODERS that this PyAV build has an encoder for."""
    return [codec for codec, encoders in ENCODERS.items() if any(map(has_encoder, encoders))]
