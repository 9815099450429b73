"""What `merge` and `batch` write never destroys or mixes another run's results: a merge does not replace a run's
own results or eval_info, a batch does not empty or join a folder a live batch runs in, jobs sharing a video_dir
do not overwrite each other's videos, and a resumed job's time covers every attempt. Bad inputs are refused in
one line naming the file. Real rollouts against a loopback PolicyServer, the real CLI."""

from __future__ import annotations

import json
import time

import pytest

from eval.scale_fixtures import ConstantPolicy, InterruptOnCall, run_cli
from gr00t_eval import cli
from gr00t_eval.batch import Job, PolicyServerAddress, load_jobs, run_batch
from serving import running_server

ROLLOUT = ["--n-envs", "1", "--vectorization", "sync", "--n-action-steps", "2", "--max-episode-steps", "6",
           "--seed", "0", "--no-video"]


@pytest.fixture(scope="module")
def server():
    with running_server(ConstantPolicy()) as running:
        yield running


def rollout(port, out, *extra):
    return cli.main(["rollout", "--env-name", "walkto/fast", "--n-episodes", "4", *ROLLOUT,
                     "--policy-client-port", str(port), "--output-dir", str(out), *extra])


def shards(port, out, count=2):
    for index in range(count):
        assert rollout(port, out, "--shard", f"{index}/{count}") == 0


def test_merge_refuses_to_replace_a_runs_own_results_or_write_into_a_whole_runs_folder(server, tmp_path, capsys):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert rollout(server.port, whole, "--n-episodes", "2") == 0
    shards(server.port, split)
    before = {name: (whole / name).read_bytes() for name in ("results.json", "eval_info.json")}
    capsys.readouterr()

    assert cli.main(["merge", str(split), "--output", str(whole / "results.json")]) == 2
    assert f"is a run's own results file ({whole / 'run.json'} is beside it)" in capsys.readouterr().err
    assert cli.main(["merge", str(split), "--output", str(whole / "split_merged.json")]) == 2
    assert "whose eval_info.json the merge would replace" in capsys.readouterr().err
    assert {name: (whole / name).read_bytes() for name in before} == before
    assert not (whole / "split_merged.json").exists()

    # its own earlier output is replaced (merging twice gives the same file), and --overwrite is the way into the
    # run's folder, never over the run's own results
    assert cli.main(["merge", str(split), "--output", str(split / "merged.json")]) == 0
    assert cli.main(["merge", str(split), "--output", str(split / "merged.json")]) == 0
    assert cli.main(["merge", str(split), "--output", str(whole / "results.json"), "--overwrite"]) == 2
    assert (whole / "results.json").read_bytes() == before["results.json"]
    assert cli.main(["merge", str(split), "--output", str(whole / "split_merged.json"), "--overwrite"]) == 0
    assert json.loads((whole / "split_merged.json").read_text())["overall"]["n_episodes"] == 4


def test_merge_refuses_an_output_that_is_one_of_its_inputs(server, tmp_path, capsys):
    split = tmp_path / "split"
    shards(server.port, split)
    first = split / "results_shard0of2.json"
    before = first.read_bytes()
    capsys.readouterr()
    assert cli.main(["merge", str(first), str(split / "results_shard1of2.json"), "--output", str(first)]) == 2
    assert "is also one of the files to merge" in capsys.readouterr().err
    assert first.read_bytes() == before


def test_merge_names_a_truncated_or_foreign_results_file(server, tmp_path, capsys):
    split = tmp_path / "split"
    shards(server.port, split)
    second = split / "results_shard1of2.json"
    text = second.read_text()
    capsys.readouterr()
    second.write_text(text[:300])
    assert cli.main(["merge", str(split), "--output", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert f"{second}: not a readable results file (JSONDecodeError" in err and "Traceback" not in err
    second.write_text("[]")
    assert cli.main(["merge", str(split), "--output", str(tmp_path / "m.json")]) == 2
    assert f"{second}: not a results file (its JSON is a list, not an object)" in capsys.readouterr().err


def test_merge_names_a_shard_that_started_and_wrote_no_results(server, tmp_path, capsys):
    split = tmp_path / "split"
    shards(server.port, split)
    (split / "results_shard1of2.json").unlink()  # as after a kill -9: its run file and episode log are there
    capsys.readouterr()
    assert cli.main(["merge", str(split), "--output", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "episodes are in no results file" in err
    assert f"shard 1/2 in {split} started and has no results file" in err
    assert f"gr00t-eval rollout --resume {split} --shard 1/2" in err


def test_merge_names_an_interrupted_shard_and_its_resume_command(server, tmp_path, capsys):
    """It said only 'is a shard missing or failed?' of a shard whose results file says it was interrupted."""
    split = tmp_path / "split"
    shards(server.port, split)
    second = split / "results_shard1of2.json"
    data = json.loads(second.read_text())  # as a shard stopped with Ctrl-C after its first episode writes it
    data["status"], data["stop_reason"] = "interrupted", "interrupted by Ctrl-C (KeyboardInterrupt)"
    data["per_episode"] = data["per_episode"][:1]
    second.write_text(json.dumps(data))
    capsys.readouterr()
    assert cli.main(["merge", str(split), "--output", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "episodes are in no results file" in err and "is a shard missing" not in err
    assert f"{second} is an interrupted run (interrupted by Ctrl-C (KeyboardInterrupt))" in err
    assert f"continue it with gr00t-eval rollout --resume {split} --shard 1/2" in err


def test_bad_shard_specs_and_resuming_a_shard_folder_without_shard_are_one_line_usage_errors(server, tmp_path, capsys):
    assert rollout(server.port, tmp_path / "x", "--shard", "3/3") == 2
    err = capsys.readouterr().err
    assert "--shard" in err and "ValueError" not in err and "DEBUG shows the traceback" not in err
    split = tmp_path / "split"
    shards(server.port, split)
    capsys.readouterr()
    assert cli.main(["rollout", "--resume", str(split), "--policy-client-port", str(server.port)]) == 2
    assert "it holds the shards 0/2, 1/2: resume one with --shard I/N" in capsys.readouterr().err


def test_resuming_a_shard_folder_with_a_shard_count_it_does_not_hold_names_the_shards_it_holds(server, tmp_path, capsys):
    split = tmp_path / "split"
    shards(server.port, split)
    capsys.readouterr()
    assert cli.main(["rollout", "--resume", str(split), "--shard", "1/3", "--policy-client-port", str(server.port)]) == 2
    err = capsys.readouterr().err
    assert "no run_shard1of3.json there" in err
    assert "it holds the shards 0/2, 1/2: resume one with --shard I/N" in err


def write_jobs(tmp_path, port, name="jobs.json", **overrides):
    jobs = {"defaults": {"policy_server": {"port": port}, "n_episodes": 2, "seed": 0, "max_episode_steps": 6,
                         "overrides": {"n_action_steps": 2, "vectorization": "sync", "n_envs": 1, **overrides}},
            "jobs": [{"name": "fast", "env_name": "walkto/fast"}, {"name": "slow", "env_name": "walkto/slow"}]}
    path = tmp_path / name
    path.write_text(json.dumps(jobs))
    return path


def claim_by(folder, pid, name="batch.json"):
    """The claim file `name` in `folder` as process `pid` on this host leaves it while it runs."""
    path = folder / name
    path.write_text(json.dumps({"claim": {
        "pid": pid, "hostname": __import__("socket").gethostname(), "started": "now",
        "started_unix": time.time(), "finished": False}}))
    return path


def test_a_batch_folder_a_live_batch_runs_in_is_neither_emptied_nor_resumed(server, tmp_path, capsys, live_process):
    jobs = write_jobs(tmp_path, server.port)
    out = tmp_path / "batch"
    assert run_cli(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    claim = json.loads((out / "batch.json").read_text())["claim"]
    assert claim["finished"] is True and claim["outcome"] == "complete"
    claim_by(out, live_process.pid)  # a batch still running in the folder
    files = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(Exception, match="is in use: the run that claimed it is still running"):
        run_cli(["batch", "--jobs", str(jobs), "--output-dir", str(out), "--overwrite"])
    with pytest.raises(Exception, match="is in use: the run that claimed it is still running"):
        run_cli(["batch", "--resume", str(out)])
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files


def test_a_batch_that_claims_the_folder_after_anothers_checks_is_never_emptied(server, tmp_path, monkeypatch, live_process):
    """The race of two `batch --overwrite` into one folder: the second checked the folder before the first claimed
    it. It used to empty the folder then (the live claim with it) and run beside the first; the claim is now taken,
    under a lock, before anything is emptied."""
    import gr00t_eval.run_dir as run_dir

    jobs = write_jobs(tmp_path, server.port)
    out = tmp_path / "batch"
    assert run_cli(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    real_check = run_dir.check_output_dir

    def check_then_another_batch_claims(*args, **kwargs):
        real_check(*args, **kwargs)
        if not json.loads((out / "batch.json").read_text())["claim"].get("pid") == live_process.pid:
            claim_by(out, live_process.pid)  # the other batch claims the folder right after this one's checks

    monkeypatch.setattr(run_dir, "check_output_dir", check_then_another_batch_claims)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.name != "batch.json.lock")
    assert len(files) > 3
    with pytest.raises(Exception, match="is in use: the run that claimed it is still running"):
        run_cli(["batch", "--jobs", str(jobs), "--output-dir", str(out), "--overwrite"])
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.name != "batch.json.lock") == files
    assert json.loads((out / "batch.json").read_text())["claim"]["pid"] == live_process.pid


def test_batch_resume_refuses_flags_it_would_ignore(server, tmp_path):
    jobs = write_jobs(tmp_path, server.port)
    out = tmp_path / "batch"
    assert run_cli(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    with pytest.raises(Exception, match=r"--jobs and --output-dir cannot be given with it \(to change a job, edit"):
        run_cli(["batch", "--resume", str(out), "--jobs", str(jobs), "--output-dir", str(tmp_path / "elsewhere")])
    assert not (tmp_path / "elsewhere").exists()


def test_an_invalid_job_file_is_refused_naming_it_before_any_folder_is_made(tmp_path):
    bad = tmp_path / "jobs_bad.json"
    bad.write_text('{"jobs": [')
    out = tmp_path / "batch"
    from gr00t_eval.cli_errors import UsageError

    with pytest.raises(UsageError, match=f"{bad}: not valid JSON"):
        run_cli(["batch", "--jobs", str(bad), "--output-dir", str(out)])
    assert not out.exists()


def test_jobs_sharing_a_video_dir_each_get_a_folder_and_a_later_batch_does_not_overwrite_them(server, tmp_path):
    videos = tmp_path / "videos"
    jobs = load_jobs(write_jobs(tmp_path, server.port, video_dir=str(videos)))
    assert [job.config["video_dir"] for job in jobs] == [str(videos / "fast"), str(videos / "slow")]
    single = tmp_path / "single.json"
    single.write_text(json.dumps([{"name": "only", "env_name": "walkto/fast", "policy_server": {"port": 1},
                                   "overrides": {"video_dir": str(videos)}}]))
    assert load_jobs(single)[0].config["video_dir"] == str(videos)  # a folder of its own is left as given

    (videos / "fast").mkdir(parents=True)
    earlier = videos / "fast" / "episode_0000_success.mp4"  # an earlier batch's video, by the name rollouts give
    earlier.write_bytes(b"an earlier run's video")
    from gr00t_eval.cli_errors import UsageError

    with pytest.raises(UsageError, match="already holds episode videos of an earlier run"):
        run_cli(["batch", "--jobs", str(write_jobs(tmp_path, server.port, video_dir=str(videos))),
                 "--output-dir", str(tmp_path / "second")])
    assert earlier.read_bytes() == b"an earlier run's video" and not (tmp_path / "second").exists()


def test_a_resumed_jobs_eval_s_covers_its_earlier_attempt(tmp_path):
    walk = {"n_episodes": 3, "n_envs": 1, "max_episode_steps": 6, "n_action_steps": 2, "vectorization": "sync",
            "seed": 0}
    job = Job("walk", "walkto/slow", PolicyServerAddress("127.0.0.1", 1), walk)
    path = tmp_path / "batch_results.json"
    with pytest.raises(KeyboardInterrupt):
        # each call takes time, so the first attempt's eval_s is well above 0
        run_batch([job], path, policy_factory=lambda server: InterruptOnCall(call=4, nap_s=0.05))
    first = json.loads((tmp_path / "jobs" / "walk" / "results.json").read_text())
    assert first["status"] == "interrupted" and first["overall"]["eval_s"] > 0.1
    batch = run_batch([job], path, policy_factory=lambda server: ConstantPolicy(), previous=json.loads(path.read_text()))
    record = batch["jobs"][0]
    assert record["status"] == "done" and record["resumed_episodes"] >= 1
    per_task = record["results"]["per_task"]["walkto/slow"]
    assert per_task["eval_s"] > first["per_task"]["walkto/slow"]["eval_s"]
    assert record["results"]["overall"]["eval_s"] == pytest.approx(per_task["eval_s"])
    assert json.loads((tmp_path / "jobs" / "walk" / "results.json").read_text())["status"] == "complete"


def test_a_mistyped_suite_name_suggests_the_suites(capsys):
    assert cli.main(["rollout", "--env-name", "metaworld-mt11", "--n-episodes", "1"]) == 2
    assert "or did you mean the suite metaworld-mt10" in capsys.readouterr().err
