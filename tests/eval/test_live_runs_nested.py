"""Only the target folder was checked for a live claim: `rollout --output-dir PARENT --overwrite` deleted PARENT/runA
of a rollout still running (which then died "output folder disappeared"), `--output-dir RUN_A/videos --overwrite`
emptied the running run's videos and wrote another run's files among them, and `--video-dir RUN_A/videos` made two
runs write episode videos under the same names. A folder holding (below it) or lying inside the folder of a run still
running, or a video folder of one, is refused with the usual "is in use" line, --overwrite or not, and left as it was.
A live holder is a real process (conftest's live_process); a dead one has exited (ended_pid). The real CLI."""

from __future__ import annotations

import json

import pytest

from eval.dataset_factory import make_dataset
from eval.scale_fixtures import policy_server
from gr00t_eval.run_dir import RUN_FILENAME
from test_batch_merge_outputs import claim_by
from test_live_claims_any_kind import IN_USE, command_args, contents, run_cli
from test_run_dir_leftovers import ended_pid


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("nested") / "dataset", lengths=(6, 4))


def running_rollout(folder, pid):
    """`folder` as a rollout held by process `pid` leaves it mid-run: its run file, a logged episode and its video."""
    (folder / "videos").mkdir(parents=True)
    claim_by(folder, pid, RUN_FILENAME)
    (folder / "episodes.jsonl").write_text('{"episode_index": 0}\n')
    (folder / "videos" / "episode_0000_success.mp4").write_bytes(b"the live run's video")
    return folder


@pytest.mark.parametrize("inside", ["runA", ".scratch/runA"], ids=["sub-folder", "hidden sub-folder"])
@pytest.mark.parametrize("command", ["rollout", "open-loop", "batch"])
def test_overwrite_of_a_folder_holding_a_live_runs_folder_is_refused_and_deletes_nothing(command, inside, dataset,
                                                                                        tmp_path, capsys, live_process):
    """A live run in a hidden sub-folder was not looked for (the dataset search was), and was deleted (R52)."""
    parent = tmp_path / "parent"
    running_rollout(parent / inside, live_process.pid)
    (parent / "episodes.jsonl").write_text("")  # an earlier run's folder, which --overwrite empties
    before = contents(parent)
    assert run_cli([*command_args(command, parent, dataset, tmp_path), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert IN_USE.format(pid=live_process.pid) in err and inside in err, err
    assert contents(parent) == before


def test_overwrite_of_a_folder_holding_a_live_runs_video_folder_is_refused(tmp_path, capsys, live_process):
    parent = tmp_path / "parent"
    (parent / "videos").mkdir(parents=True)
    claim_by(parent / "videos", live_process.pid, ".gr00t_videos_0123456789abcdef.json")  # a run's --video-dir
    (parent / "videos" / "episode_0000_success.mp4").write_bytes(b"the live run's video")
    before = contents(parent)
    assert run_cli([*command_args("rollout", parent, None, tmp_path), "--overwrite"]) == 2
    assert IN_USE.format(pid=live_process.pid) in capsys.readouterr().err
    assert contents(parent) == before


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("command", ["rollout", "open-loop", "batch", "record"])
def test_an_output_folder_inside_a_live_runs_folder_is_refused_and_left_as_it_was(command, extra, dataset, tmp_path,
                                                                                 capsys, live_process):
    run_a = running_rollout(tmp_path / "runA", live_process.pid)
    before = contents(run_a)
    assert run_cli([*command_args(command, run_a / "videos", dataset, tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert "lies inside the output folder of another run" in err and IN_USE.format(pid=live_process.pid) in err, err
    assert contents(run_a) == before


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("videos_written", [True, False], ids=["with-videos", "before-its-first-video"])
def test_a_video_dir_inside_a_live_runs_folder_is_refused_and_left_as_it_was(videos_written, extra, tmp_path, capsys,
                                                                            live_process):
    run_a = running_rollout(tmp_path / "runA", live_process.pid)
    if not videos_written:
        (run_a / "videos" / "episode_0000_success.mp4").unlink()
    before = contents(run_a)
    args = [arg for arg in command_args("rollout", tmp_path / "runB", None, tmp_path) if arg != "--no-video"]
    assert run_cli([*args, "--video-dir", str(run_a / "videos"), *extra]) == 2
    err = capsys.readouterr().err
    assert "--video-dir" in err and IN_USE.format(pid=live_process.pid) in err, err
    assert contents(run_a) == before


def test_overwrite_of_a_folder_holding_a_dead_runs_folder_goes_ahead(tmp_path):
    parent = tmp_path / "parent"
    running_rollout(parent / "runA", ended_pid())
    (parent / "results.json").write_text(json.dumps({"kind": "rollout"}))  # an earlier run's: emptied
    with policy_server() as server:
        assert run_cli([*command_args("rollout", parent, None, tmp_path, server.port), "--overwrite"]) == 0
    assert not (parent / "runA").exists() and (parent / "results.json").is_file()


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("held", ["run-folder", "video-folder"])
def test_a_video_dir_holding_a_live_runs_folder_is_refused_and_left_as_it_was(held, extra, tmp_path, capsys,
                                                                             live_process):
    """--overwrite deletes the episode videos of a --video-dir and of its folders one level down (a task's folder)."""
    videos = tmp_path / "videos"
    if held == "run-folder":
        running_rollout(videos / "runA", live_process.pid)
        (videos / "runA" / "episode_0000_success.mp4").write_bytes(b"the live run's video, beside its run file")
    else:
        (videos / "vids").mkdir(parents=True)
        claim_by(videos / "vids", live_process.pid, ".gr00t_videos_0123456789abcdef.json")
        (videos / "vids" / "episode_0000_success.mp4").write_bytes(b"the live run's video")
    before = contents(videos)
    args = [arg for arg in command_args("rollout", tmp_path / "runB", None, tmp_path) if arg != "--no-video"]
    assert run_cli([*args, "--video-dir", str(videos), *extra]) == 2
    err = capsys.readouterr().err
    assert "holds the videos of another run" in err and IN_USE.format(pid=live_process.pid) in err, err
    assert contents(videos) == before


def test_a_live_claim_of_another_host_with_this_processs_pid_is_not_taken_for_its_own(tmp_path, capsys):
    # Two pods on one shared volume are both pid 1: a claim of this pid on another host and boot is another run's.
    import json
    import os

    run_a = tmp_path / "runA"
    (run_a / "videos").mkdir(parents=True)
    (run_a / RUN_FILENAME).write_text(json.dumps({"claim": {
        "pid": os.getpid(), "hostname": "another-pod", "boot_id": "another-boot", "start_ticks": 1,
        "started": "now", "finished": False}}))
    (run_a / "videos" / "episode_0000_success.mp4").write_bytes(b"the live run's video")
    before = contents(run_a)
    assert run_cli([*command_args("rollout", run_a / "videos", None, tmp_path), "--overwrite"]) == 2
    assert "lies inside the output folder of another run" in capsys.readouterr().err
    assert contents(run_a) == before


def test_a_run_json_without_a_claim_record_above_the_target_refuses_nothing(tmp_path, live_process):
    # Another tool's run.json (or one of a gr00t-eval older than claims) naming a live pid at its top made every run
    # in every folder below it refused as "inside the output folder of another run".
    import json

    from gr00t_eval.run_dir import check_output_dir

    project = tmp_path / "project"
    project.mkdir()
    (project / RUN_FILENAME).write_text(json.dumps({"pid": live_process.pid, "created": "2025-03-01T00:00:00Z"}))
    check_output_dir(project / "experiments" / "eval_1", overwrite=False)


def test_a_dead_runs_claim_above_the_target_is_passed_over_without_a_warning(tmp_path, caplog):
    from gr00t_eval.run_dir import check_output_dir

    claim_by(tmp_path, ended_pid(), RUN_FILENAME)
    check_output_dir(tmp_path / "eval_1", overwrite=False)
    assert not [r for r in caplog.records if "ended without finishing" in r.getMessage()]


def test_the_shards_of_one_plan_share_a_video_dir_inside_a_running_shards_folder(tmp_path, live_process):
    # docs/evaluation.md: shards of one plan may share one --video-dir; shard 1's inside shard 0's output was refused.
    # A shard of another plan (other episodes: the same video names) is not let in.
    import json

    from gr00t_eval.run_claim import refuse_live_runs_around
    from gr00t_eval.run_dir import OutputDirError

    shard0 = tmp_path / "X"
    (shard0 / "videos").mkdir(parents=True)
    claim = claim_by(shard0, live_process.pid, "run_shard0of2.json")
    claim.write_text(json.dumps({**json.loads(claim.read_text()), "env_name": "walkto/fast",
                                 "config": {"n_episodes": 4}}))
    refuse_live_runs_around(shard0 / "videos", "--video-dir", include_self=True, shard=(1, 2, "walkto/fast", 4))
    refuse_live_runs_around(shard0 / "videos", "--video-dir", include_self=True,
                            shard=(1, 2, " walkto/fast, walkto/fast", 4))  # the same tasks, spelt otherwise
    for other in [None, (1, 3, "walkto/fast", 4), (1, 2, "walkto/fast", 2), (1, 2, "walkto/slow", 4)]:
        with pytest.raises(OutputDirError, match="lies inside the output folder of another run"):
            refuse_live_runs_around(shard0 / "videos", "--video-dir", include_self=True, shard=other)
