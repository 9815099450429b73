"""MP4 access with PyAV: decode only the frames asked for (seek to a keyframe, decode forward, stop early) and encode."""

from __future__ import annotations

import contextlib
import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import av
import numpy as np

from ..video import has_encoder
from .errors import DatasetError, require_file

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
    require_file(path, "video file")
    if len(timestamps) == 0:
        raise ValueError("decode_frames_at needs at least one timestamp")
    tolerance = 0.5 / fps
    same_instant = min(_SAME_INSTANT_S, tolerance / 2)  # at 10,000 fps and up, 1e-4 s reached the next frame
    wanted = sorted(set(float(t) for t in timestamps))
    decoded = 0
    seek_to = wanted[0] - tolerance
    step_back = _STEP_BACK_FRAMES / fps
    try:
        while True:
            found, count = _decode_from(path, seek_to, wanted, tolerance, same_instant)
            decoded += count
            if found is not None:
                break
            # The seek landed after the first wanted frame (a keyframe flag on a frame that is none, or a keyframe
            # whose decode time is before the target and its display time after it, as MPEG-4 Part 2 B-frames give):
            # seek further back, doubling the step, until decoding from the start.
            logger.debug("%s: seeking to %.3fs decoded from after %.3fs; seeking %.3fs earlier", path, seek_to,
                         wanted[0], step_back)
            seek_to, step_back = seek_to - step_back, step_back * 2
    except av.error.FFmpegError as exc:
        raise DatasetError(f"{path}: cannot decode video ({exc})") from exc
    missing = [t for t in wanted if t not in found]
    if missing:
        raise DatasetError(
            f"{path}: no frame within {tolerance:.4f}s of timestamps {missing[:5]} "
            f"(video shorter than the episode, or timestamps off the frame grid)"
        )
    return np.stack([found[float(t)] for t in timestamps]), decoded


_STEP_BACK_FRAMES = 16  # the first step back when a seek lands too late; each further one doubles


def _decode_from(
    path: Path, seek_to: float, wanted: List[float], tolerance: float, same_instant: float
) -> Tuple[Optional[Dict[float, np.ndarray]], int]:
    """(frames of `wanted` found, frames decoded) decoding from the keyframe before `seek_to` (from the start when it
    is not after 0 s); found is None when the first frame decoded after a seek is after wanted[0], as then a frame
    wanted may have been skipped. Times within `same_instant` seconds are one instant."""
    found: Dict[float, np.ndarray] = {}
    decoded = 0
    with av.open(str(path)) as container:
        stream = video_stream(container, path)
        stream.thread_type = "AUTO"
        time_base = stream.time_base
        if seek_to > 0:
            # backward=True lands on the keyframe at or before the target (by its decode time); checked below.
            container.seek(int(seek_to / time_base), stream=stream, backward=True, any_frame=False)
        pending = list(wanted)
        previous: Optional[_Decoded] = None
        for frame in container.decode(stream):
            decoded += 1
            if frame.pts is None:
                raise DatasetError(f"{path}: decoded a frame without a timestamp (pts)")
            current = _Decoded(float(frame.pts * time_base), frame)
            if previous is None and seek_to > 0 and current.time > wanted[0] + same_instant:
                return None, decoded
            # A timestamp is settled by the first frame at (or a rounding error before) it: the nearest frame is
            # that one or the one before.
            while pending and current.time >= pending[0] - same_instant:
                _take_nearest(pending.pop(0), (previous, current), tolerance, found)
            previous = current
            if not pending:
                break
        if previous is None and seek_to > 0:  # the seek landed past every frame the decoder would show
            return None, decoded
        for t in pending:  # past the last frame: only that frame may be near enough
            _take_nearest(t, (previous,), tolerance, found)
    return found, decoded


_SAME_INSTANT_S = 1e-4  # timestamps this close are one instant (float error of t = 0.1 * 3, pts rounding)


class VideoFacts(NamedTuple):
    """What the reader checks of an episode video before decoding frames of it, read once per file."""

    frames: int  # frames a decoder shows: packets with data that the demuxer does not flag discard
    rate: Optional[float]  # the container's average frame rate; None where it does not say
    height: int
    width: int
    rotation: float  # degrees the display matrix turns the frames counter-clockwise when shown; 0 for none
    frame_times: Optional[List[float]]  # each shown frame's presentation time (s), display order; None without pts


def video_stream_facts(path: Path) -> VideoFacts:
    """Frame count, rate, size, display rotation and frame times of a video's stream (video_stream), read from its
    headers and packets, decoding only its first frame. DatasetError naming the file when it cannot be read.

    Frame k of the video is shown at the k-th time, whatever the rate: a frame that came late (a variable-frame-rate
    recording) moves the times, not the count. Packets the demuxer flags discard (a pre-roll frame an mp4 edit list
    hides, as `ffmpeg -ss T -c copy` cuts leave; with B-frames interleaved with shown ones in decode order) are
    decoded as references but never shown, so they are no frame of the video."""
    require_file(path, "video file")
    try:
        with av.open(str(path)) as container:
            stream = video_stream(container, path)
            rotation = _header_rotation(stream)
            shown: List[Optional[float]] = []
            for packet in container.demux(stream):
                if rotation is None:
                    rotation = next((_frame_rotation(frame) for frame in packet.decode()), None)
                if packet.size == 0 or packet.is_discard:  # the flush packet; a frame an edit list hides
                    continue
                shown.append(None if packet.pts is None else float(packet.pts * stream.time_base))
            rate = float(stream.average_rate) if stream.average_rate else None
            times = None if None in shown else sorted(shown)
            return VideoFacts(len(shown), rate, stream.height, stream.width, rotation or 0.0, times)
    except av.error.FFmpegError as exc:
        raise DatasetError(f"{path}: cannot decode video ({exc})") from exc


def video_stream(container: Any, path: Path) -> Any:
    """The stream of an episode video: its one video stream that is not a cover picture or still image. DatasetError
    naming the file and listing its video streams where there is none or several (which is the camera's is unknown)."""
    streams = list(container.streams.video)
    moving = [s for s in streams if not {"attached_pic", "still_image"} & set(_disposition_names(s) or ())]
    if len(moving) == 1:
        return moving[0]
    listed = "; ".join(f"stream {s.index}: {s.height}x{s.width} (height x width), disposition {_disposition_text(s)}"
                       for s in streams)
    if not moving:
        raise DatasetError(f"{path}: no video stream other than cover pictures or still images ({listed or 'none'})")
    raise DatasetError(f"{path}: {len(moving)} video streams ({listed}) and an episode video must hold one, the "
                       "camera's; keep only that stream (e.g. ffmpeg -i IN -map 0:v:N -c copy OUT)")


def _disposition_names(stream: Any) -> Optional[List[str]]:
    """Names of the disposition flags set on `stream` ("default", "attached_pic", ...); None where PyAV < 13 does not
    read them."""
    flags = getattr(stream, "disposition", None)
    if flags is None:
        return None
    return [flag.name for flag in type(flags) if flag.value and flags & flag]


def _disposition_text(stream: Any) -> str:
    names = _disposition_names(stream)
    return f"unknown (PyAV {av.__version__} does not read it)" if names is None else "|".join(names) or "none"


def _header_rotation(stream: Any) -> Optional[float]:
    """The display rotation PyAV < 14 reads from the stream header (0 for none); None where only frames give it."""
    side_data = getattr(stream, "side_data", None)
    return float(side_data.get("DISPLAYMATRIX", 0.0)) if isinstance(side_data, dict) else None


def _frame_rotation(frame: Any) -> float:
    return float(getattr(frame, "rotation", 0) or 0)


class _Decoded:
    """A decoded frame and its time; converted to RGB once, when some timestamp takes it."""

    def __init__(self, time: float, frame: Any) -> None:
        self.time = time
        self._frame = frame
        self._image: Optional[np.ndarray] = None

    def image(self) -> np.ndarray:
        if self._image is None:
            self._image = self._frame.to_ndarray(format="rgb24")
        return self._image


def _take_nearest(t: float, candidates: Sequence[Optional[_Decoded]], tolerance: float, found: Dict[float, np.ndarray]) -> None:
    """found[t] = the candidate frame nearest to t, if one is within `tolerance`."""
    near = [c for c in candidates if c is not None and abs(c.time - t) <= tolerance]
    if near:
        found[t] = min(near, key=lambda c: abs(c.time - t)).image()


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
