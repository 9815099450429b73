"""How the dataset reader treats videos it cannot serve as stored: a display matrix that flips or turns the frames, a
frame size that changes mid-stream, a codec this PyAV has no decoder for, a git-lfs pointer in place of a file; and
open-loop's windows decoding a sparse-keyframe video forward instead of again from its keyframe. Real mp4 and parquet
files written with the project's DatasetWriter and PyAV."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from eval.dataset_factory import make_dataset
from gr00t_client import ModalityConfig
from gr00t_eval.dataset import LeRobotDataset
from gr00t_eval.dataset.errors import DatasetError
from gr00t_eval.open_loop import OpenLoopConfig, evaluate_open_loop
from gr00t_eval.open_loop_observation import frame_windows

SIZE = (32, 48)  # (height, width)
POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
           b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 48213\n")


def _one_camera(root: Path, lengths=(6,), size=SIZE) -> Path:
    return make_dataset(root, lengths=lengths, cameras=("image",), fps=10, size=size)


def _videos(root: Path):
    return sorted(root.glob("videos/**/*.mp4"))


# --- the display matrix ---------------------------------------------------------------------------------------------

def _set_display_matrix(video: Path, a: int, b: int, c: int, d: int) -> None:
    """Rewrite the tkhd matrix of `video` (written with the identity) to [a b; c d] (16.16 fixed point)."""
    data = bytearray(video.read_bytes())
    box = data.index(b"tkhd")
    offset = box + 8 + (20 if data[box + 4] == 0 else 32) + 16
    assert struct.unpack(">9i", data[offset:offset + 36]) == (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    data[offset:offset + 36] = struct.pack(">9i", a, b, 0, c, d, 0, 0, 0, 0x40000000)
    video.write_bytes(bytes(data))


ONE = 0x10000


@pytest.mark.parametrize("matrix, described", [
    ((ONE, 0, 0, -ONE), "flips its frames upside down (a vertical flip)"),
    ((-ONE, 0, 0, ONE), "mirrors its frames left to right (a horizontal mirror)"),
    ((-ONE, 0, 0, -ONE), "turns its frames 180 degrees"),
    ((0, ONE, ONE, 0), "mirrors its frames across a diagonal"),
])
def test_a_display_matrix_that_flips_or_turns_the_frames_is_refused_saying_what_it_does(tmp_path, matrix, described):
    """A vertical flip reads as rotation 0 and was served upright, though players show it upside down; a mirror was
    refused as a turn by -180 degrees."""
    root = _one_camera(tmp_path / "ds")
    (video,) = _videos(root)
    _set_display_matrix(video, *matrix)
    with pytest.raises(DatasetError) as raised:
        LeRobotDataset(root).episode(0).frames("image", [0])
    message = str(raised.value)
    assert f"{video} (camera 'observation.images.image', episode 0): the video's display matrix {described}" in message
    assert "re-encode the video without the matrix" in message and "ffmpeg" in message


# --- a frame size that changes mid-stream ---------------------------------------------------------------------------

def _encode(images, height, width):
    context = av.CodecContext.create("libx264", "w")
    context.width, context.height, context.pix_fmt = width, height, "yuv420p"
    context.time_base, context.framerate = Fraction(1, 10), Fraction(10)
    context.options = {"crf": "10", "g": "4", "bf": "0", "x264-params": "repeat-headers=1"}  # SPS/PPS in-band
    packets = []
    for index, image in enumerate(images):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index
        packets += context.encode(frame)
    return context, packets + context.encode(None)


def _rewrite_with_size_change(video: Path, length: int, second=(16, 32)) -> None:
    """Rewrite `video` as one h264 stream whose second half is coded at `second` (height, width): a new SPS."""
    half = length // 2
    first, first_packets = _encode([np.full((*SIZE, 3), 10 * s, np.uint8) for s in range(half)], *SIZE)
    _, second_packets = _encode([np.full((*second, 3), 10 * s, np.uint8) for s in range(half, length)], *second)
    with av.open(str(video), "w") as container:
        stream = container.add_stream("h264", rate=10)
        stream.height, stream.width, stream.pix_fmt = *SIZE, "yuv420p"
        stream.time_base = Fraction(1, 10)
        stream.codec_context.extradata = first.extradata
        for index, packet in enumerate(first_packets + second_packets):
            packet.stream = stream
            if index >= len(first_packets):
                packet.pts += half
                packet.dts += half
            packet.time_base = Fraction(1, 10)
            container.mux(packet)


def test_a_frame_of_another_size_than_the_stream_is_refused_naming_both_sizes_file_and_frame(tmp_path):
    """The header's size passed the check against meta/info.json; a request spanning the change died in np.stack with
    numpy's bare ValueError, and one within the second half was served frames of another camera's size."""
    root = _one_camera(tmp_path / "ds", lengths=(12,))
    (video,) = _videos(root)
    _rewrite_with_size_change(video, 12)
    episode = LeRobotDataset(root).episode(0)
    for steps in ([4, 5, 6, 7], [8]):
        with pytest.raises(DatasetError) as raised:
            episode.frames("image", steps)
        message = str(raised.value)
        assert str(video) in message and "16x32" in message and "32x48" in message
        assert f"frame {6 if steps[0] == 4 else 8} " in message


def test_open_loop_errors_the_trajectory_whose_frame_size_changes_and_scores_the_others(tmp_path):
    root = _one_camera(tmp_path / "ds", lengths=(12, 8))
    _rewrite_with_size_change(_videos(root)[0], 12)
    ReplayPolicy = pytest.importorskip("gr00t_server.policies.replay").ReplayPolicy  # an eval-only venv has no server
    configs = dict(ReplayPolicy(root).get_modality_config())
    configs["video"] = ModalityConfig(delta_indices=[0], modality_keys=["image"])
    policy = ReplayPolicy(root, modality_configs=configs, execution_horizon=4)
    config = OpenLoopConfig(str(root), traj_ids=[0, 1], steps=12, execution_horizon=4, output_dir=str(tmp_path / "out"),
                            plot=False)
    result = evaluate_open_loop(policy, config, report=lambda _: None, progress=False)
    assert sorted(result.trajectories) == [1]
    assert list(result.errored) == [0] and "16x32" in result.errored[0]


# --- open-loop windows on a video with one keyframe -----------------------------------------------------------------

def _reencode_with_one_keyframe(video: Path) -> None:
    with av.open(str(video)) as container:
        images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(10))
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "23", "x264-params": "keyint=infinite:scenecut=0"}
        for image in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def one_keyframe(tmp_path_factory) -> Path:
    root = _one_camera(tmp_path_factory.mktemp("one_keyframe") / "ds", lengths=(600, 40), size=(16, 32))
    for video in _videos(root):
        _reencode_with_one_keyframe(video)
    return root


@pytest.mark.parametrize("delta_indices", [[0], [-15, -1, 0]])
def test_windows_read_in_order_decode_each_frame_about_once_on_a_video_with_one_keyframe(one_keyframe, delta_indices):
    """Each window reopened the file and decoded again from the only keyframe: 600 steps in windows of 128 decoded
    1,900 frames, quadratic in the episode's length. History rows the next window shares with the last are no reason
    to go back."""
    dataset = LeRobotDataset(one_keyframe)
    episode = dataset.episode(0)
    for _steps, rows in frame_windows(list(range(600)), delta_indices, 600):
        episode.frames("image", rows)
    assert dataset.frames_decoded <= 600 + 2


@pytest.mark.parametrize("delta_indices", [[0], [-7, 0]])
def test_frames_read_by_windows_equal_frames_read_one_at_a_time(one_keyframe, delta_indices):
    """Windows that go on decoding where the last stopped ([0]) or go back for history rows ([-7, 0]) give the very
    frames a decode of each step alone gives; so does the next episode's file, and a read after close()."""
    dataset = LeRobotDataset(one_keyframe)
    episode = dataset.episode(0)
    read = [(rows, episode.frames("image", rows))
            for _steps, rows in frame_windows(list(range(0, 600, 3)), delta_indices, 600, 40)]
    for rows, frames in read[::3]:
        alone = LeRobotDataset(one_keyframe).episode(0)  # a reader of its own: nothing decoded before
        for row, frame in list(zip(rows, frames))[::9]:
            assert np.array_equal(frame, alone.frames("image", [row])[0]), f"step {row}"
    for rows, frames in read[::-5]:  # backwards: each a seek of the decoder kept open
        assert np.array_equal(episode.frames("image", rows), frames)
    other = dataset.episode(1).frames("image", np.arange(40))
    assert np.array_equal(other, LeRobotDataset(one_keyframe).episode(1).frames("image", np.arange(40)))
    dataset.close()
    assert np.array_equal(episode.frames("image", [599]), LeRobotDataset(one_keyframe).episode(0).frames("image", [599]))


# --- a codec without a decoder, a git-lfs pointer -------------------------------------------------------------------

def test_a_codec_this_pyav_cannot_decode_is_named_with_versions_and_what_to_install(tmp_path):
    """'evc1' (MPEG-5 EVC) stands for an AV1 video on a PyAV whose FFmpeg has no libdav1d: "Decoder not found" alone."""
    root = _one_camera(tmp_path / "ds")
    (video,) = _videos(root)
    data = video.read_bytes()
    entry = data.index(b"avc1", data.index(b"stsd"))
    video.write_bytes(data[:entry] + b"evc1" + data[entry + 4:])
    with pytest.raises(DatasetError) as raised:
        LeRobotDataset(root).episode(0).frames("image", [0])
    message = str(raised.value)
    assert str(video) in message and "'evc1'" in message
    assert f"PyAV {av.__version__}" in message and "FFmpeg" in message
    assert "install a PyAV wheel" in message and "libdav1d" in message


def test_a_git_lfs_pointer_in_place_of_a_video_is_named_with_git_lfs_pull(tmp_path):
    root = _one_camera(tmp_path / "ds")
    (video,) = _videos(root)
    video.write_bytes(POINTER)
    with pytest.raises(DatasetError, match=r"is a git-lfs pointer, not the file itself.*run `git lfs pull`") as raised:
        LeRobotDataset(root).episode(0).frames("image", [0])
    assert str(video) in str(raised.value) and "dataset" in str(raised.value)


def test_a_git_lfs_pointer_in_place_of_a_data_file_is_named_with_git_lfs_pull(tmp_path):
    root = _one_camera(tmp_path / "ds")
    (data,) = sorted(root.glob("data/**/*.parquet"))
    data.write_bytes(POINTER)
    dataset = LeRobotDataset(root)
    for read in (dataset.check_data_files, lambda: dataset.episode(0)):
        with pytest.raises(DatasetError, match=r"is a git-lfs pointer, not the file itself.*run `git lfs pull`"):
            read()


def test_a_git_lfs_pointer_in_place_of_a_v3_episode_list_file_is_named_with_git_lfs_pull(tmp_path):
    """meta/episodes/*.parquet of a v3.0 dataset (a partial `git lfs pull --include`) gave pyarrow's 'Parquet magic bytes
    not found in footer'."""
    root = make_dataset(tmp_path / "ds", lengths=(3, 4), cameras=(), layout="v3.0")
    (episodes,) = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    episodes.write_bytes(POINTER)
    with pytest.raises(DatasetError, match=r"is a git-lfs pointer, not the file itself.*run `git lfs pull`") as raised:
        LeRobotDataset(root)
    assert str(episodes) in str(raised.value)
