"""Two runs writing their episode videos into one --video-dir outside their output folders, at the same time: each
checked the folder for earlier videos when it started, both passed, and then they overwrote each other's
episode_0000_*.mp4 (and deleted those of the other outcome), while each run's results pointed at the files. A run
now claims such a folder while it writes there (a claim file with its process, as output folders have); another run
into it is refused while that one runs, except a shard of the same plan; a finished or killed run's claim is no
obstacle. Real rollouts and batches, a real second process, the real CLI."""

from __future__ import annotations

import json

import pytest

from eval.scale_fixtures import policy_server
from gr00t_eval.run_claim import read_holder
from gr00t_eval.video_claims import VIDEO_CLAIM_PREFIX, claim_video_dir
from test_batch_merge_outputs import write_jobs
from test_run_dir_leftovers import ended_pid
from test_run_outputs import SMALL, SlowPolicy, _eval_process, _wait_for_episodes
from gr00t_eval.cli import main as run_cli

IN_USE = "is in use: a run that has not finished writes its episode videos there (pid {pid}"


def rollout_args(port, out, videos, *extra, n_episodes=6):
    return ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--n-episodes",
            str(n_episodes), "--policy-client-port", str(port), "--timeout-ms", "5000", "--output-dir", str(out),
            "--video-dir", str(videos), *[flag for flag in SMALL if flag != "--no-video"], *extra]


def claims_in(videos):
    return sorted(videos.glob(f"{VIDEO_CLAIM_PREFIX}*.json"))


def hand_claim(videos, pid, writer="another run", plan=None):
    """The claim a run of process `pid` on this host keeps in `videos` while it writes there."""
    return held_by(claim_video_dir(videos, writer, plan), pid)


def held_by(claim, pid):
    """`claim` as process `pid` on this host holds it while its run still writes there."""
    data = json.loads(claim.read_text())
    data["claim"].update(pid=pid, finished=False)
    for key in ("start_ticks", "boot_id"):  # this process's: they would tell `pid` for a reused one
        data["claim"].pop(key, None)
    claim.write_text(json.dumps(data))
    return claim


@pytest.mark.slow
def test_a_run_into_the_video_dir_of_a_running_one_is_refused_and_the_first_finishes_as_it_would(tmp_path, capsys):
    videos = tmp_path / "videos"
    with policy_server(SlowPolicy(delay=0.1)) as server:
        first = _eval_process(rollout_args(server.port, tmp_path / "first", videos, "--seed", "0", n_episodes=20))
        _wait_for_episodes(tmp_path / "first" / "episodes.jsonl", 1, first)
        code = run_cli(rollout_args(server.port, tmp_path / "second", videos, "--seed", "5"))
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"--video-dir {videos} {IN_USE.format(pid=first.pid)}" in err
        assert f"for {tmp_path / 'first'}" in err  # names the run writing there
        assert not (tmp_path / "second" / "run.json").exists()  # nothing of the refused run is left to resume
        output, _ = first.communicate(timeout=120)
    assert first.returncode == 0, output
    (claim,) = claims_in(videos)
    holder = read_holder(claim)
    assert holder.pid == first.pid and holder.finished  # marked finished with the run: the folder is free again
    with policy_server() as server:
        assert run_cli(rollout_args(server.port, tmp_path / "third", tmp_path / "videos_3", "--seed", "5",
                                    n_episodes=2)) == 0


@pytest.mark.slow
def test_shards_of_one_plan_share_the_video_dir_while_running_and_another_plans_shard_is_refused(tmp_path, capsys):
    videos, split = tmp_path / "videos", tmp_path / "split"
    with policy_server(SlowPolicy(delay=0.2)) as server:
        first = _eval_process(rollout_args(server.port, split, videos, "--seed", "0", "--shard", "0/2", n_episodes=20))
        _wait_for_episodes(split / "episodes_shard0of2.jsonl", 1, first)
        assert run_cli(rollout_args(server.port, tmp_path / "other", videos, "--seed", "7", "--shard", "1/2",
                                    n_episodes=20)) == 2
        assert IN_USE.format(pid=first.pid) in capsys.readouterr().err
        assert first.poll() is None  # still running: the shard of its plan below joins a folder it holds
        assert run_cli(rollout_args(server.port, split, videos, "--seed", "0", "--shard", "1/2", n_episodes=20)) == 0
        output, _ = first.communicate(timeout=120)
    assert first.returncode == 0, output
    assert len(claims_in(videos)) == 2 and all(read_holder(claim).finished for claim in claims_in(videos))


@pytest.mark.parametrize(("shard", "code"), [("0/2", 2), ("1/2", 0)], ids=["the same shard", "the other shard"])
def test_a_shard_of_one_plan_joins_a_running_shards_video_dir_only_when_it_is_another_shard(tmp_path, capsys,
                                                                                            live_process, shard, code):
    videos = tmp_path / "videos"
    with policy_server() as server:
        assert run_cli(rollout_args(server.port, tmp_path / "ckptA", videos, "--seed", "0", "--shard", "0/2",
                                    n_episodes=4)) == 0
        (claim,) = claims_in(videos)
        held_by(claim, live_process.pid)  # as while shard 0/2 into ckptA still runs
        capsys.readouterr()
        assert run_cli(rollout_args(server.port, tmp_path / "ckptB", videos, "--seed", "0", "--shard", shard,
                                    n_episodes=4)) == code
    err = capsys.readouterr().err
    refused = f"--video-dir {videos} {IN_USE.format(pid=live_process.pid)}"
    assert (refused in err and f"for {tmp_path / 'ckptA'} (shard 0/2)" in err) == (code == 2), err


@pytest.mark.parametrize("how", ["rollout", "batch"])
def test_overwrite_into_a_video_dir_a_running_run_writes_to_is_refused_before_any_video_is_deleted(
        tmp_path, capsys, live_process, how):
    """--overwrite deleted the earlier videos in an outside --video-dir first, and only then was refused by the claim
    of a run still writing there: that run's videos were gone."""
    videos = tmp_path / "videos"
    folder = videos if how == "rollout" else videos / "slow"  # a job's videos go to <video_dir>/<job>
    folder.mkdir(parents=True)
    earlier = folder / "episode_0000_success.mp4"
    earlier.write_bytes(b"a running run's video")
    hand_claim(folder, live_process.pid)
    with policy_server() as server:
        if how == "rollout":
            argv = rollout_args(server.port, tmp_path / "out", videos, "--seed", "0", "--overwrite", n_episodes=2)
        else:
            jobs = write_jobs(tmp_path, server.port, video_dir=str(videos))
            argv = ["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "batch"), "--overwrite"]
        assert run_cli(argv) == 2
    assert IN_USE.format(pid=live_process.pid) in capsys.readouterr().err
    assert earlier.read_bytes() == b"a running run's video"


def test_the_claim_of_a_run_that_is_gone_or_finished_is_no_obstacle(tmp_path):
    videos = tmp_path / "videos"
    hand_claim(videos, ended_pid(), writer="a killed run")
    finished = hand_claim(videos, ended_pid(), writer="a finished run")
    data = json.loads(finished.read_text())
    data["claim"]["finished"] = True
    finished.write_text(json.dumps(data))
    with policy_server() as server:
        assert run_cli(rollout_args(server.port, tmp_path / "out", videos, "--seed", "0", n_episodes=2)) == 0
    mine = [claim for claim in claims_in(videos) if json.loads(claim.read_text())["writer"] == str(tmp_path / "out")]
    assert len(mine) == 1 and read_holder(mine[0]).finished


def test_a_batch_whose_job_video_dir_a_running_run_writes_to_is_refused(tmp_path, capsys, live_process):
    videos = tmp_path / "videos"
    hand_claim(videos / "slow", live_process.pid)  # the two jobs share `videos`: each writes in its own folder there
    with policy_server() as server:
        jobs = write_jobs(tmp_path, server.port, video_dir=str(videos))
        assert run_cli(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "batch")]) == 2
    err = capsys.readouterr().err
    assert f"a job's video_dir {videos / 'slow'} {IN_USE.format(pid=live_process.pid)}" in err, err
    batch_claim = json.loads((tmp_path / "batch" / "batch.json").read_text())["claim"]
    assert batch_claim["finished"] and batch_claim["outcome"] == "error"  # the batch's folder is not left held


def test_a_batch_holds_its_jobs_video_dirs_while_it_runs_and_frees_them(tmp_path):
    videos = tmp_path / "videos"
    with policy_server() as server:
        jobs = write_jobs(tmp_path, server.port, video_dir=str(videos))
        assert run_cli(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "batch")]) == 0
    held = [claim for folder in (videos / "fast", videos / "slow") for claim in claims_in(folder)]
    assert len(held) == 2 and all(read_holder(claim).finished for claim in held)


def test_a_batch_resume_is_refused_a_job_video_dir_another_run_has_claimed_since(tmp_path):
    """batch --resume re-ran a job's episodes into a --video-dir another rollout had taken with --overwrite since,
    overwriting that run's videos, as rollout --resume no longer does."""
    import os
    import time

    from gr00t_eval.batch_cli import _claim_job_videos
    from gr00t_eval.batch_jobs import Job, PolicyServerAddress
    from gr00t_eval.cli_errors import UsageError
    from gr00t_eval.run_claim import claim_output_dir, finish_claim

    videos, batch_dir = tmp_path / "videos", tmp_path / "batch"
    batch_dir.mkdir()
    finish_claim(claim_video_dir(videos, f"batch {os.path.abspath(batch_dir)}"), "interrupted")
    time.sleep(0.01)
    finish_claim(claim_video_dir(videos, str(tmp_path / "another_run")), "complete")
    job = Job("j", "metaworld/reach-v3", PolicyServerAddress("127.0.0.1", 5555), {"video_dir": str(videos)})
    claim = claim_output_dir(batch_dir, "batch.json", {})
    with pytest.raises(UsageError, match="was used by another run after this one wrote its videos there"):
        _claim_job_videos([job], batch_dir, claim, resume=True)


@pytest.mark.parametrize("how", ["rollout", "batch"])
def test_an_output_folder_whose_name_is_not_utf8_claims_a_video_dir_elsewhere(tmp_path, capsys, how):
    """The claim's file name hashed the output folder's path with str.encode(), which refuses the surrogate escapes of
    a name that is not UTF-8: a bare UnicodeEncodeError, and the output folder was left claimed."""
    import os

    out, videos = tmp_path / ("caf" + os.fsdecode(b"\xe9")), tmp_path / "videos"
    with policy_server() as server:
        if how == "rollout":
            argv = rollout_args(server.port, out, videos, "--seed", "0", n_episodes=2)
        else:
            argv = ["batch", "--jobs", str(write_jobs(tmp_path, server.port, video_dir=str(videos))),
                    "--output-dir", str(out)]
        assert run_cli(argv) == 0, capsys.readouterr().err
    held = claims_in(videos) if how == "rollout" else claims_in(videos / "fast") + claims_in(videos / "slow")
    assert held and all(read_holder(claim).finished for claim in held)
