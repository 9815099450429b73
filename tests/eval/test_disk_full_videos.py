"""A disk that fills (or turns read-only) while a rollout writes its episode videos (a real tmpfs, filled by a file as
another program would fill it, or remounted read-only): the run stops naming the video it could not write, the episode
is not logged without its video, and the advice it gives fits the error and works."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from eval.scale_fixtures import CameraWalkEnv, ConstantPolicy, policy_server
from gr00t_client import EmbodimentTag
from gr00t_eval.cli import main
from gr00t_eval.rollout.envs import register_env_prefix

pytestmark = pytest.mark.skipif(sys.platform != "linux" or shutil.which("mount") is None or os.geteuid() != 0,
                                reason="mounts a tmpfs (root on Linux)")

register_env_prefix("fullcam", EmbodimentTag.NEW_EMBODIMENT,
                    lambda task, **kwargs: CameraWalkEnv({"fast": 2.0, "slow": 1.0}[task]))

SMALL = ["--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6", "--vectorization", "sync",
         "--timeout-ms", "5000", "--seed", "3", "--n-episodes", "6"]


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk):
    """Write a file on `disk` until it is full."""
    with open(disk / "filler", "ab", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
        except OSError:
            pass


def remount_read_only(disk):
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


class FillsDiskOnCall(ConstantPolicy):
    """Serves walkto's constant action; its `call`-th get_action runs `spoil(disk)` first (fill, by default)."""

    def __init__(self, call, disk, spoil=fill):
        super().__init__()
        self.calls, self.call, self.disk, self.spoil = 0, call, disk, spoil

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls == self.call:
            self.spoil(self.disk)
        return super()._get_action(observation, options)


_ROLLOUT = """
import sys
sys.path.insert(0, sys.argv[1])
from eval.test_disk_full_videos import main
sys.exit(main(["--log-level", "WARNING", "rollout", *sys.argv[2:]]))
"""
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rollout(port, *argv):
    return main(["--log-level", "WARNING", "rollout", "--policy-client-port", str(port), *argv])


def rollout_process(port, *argv):
    """rollout in a process of its own: it ends, as a user's does, and its claim with it."""
    return subprocess.run([sys.executable, "-c", _ROLLOUT, TESTS_DIR, "--policy-client-port", str(port), *argv],
                          capture_output=True, text=True, timeout=120)


def logged(out):
    return [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines() if line.strip()]


def test_a_video_the_full_disk_refuses_stops_the_run_and_its_resume_runs_that_episode_again(small_disk):
    out = small_disk / "run"
    with policy_server(FillsDiskOnCall(8, small_disk)) as server:  # episode 2 or 3 of 6 running
        result = rollout_process(server.port, "--env-name", "fullcam/slow", "--output-dir", str(out), *SMALL)
        assert result.returncode != 0, result.stdout + result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert f"No space left on device writing {out / 'videos' / 'episode_000'}" in line, line
        assert "the run stopped there" in line and f"gr00t-eval rollout --resume {out}" in line, line
        assert not (out / "results.json").exists()
        kept = logged(out)
        assert kept and all(entry["video_path"] for entry in kept)  # none logged as if it had no video
        (small_disk / "filler").unlink()
        assert rollout(server.port, "--resume", str(out)) == 0
    episodes = logged(out)
    assert sorted(entry["episode_index"] for entry in episodes) == list(range(6))
    assert all(entry["video_path"] and os.path.isfile(entry["video_path"]) for entry in episodes)


def test_a_disk_full_before_the_first_episode_is_logged_advises_the_same_command_which_then_runs(small_disk):
    out = small_disk / "run"
    command = ("--env-name", "fullcam/slow", "--output-dir", str(out), *SMALL)
    with policy_server(FillsDiskOnCall(1, small_disk)) as server:  # the first episode is running
        result = rollout_process(server.port, *command)
        assert result.returncode != 0, result.stdout + result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert "No space left on device writing" in line and "run the same command again" in line, line
        assert "--resume" not in line  # the run left no run.json: a resume would be refused
        (small_disk / "filler").unlink()
        assert rollout_process(server.port, *command).returncode == 0  # not refused as "not empty"
    assert sorted(entry["episode_index"] for entry in logged(out)) == list(range(6))


def test_a_folder_turned_read_only_is_advised_to_be_made_writable_not_to_free_space(small_disk):
    out = small_disk / "run"
    with policy_server(FillsDiskOnCall(8, small_disk, remount_read_only)) as server:
        result = rollout_process(server.port, "--env-name", "fullcam/slow", "--output-dir", str(out), *SMALL)
    assert result.returncode != 0, result.stdout + result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "Read-only file system writing" in line and "Make the folder writable again" in line, line
    assert "Free some space" not in line
