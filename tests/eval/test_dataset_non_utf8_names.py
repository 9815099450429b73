"""Datasets in folders whose name on disk is not UTF-8 (a Latin-1 byte from an old tool under a UTF-8 locale, or any
non-ASCII name under a Latin-1 locale): pyarrow re-encoded the str path as UTF-8 and opened another path, so reading
failed with a bare codec error or a false 'No such file or directory', and writing failed after the first episode. They
are written and read like any other. Real folders, real parquet files and mp4s."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from eval.dataset_factory import episode_frames, expected_actions, expected_states, make_dataset
from gr00t_eval.dataset import LeRobotDataset
from latin1_locale import latin1_locale_env

LATIN1_NAME = os.fsdecode(b"caf\xe9")  # 'caf\udce9' under a UTF-8 locale: no UTF-8 text, its bytes are not UTF-8


def assert_reads_as_written(root: Path, lengths) -> None:
    dataset = LeRobotDataset(root)
    dataset.check_data_files()
    assert dataset.episode_lengths == list(lengths)
    for position, length in enumerate(lengths):
        episode = dataset.episode(position)
        for key, values in expected_states(position, length).items():
            np.testing.assert_array_equal(episode.states(key), values)
        for key, values in expected_actions(position, length).items():
            np.testing.assert_array_equal(episode.actions(key), values)
        decoded = episode.frames("image", [0, length - 1]).astype(int)
        expected = episode_frames(position, 0, length)[[0, length - 1]].astype(int)
        assert np.abs(decoded - expected).max() <= 8  # h264 is lossy


@pytest.mark.parametrize("layout, episodes_per_file", [("v2.1", None), ("v3.0", 2)])
def test_a_dataset_is_written_and_read_in_a_folder_whose_name_is_not_utf8(tmp_path, layout, episodes_per_file):
    root = make_dataset(tmp_path / LATIN1_NAME / "ds", lengths=(5, 4, 3), layout=layout,
                        episodes_per_file=episodes_per_file)
    assert_reads_as_written(root, (5, 4, 3))


def test_a_dataset_copied_into_a_folder_whose_name_is_not_utf8_reads_as_the_original(tmp_path):
    original = make_dataset(tmp_path / "original", lengths=(4, 6))
    copy = Path(shutil.copytree(original, tmp_path / LATIN1_NAME))
    assert_reads_as_written(copy, (4, 6))


def test_under_a_latin1_locale_a_dataset_in_a_non_ascii_folder_is_written_and_read(tmp_path):
    env = latin1_locale_env(tmp_path)
    if env is None:
        pytest.skip("localedef cannot build de_DE.ISO-8859-1 here")
    probe = textwrap.dedent("""
        import sys
        from pathlib import Path
        assert sys.getfilesystemencoding() == "iso8859-1", sys.getfilesystemencoding()
        from eval.dataset_factory import make_dataset
        from eval.test_dataset_non_utf8_names import assert_reads_as_written
        root = make_dataset(Path(sys.argv[1]) / "caf\\u00e9", lengths=(4, 3))
        assert_reads_as_written(root, (4, 3))
        print("read back")
    """)
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], env=env, capture_output=True,
                          encoding="latin-1", timeout=120)
    assert done.returncode == 0 and done.stdout == "read back\n", done.stderr
    assert (tmp_path / os.fsdecode(b"caf\xe9") / "meta" / "info.json").is_file()  # the Latin-1 bytes, as listed


def test_a_video_the_locale_cannot_name_is_said_so_not_not_found(tmp_path):
    """A camera key '相机' (UTF-8 on disk, as LeRobot writes it) read under LC_ALL=C: the path cannot be encoded in the
    ASCII file-system encoding, Path.is_file() swallowed the UnicodeEncodeError, and every trajectory said 'video file
    not found' of a file that is there."""
    root = make_dataset(tmp_path / "ds", lengths=(3,), cameras=("相机",))
    probe = textwrap.dedent("""
        import sys
        from gr00t_eval.dataset import DatasetError, LeRobotDataset
        assert sys.getfilesystemencoding() == "ascii", sys.getfilesystemencoding()
        try:
            LeRobotDataset(sys.argv[1]).episode(0).frames("\\u76f8\\u673a", [0])  # the key, as ASCII source
        except DatasetError as exc:
            print(str(exc).encode("ascii", "backslashreplace").decode("ascii"))
    """)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), *sys.path])}
    done = subprocess.run([sys.executable, "-c", probe, str(root)], env=env, capture_output=True, encoding="utf-8",
                          errors="backslashreplace", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "not found" not in done.stdout
    assert ("cannot be named in this locale's file-system encoding 'ascii'; run with a UTF-8 locale, e.g. "
            "LANG=C.UTF-8, or PYTHONUTF8=1") in done.stdout, done.stdout
