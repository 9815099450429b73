"""overwrite replaces a dataset whole or not at all: its entries are moved aside (a rename each) before anything is
deleted, so a stop or an error part-way never leaves half of the old dataset, and what is said about it is true."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest

from eval.dataset_factory import make_dataset
from stop_signals import signal_when
from gr00t_eval.dataset import DatasetWriter, LeRobotDataset

OVERWRITE_TRASH = ".gr00t_overwritten"  # where an overwrite moves the old dataset before deleting it

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and signals")


@contextlib.contextmanager
def _unmovable(folder):
    """`folder` cannot be renamed into another folder: immutable for root (chattr +i), read-only for anyone else (a
    folder moved to another parent needs its `..` entry rewritten)."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("needs chattr on a filesystem that supports it")
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


def _readable(root, n_episodes):
    dataset = LeRobotDataset(root)
    assert dataset.num_episodes == n_episodes
    for index in range(n_episodes):
        dataset.episode(index).frames(dataset.video_keys[0], [0])
    return True


def test_an_overwrite_that_cannot_move_an_entry_aside_deletes_nothing_and_names_the_entry(tmp_path):
    # the entries were deleted one after the other: those listed before the one that could not be deleted were gone,
    # and the error named a bare file name
    root = make_dataset(tmp_path / "ds", lengths=(3, 4))
    last = list(root.iterdir())[-1]  # those listed before it were already deleted when it failed
    with _unmovable(last), pytest.raises(PermissionError) as raised:
        DatasetWriter(root, fps=10, overwrite=True)
    assert f"could not move {last} into {root / OVERWRITE_TRASH}" in str(raised.value)
    assert f"nothing was deleted: the old dataset in {root} is as it was" in str(raised.value)
    assert _readable(root, 2)
    assert sorted(entry.name for entry in root.iterdir()) == ["data", "meta", "videos"]


def test_what_a_killed_overwrite_left_aside_is_never_read_and_the_next_writer_deletes_it(tmp_path):
    root = make_dataset(tmp_path / "ds", lengths=(3,))
    leftover = root / OVERWRITE_TRASH / "tmp1234" / "meta"
    leftover.mkdir(parents=True)
    (leftover / "info.json").write_text("{")  # half an old dataset, as a kill during its deletion leaves it
    assert _readable(root, 1)
    with DatasetWriter(root, fps=10, overwrite=True) as writer:
        writer.add_episode(**_small_episode())
        writer.add_episode(**_small_episode())
    assert _readable(root, 2) and not (root / OVERWRITE_TRASH).exists()

    only_leftover = tmp_path / "only-leftover"
    (only_leftover / OVERWRITE_TRASH / "tmp1234").mkdir(parents=True)
    with DatasetWriter(only_leftover, fps=10) as writer:  # an old dataset's leftovers do not make it "not empty"
        writer.add_episode(**_small_episode())
    assert _readable(only_leftover, 1) and not (only_leftover / OVERWRITE_TRASH).exists()


def test_an_overwrite_replaces_the_dataset_and_leaves_the_folders_other_hidden_entries(tmp_path):
    # every hidden entry was moved aside and deleted with the dataset: a dataset kept under git lost its history
    root = make_dataset(tmp_path / "ds", lengths=(3,))
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / ".gitattributes").write_text("*.mp4 filter=lfs diff=lfs merge=lfs -text\n")
    (root / ".partial-episode_000000.parquet").write_text("")  # a writer's own leftover goes with the dataset
    with DatasetWriter(root, fps=10, overwrite=True) as writer:
        writer.add_episode(**_small_episode())
        writer.add_episode(**_small_episode())
    assert _readable(root, 2)
    assert (root / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (root / ".gitattributes").is_file()
    assert not (root / ".partial-episode_000000.parquet").exists()


def _as_lerobot_and_the_hub_leave_it(root):
    """`root`, a dataset, with what stock LeRobot's writer and a Hub download leave beside meta/: images/ (the image
    writer's temporary frames: an empty folder per camera, and the PNGs of an episode never saved) and README.md,
    .gitattributes (the Hub's dataset card and LFS rules)."""
    (root / "images" / "observation.images.front").mkdir(parents=True)
    unsaved = root / "images" / "observation.images.wrist" / "episode_000003"
    unsaved.mkdir(parents=True)
    (unsaved / "frame_000000.png").write_bytes(b"\x89PNG")
    (root / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- LeRobot\n---\n")
    (root / ".gitattributes").write_text("*.mp4 filter=lfs diff=lfs merge=lfs -text\n")
    return root


def _listing(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_an_overwrite_replaces_a_dataset_that_stock_lerobot_or_the_hub_left(tmp_path):
    # refused: "holds README.md, images, which no LeRobot dataset has"
    root = _as_lerobot_and_the_hub_leave_it(make_dataset(tmp_path / "ds", lengths=(3,)))
    with DatasetWriter(root, fps=10, overwrite=True) as writer:
        writer.add_episode(**_small_episode())
        writer.add_episode(**_small_episode())
    assert _readable(root, 2)
    assert not (root / "images").exists() and not (root / "README.md").exists()  # the old dataset's, gone with it
    assert (root / ".gitattributes").is_file()  # hidden: kept, as a git checkout's are


def test_an_overwrite_takes_hidden_files_in_images_and_a_linked_readme_as_the_datasets(tmp_path):
    """Hidden entries count as the dataset's inside images/ as in its root (a Finder's .DS_Store was refused while the
    refusal listed hidden files as a dataset's), and a README.md linked into a Hub cache's snapshot is its card."""
    root = _as_lerobot_and_the_hub_leave_it(make_dataset(tmp_path / "ds", lengths=(3,)))
    (root / "images" / "observation.images.front" / ".DS_Store").write_bytes(b"\0")
    card = tmp_path / "blobs" / "card"
    card.parent.mkdir()
    (root / "README.md").replace(card)
    (root / "README.md").symlink_to(card)
    with DatasetWriter(root, fps=10, overwrite=True) as writer:
        writer.add_episode(**_small_episode())
    assert _readable(root, 1)
    assert not (root / "images").exists() and not os.path.lexists(root / "README.md")
    assert card.is_file()  # the link went, not what it names


@pytest.mark.parametrize("stray, named", [("images/holiday.jpg", "images/holiday.jpg"),
                                          ("images/observation.images.front/notes.txt",
                                           "images/observation.images.front/notes.txt"),
                                          ("thesis.tex", "thesis.tex")])
def test_an_overwrite_refuses_a_lerobot_folder_holding_anything_else_and_names_it(tmp_path, stray, named):
    root = _as_lerobot_and_the_hub_leave_it(make_dataset(tmp_path / "ds", lengths=(3,)))
    (root / stray).write_text("mine")
    before = _listing(root)
    with pytest.raises(FileExistsError) as raised:
        DatasetWriter(root, fps=10, overwrite=True)
    assert f"dataset directory {root} holds {named}, which is not part of a LeRobot dataset" in str(raised.value)
    assert "nothing was deleted" in str(raised.value)
    assert _listing(root) == before


def test_an_overwrite_refuses_a_readme_or_images_beside_no_dataset(tmp_path):
    # a project folder (README.md, data/) is no dataset: its README.md counts as the Hub's only beside meta/info.json
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "README.md").write_text("my project")
    (project / "images" / "observation.images.front").mkdir(parents=True)
    before = _listing(project)
    with pytest.raises(FileExistsError, match=r"holds README.md, images, which are not part of a LeRobot dataset"):
        DatasetWriter(project, fps=10, overwrite=True)
    assert _listing(project) == before


def _small_episode():
    import numpy as np

    zeros = np.zeros((3, 1), np.float32)
    return dict(frames={"cam": np.zeros((3, 16, 16, 3), np.uint8)}, states={"s": zeros}, actions={"a": zeros}, task="t")


def _old_dataset_of_many_files(root, per_folder=5000):
    for name in ("meta", "data", "videos"):
        (root / name).mkdir(parents=True)
        for index in range(per_folder):
            (root / name / f"file_{index:05d}").touch()
    first = next(entry for entry in os.scandir(root) if not entry.name.startswith("."))
    return root / first.name / next(os.scandir(root / first.name)).name  # the first file a deletion in place removes


def _count_files(root):
    return sum(len(files) for folder, _, files in os.walk(root) if OVERWRITE_TRASH not in folder) - sum(
        1 for name in os.listdir(root) if name.startswith(".gr00t_record"))


@pytest.mark.sim
def test_sigterm_while_record_overwrite_empties_the_old_dataset_says_what_the_folder_holds(tmp_path):
    # the old dataset was deleted in place, and a stop part-way said "was left as it was" of a folder half deleted
    pytest.importorskip("metaworld")
    root = tmp_path / "ds"
    first_deleted = _old_dataset_of_many_files(root)
    before = _count_files(root)
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gr00t_eval.cli", "record", "--env-name", "metaworld/reach-v3", "--episodes", "1",
         "--output", str(root), "--overwrite", "--max-episode-steps", "2", "--image-size", "32"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    output = signal_when(proc, signal.SIGTERM, ready=lambda: not first_deleted.exists(), poll_s=0.0002)
    assert proc.returncode == 130, output
    said = next(line for line in output.splitlines() if line.startswith("INTERRUPTED"))
    if "was left as it was" in said:
        assert _count_files(root) == before, said
    else:
        assert said == (f"INTERRUPTED before recording began: --overwrite had removed the old dataset in {root}, which "
                        "holds no dataset now"), said
        assert not [name for name in ("meta", "data", "videos") if (root / name).exists()]


@pytest.mark.sim
def test_a_refused_record_overwrite_leaves_the_folder_as_it_was(tmp_path):
    # the refusal came after the recording's claim: three hidden claim files were left in a folder it never recorded to
    pytest.importorskip("metaworld")
    root = _as_lerobot_and_the_hub_leave_it(make_dataset(tmp_path / "ds", lengths=(3,)))
    (root / "thesis.tex").write_text("years of work")
    before = _listing(root)
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    done = subprocess.run(
        [sys.executable, "-m", "gr00t_eval.cli", "record", "--env-name", "metaworld/reach-v3", "--episodes", "1",
         "--output", str(root), "--overwrite", "--max-episode-steps", "2", "--image-size", "32"],
        capture_output=True, text=True, env=env,
    )
    assert done.returncode == 2, done.stderr
    assert _listing(root) == before
    assert f"{root} holds thesis.tex, which is not part of a LeRobot dataset" in done.stderr
