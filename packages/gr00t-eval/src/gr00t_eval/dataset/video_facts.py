"""What the reader checks of an episode video before decoding it: its stream, frame count and times, keyframes,
display matrix, and whether this PyAV has a decoder for it."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import struct
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Sequence

import av

from .errors import DatasetError, require_file


class VideoFacts(NamedTuple):
    """What the reader checks of an episode video before decoding frames of it, read once per file."""

    frames: int  # frames a decoder shows: packets with data that the demuxer does not flag discard
    rate: Optional[float]  # the container's average frame rate; None where it does not say
    height: int
    width: int
    display: Optional[str]  # what the display matrix does to the frames when shown ("turns its frames ..."); None: nothing
    frame_times: Optional[List[float]]  # each shown frame's presentation time (s), display order; None without pts
    keyframe_times: List[float]  # the presentation times (s) of the packets flagged keyframes: where a seek lands
    packets: int  # the frames' packets found in the file, those flagged discard too
    declared_frames: Optional[int]  # the frames the header declares (an mp4's sample count); None where it says none


def video_stream_facts(path: Path) -> VideoFacts:
    """Frame count (and the count its header declares), rate, size, display matrix and frame times of a video's
    stream (video_stream), read from its headers and packets, decoding only its first frame. DatasetError naming the
    file when it cannot be read.

    Frame k of the video is shown at the k-th time, whatever the rate: a frame that came late (a variable-frame-rate
    recording) moves the times, not the count. Packets the demuxer flags discard (a pre-roll frame an mp4 edit list
    hides, as `ffmpeg -ss T -c copy` cuts leave; with B-frames interleaved with shown ones in decode order) are
    decoded as references but never shown, so they are no frame of the video."""
    require_file(path, "video file")
    stream = None
    try:
        with av.open(str(path)) as container:
            stream = video_stream(container, path)
            check_decoder(stream, path)
            display, read_display = None, True
            shown: List[Optional[float]] = []
            keyframes: List[float] = []
            packets = 0
            for packet in container.demux(stream):
                if read_display:
                    for frame in packet.decode():
                        display, read_display = _frame_display(frame), False
                        break
                if packet.size == 0:  # the flush packet
                    continue
                packets += 1
                if packet.is_discard:  # a frame an edit list hides
                    continue
                time = None if packet.pts is None else float(packet.pts * stream.time_base)
                shown.append(time)
                if packet.is_keyframe and time is not None:
                    keyframes.append(time)
            rate = float(stream.average_rate) if stream.average_rate else None
            times = None if None in shown else sorted(shown)
            return VideoFacts(len(shown), rate, stream.height, stream.width, display or None, times, keyframes, packets,
                              stream.frames or None)
    except av.error.FFmpegError as exc:
        raise decode_failure(path, exc, stream) from exc


def video_stream(container: Any, path: Path) -> Any:
    """The stream of an episode video: its one video stream that is not a cover picture or still image. DatasetError
    naming the file and listing its video streams where there is none or several (which is the camera's is unknown)."""
    streams = list(container.streams.video)
    moving = [s for s in streams if not {"attached_pic", "still_image"} & set(_disposition_names(s))]
    if len(moving) == 1:
        return moving[0]
    listed = "; ".join(f"stream {s.index}: {s.height}x{s.width} (height x width), disposition {_disposition_text(s)}"
                       for s in streams)
    if not moving:
        raise DatasetError(f"{path}: no video stream other than cover pictures or still images ({listed or 'none'})")
    raise DatasetError(f"{path}: {len(moving)} video streams ({listed}) and an episode video must hold one, the "
                       "camera's; keep only that stream (e.g. ffmpeg -i IN -map 0:v:N -c copy OUT)")


def _disposition_names(stream: Any) -> List[str]:
    """Names of the disposition flags set on `stream` ("default", "attached_pic", ...), which every admitted PyAV
    reads (15 was the first)."""
    flags = stream.disposition
    return [flag.name for flag in type(flags) if flag.value and flags & flag]


def _disposition_text(stream: Any) -> str:
    return "|".join(_disposition_names(stream)) or "none"


def _frame_display(frame: Any) -> str:
    """What the display matrix of a decoded frame does to it when shown, from all of the matrix: a flip has rotation
    angle 0 and a mirror -180, so the angle alone served a flip as stored and called a mirror a turn. "" for none."""
    # looked up by its type's name, which every admitted PyAV answers alike (iterating gives the items up to 18.1.0
    # and their types from 18.1.1, and 18.1.1's len() counts types, not items); a frame's `rotation` is read from
    # this same matrix, so without one there is nothing to say
    matrix = frame.side_data.get("DISPLAYMATRIX")
    return "" if matrix is None else display_matrix_text(struct.unpack("=9i", bytes(matrix)))


def display_matrix_text(matrix: Sequence[int]) -> str:
    """What an FFmpeg display matrix (nine int32, AV_PKT_DATA_DISPLAYMATRIX: [a b u; c d v; x y w], a..d in 16.16
    fixed point) does to the frames as players show them, "" for nothing; read as FFmpeg's autorotate reads it
    (fftools: a vertical flip where d < 0 at angle 0, a mirror where a < 0 at 180). The translation (x, y) moves no
    pixel within the frame."""
    a, b, c, d = (value / 65536 for value in (matrix[0], matrix[1], matrix[3], matrix[4]))
    if (a, b, c, d) == (1, 0, 0, 1):
        return ""
    if b == c == 0 and abs(a) == abs(d) == 1 and a != d:
        return ("flips its frames upside down (a vertical flip)" if d < 0 else
                "mirrors its frames left to right (a horizontal mirror)")
    if a * d - b * c < 0:
        return f"mirrors its frames across a diagonal (display matrix {list(matrix)})"
    if abs(math.hypot(a, c) - 1) < 1e-3 and abs(math.hypot(b, d) - 1) < 1e-3:
        return _rotation_text(-math.degrees(math.atan2(b, a)))  # av_display_rotation_get, counter-clockwise
    return f"scales or shears its frames (display matrix {list(matrix)})"


def _rotation_text(degrees: float) -> str:
    degrees = degrees + 360 if degrees <= -180 else degrees  # FFmpeg says -180 for a half turn
    return f"turns its frames {round(degrees, 3):g} degrees counter-clockwise" if degrees else ""


def check_decoder(stream: Any, path: Path) -> None:
    """DatasetError naming the codec, this PyAV's and FFmpeg's versions and what to install, where this PyAV build has
    no decoder for `stream` (FFmpeg then fails with a bare "Decoder not found")."""
    if stream.codec_context is None:
        raise DatasetError(_no_decoder_text(path, _sample_entries(path) or "unknown"))


def decode_failure(path: Path, exc: av.error.FFmpegError, stream: Any) -> DatasetError:
    """The DatasetError of a decode that failed: a codec without a (software) decoder named as such, anything else
    as FFmpeg words it."""
    if isinstance(exc, av.error.DecoderNotFoundError) or getattr(exc, "errno", None) == errno.ENOSYS:
        # ENOSYS: FFmpeg's native av1 decoder decodes with a hardware accelerator only, and falls back to it when
        # built without libdav1d and libaom
        codec = stream.codec_context.name if stream is not None and stream.codec_context is not None else None
        return DatasetError(_no_decoder_text(path, repr(codec) if codec else _sample_entries(path) or "unknown"))
    return DatasetError(f"{path}: cannot decode video ({exc})")


def _no_decoder_text(path: Path, codec: str) -> str:
    return (f"{path}: video codec {codec} has no decoder in this PyAV {av.__version__} (FFmpeg "
            f"{av.ffmpeg_version_info}); install a PyAV wheel whose FFmpeg decodes it (for AV1, LeRobot's default: "
            "one built with libdav1d, as PyAV's wheels on PyPI are: pip install --force-reinstall av), or re-encode the "
            "video to h264 (ffmpeg -i IN.mp4 -c:v libx264 -pix_fmt yuv420p OUT.mp4)")


def _sample_entries(path: Path) -> str:
    """The sample entry names of an mp4's tracks ('avc1', 'av01', ...), read from its moov box: FFmpeg's codec name
    where PyAV has no decoder to say it; "" where the file is no mp4 with a moov box."""
    entries: List[str] = []
    with contextlib.suppress(OSError, struct.error):
        with open(path, "rb") as fh:
            while len(entries) == 0:
                header = fh.read(8)
                if len(header) < 8:
                    break
                size, kind = struct.unpack(">I4s", header)
                if size == 1:
                    size = struct.unpack(">Q", fh.read(8))[0] - 8
                if kind != b"moov":
                    if size < 8:
                        break
                    fh.seek(size - 8, os.SEEK_CUR)
                    continue
                moov = fh.read(size - 8)
                at = moov.find(b"stsd")
                while at >= 0:
                    entries.append(repr(moov[at + 16:at + 20].decode("latin-1")))  # size, stsd, flags, count, size
                    at = moov.find(b"stsd", at + 4)
                break
    return ", ".join(entries)
