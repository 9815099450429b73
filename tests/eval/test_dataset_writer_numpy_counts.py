"""DatasetWriter takes its counts (gop, episodes_per_file, fps, chunks_size) as any whole-number type, numpy's
included (a count read from an array or a config loaded with numpy), and still refuses floats and bools by name."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from eval.test_dataset_writer import _episode
from gr00t_eval.dataset import DatasetWriter, LeRobotDataset


def test_numpy_integers_are_taken_for_gop_and_episodes_per_file_as_python_ints_are(tmp_path):
    root = tmp_path / "ds"
    with DatasetWriter(root, fps=np.int64(5), layout="v3.0", gop=np.int64(2), episodes_per_file=np.int32(2),
                       chunks_size=np.int64(10)) as writer:
        for length in (3, 4, 2):
            writer.add_episode(**_episode(length=length))
    assert (writer.gop, writer.episodes_per_file, writer.fps) == (2, 2, 5)
    assert all(type(value) is int for value in (writer.gop, writer.episodes_per_file, writer.fps, writer.chunks_size))
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["fps"] == 5 and info["chunks_size"] == 10
    assert LeRobotDataset(root).episode_lengths == [3, 4, 2]
    assert len(list((root / "data").rglob("*.parquet"))) == 2  # two episodes per file: three in two files


@pytest.mark.parametrize("setting, value", [
    ("gop", np.float64(2.0)), ("gop", 2.0), ("gop", np.bool_(True)), ("gop", True),
    ("episodes_per_file", np.float32(2.0)), ("episodes_per_file", 2.0), ("episodes_per_file", np.bool_(True)),
    ("episodes_per_file", False),
])
def test_floats_and_bools_are_still_refused_naming_the_setting_and_the_value(tmp_path, setting, value):
    with pytest.raises(ValueError, match=rf"^{setting} must be .*int.*, got {re.escape(repr(value))}$"):
        DatasetWriter(tmp_path / "ds", fps=5, layout="v3.0", **{setting: value})
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("fps", [np.int64(2**31), 2**31, 10**20], ids=["numpy", "int", "huge"])
def test_an_fps_no_video_can_carry_is_refused_naming_fps_and_its_range(tmp_path, fps):
    # it was taken, and the first episode failed with "'NoneType' object has no attribute 'encode'"
    with pytest.raises(ValueError, match=rf"^fps must be an int from 1 to {2**31 - 1} .*, got {re.escape(repr(fps))}$"):
        DatasetWriter(tmp_path / "ds", fps=fps)
    assert not (tmp_path / "ds").exists()


def test_an_encoder_that_refuses_its_settings_says_why_and_closes_without_a_second_error(tmp_path):
    from gr00t_eval.dataset.video import Mp4Encoder

    encoder = Mp4Encoder(tmp_path / "cam.mp4", fps=2**31)  # a rate the stream cannot take: opening it fails
    with pytest.raises(Exception) as raised:
        encoder.write(np.zeros((2, 16, 16, 3), np.uint8))
    assert not isinstance(raised.value, AttributeError), raised.value  # the encoder's own error
    encoder.close()  # releases the half-opened file; raised AttributeError ('NoneType' ... 'encode')
    encoder.close()
