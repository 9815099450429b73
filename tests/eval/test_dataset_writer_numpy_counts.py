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
