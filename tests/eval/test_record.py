"""`gr00t-eval record`: Meta-World's scripted expert into a LeRobot v2.1 dataset that replays deterministically."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering

from gr00t_eval.dataset import LeRobotDataset  # noqa: E402
from gr00t_eval.record import record_metaworld  # noqa: E402

pytest.importorskip("metaworld")
pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("record") / "reach"
    summary = record_metaworld("metaworld/reach-v3", 2, root, seed=7, image_size=32, progress=False)
    return summary, LeRobotDataset(root)


def test_each_episode_stores_its_seed_and_the_expert_succeeds(recorded):
    summary, dataset = recorded
    assert summary.seeds == [7, 8] and summary.successes == [True, True]
    assert [dataset.episode(i).extras["seed"] for i in range(2)] == [7, 8]
    assert dataset.episode_lengths == summary.lengths
    assert dataset.codebase_version == "v2.1"


def test_the_dataset_has_camera_state_action_and_language_groups(recorded):
    _, dataset = recorded
    assert dataset.video_keys == ["corner2"]
    assert dataset.state_dims() == {"eef_pos": 3, "gripper": 1, "objects": 14, "goal": 3}
    assert dataset.action_dims() == {"eef_delta": 3, "gripper": 1}
    episode = dataset.episode(0)
    assert episode.frames("corner2", [0]).shape == (1, 32, 32, 3)
    assert episode.language(dataset.language_keys[0])[0] == "reach the red goal position"


def test_replaying_the_recorded_actions_with_the_seed_reproduces_the_episode(recorded):
    from gr00t_eval.rollout import make_env

    _, dataset = recorded
    episode = dataset.episode(1)
    env = make_env("metaworld/reach-v3", image_size=32)
    try:
        obs, _ = env.reset(seed=episode.extras["seed"])
        states, success = [], False
        for t in range(episode.length):
            states.append(obs["state.eef_pos"])
            action = {"action.eef_delta": episode.actions("eef_delta")[t], "action.gripper": episode.actions("gripper")[t]}
            obs, _, _, _, info = env.step(action)
            success = info["success"]
    finally:
        env.close()
    assert np.array_equal(np.stack(states), episode.states("eef_pos"))
    assert success


def test_record_refuses_other_envs(tmp_path):
    with pytest.raises(ValueError, match="metaworld/<task>"):
        record_metaworld("pusht/PushT-v0", 1, tmp_path / "x", progress=False)


def test_record_refuses_an_output_too_long_for_a_datasets_files_before_recording(tmp_path):
    """A 4030-byte --output recorded its episodes and then failed with a bare 'File name too long' naming no file,
    leaving no loadable dataset (R56)."""
    import os

    from eval.deep_paths import folder_near_path_max

    output = str(folder_near_path_max(tmp_path, room=40)[0])  # no room for videos/chunk-000/.../episode_...mp4
    with pytest.raises(ValueError, match=r"--output .* is too long a path for the files written there"):
        record_metaworld("metaworld/reach-v3", 1, output, progress=False)
    assert not os.path.exists(output)


def test_record_refuses_several_tasks_saying_it_takes_one(tmp_path):
    """rollout's comma-separated --env-name was refused as one unknown Meta-World task 'reach-v3,push-v3'."""
    with pytest.raises(ValueError, match=r"record takes one task per run, got 'metaworld/reach-v3,metaworld/push-v3': "
                                         r"record each of 'metaworld/reach-v3', 'metaworld/push-v3' into a folder"):
        record_metaworld("metaworld/reach-v3,metaworld/push-v3", 1, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_a_second_recording_cannot_empty_a_directory_another_recording_fills(recorded, tmp_path):
    """Two recordings into one folder both exited 0, leaving episodes that held the other run's data under the wrong
    seeds; --overwrite deleted the running one's finished episodes."""
    import json
    import shutil

    from gr00t_eval.record import RECORD_CLAIM
    from gr00t_eval.run_claim import claim_output_dir, finish_claim
    from gr00t_eval.run_dir import OutputDirError

    summary, _ = recorded
    root = tmp_path / "reach"
    shutil.copytree(summary.root, root)
    assert json.loads((root / RECORD_CLAIM).read_text())["claim"]["outcome"] == "complete"
    (root / RECORD_CLAIM).unlink()
    claim = claim_output_dir(root, RECORD_CLAIM, {})  # a recording of this (live) process, not finished
    with pytest.raises(OutputDirError, match=r"--output .* is in use"):
        record_metaworld("metaworld/reach-v3", 1, root, image_size=32, overwrite=True, progress=False)
    assert LeRobotDataset(root).episode_lengths == summary.lengths  # untouched
    finish_claim(claim, "complete")
    record_metaworld("metaworld/reach-v3", 1, root, seed=3, image_size=32, overwrite=True, progress=False)
    assert LeRobotDataset(root).episode(0).extras["seed"] == 3


def test_meta_worlds_own_500_step_limit_does_not_cut_the_callers_budget():
    """Meta-World truncates at its max_path_length (500): `rollout --max-episode-steps 720` (the default) and
    `record --max-episode-steps 800` ended every long episode at 500 without a word."""
    from gr00t_eval.rollout import make_env

    env = make_env("metaworld/reach-v3", image_size=32)
    try:
        env.reset(seed=0)
        inner = env
        while not hasattr(inner, "curr_path_length"):  # the Meta-World env under our adapter
            inner = getattr(inner, "_env", None) or inner.env
        # Meta-World's own step counter taken to just below its limit (600 rendered steps took 20 s): its step 500
        # said truncated and its step 501 raised "Maximum path length allowed by the benchmark has been exceeded"
        inner.curr_path_length = 495
        still = {"action.eef_delta": np.zeros(3, np.float32), "action.gripper": np.zeros(1, np.float32)}
        for _ in range(10):
            _obs, _reward, terminated, truncated, _info = env.step(still)
            assert not (terminated or truncated)
        assert inner.curr_path_length == 505
    finally:
        env.close()


def test_sigterm_stops_a_recording_like_ctrl_c_keeping_its_finished_episodes(tmp_path):
    import json
    import signal
    import subprocess
    import sys

    from stop_signals import signal_when

    root = tmp_path / "reach"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gr00t_eval.cli", "record", "--env-name", "metaworld/reach-v3", "--episodes", "200",
         "--output", str(root), "--image-size", "32"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output = signal_when(proc, signal.SIGTERM, ready=(root / "meta" / "info.json").exists)
    assert proc.returncode == 130, output
    kept = len(LeRobotDataset(root).episode_lengths)
    assert kept >= 1
    assert f"INTERRUPTED: {root} holds the {kept} episodes finished" in output
    assert "episode(s) saved before the stop" in output and "write_meta()" not in output  # the user's words
    assert json.loads((root / ".gr00t_record.json").read_text())["claim"]["outcome"] == "interrupted"


def test_two_recordings_racing_into_one_folder_with_overwrite_leave_one_runs_dataset(recorded, tmp_path):
    """The claim was taken only after the folder was emptied, and the emptying deleted the other run's claim: two
    `record --overwrite` started a second apart both exited 0, leaving one run's episodes under the other's seeds."""
    import shutil
    import subprocess
    import sys
    import time

    summary, _ = recorded
    root = tmp_path / "reach"
    shutil.copytree(summary.root, root)  # an earlier recording, finished: --overwrite may replace it
    command = [sys.executable, "-m", "gr00t_eval.cli", "record", "--env-name", "metaworld/reach-v3", "--output", str(root),
               "--image-size", "32", "--max-episode-steps", "60", "--overwrite"]
    first = subprocess.Popen([*command, "--episodes", "3", "--seed", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.3)
    second = subprocess.Popen([*command, "--episodes", "2", "--seed", "100"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [process.communicate(timeout=300)[0] for process in (first, second)]
    codes = [first.returncode, second.returncode]
    assert sorted(codes) == [0, 2], outputs
    winner = codes.index(0)
    assert "in use" in outputs[1 - winner] or "taken by another run" in outputs[1 - winner], outputs
    dataset = LeRobotDataset(root)
    seeds = [dataset.episode_extras(i)["seed"] for i in range(dataset.num_episodes)]
    assert seeds == ([0, 1, 2] if winner == 0 else [100, 101])
    dataset.check_data_files()
    for position in range(dataset.num_episodes):  # each episode's files are its own (lengths agree)
        assert dataset.episode(position).frames(dataset.video_keys[0], [dataset.episode_lengths[position] - 1]).shape[0] == 1


@pytest.mark.parametrize("argument, value", [("n_episodes", 2.0), ("seed", 0.5), ("max_episode_steps", 10.5),
                                             ("n_episodes", True), ("seed", "0")])
def test_a_count_or_seed_that_is_no_whole_number_is_refused_naming_it_before_the_folder_exists(tmp_path, argument, value):
    settings = {"n_episodes": 1, "seed": 0, "max_episode_steps": 20, argument: value}
    with pytest.raises(ValueError, match=f"^{argument} must be a whole number >= [01], got {type(value).__name__} "):
        record_metaworld("metaworld/reach-v3", output=tmp_path / "ds", progress=False, **settings)
    assert not (tmp_path / "ds").exists()


def test_seeds_past_the_largest_a_replay_can_carry_are_refused_naming_both_flags_before_the_folder_exists(tmp_path,
                                                                                                         capsys):
    from gr00t_eval import cli

    code = cli.main(["record", "--env-name", "metaworld/reach-v3", "--output", str(tmp_path / "ds"),
                     "--seed", str(2**64 - 1), "--episodes", "2"])
    error = capsys.readouterr().err
    assert code != 0
    assert ("error: --seed + --episodes - 1 (the last episode's seed) must be at most "
            f"{2**63 - 1}") in error, error
    assert f"got {2**64 - 1} + 2 - 1 = {2**64}" in error
    assert not (tmp_path / "ds").exists()


def test_an_episode_recorded_with_the_largest_seed_is_replayed_with_it(tmp_path):
    from serving import running_server

    from gr00t_client import PolicyClient
    from gr00t_server.policies.replay import ReplayPolicy

    record_metaworld("metaworld/reach-v3", 2, tmp_path / "ds", seed=2**63 - 2, max_episode_steps=2, image_size=32,
                     progress=False)
    with running_server(ReplayPolicy(tmp_path / "ds")) as server:
        with PolicyClient(port=server.port, timeout_ms=10000) as client:
            info = client.reset({"episode_index": 1})
    assert int(np.ravel(info["seed"])[0]) == 2**63 - 1


def test_output_with_a_tilde_the_shell_left_is_the_home_folder_for_every_file(tmp_path, monkeypatch):
    """bash leaves '~' after '=': --output=~/ds made ./~/ds while pyarrow wrote the parquet under $HOME/ds, and the
    recording failed."""
    from gr00t_eval import cli

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["record", "--env-name", "metaworld/reach-v3", "--episodes", "1", "--max-episode-steps", "15",
                     "--image-size", "32", "--output=~/ds"]) == 0
    assert len(LeRobotDataset(tmp_path / "home" / "ds")) == 1
    assert not (tmp_path / "~").exists()


def test_a_recording_whose_output_folder_is_deleted_stops_instead_of_making_it_again(tmp_path, monkeypatch):
    """The writer made the deleted folder again, wrote the remaining episodes there and returned: meta/ listed
    episode 0, whose files were gone with the folder."""
    import shutil

    from gr00t_eval.dataset import DatasetWriter
    from gr00t_eval.run_stop import OutputFolderGone

    root = tmp_path / "reach"
    write_meta = DatasetWriter.write_meta

    def write_meta_then_delete_the_folder(writer):
        write_meta(writer)
        shutil.rmtree(writer.root)  # a /tmp cleaner, a mistaken rm -r, once episode 0 is listed

    monkeypatch.setattr(DatasetWriter, "write_meta", write_meta_then_delete_the_folder)
    with pytest.raises(OutputFolderGone, match="the output folder disappeared") as stopped:
        record_metaworld("metaworld/reach-v3", 2, root, max_episode_steps=10, image_size=32, progress=False)
    assert stopped.value.filename == str(root)
    assert not root.exists()  # nothing written after the folder went


def test_a_second_ctrl_c_while_the_stop_saves_removes_the_episode_meta_does_not_list(tmp_path, monkeypatch):
    """The save after the first Ctrl-C, cut short by a second one, rolled meta/ back but left the episode's parquet
    and mp4 in data/ and videos/, listed nowhere, while the CLI said the folder holds 1 episode."""
    from gr00t_eval.dataset import writer_meta

    root = tmp_path / "reach"
    commit = writer_meta._StagedFiles.commit
    commits = []

    def commit_interrupted_from_the_second(staged):
        commits.append(staged)
        if len(commits) >= 2:  # episode 1's meta/, then the save after the first Ctrl-C: both cut short by Ctrl-C
            raise KeyboardInterrupt
        commit(staged)

    monkeypatch.setattr(writer_meta._StagedFiles, "commit", commit_interrupted_from_the_second)
    with pytest.raises(KeyboardInterrupt) as stopped:
        record_metaworld("metaworld/reach-v3", 3, root, max_episode_steps=10, image_size=32, progress=False)
    assert len(commits) == 3 and stopped.value.record_summary.n_episodes == 1
    files = sorted(str(path.relative_to(root)) for sub in ("data", "videos") for path in (root / sub).rglob("*")
                   if path.is_file())
    assert files == ["data/chunk-000/episode_000000.parquet",
                     "videos/chunk-000/observation.images.corner2/episode_000000.mp4"], files
    assert LeRobotDataset(root).num_episodes == 1


@pytest.mark.parametrize("below", [False, True], ids=["the link itself", "a folder below the link"])
def test_a_dangling_symlink_as_output_or_its_parent_is_named_with_its_missing_target(tmp_path, below):
    """mkdir said only '[Errno 17] File exists', for --output a dangling link and for a folder below one alike."""
    import subprocess
    import sys

    link = tmp_path / "datasets"
    target = tmp_path / "unmounted_disk" / "datasets"
    link.symlink_to(target)
    output = link / "reach" if below else link
    result = subprocess.run(
        [sys.executable, "-m", "gr00t_eval.cli", "record", "--env-name", "metaworld/reach-v3", "--episodes", "1",
         "--output", str(output), "--max-episode-steps", "5"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    where = f"is inside {link}, a" if below else "is a"
    assert f"--output {output} {where} symbolic link to {target}, which does not exist" in line, line
    assert "Traceback" not in result.stderr and "File exists" not in line and not target.exists()
    assert "Traceback" not in result.stderr and not target.exists()


def test_an_output_whose_name_is_not_utf8_is_recorded_into(tmp_path):
    """pyarrow takes UTF-8 paths only: a Latin-1 folder name ('caf\\xe9') failed after the episode was simulated, then
    was refused up front; the dataset's files are opened by their bytes now, and it records there like any other."""
    import subprocess
    import sys

    output = os.fsencode(tmp_path) + b"/dataset_caf\xe9"
    result = subprocess.run(
        [sys.executable, "-m", "gr00t_eval.cli", "record", "--env-name", "metaworld/reach-v3", "--episodes", "1",
         "--output", output, "--max-episode-steps", "5"],
        capture_output=True, timeout=120,
    )
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "codec" not in err
    assert LeRobotDataset(os.fsdecode(output)).episode_lengths == [5]
