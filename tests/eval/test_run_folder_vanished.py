"""An output folder that disappears while a run writes into it (a /tmp cleaner, a share unmounted): the run stops
with an error naming the folder, exits non-zero, and never re-makes the folder to report a run that is not there."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eval.scale_fixtures import CameraWalkEnv, ConstantPolicy, policy_server
from gr00t_client import EmbodimentTag
from gr00t_eval.cli import main
from gr00t_eval.rollout.envs import register_env_prefix

SMALL = ["--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6", "--vectorization", "sync",
         "--timeout-ms", "5000", "--env-import", "eval.scale_fixtures", "--seed", "3", "--n-episodes", "6"]


register_env_prefix("vanishcam", EmbodimentTag.NEW_EMBODIMENT,
                    lambda task, **kwargs: CameraWalkEnv({"fast": 2.0, "slow": 1.0}[task]))


class RemovesFolderOnCall(ConstantPolicy):
    """Serves walkto's constant action; its `call`-th get_action runs `remove` first (the folder vanishing mid-run)."""

    def __init__(self, call, remove):
        super().__init__()
        self.calls, self.call, self.remove = 0, call, remove

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls == self.call:
            self.remove()
        return super()._get_action(observation, options)


def rollout(port, out, env_name="vanishcam/slow", *extra):
    return main(["--log-level", "WARNING", "rollout", "--env-name", env_name, "--policy-client-port", str(port),
                 "--output-dir", str(out), *SMALL, *extra])


@pytest.mark.parametrize("videos", [False, True], ids=["no-video", "videos"])
def test_a_run_whose_folder_is_deleted_mid_run_stops_naming_it_and_does_not_make_it_again(tmp_path, capsys, videos):
    out = tmp_path / "run"
    env_name, extra = ("vanishcam/slow", ()) if videos else ("walkto/slow", ("--no-video",))
    with policy_server(RemovesFolderOnCall(8, lambda: shutil.rmtree(out))) as server:  # episode 2 of 6 running
        code = rollout(server.port, out, env_name, *extra)
    assert code != 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"the output folder {out} disappeared (unmounted or deleted)" in line, line
    assert not out.exists()  # no results.json, episodes.jsonl or videos/ in a folder the run did not claim


def test_a_run_whose_folder_is_deleted_mid_run_names_a_resume_command_with_its_registration_flags(tmp_path, capsys):
    """The command lacked them: run as printed, a resume of the folder come back was refused for want of them."""
    out = tmp_path / "run"
    with policy_server(RemovesFolderOnCall(8, lambda: shutil.rmtree(out))) as server:
        assert rollout(server.port, out, "walkto/slow", "--no-video") != 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert (f"continue with: gr00t-eval rollout --resume {out} --env-import eval.scale_fixtures and the same server "
            "flags") in line, line


def test_a_batch_whose_job_folder_is_deleted_mid_job_says_so_and_its_resume_runs_that_job_again(tmp_path, capsys):
    out, jobs = tmp_path / "batch", tmp_path / "jobs.json"
    with policy_server(RemovesFolderOnCall(3, lambda: shutil.rmtree(out / "jobs" / "slow"))) as server:
        jobs.write_text(json.dumps({
            "defaults": {"policy_server": {"port": server.port}, "n_episodes": 4, "seed": 0, "max_episode_steps": 6,
                         "overrides": {"n_action_steps": 2, "vectorization": "sync", "n_envs": 1}},
            "jobs": [{"name": "slow", "env_name": "walkto/slow"}, {"name": "fast", "env_name": "walkto/fast"}]}))
        assert main(["--log-level", "ERROR", "batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"the job folder {out / 'jobs' / 'slow'} disappeared (unmounted or deleted)" in message, message
        assert "free some space" not in message and f"gr00t-eval batch --resume {out} (it runs that job again)" in message

        assert main(["--log-level", "ERROR", "batch", "--resume", str(out)]) == 0
    assert json.loads((out / "batch_results.json").read_text())["n_pending"] == 0


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("mount") is None or os.geteuid() != 0,
                    reason="mounts a tmpfs (root on Linux)")
def test_a_run_whose_share_is_unmounted_mid_run_writes_nothing_in_the_folder_beneath(tmp_path, capsys):
    mount = tmp_path / "share"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mount)], check=True)
    out = mount / "run"
    try:
        unmount = lambda: subprocess.run(["umount", "-l", str(mount)], check=True)  # noqa: E731
        with policy_server(RemovesFolderOnCall(8, unmount)) as server:
            code = rollout(server.port, out)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    assert code != 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"the output folder {out} disappeared (unmounted or deleted)" in line, line
    assert list(Path(mount).iterdir()) == []  # the folder under the mount point is left as it was: empty


def test_a_run_whose_folder_was_taken_by_a_new_run_leaves_that_runs_files_alone(tmp_path, capsys, live_process):
    """Run A's folder is deleted before A scored an episode, and run B (another process) starts into the same path:
    A wrote its episode's video among B's, then its clean-up of "a new run that never started" read B's empty
    episodes.jsonl as its own and deleted B's run.json and videos (B then stopped: "output folder disappeared")."""
    from test_batch_merge_outputs import claim_by

    out = tmp_path / "run"

    def taken_by_run_b():
        out.rename(tmp_path / "deleted")  # as rm -rf, but its inode cannot be the new folder's
        (out / "videos").mkdir(parents=True)
        run_file = claim_by(out, live_process.pid, "run.json")
        record = json.loads(run_file.read_text())
        run_file.write_text(json.dumps({**record, "config": {"video_dir": str(out / "videos")}}))
        (out / "episodes.jsonl").write_text("")
        (out / "videos" / "episode_0005_success.mp4").write_bytes(b"run B's video")

    with policy_server(RemovesFolderOnCall(2, taken_by_run_b)) as server:  # mid episode 0: A has logged none
        code = rollout(server.port, out, "vanishcam/slow")
    assert code != 0
    assert f"the output folder {out} disappeared" in capsys.readouterr().err
    assert not (tmp_path / "deleted" / "episodes.jsonl").exists()  # A was a new run that had scored nothing
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["episodes.jsonl", "run.json", "videos",
                                                                        "videos/episode_0005_success.mp4"]
    assert json.loads((out / "run.json").read_text())["claim"]["pid"] == live_process.pid
