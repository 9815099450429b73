"""Mutation testing of run_claim.py and scale_cli.py (mutants no test noticed): a claim file nobody can read is never
taken over, a zombie holder frees its directory and another user's live one does not, another process's claim is not
marked finished; `batch` refuses what it cannot resume or would ignore, naming it, and releases a claim it could not
use; `merge` never counts an earlier merge's output, nor replaces an unreadable file; a shard never replaces a stale
results file or refuses its split's videos; a refused --resume keeps its run file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gr00t_eval import cli
from gr00t_eval.run_claim import (
    CLAIM_KEY, claim_output_dir, finish_claim, process_exists, read_holder, refuse_live_claim, take_claim,
)
from gr00t_eval.run_dir import OutputDirError
from test_batch_merge_outputs import claim_by


def test_a_claim_file_without_a_readable_holder_is_refused_not_taken_over(tmp_path):
    # mutant: take_claim deleted a claim file it could not read (damaged, or written by a newer version)
    claim = tmp_path / "batch.json"
    claim.write_text('{"claim": ')
    with pytest.raises(OutputDirError, match=r"--resume .* is taken by another run \(it holds batch.json\)"):
        take_claim(tmp_path, "batch.json", {"resumed": True}, flag="--resume")
    assert claim.read_text() == '{"claim": '


def test_a_claim_naming_pid_0_has_no_holder_and_does_not_hold_the_directory(tmp_path):
    # mutant: pid 0 was read as a holder, and os.kill(0, 0) (this process group) made it live forever
    claim_by(tmp_path, 0, "claim.json")
    assert read_holder(tmp_path / "claim.json") is None
    assert refuse_live_claim(tmp_path, "claim.json") is None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process states come from /proc (Linux)")
def test_a_claim_whose_process_is_a_killed_unreaped_zombie_may_be_taken_over(tmp_path):
    # mutant: a zombie (killed, not yet reaped by its parent) counted as a live holder
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        process.kill()
        stat = Path(f"/proc/{process.pid}/stat")
        deadline = time.monotonic() + 10
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not process_exists(process.pid)
        claim_by(tmp_path, process.pid, "claim.json")
        assert refuse_live_claim(tmp_path, "claim.json").pid == process.pid  # a stale claim: not refused
        take_claim(tmp_path, "claim.json", {"mine": True})
        assert read_holder(tmp_path / "claim.json").pid != process.pid
    finally:
        process.wait()


@pytest.mark.skipif(not Path("/proc/sys/kernel/random/boot_id").exists(), reason="start ticks come from /proc (Linux)")
def test_a_claim_of_another_process_with_this_pid_is_not_marked_finished_by_this_one(tmp_path):
    # mutant: the pid alone made a claim this process's (another container's process with the same pid, a reused pid)
    claim = claim_output_dir(tmp_path, "claim.json", {"mine": False})
    data = json.loads(claim.read_text())
    assert isinstance(data[CLAIM_KEY]["start_ticks"], int)
    data[CLAIM_KEY]["start_ticks"] += 1  # same pid and boot, started at another tick: another process
    claim.write_text(json.dumps(data))
    finish_claim(claim, "complete")
    assert json.loads(claim.read_text())[CLAIM_KEY]["finished"] is False


def test_a_claim_held_by_another_users_process_is_live(tmp_path, monkeypatch, live_process):
    # mutant: kill(pid, 0) refused with EPERM (another user's process, seen by a non-root user) read as "gone"
    import os

    kill = os.kill

    def not_permitted(pid, sig):
        if pid == live_process.pid:
            raise PermissionError(1, "Operation not permitted")
        return kill(pid, sig)

    claim_by(tmp_path, live_process.pid, "claim.json")
    with monkeypatch.context() as patch:  # undone before live_process ends its process
        patch.setattr(os, "kill", not_permitted)
        assert process_exists(live_process.pid)
        live = rf"is in use: the run that claimed it is still running \(pid {live_process.pid}"
        with pytest.raises(OutputDirError, match=live):
            refuse_live_claim(tmp_path, "claim.json")


# --- batch --------------------------------------------------------------------------------------------------


def _batch_folder(tmp_path, port, results):
    """A batch --output-dir as a batch leaves it: jobs.json and batch_results.json (`results`, None: left out)."""
    from test_batch_merge_outputs import write_jobs

    out = tmp_path / "batch"
    out.mkdir()
    write_jobs(out, port)
    if results is not None:
        (out / "batch_results.json").write_text(json.dumps(results))
    return out


def test_resuming_a_folder_without_jobs_json_is_refused_naming_the_missing_job_file(tmp_path, capsys):
    # mutant: a folder with batch_results.json but no jobs.json passed the check (needs both)
    from eval.scale_fixtures import free_port
    out = _batch_folder(tmp_path, free_port(), {"jobs": []})
    (out / "jobs.json").unlink()
    assert cli.main(["batch", "--resume", str(out)]) == 2
    assert "batch_results.json is there but jobs.json is not" in capsys.readouterr().err
    assert not (out / "batch.json").exists()


def test_resuming_batch_results_whose_jobs_are_not_records_is_refused_before_the_folder_is_claimed(tmp_path, capsys):
    # mutant: 'jobs' holding non-objects got past the check
    from eval.scale_fixtures import free_port
    out = _batch_folder(tmp_path, free_port(), {"jobs": [1, "fast"]})
    assert cli.main(["batch", "--resume", str(out)]) == 2
    assert "holds no batch results (an object whose 'jobs' is a list of job records)" in capsys.readouterr().err
    assert not (out / "batch.json").exists()


def test_batch_resume_with_overwrite_is_refused_naming_it(tmp_path, capsys):
    # mutant: --overwrite was silently ignored by --resume
    assert cli.main(["batch", "--resume", str(tmp_path), "--overwrite"]) == 2
    assert "--overwrite cannot be given with it" in capsys.readouterr().err


def test_a_new_batch_into_a_folder_a_live_batch_runs_in_says_it_is_in_use_not_pass_overwrite(tmp_path, capsys,
                                                                                              live_process):
    # mutant: without --overwrite the refusal said "not empty; pass --overwrite", which is then refused too
    from eval.scale_fixtures import free_port
    from test_batch_merge_outputs import write_jobs

    out = _batch_folder(tmp_path, free_port(), {"jobs": []})  # the live batch's files, as it writes them
    claim_by(out, live_process.pid)
    jobs = write_jobs(tmp_path, free_port())
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"is in use: the run that claimed it is still running (pid {live_process.pid}" in err
    assert "--overwrite" not in err


def test_a_batch_whose_folder_could_not_be_emptied_releases_its_claim(tmp_path, capsys, monkeypatch):
    # mutant: the claim taken before emptying stayed unfinished, so the folder read as in use by this process
    import gr00t_eval.run_dir as run_dir
    from eval.scale_fixtures import free_port
    out = _batch_folder(tmp_path, free_port(), {"jobs": []})  # an earlier batch's files, to be emptied
    jobs = tmp_path / "jobs.json"
    jobs.write_text((out / "jobs.json").read_text())

    def cannot_empty(*args, **kwargs):
        raise run_dir.OutputDirError("could not empty it")

    monkeypatch.setattr(run_dir, "prepare_output_dir", cannot_empty)
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out), "--overwrite"]) == 2
    assert "could not empty it" in capsys.readouterr().err
    claim = json.loads((out / "batch.json").read_text())[CLAIM_KEY]
    assert claim["finished"] is True and claim["outcome"] == "error"
    assert refuse_live_claim(out, "batch.json").finished  # a later --overwrite may take the folder


def test_resuming_a_folder_a_live_batch_runs_in_says_it_is_in_use_before_reading_its_files(tmp_path, capsys,
                                                                                           live_process):
    # mutant: the live claim was checked only after batch_results.json was read, so a file the live batch is still
    # to write was reported as damaged ("start a new batch, or restore it") instead of the batch that runs there
    from eval.scale_fixtures import free_port

    out = _batch_folder(tmp_path, free_port(), None)
    (out / "batch_results.json").write_text('{"jobs": [')
    claim_by(out, live_process.pid)
    assert cli.main(["batch", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"is in use: the run that claimed it is still running (pid {live_process.pid}" in err
    assert "cannot be read" not in err


# --- merge --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    from eval.scale_fixtures import ConstantPolicy
    from serving import running_server

    with running_server(ConstantPolicy()) as running:
        yield running


def test_merging_a_folder_again_leaves_out_the_earlier_merges_results_file(server, tmp_path):
    # mutant: results_all.json, an earlier merge's output in the folder, was merged as a shard (every episode twice)
    from test_merge_honesty import shard

    out = tmp_path / "shards"
    assert shard(server.port, out, 0) == 0 and shard(server.port, out, 1) == 0
    assert cli.main(["merge", str(out), "--output", str(out / "results_all.json")]) == 0
    assert cli.main(["merge", str(out), "--output", str(tmp_path / "again.json")]) == 0
    merged = json.loads((tmp_path / "again.json").read_text())
    assert merged["overall"]["n_episodes"] == 4 and len(merged["merged_files"]) == 2


def test_a_merge_output_ending_in_a_slash_is_a_folder_that_gets_results_json(server, tmp_path):
    # mutant: "--output merged/" for a folder not made yet wrote a file named merged
    from test_merge_honesty import shard

    out = tmp_path / "shards"
    assert shard(server.port, out, 0) == 0 and shard(server.port, out, 1) == 0
    assert cli.main(["merge", str(out), "--output", f"{tmp_path / 'merged'}/"]) == 0
    assert json.loads((tmp_path / "merged" / "results.json").read_text())["overall"]["n_episodes"] == 4


def test_the_second_shard_runs_beside_the_first_shards_videos_in_a_shared_outside_video_dir(server, tmp_path):
    # mutant: a shard checked an outside --video-dir like a whole run, refusing its split's other shard's videos
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "episode_0000_success.mp4").write_bytes(b"mp4")  # shard 0/2's, as a rendering env writes them
    code = cli.main(["rollout", "--env-name", "walkto/fast", "--n-episodes", "4", "--n-envs", "1", "--vectorization",
                     "sync", "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0", "--video-dir", str(videos),
                     "--policy-client-port", str(server.port), "--shard", "1/2", "--output-dir", str(tmp_path / "out")])
    assert code == 0
    assert (videos / "episode_0000_success.mp4").read_bytes() == b"mp4"


def test_a_refused_resume_of_a_run_killed_before_its_first_episode_keeps_its_run_file(tmp_path, capsys):
    # mutant: a failed --resume was "released" like a new run: with no episode logged, its run.json was deleted
    from eval.scale_fixtures import Checkpoint
    from serving import running_server

    out = tmp_path / "run"
    flags = ["--env-name", "walkto/fast", "--n-episodes", "2", "--n-envs", "1", "--vectorization", "sync",
             "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0", "--no-video"]
    with running_server(Checkpoint("a")) as a:
        assert cli.main(["rollout", *flags, "--output-dir", str(out), "--policy-client-port", str(a.port)]) == 0
        for name in ("episodes.jsonl", "results.json", "eval_info.json"):  # as if killed before its first episode
            (out / name).unlink()
        with running_server(Checkpoint("b")) as b:
            assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", str(b.port)]) == 2
        assert "and this run started against Checkpoint (kind test, checkpoint a" in capsys.readouterr().err
        assert json.loads((out / "run.json").read_text())["policy"]["identity"]["checkpoint"] == "a"
        assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", str(a.port)]) == 0


def test_a_shard_with_ray_address_is_refused_naming_both_flags(capsys):
    # mutant: --shard was passed on to a Ray run, which makes its own shards
    assert cli.main(["rollout", "--env-name", "walkto/fast", "--seed", "0", "--shard", "0/2", "--ray-address", "local"]) == 2
    assert "--shard and --ray-address do not combine (Ray makes its own shards)" in capsys.readouterr().err


def test_a_shard_into_a_folder_holding_only_its_own_results_file_is_refused_naming_it(server, tmp_path, capsys):
    # mutant: a shard's own names left out results_shardIofN.json, so a stale one was silently replaced
    from test_merge_honesty import shard

    out = tmp_path / "shards"
    out.mkdir()
    (out / "results_shard0of2.json").write_text('{"stale": true}')  # its run file and episode log deleted
    assert shard(server.port, out, 0) == 2
    assert "already holds results_shard0of2.json; pass --resume" in capsys.readouterr().err
    assert (out / "results_shard0of2.json").read_text() == '{"stale": true}'


def test_a_blank_merge_output_is_refused_naming_it(tmp_path, capsys, monkeypatch):
    # mutant: --output ' ' was taken as a file named by one space in the current folder
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as refused:  # refused by argparse, as every blank path flag of gr00t-eval is
        cli.main(["merge", str(tmp_path / "none.json"), "--output", " "])
    assert refused.value.code == 2
    assert "argument --output: is empty (' '): an unset variable?" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_merge_refuses_to_replace_an_unreadable_results_file_without_overwrite(server, tmp_path, capsys):
    # mutant: an --output that could not be read (a run's truncated results) was taken for an earlier merge's, replaced
    from test_merge_honesty import shard

    out = tmp_path / "shards"
    assert shard(server.port, out, 0) == 0 and shard(server.port, out, 1) == 0
    target = tmp_path / "results.json"
    target.write_text('{"per_episode": [')
    assert cli.main(["merge", str(out), "--output", str(target)]) == 2
    assert "exists and is not a results file (not readable as JSON)" in capsys.readouterr().err
    assert target.read_text() == '{"per_episode": ['
