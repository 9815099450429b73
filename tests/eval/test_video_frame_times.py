"""The dataset reader's decode_frames_at returns, for each timestamp, the frame nearest to it: a video that runs
faster than the dataset's fps (info.json) used to give the first frame within half a dataset interval, an earlier
one (in a v3 file of several episodes, the previous episode's). Videos are written with PyAV directly; every frame is
a solid gray level that names its index, so it survives compression."""

from fractions import Fraction

import av
import numpy as np
import pytest

from gr00t_eval.dataset.errors import DatasetError
from gr00t_eval.dataset.video import decode_frames_at

GRAY_STEP = 6  # frame i is gray i * GRAY_STEP


def write_video(path, n_frames, fps):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.options = {"qscale": "1"}
        for index in range(n_frames):
            image = np.full((32, 32, 3), index * GRAY_STEP, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def frame_indices(frames):
    return [int(round(float(frame.mean()) / GRAY_STEP)) for frame in frames]


def test_a_video_faster_than_the_dataset_fps_gives_the_frame_at_each_timestamp(tmp_path):
    path = tmp_path / "fast.mp4"
    write_video(path, 36, fps=30)  # 1.2 s at 30 fps; the dataset says 10 fps
    timestamps = [0.0, 0.1, 0.4, 0.7, 1.1]
    frames, _decoded = decode_frames_at(path, timestamps, fps=10)
    assert frame_indices(frames) == [0, 3, 12, 21, 33]  # not 2, 11, 20, 32: the first frames within 0.05 s


def test_timestamps_with_float_error_and_the_last_frame_are_found(tmp_path):
    path = tmp_path / "even.mp4"
    write_video(path, 10, fps=10)
    timestamps = [0.1 + 0.1 + 0.1, 0.9, 0.1 * 7]  # 0.30000000000000004
    frames, decoded = decode_frames_at(path, timestamps, fps=10)
    assert frame_indices(frames) == [3, 9, 7]
    assert decoded <= 10


def test_a_timestamp_past_the_video_is_an_error_not_the_last_frame(tmp_path):
    path = tmp_path / "short.mp4"
    write_video(path, 10, fps=10)
    with pytest.raises(DatasetError, match=r"no frame within 0.0500s of timestamps \[1.2\]"):
        decode_frames_at(path, [0.5, 1.2], fps=10)
