"""The dataset reader's decode_frames_at returns, for each timestamp, the frame nearest to it: a video that runs
faster than the dataset's fps (info.json) used to give the first frame within half a dataset interval, an earlier
one (in a v3 file of several episodes, the previous episode's). Videos are written with PyAV directly; every frame is
a solid gray level that names its index, so it survives compression."""

import logging
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


# --- steps and frames of a dataset: step k shows frame k (as GR00T decodes by index) -----------------------------

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from eval.dataset_factory import frame_colour, make_dataset  # noqa: E402
from gr00t_eval.dataset import LeRobotDataset  # noqa: E402


def nearest_step(frame, episodes, steps, camera=0):
    """(episode, step) whose solid colour is nearest to a decoded frame."""
    colour = frame.reshape(-1, 3).mean(0)
    return min(((e, t) for e in episodes for t in range(steps)),
               key=lambda et: float(np.abs(colour - frame_colour(et[0], camera, et[1])).sum()))


def set_timestamps(path, rows, values):
    table = pq.read_table(path)
    stamps = table.column("timestamp").to_numpy().copy()
    stamps[rows] = values
    pq.write_table(table.set_column(table.column_names.index("timestamp"), "timestamp",
                                    pa.array(stamps.astype(np.float32))), path)


def test_a_timestamp_column_a_little_off_fps_does_not_move_steps_onto_other_frames(tmp_path):
    """A 29 Hz column under fps 30 (each step within the per-step check) gave step 16 the frame of step 17."""
    root = make_dataset(tmp_path / "ds", lengths=(60,), cameras=("image",), fps=30, size=(16, 16))
    set_timestamps(root / "data/chunk-000/episode_000000.parquet", slice(0, 60), np.arange(60) / 29.0)
    episode = LeRobotDataset(root).episode(0)
    steps = [0, 16, 32, 48, 59]
    assert [nearest_step(f, [0], 60)[1] for f in episode.frames("image", steps)] == steps


@pytest.mark.parametrize("stamps", [np.arange(40) / 29.0, 0.2 + np.arange(40) / 30.0], ids=["29Hz", "starts-at-0.2s"])
def test_a_shared_v3_video_gives_each_step_its_own_episodes_frame(tmp_path, stamps):
    """Step 39 of episode 0 got episode 1's first frame (or every step a frame 6 steps on, from a column at 0.2 s)."""
    root = make_dataset(tmp_path / "ds", lengths=(40, 40), cameras=("image",), fps=30, size=(16, 16), layout="v3.0",
                        episodes_per_file=2)
    set_timestamps(root / "data/chunk-000/file-000.parquet", slice(0, 40), stamps)
    dataset = LeRobotDataset(root)
    for episode in (0, 1):
        frames = dataset.episode(episode).frames("image", [0, 20, 33, 39])
        assert [nearest_step(f, [0, 1], 40) for f in frames] == [(episode, s) for s in (0, 20, 33, 39)]


@pytest.mark.parametrize("layout", ["v2.1", "v3.0"])
@pytest.mark.parametrize("fps", [10000, 20000])
def test_a_dataset_written_at_ten_thousand_frames_per_second_and_more_reads_its_own_frames_back(tmp_path, fps, layout):
    """A fixed 1e-4 s "same instant" is a whole frame interval at 10,000 fps: every step was refused as 'no frame
    within 0.0000s of timestamps', though the mp4 holds each frame on the 1/fps grid."""
    root = make_dataset(tmp_path / "ds", lengths=(12,), cameras=("image",), fps=fps, size=(16, 16), layout=layout)
    frames = LeRobotDataset(root).episode(0).frames("image", list(range(12)))
    assert [nearest_step(f, [0], 12)[1] for f in frames] == list(range(12))


def test_a_video_at_29_97_frames_per_second_under_fps_30_gives_frame_k_to_step_k(tmp_path):
    """Its 600 frames passed the count and 1% rate checks; from about step 500 each step got the previous frame."""
    from eval.dataset_factory import episode_frames

    n = 600
    root = make_dataset(tmp_path / "ds", lengths=(n,), cameras=("image",), fps=30, size=(16, 16))
    video = root / "videos/chunk-000/observation.images.image/episode_000000.mp4"
    frames = episode_frames(0, 0, n, (16, 16))
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(30000, 1001))
        stream.width = stream.height = 16
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "10", "bf": "0", "g": "8"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    steps = [100, 400, 520, 580, 599]
    decoded = LeRobotDataset(root).episode(0).frames("image", steps)
    assert [nearest_step(f, [0], 64)[1] for f in decoded] == [s % 64 for s in steps]  # colours repeat every 64 steps


def _write_video(path, frames, rate, pts=None):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = stream.height = frames.shape[1]
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "10", "bf": "0", "g": "8"}
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 3000)
        for k, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts(k), Fraction(1, 3000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_shared_v3_video_at_29_97_frames_per_second_gives_each_episode_its_own_frame_k(tmp_path):
    """Segments start at from_timestamp on the video's clock: found with fps 30, episodes 2 and 3 got frame k+1."""
    from eval.dataset_factory import episode_frames

    length, episodes, rate = 300, 4, Fraction(30000, 1001)
    root = make_dataset(tmp_path / "ds", lengths=(length,) * episodes, cameras=("image",), fps=30, size=(16, 16),
                        layout="v3.0", episodes_per_file=episodes)
    _write_video(root / "videos/observation.images.image/chunk-000/file-000.mp4",
                 np.concatenate([episode_frames(e, 0, length, (16, 16)) for e in range(episodes)]), rate)
    meta = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(meta)
    for side, offset in (("from", 0), ("to", 1)):
        name = f"videos/observation.images.image/{side}_timestamp"
        table = table.set_column(table.column_names.index(name), name,
                                 pa.array([float((e + offset) * length / rate) for e in range(episodes)]))
    pq.write_table(table, meta)
    dataset = LeRobotDataset(root)
    for episode in range(episodes):
        frames = dataset.episode(episode).frames("image", [0, 150, 299])
        assert [nearest_step(f, [episode], 64)[1] for f in frames] == [0, 150 % 64, 299 % 64]


def test_a_frame_that_came_late_does_not_shift_later_steps_onto_earlier_frames(tmp_path):
    """A variable-frame-rate recording (frame 20 0.6 interval late, the rest keeping the offset) passed every check,
    and steps after it were given the previous frame."""
    from eval.dataset_factory import episode_frames

    n = 120
    root = make_dataset(tmp_path / "ds", lengths=(n,), cameras=("image",), fps=30, size=(16, 16))
    _write_video(root / "videos/chunk-000/observation.images.image/episode_000000.mp4",
                 episode_frames(0, 0, n, (16, 16)), 30, pts=lambda k: 100 * k + (60 if k >= 20 else 0))
    steps = list(range(0, n, 16)) + [n - 1]
    frames = LeRobotDataset(root).episode(0).frames("image", steps)
    assert [nearest_step(f, [0], 64)[1] for f in frames] == [s % 64 for s in steps]


def test_a_shared_v3_video_whose_stream_starts_after_time_0_gives_each_episode_its_own_frame_k(tmp_path):
    """from_timestamp counts from the file's first frame, as GR00T counts frames by index: with the stream starting at
    0.2 s (2 frames at fps 10), episode 1's steps got file frames 38, 39, ... (episode 0's last two, then shifted)."""
    from eval.dataset_factory import episode_frames

    length = 40
    root = make_dataset(tmp_path / "ds", lengths=(length, length), cameras=("image",), fps=10, size=(16, 16),
                        layout="v3.0", episodes_per_file=2)
    _write_video(root / "videos/observation.images.image/chunk-000/file-000.mp4",
                 np.concatenate([episode_frames(e, 0, length, (16, 16)) for e in range(2)]), 10,
                 pts=lambda k: 300 * (k + 2))
    dataset = LeRobotDataset(root)
    for episode in range(2):
        frames = dataset.episode(episode).frames("image", [0, 1, 20, 39])
        assert [nearest_step(f, [0, 1], length) for f in frames] == [(episode, 0), (episode, 1), (episode, 20),
                                                                   (episode, 39)]


def _hide_pre_roll_frames(video, pre_roll, b_frames):
    """Rewrite an mp4 as `ffmpeg -ss T -c copy` cuts leave it: `pre_roll` black frames first, moved before 0 s so that
    the muxer writes an edit list hiding them (their packets flagged discard); a decoder shows exactly the recording's
    frames from 0 s. With B-frames, hidden packets follow shown ones in decode order."""
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    rate = 10
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10", "bf": str(b_frames), "g": "100",
                          "x264-params": "b-adapt=0:scenecut=0:b-pyramid=none"}  # B-frames where asked, none dropped
        stream.time_base = Fraction(1, rate)
        packets = []
        for k, image in enumerate([np.zeros_like(frames[0])] * pre_roll + frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, rate)
            packets += stream.encode(frame)
        packets += stream.encode()
        for packet in packets:
            packet.pts, packet.dts = packet.pts - pre_roll, packet.dts - pre_roll
            container.mux(packet)
    with av.open(str(video)) as container:  # the file is what the test means: hidden packets, the recording shown
        hidden = [p.is_discard for p in container.demux(container.streams.video[0]) if p.size]
        assert hidden.count(True) == pre_roll
        assert (hidden.index(False) < len(hidden) - 1 - hidden[::-1].index(True)) == (b_frames > 0)  # interleaved
    with av.open(str(video)) as container:
        assert len(list(container.decode(container.streams.video[0]))) == len(frames)


@pytest.mark.parametrize("layout", ["v2.1", "v3.0"])
@pytest.mark.parametrize("pre_roll, b_frames", [(1, 0), (7, 3)], ids=["one-frame", "h264-bframes"])
def test_a_pre_roll_frame_hidden_by_an_edit_list_is_no_frame_of_the_video(tmp_path, layout, pre_roll, b_frames, caplog):
    """Its packet was listed as frame 0: in a shared v3.0 file episodes 1 and 2 got each step the frame one step early
    (step 0 the previous episode's last), and episode 0 (and a v2.1 episode's own file, after a warning of 10 frames
    for 9 steps) was refused as 'no frame within 0.0500s of timestamps [-0.1]'. With B-frames, only the hidden packets
    before the first shown one were discounted: a v2.1 episode of 4 steps was refused as 'the video holds 6 frames'."""
    lengths = (6, 9, 4)
    root = make_dataset(tmp_path / "ds", lengths=lengths, cameras=("image",), fps=10, size=(16, 16), layout=layout,
                        episodes_per_file=3 if layout == "v3.0" else None)
    videos = sorted(root.glob("videos/**/*.mp4"))
    assert len(videos) == (1 if layout == "v3.0" else 3)
    for video in videos:
        _hide_pre_roll_frames(video, pre_roll, b_frames)
    dataset = LeRobotDataset(root)
    with caplog.at_level(logging.WARNING, logger="gr00t_eval.dataset.reader"):
        for episode, length in reversed(list(enumerate(lengths))):  # the later episodes' shift first: it was silent
            frames = dataset.episode(episode).frames("image", np.arange(length))
            assert [nearest_step(f, range(3), 9) for f in frames] == [(episode, s) for s in range(length)]
    assert not [r for r in caplog.records if "frames and the episode" in r.getMessage()]


def _reencode(video, codec, options, flag_every_packet_key=False):
    """Re-encode an mp4 with the same frames and rate (10 fps); optionally flag every packet a keyframe, as some muxers
    leave h264 with B-frames, so that a seek may land on any frame."""
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    with av.open(str(video), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(10))
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt, stream.options = "yuv420p", options
        packets = []
        for image in frames:
            packets += stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24"))
        packets += stream.encode()
        for packet in packets:
            if flag_every_packet_key:
                packet.is_keyframe = True
            container.mux(packet)


@pytest.mark.parametrize("codec, options, flag_every_packet_key", [
    ("mpeg4", {"bf": "2", "g": "12", "qscale": "2"}, False),
    ("libx264", {"bf": "3", "g": "250", "crf": "10"}, True),
], ids=["mpeg4-bframes", "h264-bframes-every-packet-key"])
def test_a_seek_that_lands_after_the_first_wanted_frame_decodes_from_earlier(tmp_path, codec, options,
                                                                            flag_every_packet_key):
    """The keyframe a backward seek lands on was taken to be at or before the first frame wanted: with MPEG-4 Part 2
    B-frames (a keyframe decoded before the target and shown after it), or h264 B-frames whose packets all say
    keyframe, a valid episode of a shared v3.0 file was refused with 'no frame within 0.0500s of timestamps'."""
    lengths = (37, 45, 52, 29)  # four: frame colours tell four episodes apart
    root = make_dataset(tmp_path / "ds", lengths=lengths, cameras=("image",), fps=10, size=(16, 16), layout="v3.0",
                        episodes_per_file=len(lengths))
    (video,) = root.glob("videos/**/*.mp4")
    _reencode(video, codec, options, flag_every_packet_key)
    dataset = LeRobotDataset(root)
    for episode, length in enumerate(lengths):
        frames = dataset.episode(episode).frames("image", np.arange(length))
        assert [nearest_step(f, range(len(lengths)), 64) for f in frames] == [(episode, s) for s in range(length)]
    for step in (0, 14, 28):  # one step at a time: each its own seek
        (frame,) = dataset.episode(3).frames("image", [step])
        assert nearest_step(frame, range(len(lengths)), 64) == (3, step)


# --- which stream, and how it is shown ----------------------------------------------------------------------------

def _rewrite_with_streams(video, other=None, cover=False, rotation=0):
    """Rewrite an episode's mp4 with its own frames in a stream flagged `default`, after a first stream of `other`
    frames (another camera, not default) or before a cover picture; its display matrix turned `rotation` degrees."""
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    height, width = frames[0].shape[:2]

    def add(container, codec, pix_fmt="yuv420p"):
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        return stream

    with av.open(str(video), "w") as container:
        first = add(container, "libx264") if other is not None else None
        own = add(container, "libx264")
        own.disposition = av.stream.Disposition.default.value  # its number: PyAV < 17 takes no flag
        if first is not None:
            first.disposition = 0
        if rotation:
            if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):  # PyAV 17 and newer write one
                pytest.skip(f"PyAV {av.__version__} cannot write a display matrix")
            own.set_display_rotation(rotation)
        pairs = [(own, frames)] + ([(first, other)] if first is not None else [])
        if cover:
            picture = add(container, "mjpeg", "yuvj420p")
            picture.disposition = av.stream.Disposition.attached_pic.value
            pairs.append((picture, [np.zeros_like(frames[0])]))
        for stream, images in pairs:
            for image in images:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return frames


def test_an_episode_video_holding_two_camera_streams_is_refused_listing_them(tmp_path):
    """Stream 0 another camera's, stream 1 the episode's and flagged default (the one players and GR00T's decoder
    show): every step was given stream 0's frame."""
    root = make_dataset(tmp_path / "ds", lengths=(6,), cameras=("image",), fps=10, size=(16, 24))
    (video,) = root.glob("videos/**/*.mp4")
    _rewrite_with_streams(video, other=[np.full((16, 24, 3), 255, np.uint8)] * 6)
    with pytest.raises(DatasetError, match=r"episode_000000\.mp4: 2 video streams \(stream 0: 16x24 \(height x width\), "
                                           r"disposition none; stream 1: 16x24 \(height x width\), disposition default\)"):
        LeRobotDataset(root).episode(0).frames("image", [0])


def test_a_cover_picture_beside_the_camera_stream_is_no_second_camera(tmp_path):
    root = make_dataset(tmp_path / "ds", lengths=(6,), cameras=("image",), fps=10, size=(16, 24))
    (video,) = root.glob("videos/**/*.mp4")
    _rewrite_with_streams(video, cover=True)
    frames = LeRobotDataset(root).episode(0).frames("image", np.arange(6))
    assert [nearest_step(f, [0], 6)[1] for f in frames] == list(range(6))


@pytest.mark.parametrize("rotation", [90, -90])
def test_a_video_whose_display_matrix_turns_its_frames_is_refused_naming_the_rotation(tmp_path, rotation):
    """Players and GR00T's decoder show such frames turned (H and W swapped at 90 degrees); they were served unturned."""
    root = make_dataset(tmp_path / "ds", lengths=(6,), cameras=("image",), fps=10, size=(16, 24))
    (video,) = root.glob("videos/**/*.mp4")
    _rewrite_with_streams(video, rotation=rotation)
    with pytest.raises(DatasetError, match=rf"episode_000000\.mp4 \(camera 'observation\.images\.image', episode 0\): "
                                           rf"the video's display matrix turns its frames {rotation} degrees .*"
                                           "re-encode the video without the matrix"):
        LeRobotDataset(root).episode(0).frames("image", [0])
