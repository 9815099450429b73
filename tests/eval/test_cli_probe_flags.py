"""Flags the CLI argument probe found silently meaning something else: a merge's eval_info.json replaced by a merge
into another file, --env-timeout with a single in-process env, blank path flags, a million envs, an RTC K below 1
and a token with whitespace at an end. Each is refused with exit status 2, naming the flag, before anything is made."""

from __future__ import annotations

import json

import pytest

from eval.scale_fixtures import free_port, policy_server, two_shards
from gr00t_eval.batch import JobError, load_jobs
from gr00t_eval.cli import main


def rollout(port, out, *extra):
    return ["rollout", "--env-name", "walkto/slow", "--policy-client-port", str(port), "--output-dir", str(out),
            "--timeout-ms", "3000", "--n-episodes", "1", "--n-action-steps", "2", "--max-episode-steps", "6",
            "--no-video", "--seed", "0", *extra]


def job_file(tmp_path, **job):
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"jobs": [{"name": "j", "env_name": "walkto/slow", "n_episodes": 1,
                                          "policy_server": {"port": 5555}, **job}]}))
    return path


# --- merge: one folder, one merge's eval_info.json -------------------------------------------------------------


def test_a_merge_into_another_file_beside_an_earlier_merges_eval_info_is_refused(tmp_path, capsys):
    run_a, run_b = two_shards(tmp_path / "runA"), two_shards(tmp_path / "runB")
    merged = tmp_path / "merged"
    merged.mkdir()
    assert main(["merge", str(run_a), "--output", str(merged / "a.json")]) == 0
    first = (merged / "eval_info.json").read_text()
    assert json.loads(first)["merged_results"] == "a.json"
    capsys.readouterr()
    assert main(["merge", str(run_b), "--output", str(merged / "b.json")]) == 2
    err = capsys.readouterr().err
    assert "belongs to the merge into a.json" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (merged / "eval_info.json").read_text() == first and not (merged / "b.json").exists()


def test_a_merge_again_into_the_same_file_or_with_overwrite_replaces_the_pair(tmp_path):
    run_a, run_b = two_shards(tmp_path / "runA"), two_shards(tmp_path / "runB")
    merged = tmp_path / "merged"
    merged.mkdir()
    assert main(["merge", str(run_a), "--output", str(merged / "a.json")]) == 0
    assert main(["merge", str(run_a), "--output", str(merged / "a.json")]) == 0
    assert main(["merge", str(run_b), "--output", str(merged / "b.json"), "--overwrite"]) == 0
    assert json.loads((merged / "eval_info.json").read_text())["merged_results"] == "b.json"


def test_a_merge_beside_an_eval_info_json_of_no_merge_is_refused(tmp_path, capsys):
    run_a = two_shards(tmp_path / "runA")
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "eval_info.json").write_text('{"overall": {}}')  # copied from somewhere, or an older merge's
    assert main(["merge", str(run_a), "--output", str(merged / "a.json")]) == 2
    err = capsys.readouterr().err
    assert ("eval_info.json beside it is an eval_info.json of unknown origin (a run's, or an older gr00t-eval merge's)"
            in err and "--overwrite" in err)
    assert (merged / "eval_info.json").read_text() == '{"overall": {}}'


def test_a_merge_again_into_an_older_versions_merge_output_replaces_the_pair(tmp_path):
    """The documented merge run twice was refused after an upgrade: the older version's eval_info.json named no
    merged_results, and the error said it belonged to no merge into this --output."""
    run = two_shards(tmp_path / "run")
    assert main(["merge", str(run), "--output", str(run / "merged.json")]) == 0
    older = json.loads((run / "eval_info.json").read_text())
    del older["merged_results"]  # as the version before c27ee21 wrote it
    (run / "eval_info.json").write_text(json.dumps(older))
    assert main(["merge", str(run), "--output", str(run / "merged.json")]) == 0
    assert json.loads((run / "eval_info.json").read_text())["merged_results"] == "merged.json"


def test_an_older_eval_info_json_beside_an_output_that_is_no_merge_yet_is_refused(tmp_path, capsys):
    run_a = two_shards(tmp_path / "runA")
    merged = tmp_path / "merged"
    merged.mkdir()
    assert main(["merge", str(run_a), "--output", str(merged / "a.json")]) == 0
    older = json.loads((merged / "eval_info.json").read_text())
    del older["merged_results"]
    (merged / "eval_info.json").write_text(json.dumps(older))
    assert main(["merge", str(run_a), "--output", str(merged / "b.json")]) == 2  # b.json is no earlier merge's
    assert "of unknown origin" in capsys.readouterr().err and not (merged / "b.json").exists()


# --- rollout limits checked before connecting ------------------------------------------------------------------


def test_env_timeout_with_a_single_env_in_this_process_is_refused(tmp_path, capsys):
    with policy_server() as server:
        assert main(rollout(server.port, tmp_path / "out", "--n-envs", "1", "--env-timeout", "0.5")) == 2
    err = capsys.readouterr().err
    assert "--env-timeout 0.5 cannot apply with --n-envs 1" in err and "--vectorization async" in err
    assert not (tmp_path / "out").exists()


def test_env_timeout_given_to_resume_a_single_env_run_is_refused(tmp_path, capsys):
    with policy_server() as server:
        assert main(rollout(server.port, tmp_path / "out", "--n-envs", "1")) == 0
        capsys.readouterr()
        assert main(["rollout", "--resume", str(tmp_path / "out"), "--env-timeout", "30", "--policy-client-port",
                     str(server.port)]) == 2
    err = capsys.readouterr().err
    assert "--env-timeout 30 cannot apply with n_envs 1 under vectorization 'auto'" in err
    assert "resume with --env-timeout 0 (no limit), or without --env-timeout" in err


def test_a_single_env_run_an_earlier_version_saved_with_an_env_timeout_resumes_without_it_and_warns(tmp_path, caplog):
    """Its saved env_timeout_s 30 was kept silently on resume, and not kept: the single env runs in this process."""
    out = tmp_path / "out"
    with policy_server() as server:
        assert main(rollout(server.port, out, "--n-envs", "1", "--n-episodes", "2")) == 0
        saved = json.loads((out / "run.json").read_text())
        saved["config"]["env_timeout_s"] = 30.0  # as the version before refusing it took --env-timeout 30
        (out / "run.json").write_text(json.dumps(saved))
        lines = (out / "episodes.jsonl").read_text().splitlines()
        (out / "episodes.jsonl").write_text("\n".join(lines[:-1]) + "\n")
        assert main(["rollout", "--resume", str(out), "--policy-client-port", str(server.port)]) == 0
    assert "saved env timeout of 30 s cannot apply to its envs, which run in this process" in caplog.text
    assert json.loads((out / "results.json").read_text())["config"]["env_timeout_s"] is None


def test_a_batch_job_with_one_env_under_auto_vectorization_and_an_env_timeout_is_invalid(tmp_path):
    """The CLI refused `--n-envs 1 --env-timeout 1`; the same job ran untimed, was marked done and recorded 1 s."""
    with policy_server() as server:
        jobs = job_file(tmp_path, n_envs=1, max_episode_steps=6, seed=0, policy_server={"port": server.port},
                        overrides={"env_timeout_s": 1, "n_action_steps": 2, "video_dir": None})
        assert main(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "batch")]) == 1
    [job] = json.loads((tmp_path / "batch" / "batch_results.json").read_text())["jobs"]
    assert job["status"] == "failed"
    assert "override env_timeout_s 1 cannot apply with n_envs 1 under vectorization 'auto'" in job["reason"]


def test_a_batch_job_with_one_env_under_auto_vectorization_records_no_env_timeout(tmp_path):
    with policy_server() as server:
        jobs = job_file(tmp_path, n_envs=1, max_episode_steps=6, seed=0, policy_server={"port": server.port},
                        overrides={"n_action_steps": 2, "video_dir": None})
        assert main(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "batch")]) == 0
    saved = json.loads((tmp_path / "batch" / "jobs" / "j" / "run.json").read_text())
    assert saved["config"]["env_timeout_s"] is None  # 600 was recorded, and not kept


def test_env_timeout_zero_with_a_single_env_runs(tmp_path):
    with policy_server() as server:
        assert main(rollout(server.port, tmp_path / "out", "--n-envs", "1", "--env-timeout", "0")) == 0


def test_n_envs_above_the_maximum_is_refused_naming_the_flag(tmp_path, capsys):
    # nothing listens there: were the flags taken, the run would stop at the connection, not start a million envs
    assert main(rollout(free_port(), tmp_path / "out", "--n-envs", "1000000", "--n-episodes", "1000000",
                        "--timeout-ms", "300")) == 2
    assert "--n-envs must be at most 64" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_batch_job_with_n_envs_above_the_maximum_is_invalid(tmp_path):
    [parsed] = load_jobs(job_file(tmp_path, n_envs=65))
    assert isinstance(parsed, JobError) and "job 'j': n_envs must be at most 64" in str(parsed), parsed


@pytest.mark.parametrize("k", ["0", "-1"])
def test_rtc_frozen_steps_below_one_is_refused_before_connecting(tmp_path, capsys, k):
    with policy_server() as server:
        assert main(rollout(server.port, tmp_path / "out", "--n-envs", "1", "--vectorization", "sync",
                            "--client-chunking", "async", f"--rtc-frozen-steps={k}")) == 2
    err = capsys.readouterr().err
    assert f"--rtc-frozen-steps must be >= 1, got {k}" in err and "smaller" not in err
    assert not (tmp_path / "out").exists()


# --- blank path flags ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, flag", [
    (["rollout", "--env-name", "walkto/slow"], "--resume"),
    (["rollout", "--env-name", "walkto/slow"], "--output-dir"),
    (["rollout", "--env-name", "walkto/slow"], "--video-dir"),
    (["open-loop", "--dataset-path", "ds"], "--output-dir"),
    (["open-loop", "--dataset-path", "ds"], "--save-plot-path"),
    (["open-loop"], "--dataset-path"),
    (["batch"], "--output-dir"),
    (["batch"], "--jobs"),
    (["batch"], "--resume"),
    (["merge", "results"], "--output"),
    (["record", "--env-name", "metaworld/reach-v3"], "--output"),
])
def test_a_blank_path_flag_is_refused_naming_it(tmp_path, capsys, monkeypatch, command, flag):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main([*command, flag, ""])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "is empty (''): an unset variable?" in err
    assert list(tmp_path.iterdir()) == []


# --- API tokens no server accepts -------------------------------------------------------------------------------


def test_a_token_with_whitespace_at_an_end_is_refused_before_connecting_without_showing_it(tmp_path, capsys, monkeypatch):
    from eval.dataset_factory import make_dataset

    dataset = make_dataset(tmp_path / "dataset")
    monkeypatch.setenv("GR00T_API_TOKEN", "secret ")
    with policy_server(api_token="secret") as server:
        assert main(["open-loop", "--dataset-path", str(dataset), "--port", str(server.port), "--no-plots",
                     "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--api-token (or $GR00T_API_TOKEN) ends with whitespace" in err and "secret" not in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_batch_job_token_ending_in_a_newline_is_invalid_without_showing_it(tmp_path):
    [parsed] = load_jobs(job_file(tmp_path, policy_server={"port": 5555, "api_token": "secret\n"}))
    assert isinstance(parsed, JobError) and "policy_server 'api_token' ends with a newline" in str(parsed), parsed
    assert "secret" not in str(parsed)


# --- what a wrong path is, named -------------------------------------------------------------------------------


def test_resume_of_a_plain_file_says_it_is_a_file(tmp_path, capsys):
    plain = tmp_path / "results.json"
    plain.write_text("{}")
    assert main(["rollout", "--resume", str(plain), "--policy-client-port", str(free_port())]) == 2
    assert f"--resume {plain}: a file, not a folder" in capsys.readouterr().err


def test_batch_jobs_naming_a_folder_says_it_is_a_folder(tmp_path, capsys):
    assert main(["batch", "--jobs", str(tmp_path), "--output-dir", str(tmp_path / "out")]) == 2
    assert f"--jobs {tmp_path}: a folder, not a file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
