"""The files a run leaves say what ran: a run whose task could not start is `incomplete`, not `complete` (its
eval_info.json said 100% success with nothing about the task); settings no run can use (an env timeout of inf or
1e10, an empty job file, a `defaults` that is not an object) are refused before anything starts; a damaged
batch_results.json is named; and a second run into a live run's folder is told it is in use, not sent to the
--overwrite and --resume that are then refused. Real servers on loopback, the walkto env, the real CLI."""

from __future__ import annotations

import json

import pytest

from eval.scale_fixtures import policy_server, run_cli
from gr00t_eval.batch import JobError, load_jobs
from gr00t_eval.cli_errors import UsageError
from gr00t_eval.rollout.config import MAX_ENV_TIMEOUT_S, RolloutConfig
from gr00t_eval.run_claim import finish_claim
from gr00t_eval.run_dir import write_run_file

WALK = ["--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0", "--no-video"]


def test_a_run_whose_task_could_not_start_is_incomplete_in_results_and_eval_info(tmp_path, capsys):
    out = tmp_path / "run"
    with policy_server() as server:
        code = run_cli(["rollout", "--env-name", "walkto/fast,walkto/nope", "--n-episodes", "2", *WALK,
                        "--policy-client-port", str(server.port), "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 1
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "incomplete" and results["n_not_run"] == 2
    assert results["stop_reason"] == "1 of 2 tasks failed (walkto/nope); 2 episodes did not run"
    info = json.loads((out / "eval_info.json").read_text())
    assert info["status"] == "incomplete" and info["n_not_run"] == 2 and list(info["failed_tasks"]) == ["walkto/nope"]
    assert "INCOMPLETE: 1 of 2 tasks failed (walkto/nope); 2 episodes did not run (continue with:" in printed


@pytest.mark.parametrize("value, message", [
    ("1e10", f"--env-timeout must be at most {MAX_ENV_TIMEOUT_S:g} seconds"),
    ("-1", "--env-timeout must be seconds > 0, or 0 for no limit"),
    ("nan", "--env-timeout must be seconds > 0, or 0 for no limit"),
])
def test_an_env_timeout_no_run_can_use_is_refused_before_the_output_directory_is_made(tmp_path, value, message):
    out = tmp_path / "run"
    with pytest.raises(UsageError, match=message):
        run_cli(["rollout", "--env-name", "walkto/fast", "--n-episodes", "2", *WALK, "--policy-client-port", "9",
                 "--env-timeout", value, "--output-dir", str(out)])
    assert not out.exists()


def test_an_infinite_env_timeout_means_no_limit_and_runs(tmp_path):
    with policy_server() as server:
        code = run_cli(["rollout", "--env-name", "walkto/fast", "--n-episodes", "2", *WALK[:-3], "--no-video",
                        "--n-envs", "2", "--seed", "0", "--env-timeout", "inf", "--policy-client-port", str(server.port),
                        "--output-dir", str(tmp_path / "run")])
    assert code == 0  # two envs in subprocesses: the timeout reaches their waits, which overflowed before
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["env_timeout_s"] is None
    assert RolloutConfig(env_name="walkto/fast", env_timeout_s=float("inf")).env_timeout_s is None


def _job_file(tmp_path, data):
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(data))
    return path


JOB = {"name": "a", "env_name": "walkto/fast", "policy_server": {"port": 9}, "n_episodes": 1}


@pytest.mark.parametrize("data, message", [
    ([], "the job file lists no jobs"),
    ({"jobs": []}, "the job file lists no jobs"),
    ({"defaults": [1], "jobs": [JOB]}, "'defaults' must be an object of job fields, got list"),
    ({"defaults": [], "jobs": [JOB]}, "'defaults' must be an object of job fields, got list"),
    ({"defaults": {"bogus": 1}, "jobs": [JOB]}, r"'defaults' has unknown fields \['bogus'\]"),
])
def test_a_job_file_with_no_jobs_or_bad_defaults_is_refused_as_a_whole(tmp_path, data, message):
    with pytest.raises(JobError, match=message):
        load_jobs(_job_file(tmp_path, data))


def test_a_job_env_timeout_beyond_a_week_fails_the_job_and_infinity_means_no_limit(tmp_path):
    jobs = load_jobs(_job_file(tmp_path, [
        {**JOB, "name": "huge", "overrides": {"env_timeout_s": 1e10}},
        {**JOB, "name": "endless", "overrides": {"env_timeout_s": float("inf")}},
        {**JOB, "name": "zero", "overrides": {"env_timeout_s": 0}},
    ]))
    assert isinstance(jobs[0], JobError) and "env_timeout_s must be at most 604800 seconds" in str(jobs[0])
    assert jobs[1].rollout_config().env_timeout_s is None
    assert isinstance(jobs[2], JobError) and "or null for no limit; got 0" in str(jobs[2])


def test_a_damaged_batch_results_file_is_named_and_leaves_no_claim_and_the_job_file_copy_keeps_its_mode(tmp_path):
    with policy_server() as server:
        jobs = _job_file(tmp_path, [{**JOB, "policy_server": {"port": server.port},
                                     "max_episode_steps": 6,
                                     "overrides": {"n_envs": 1, "vectorization": "sync", "n_action_steps": 2}}])
        out = tmp_path / "batch"
        jobs.chmod(0o600)  # kept private for an inline token or key
        assert run_cli(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    assert (out / "jobs.json").stat().st_mode & 0o777 == 0o600  # its copy was 0644
    (out / "batch_results.json").write_text('{"jobs": [{"name": "a", "sta')
    claim_before = (out / "batch.json").read_text()
    with pytest.raises(UsageError, match=r"batch_results\.json cannot be read \(JSONDecodeError"):
        run_cli(["batch", "--resume", str(out)])
    assert (out / "batch.json").read_text() == claim_before  # no claim taken and left unfinished
    (out / "batch_results.json").write_text('{"jobs": 5}')
    with pytest.raises(UsageError, match=r"batch_results\.json holds no batch results"):
        run_cli(["batch", "--resume", str(out)])
    assert (out / "batch.json").read_text() == claim_before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_a_second_run_into_a_live_runs_folder_is_told_it_is_in_use(tmp_path, overwrite):
    out = tmp_path / "run"
    out.mkdir()
    write_run_file(out, {"env_name": "walkto/fast", "config": {"seed": 0}})  # this process holds it, live
    try:
        with pytest.raises(UsageError, match="is in use: the run that claimed it is still running"):
            run_cli(["rollout", "--env-name", "walkto/fast", "--n-episodes", "2", *WALK, "--policy-client-port", "9",
                     "--output-dir", str(out), *overwrite])
    finally:
        finish_claim(out / "run.json", "complete")
