"""A full or read-only /dev/shm (Docker's 64 MB default, --ipc=none, a sandbox) stops a rollout whose envs run in worker
processes: the error names /dev/shm and its remedies, never the output folder's full or read-only disk (the failing
write is the workers' queue semaphore, and it names no file). A storage error is the output folder's only when the file
it names lies there."""

import errno
import os
import shutil
import subprocess
import sys

import pytest

from eval.scale_fixtures import policy_server
from gr00t_eval.run_stop import is_storage_line

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS_DIR)
SOURCES = [os.path.join(REPO, "packages", package, "src") for package in ("gr00t-client", "gr00t-server", "gr00t-eval")]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["full", "read-only"])
def test_a_storage_error_naming_no_file_is_not_the_output_folders(tmp_path, err):
    assert not is_storage_line(OSError(err, os.strerror(err)), tmp_path / "run", tmp_path / "videos")


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["full", "read-only"])
def test_a_storage_error_is_the_output_folders_only_when_its_file_lies_there(tmp_path, err):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    assert is_storage_line(OSError(err, os.strerror(err), str(run / "episodes.jsonl")), run, None)
    assert not is_storage_line(OSError(err, os.strerror(err), str(elsewhere / "sem.x")), run, None)
    assert not is_storage_line(OSError(err, os.strerror(err), "/dev/shm/sem.mp-abc"), run, None)


def test_a_command_that_names_no_output_folder_keeps_every_storage_error_a_storage_line():
    assert is_storage_line(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))


@pytest.mark.parametrize("plot_path", ["plot.png", "plots/"])
def test_an_unreadable_dataset_file_beside_open_loops_plot_file_is_a_file_it_reads_not_writes(tmp_path, monkeypatch,
                                                                                                plot_path):
    """`--save-plot-path plot.png` counted the whole working folder as written: a dataset file there this user may not
    read was reported as 'Permission denied writing ...: Give this user write access to the folder'."""
    import argparse

    from gr00t_eval.open_loop_cli import _storage_stop_message, _written_folders

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(save_plot_path=plot_path, traj_ids=[0, 1])
    unread = OSError(errno.EACCES, os.strerror(errno.EACCES), "ds/data/episode_000000.parquet")
    message = _storage_stop_message(unread, tmp_path / "run", _written_folders(args, tmp_path / "run"))
    assert message.startswith("error: cannot read ds/data/episode_000000.parquet") and "read access" in message
    plot = "plot_traj1.png" if plot_path == "plot.png" else "plots/x.png"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), plot)  # a plot of this run: its storage line
    assert is_storage_line(full, *_written_folders(args, tmp_path / "run"))


def _can_mount_a_dev_shm_of_its_own():
    return (sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("unshare") is not None
            and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0)


@pytest.mark.skipif(not _can_mount_a_dev_shm_of_its_own(), reason="needs root and unshare -m (a /dev/shm of its own)")
@pytest.mark.parametrize("setup, state", [
    ("mount -t tmpfs -o size=64k tmpfs /dev/shm && dd if=/dev/zero of=/dev/shm/fill bs=4k count=100 2>/dev/null; ",
     "/dev/shm is full"),
    ("mount -t tmpfs -o ro,size=64k tmpfs /dev/shm && ", "/dev/shm is read-only"),
], ids=["full", "read-only"])
def test_a_rollout_with_env_workers_names_an_unusable_dev_shm_and_its_remedies(tmp_path, setup, state):
    out = tmp_path / "run"
    with policy_server() as server:
        command = " ".join([sys.executable, "-m", "gr00t_eval.cli", "rollout", "--env-name", "walkto/fast",
                            "--env-import", "eval.scale_fixtures", "--n-episodes", "2", "--n-envs", "2",
                            "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video", "--seed", "0",
                            "--policy-client-port", str(server.port), "--output-dir", str(out)])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*SOURCES, TESTS_DIR])}
        run = subprocess.run(["unshare", "-m", "sh", "-c", setup + "exec " + command], env=env, capture_output=True,
                             text=True, timeout=120)
    text = run.stdout + run.stderr
    last = text.strip().splitlines()[-1]
    assert run.returncode == 2, text
    assert state in last and "--shm-size" in last and "emptyDir" in last and "--n-envs 1" in last, last
    assert "Free some space" not in text and "writable again" not in text, text
