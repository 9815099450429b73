"""Batch jobs: parsed from JSON, run in sequence, broken jobs marked failed with a reason, one combined file."""

import json
import re
from pathlib import Path

import pytest

from eval.scale_fixtures import ConstantPolicy, InterruptOnCall, free_port, policy_server, run_cli
from gr00t_eval.batch import Job, JobError, PolicyServerAddress, connect, job_dir_name, load_jobs, run_batch
from gr00t_eval.rollout.runner import RolloutConfig
from gr00t_eval.shard import run_suite
from serving import running_server

DOCS = Path(__file__).resolve().parents[2] / "docs" / "batch-jobs.md"
SMALL = {"n_episodes": 3, "n_envs": 2, "seed": 0, "max_episode_steps": 6,
         "overrides": {"n_action_steps": 2, "vectorization": "sync"}}


def write_jobs(tmp_path, data):
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(data))
    return path


def test_defaults_and_overrides_merge_into_each_job(tmp_path):
    path = write_jobs(tmp_path, {"defaults": {**SMALL, "policy_server": {"port": 1}},
                                 "jobs": [{"name": "a", "env_name": "walkto/fast", "overrides": {"n_action_steps": 3}}]})
    [job] = load_jobs(path)
    assert isinstance(job, Job)
    assert job.server.host == "127.0.0.1" and job.server.port == 1
    config = job.rollout_config()
    assert (config.n_episodes, config.n_action_steps, config.vectorization) == (3, 3, "sync")


def test_an_invalid_job_becomes_an_error_naming_the_field_and_the_rest_still_load(tmp_path):
    path = write_jobs(tmp_path, [
        {"name": "typo", "env_name": "walkto/fast", "policy_server": {"port": 1}, "n_episode": 3},
        {"name": "bad-override", "env_name": "walkto/fast", "policy_server": {"port": 1}, "overrides": {"speed": 2}},
        {"name": "ok", "env_name": "walkto/fast", "policy_server": {"port": 1}},
    ])
    typo, bad_override, ok = load_jobs(path)
    assert isinstance(typo, JobError) and "'n_episode'" in str(typo)
    assert isinstance(bad_override, JobError) and "override 'speed'" in str(bad_override)
    assert isinstance(ok, Job)


def test_api_token_can_come_from_an_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_GR00T_TOKEN", "s3cret")
    path = write_jobs(tmp_path, [{"env_name": "walkto/fast", "policy_server": {"port": 1, "api_token_env": "TEST_GR00T_TOKEN"}}])
    assert load_jobs(path)[0].server_with_token().api_token == "s3cret"


def test_api_token_and_an_api_token_env_of_another_value_are_refused_naming_both(tmp_path, monkeypatch):
    """The variable's (a stale) token silently beat the file's; the job then failed as unauthorized."""
    monkeypatch.setenv("TEST_GR00T_TOKEN", "stale")
    path = write_jobs(tmp_path, [{"name": "j", "env_name": "walkto/fast", "policy_server": {
        "port": 1, "api_token": "right", "api_token_env": "TEST_GR00T_TOKEN"}}])
    [job] = load_jobs(path)
    with pytest.raises(JobError) as refused:
        job.server_with_token()
    assert str(refused.value) == (
        "job 'j': policy_server 'api_token' and 'api_token_env' ($TEST_GR00T_TOKEN) both given with different values; "
        "give one of them")


def test_two_different_api_tokens_for_one_job_are_refused_naming_the_fields_never_the_tokens(tmp_path, capsys):
    """policy_server.api_token and policy_config_dict.api_token were both quoted, on the console and in
    batch_results.json, although the jobs file is kept 0600 for its token."""
    path = write_jobs(tmp_path, [{"name": "a", "env_name": "walkto/fast", "n_episodes": 1,
                                  "policy_server": {"port": free_port(), "api_token": "s3cret-token-one"},
                                  "policy_config_dict": {"api_token": "s3cret-token-two"}}])
    assert run_cli(["batch", "--jobs", str(path), "--output-dir", str(tmp_path / "out")]) != 0
    shown = capsys.readouterr()
    results = (tmp_path / "out" / "batch_results.json").read_text()
    assert ("'policy_server.api_token' and 'policy_config_dict.api_token' both given with different values (not "
            "shown: api_token is a secret)") in results
    assert "s3cret-token" not in shown.out + shown.err + results


@pytest.mark.parametrize("server, expected", [
    ({"api_token": ""}, "job 'j': policy_server 'api_token' is empty"),
    ({"api_token_env": "TEST_GR00T_TOKEN"}, "job 'j': environment variable 'TEST_GR00T_TOKEN' (api_token_env) is empty"),
])
def test_a_blank_api_token_is_refused_not_sent_as_none(tmp_path, monkeypatch, server, expected):
    monkeypatch.setenv("TEST_GR00T_TOKEN", "")
    [job] = load_jobs(write_jobs(tmp_path, [{"name": "j", "env_name": "walkto/fast", "policy_server": {"port": 1, **server}}]))
    if isinstance(job, Job):  # a variable is read as the job runs
        with pytest.raises(JobError) as refused:
            job.server_with_token()
        job = refused.value
    assert isinstance(job, JobError) and str(job).startswith(expected)


def test_batch_with_a_good_and_broken_jobs_finishes_marks_the_broken_ones_and_reports_all(tmp_path, capsys):
    with policy_server(api_token="tok") as server:
        good_server = {"port": server.port, "api_token": "tok", "timeout_ms": 5000}
        path = write_jobs(tmp_path, {"defaults": SMALL, "jobs": [
            {"name": "server-gone", "env_name": "walkto/fast", "policy_server": {"port": free_port(), "timeout_ms": 300}},
            {"name": "good", "env_name": "walkto/fast,walkto/slow", "policy_server": good_server},
            {"name": "bad-env", "env_name": "nosuchprefix/task", "policy_server": good_server},
            {"name": "wrong-token", "env_name": "walkto/fast", "policy_server": {**good_server, "api_token": "nope"}},
        ]})
        code = run_cli(["batch", "--jobs", str(path), "--output-dir", str(tmp_path / "out")])
    assert code == 1
    batch = json.loads((tmp_path / "out" / "batch_results.json").read_text())
    status = {job["name"]: job["status"] for job in batch["jobs"]}
    assert status == {"server-gone": "failed", "good": "done", "bad-env": "failed", "wrong-token": "failed"}
    assert batch["n_failed"] == 3
    reasons = {job["name"]: job["reason"] for job in batch["jobs"]}
    assert "did not answer 'ping' within 300 ms (" in reasons["server-gone"]
    assert "unknown prefix 'nosuchprefix'" in reasons["bad-env"]
    assert "Unauthorized" in reasons["wrong-token"], reasons["wrong-token"]
    good = batch["jobs"][1]["results"]
    assert good["overall"]["n_episodes"] == 6 and set(good["per_task"]) == {"walkto/fast", "walkto/slow"}
    table = capsys.readouterr().out
    for name in status:
        assert re.search(rf"^{name}\s", table, re.MULTILINE), table
    assert re.search(r"^good\s+done\s+2\s+6\s+0\s", table, re.MULTILINE), table  # 6 episodes, 0 errors
    assert reasons["bad-env"] in table  # reasons are printed whole, never cut


def test_a_batch_job_of_an_unregistered_env_prefix_says_batch_cannot_register_it_not_flags_batch_lacks(tmp_path):
    with policy_server() as server:
        path = write_jobs(tmp_path, {"defaults": SMALL, "jobs": [
            {"name": "custom", "env_name": "nosuchprefix/task", "policy_server": {"port": server.port}}]})
        assert run_cli(["batch", "--jobs", str(path), "--output-dir", str(tmp_path / "out")]) == 1
    [job] = json.loads((tmp_path / "out" / "batch_results.json").read_text())["jobs"]
    assert "unknown prefix 'nosuchprefix'" in job["reason"]
    assert "gr00t-eval batch cannot register env prefixes" in job["reason"]
    assert "--env-adapter" not in job["reason"] and "--env-prefix" not in job["reason"]


def test_batch_rewrites_the_combined_file_after_each_job(tmp_path):
    seen = []

    def factory(server):
        output = tmp_path / "batch.json"
        seen.append([job["status"] for job in json.loads(output.read_text())["jobs"]])
        raise ConnectionError("no server in this test")

    jobs = [Job(f"j{i}", "walkto/fast", PolicyServerAddress("127.0.0.1", 1)) for i in range(3)]
    batch = run_batch(jobs, tmp_path / "batch.json", policy_factory=factory)
    # Every job is listed from the start (pending) and each finished one is saved before the next starts.
    assert seen == [["pending"] * 3, ["failed", "pending", "pending"], ["failed", "failed", "pending"]]
    assert [job["reason"] for job in batch["jobs"]] == ["ConnectionError: no server in this test"] * 3


def test_the_documented_example_job_file_is_valid(tmp_path, monkeypatch):
    monkeypatch.setenv("GR00T_API_TOKEN", "example")
    block = re.search(r"## Job file.*?```json\n(.*?)```", DOCS.read_text(), re.DOTALL).group(1)
    jobs = load_jobs(write_jobs(tmp_path, json.loads(block)))
    assert [type(job) for job in jobs] == [Job, Job]
    assert jobs[1].server_with_token().api_token == "example" and jobs[1].rollout_config().n_episodes == 50


def test_arena_job_field_names_are_accepted_as_aliases(tmp_path):
    path = write_jobs(tmp_path, [{
        "name": "arena", "num_episodes": 4, "num_envs": 2, "num_steps": 9, "policy_type": "gr00t_remote_closedloop",
        "policy_config_dict": {"remote_host": "gpu-box", "remote_port": 5556, "timeout_ms": 1234},
        "arena_env_args": {"environment": "walkto/fast", "speed_bonus": 1},
    }])
    [job] = load_jobs(path)
    assert isinstance(job, Job), job
    config = job.rollout_config()
    assert (job.env_name, config.n_episodes, config.n_envs, config.max_episode_steps) == ("walkto/fast", 4, 2, 9)
    assert (job.server.host, job.server.port, job.server.timeout_ms) == ("gpu-box", 5556, 1234)
    assert config.env_kwargs == {"speed_bonus": 1}


@pytest.mark.parametrize("policy_type", [
    "gr00t_remote_closedloop", "gr00t_closedloop",
    "isaaclab_arena_gr00t.policy.gr00t_closedloop_policy.Gr00tClosedloopPolicy",
    "isaaclab_arena.policy.action_chunking_client.ActionChunkingClientSidePolicy",
])
def test_arena_policy_types_of_a_gr00t_policy_server_client_are_accepted(tmp_path, policy_type):
    path = write_jobs(tmp_path, [{"name": "g", "env_name": "walkto/fast", "policy_server": {"port": 1}, "policy_type": policy_type}])
    [job] = load_jobs(path)
    assert isinstance(job, Job), job


@pytest.mark.parametrize("policy_type, hint", [
    ("zero_action", "leave policy_type out"),
    ("replay", "gr00t-server serve --dataset-path"),
    ("isaaclab_arena.policy.rsl_rl_action_policy.RslRlActionPolicy", "leave policy_type out"),
    ("Gr00tClosedloopPolicy", "leave policy_type out"),  # a bare class name is no Arena value
    (7, "leave policy_type out"),
])
def test_other_arena_policy_types_fail_the_job_in_one_line_listing_the_accepted_ones(tmp_path, policy_type, hint):
    path = write_jobs(tmp_path, [{"name": "z", "env_name": "walkto/fast", "policy_server": {"port": 1}, "policy_type": policy_type}])
    [error] = load_jobs(path)
    assert isinstance(error, JobError) and error.job_name == "z"
    message = str(error)
    assert "\n" not in message and f"policy_type {policy_type!r}" in message and hint in message
    assert "gr00t_remote_closedloop" in message and "<module>.ActionChunkingClientSidePolicy" in message


def test_a_model_setting_in_policy_config_dict_is_refused_with_a_hint(tmp_path):
    path = write_jobs(tmp_path, [{"name": "m", "env_name": "walkto/fast", "policy_config_dict": {"model_path": "/ckpt", "port": 1}}])
    [error] = load_jobs(path)
    assert isinstance(error, JobError) and "'model_path'" in str(error) and "gr00t-server serve" in str(error)


def test_invalid_jobs_keep_their_names_and_duplicate_names_are_refused(tmp_path):
    path = write_jobs(tmp_path, [
        {"name": "typo", "env_name": "walkto/fast", "policy_server": {"port": 1}, "n_episode": 3},
        {"name": "same", "env_name": "walkto/fast", "policy_server": {"port": 1}},
        {"name": "same", "env_name": "walkto/slow", "policy_server": {"port": 1}},
    ])
    typo, first, duplicate = load_jobs(path)
    assert isinstance(typo, JobError) and typo.job_name == "typo"
    assert isinstance(first, Job)
    assert isinstance(duplicate, JobError) and "duplicate job name" in str(duplicate)
    batch = run_batch([typo, first, duplicate], policy_factory=lambda server: (_ for _ in ()).throw(ConnectionError("x")))
    assert [job["name"] for job in batch["jobs"]] == ["typo", "same", "same#2"]
    assert batch["jobs"][0]["reason"].startswith("invalid job: job 'typo'")


def test_job_names_that_differ_only_in_case_are_refused_as_one_folder_on_case_insensitive_file_systems(tmp_path):
    """'Reach' and 'reach' had run folders jobs/Reach and jobs/reach, one folder on macOS and Windows: the second job
    took the first's run.json as its own earlier attempt and started over in it."""
    path = write_jobs(tmp_path, [{"name": "Reach", "env_name": "walkto/fast", "policy_server": {"port": 1}},
                                 {"name": "reach", "env_name": "walkto/slow", "policy_server": {"port": 1}}])
    first, second = load_jobs(path)
    assert isinstance(first, Job)
    assert isinstance(second, JobError) and "job 'reach': its run folder jobs/reach is one with jobs/Reach of job #0 " \
        "('Reach'): their folder names differ only in case" in str(second) and "case-insensitive file systems" in \
        str(second), second
    address = PolicyServerAddress("127.0.0.1", 1)
    jobs = [Job("Reach", "walkto/fast", address, {}), Job("reach", "walkto/slow", address, {})]
    with pytest.raises(JobError, match="differ only in case"):
        run_batch(jobs, tmp_path / "batch_results.json")
    assert not (tmp_path / "batch_results.json").exists()


def test_batch_runs_jobs_given_as_a_generator_not_reporting_a_complete_batch_of_none(tmp_path):
    """The duplicate-name check used the generator up: the batch ran no job and saved "complete" with 0 jobs."""
    settings = {"n_episodes": 1, "n_envs": 1, "n_action_steps": 2, "max_episode_steps": 6, "vectorization": "sync"}
    with policy_server() as server:
        address = PolicyServerAddress("127.0.0.1", server.port, timeout_ms=5000)
        jobs = (Job(name, "walkto/slow", address, dict(settings)) for name in ("a", "b"))
        batch = run_batch(jobs, tmp_path / "batch_results.json")
    saved = json.loads((tmp_path / "batch_results.json").read_text())
    assert batch["n_done"] == 2 and [job["status"] for job in saved["jobs"]] == ["done", "done"]


def test_batch_refuses_no_jobs_as_load_jobs_refuses_an_empty_job_file(tmp_path):
    with pytest.raises(ValueError, match="^jobs lists no jobs; a batch needs at least one Job$"):
        run_batch([], tmp_path / "batch_results.json")
    assert not (tmp_path / "batch_results.json").exists()


def test_batch_resume_keeps_done_jobs_and_runs_the_others_again(tmp_path):
    with policy_server() as server:
        good = {"port": server.port, "timeout_ms": 5000}
        path = write_jobs(tmp_path, {"defaults": SMALL, "jobs": [
            {"name": "good", "env_name": "walkto/fast", "policy_server": good},
            {"name": "later", "env_name": "walkto/slow", "policy_server": {"port": free_port(), "timeout_ms": 300}},
        ]})
        out = tmp_path / "out"
        assert run_cli(["batch", "--jobs", str(path), "--output-dir", str(out)]) == 1
        first = json.loads((out / "batch_results.json").read_text())
        assert [j["status"] for j in first["jobs"]] == ["done", "failed"] and first["status"] == "complete"
        # The second job's server comes up: point the saved job file at it and resume.
        saved = json.loads((out / "jobs.json").read_text())
        saved["jobs"][1]["policy_server"] = good
        (out / "jobs.json").write_text(json.dumps(saved))
        assert run_cli(["batch", "--resume", str(out)]) == 0
    resumed = json.loads((out / "batch_results.json").read_text())
    assert [j["status"] for j in resumed["jobs"]] == ["done", "done"]
    assert resumed["jobs"][0] == first["jobs"][0]  # kept as it was, not run again
    assert resumed["jobs"][1]["results"]["overall"]["n_episodes"] == 3


def test_resume_of_a_batch_from_an_older_gr00t_eval_is_refused_saying_what_is_missing_and_keeps_its_records(tmp_path):
    """A batch folder from a gr00t-eval before `batch --resume` holds batch_results.json alone (no jobs.json) and
    calls a finished job 'ok': the refusal said batch_results.json was missing, and with a jobs.json added the 'ok'
    jobs were run again and their records replaced without a word."""
    from gr00t_eval.cli_errors import UsageError

    with policy_server() as server:
        path = write_jobs(tmp_path, {"defaults": SMALL, "jobs": [
            {"name": "a", "env_name": "walkto/fast", "policy_server": {"port": server.port, "timeout_ms": 5000}}]})
        out = tmp_path / "out"
        assert run_cli(["batch", "--jobs", str(path), "--output-dir", str(out)]) == 0
        results = out / "batch_results.json"
        jobs = (out / "jobs.json").read_bytes()
        (out / "jobs.json").unlink()
        written = results.read_bytes()
        with pytest.raises(UsageError, match=r"batch_results\.json is there but jobs\.json is not \(a gr00t-eval older "
                                             r"than `batch --resume` saved none\); nothing can be resumed: start a new "
                                             r"batch with --jobs FILE --output-dir DIR"):
            run_cli(["batch", "--resume", str(out)])
        (out / "jobs.json").write_bytes(jobs)
        old = json.loads(written)
        old["jobs"][0]["status"] = "ok"
        results.write_text(json.dumps(old))
        written = results.read_bytes()
        with pytest.raises(UsageError, match=r"job 'a' has status 'ok', expected pending, done or failed \(a batch "
                                             r"from an older gr00t-eval\)"):
            run_cli(["batch", "--resume", str(out)])
    assert results.read_bytes() == written


def test_batch_refuses_a_non_empty_output_dir(tmp_path):
    path = write_jobs(tmp_path, [{"name": "a", "env_name": "walkto/fast", "policy_server": {"port": 1}}])
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    from gr00t_eval.cli_errors import UsageError
    import pytest

    with pytest.raises(UsageError, match="--overwrite"):
        run_cli(["batch", "--jobs", str(path), "--output-dir", str(out)])


# --- a job interrupted part-way resumes from its own episode log --------------------------------------------



WALK = {"n_episodes": 3, "n_envs": 1, "max_episode_steps": 6, "n_action_steps": 2, "vectorization": "sync"}  # no seed


def _entries(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _outcomes(results):
    keep = ("task", "episode_index", "seed", "success", "sum_reward", "max_reward", "length", "error")
    return [{k: e.get(k) for k in keep} for e in results["per_episode"]]


def test_a_job_interrupted_part_way_resumes_its_finished_episodes_and_drawn_seed(tmp_path):
    job = Job("walk", "walkto/fast,walkto/slow", PolicyServerAddress("127.0.0.1", 1), dict(WALK))
    path = tmp_path / "batch_results.json"
    with pytest.raises(KeyboardInterrupt):
        run_batch([job], path, policy_factory=lambda server: InterruptOnCall(call=5))
    interrupted = json.loads(path.read_text())
    assert interrupted["status"] == "interrupted" and interrupted["jobs"][0]["status"] == "pending"
    job_dir = tmp_path / "jobs" / "walk"
    kept = _entries(job_dir / "episodes.jsonl")
    assert 1 <= len(kept) < 6

    policies = []
    batch = run_batch([job], path, policy_factory=lambda server: policies.append(ConstantPolicy()) or policies[-1],
                      previous=interrupted)
    record = batch["jobs"][0]
    assert record["status"] == "done" and record["resumed_episodes"] == len(kept)
    logged = [(e["task"], e["episode_index"]) for e in _entries(job_dir / "episodes.jsonl")]
    assert len(logged) == len(set(logged)) == 6  # the kept episodes did not run again
    seed = json.loads((job_dir / "run.json").read_text())["config"]["seed"]
    assert {e["seed"] - e["episode_index"] for e in record["results"]["per_episode"]} == {seed}
    whole = run_suite(ConstantPolicy(), job.env_name, RolloutConfig(env_name=job.env_name, seed=seed, **WALK))
    assert _outcomes(record["results"]) == _outcomes(whole)


def test_a_job_whose_settings_changed_starts_over_keeping_the_old_log_aside(tmp_path):
    path = tmp_path / "batch_results.json"
    first = Job("walk", "walkto/fast", PolicyServerAddress("127.0.0.1", 1), {**WALK, "seed": 0})
    with pytest.raises(KeyboardInterrupt):
        run_batch([first], path, policy_factory=lambda server: InterruptOnCall(call=3))
    edited = Job("walk", "walkto/fast", PolicyServerAddress("127.0.0.1", 1), {**WALK, "seed": 0, "n_episodes": 2})
    batch = run_batch([edited], path, policy_factory=lambda server: ConstantPolicy(), previous=json.loads(path.read_text()))
    assert batch["jobs"][0]["resumed_episodes"] == 0 and batch["jobs"][0]["results"]["overall"]["n_episodes"] == 2
    assert (tmp_path / "jobs" / "walk" / "episodes.replaced.jsonl").is_file()


def test_a_damaged_job_run_file_fails_the_job_naming_the_file_and_what_to_do(tmp_path):
    """It failed on every resume with a bare 'JSONDecodeError: Expecting value: line 2 column 1 (char 16)'."""
    path = tmp_path / "batch_results.json"
    job = Job("walk", "walkto/fast", PolicyServerAddress("127.0.0.1", 1), {**WALK, "seed": 0})
    with pytest.raises(KeyboardInterrupt):
        run_batch([job], path, policy_factory=lambda server: InterruptOnCall(call=3))
    job_dir = tmp_path / "jobs" / "walk"
    (job_dir / "run.json").write_text('{"job_config": \n')  # cut short by a full disk
    batch = run_batch([job], path, policy_factory=lambda server: ConstantPolicy(), previous=json.loads(path.read_text()))
    record = batch["jobs"][0]
    assert record["status"] == "failed"
    assert f"{job_dir / 'run.json'} is not a readable run file (JSONDecodeError: " in record["reason"]
    assert f"Delete the job's folder {job_dir}" in record["reason"]


def _video_jobs(tmp_path, videos, names, server):
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"defaults": {**SMALL, "n_envs": 1, "policy_server": server,
                                             "overrides": {**SMALL["overrides"], "video_dir": str(videos)}},
                                "jobs": [{"name": name, "env_name": "walkto/fast"} for name in names]}))
    return load_jobs(path)


def test_adding_or_removing_a_job_that_shares_the_video_dir_does_not_rerun_the_others(tmp_path):
    """A lone job writes to video_dir, jobs sharing it to video_dir/<job>: adding a job moved the done one there,
    and `batch --resume` ran it again ('video_dir ... changed since it was done') though nobody changed it."""
    videos, path, server = tmp_path / "videos", tmp_path / "batch_results.json", {"port": 1}
    first = run_batch(_video_jobs(tmp_path, videos, ["a"], server), path, policy_factory=lambda s: ConstantPolicy())
    assert first["jobs"][0]["status"] == "done"
    added = run_batch(_video_jobs(tmp_path, videos, ["a", "b"], server), path, policy_factory=lambda s: ConstantPolicy(),
                      previous=first)
    assert added["jobs"][0] == first["jobs"][0]  # kept as it was, not run again
    assert added["jobs"][1]["status"] == "done" and added["jobs"][1]["job_config"]["video_dir"] == str(videos / "b")
    removed = run_batch(_video_jobs(tmp_path, videos, ["b"], server), path, policy_factory=lambda s: ConstantPolicy(),
                        previous=added)
    assert removed["jobs"][0] == added["jobs"][1]


def test_a_started_job_keeps_its_episodes_when_a_job_sharing_its_video_dir_is_added(tmp_path):
    videos, path, server = tmp_path / "videos", tmp_path / "batch_results.json", {"port": 1}
    with pytest.raises(KeyboardInterrupt):
        run_batch(_video_jobs(tmp_path, videos, ["a"], server), path, policy_factory=lambda s: InterruptOnCall(call=3))
    kept = _entries(tmp_path / "jobs" / "a" / "episodes.jsonl")
    assert kept
    batch = run_batch(_video_jobs(tmp_path, videos, ["a", "b"], server), path, policy_factory=lambda s: ConstantPolicy(),
                      previous=json.loads(path.read_text()))
    a = batch["jobs"][0]
    assert a["status"] == "done" and a["resumed_episodes"] == len(kept)
    assert not (tmp_path / "jobs" / "a" / "episodes.replaced.jsonl").exists()
    assert a["results"]["config"]["video_dir"] == a["job_config"]["video_dir"] == str(videos)  # where it started


def test_a_started_job_whose_settings_changed_runs_from_the_start_naming_each_changed_setting(tmp_path, caplog):
    job = {**SMALL, "n_envs": 1, "name": "a", "env_name": "walkto/fast", "policy_server": {"port": 1}}
    path = write_jobs(tmp_path, {"jobs": [job]})
    with pytest.raises(KeyboardInterrupt):
        run_batch(load_jobs(path), path, policy_factory=lambda s: InterruptOnCall(call=3))
    write_jobs(tmp_path, {"jobs": [{**job, "max_episode_steps": 5}]})
    run_batch(load_jobs(path), path, policy_factory=lambda s: ConstantPolicy(), previous=json.loads(path.read_text()))
    assert "job a: its settings changed (max_episode_steps 6 -> 5) since" in caplog.text
    assert "running the job from the start" in caplog.text


def test_a_new_batch_into_an_earlier_batchs_output_path_is_refused_naming_the_path_and_how_to_resume(tmp_path):
    """A second run_batch without `previous` ran no episode and reported the first batch's episodes (kept in their job
    folder) as its own, replacing batch_results.json: the CLI refuses such a folder unless --overwrite or --resume."""
    path = tmp_path / "batch_results.json"
    with running_server(ConstantPolicy()) as server:
        settings = {"n_episodes": 2, "n_envs": 1, "max_episode_steps": 6, "n_action_steps": 2, "vectorization": "sync",
                    "seed": 0}
        job = Job("a", "walkto/fast", PolicyServerAddress("127.0.0.1", server.port), settings)
        first = run_batch([job], path, policy_factory=connect)
        earlier, episodes = path.read_text(), (tmp_path / "jobs" / "a" / "episodes.jsonl").read_text()
        with pytest.raises(ValueError) as refused:
            run_batch([job], path, policy_factory=connect)
        message = str(refused.value)
        assert f"output_path {path}: an earlier batch is there" in message
        assert "to resume it pass previous=" in message and "to run a new batch delete" in message
        assert path.read_text() == earlier and (tmp_path / "jobs" / "a" / "episodes.jsonl").read_text() == episodes
        resumed = run_batch([job], path, policy_factory=connect, previous=json.loads(earlier))  # resuming is taken
    assert resumed["jobs"][0] == first["jobs"][0]


def test_job_folders_are_safe_file_names_and_distinct(tmp_path):
    from gr00t_eval.batch import job_dir_name

    assert job_dir_name("mt3-smoke") == "mt3-smoke"
    assert job_dir_name("a/b") != job_dir_name("a b") and "/" not in job_dir_name("a/b")
    assert job_dir_name("../x").startswith("x-")


@pytest.mark.parametrize("first_name, second_name", [("reach", "reach"), ("reach now", job_dir_name("reach now"))])
def test_run_batch_refuses_jobs_sharing_a_name_or_a_run_folder_before_any_runs(tmp_path, first_name, second_name):
    connected = []
    jobs = [Job(first_name, "walkto/fast", PolicyServerAddress("127.0.0.1", 1), {"n_episodes": 1}),
            Job(second_name, "walkto/fast", PolicyServerAddress("127.0.0.1", 2), {"n_episodes": 1})]
    with pytest.raises(JobError, match=rf"job '{re.escape(second_name)}': .*job #0"):
        run_batch(jobs, tmp_path / "batch_results.json", policy_factory=connected.append)
    assert connected == [] and not (tmp_path / "batch_results.json").exists()


def test_a_job_env_and_task_name_holding_a_newline_or_terminal_escape_is_printed_escaped(tmp_path, capsys, caplog):
    """They were printed raw: a newline in a job name forged a second log line, ESC[2J cleared the terminal and
    U+202E reversed the table row."""
    from gr00t_client import EmbodimentTag
    from gr00t_eval.rollout.envs import register_env_prefix
    from eval.scale_fixtures import WalkToEnv

    caplog.set_level("INFO", logger="gr00t_eval")
    register_env_prefix("anyname", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: WalkToEnv(2.0))
    name = "nightly\nINFO:gr00t_eval.batch:FORGED all jobs passed\x1b[2J"
    with policy_server() as server:
        path = write_jobs(tmp_path, {"defaults": SMALL, "jobs": [
            {"name": name, "env_name": "anyname/pick\u202eevom,nosuchprefix/\x1b[31mred",
             "policy_server": {"port": server.port, "timeout_ms": 5000}}]})
        assert run_cli(["batch", "--jobs", str(path), "--output-dir", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    shown = captured.out + captured.err + "\n".join(record.getMessage() for record in caplog.records)
    assert "\x1b" not in shown and "\u202e" not in shown
    assert not [line for line in shown.splitlines() if "FORGED" in line and "nightly" not in line]
    assert "job 1/1: nightly\\nINFO:gr00t_eval.batch:FORGED all jobs passed\\x1b[2J (anyname/pick\\u202eevom," in shown
    assert re.search(r"^nightly\\nINFO:gr00t_eval\.batch:FORGED all jobs passed\\x1b\[2J\s+failed\s", captured.out,
                     re.MULTILINE), captured.out
    reason = json.loads((tmp_path / "out" / "batch_results.json").read_text())["jobs"][0]["reason"]
    assert reason.startswith("nosuchprefix/\\x1b[31mred: ValueError: env name "), reason


def test_a_done_job_whose_entry_a_newer_check_refuses_keeps_its_results_on_resume(tmp_path):
    """Jobs 'Job-A' and 'job-a' (two folders on Linux) done by an earlier gr00t-eval: on resume the newer case check
    made 'job-a' a JobError, and its done record was replaced by 'failed: invalid job', its results gone."""
    done = {"name": "job-a", "env_name": "walkto/fast", "policy_server": "127.0.0.1:1", "status": "done",
            "reason": None, "n_errors": 0, "results": {"overall": {"pc_success": 100.0}}, "wall_s": 1.0}
    [error] = [job for job in load_jobs_from(tmp_path, [{"name": "Job-A", "env_name": "walkto/fast"},
                                                        {"name": "job-a", "env_name": "walkto/fast"}])
               if isinstance(job, JobError)]
    batch = run_batch([error], tmp_path / "batch_results.json", previous={"jobs": [done]})
    assert batch["jobs"] == [done] and batch["n_done"] == 1 and batch["n_failed"] == 0
    assert json.loads((tmp_path / "batch_results.json").read_text())["jobs"] == [done]
    # 'job-a' pasted once more: its record is kept once, and the copy stays refused as a duplicate
    errors = [job for job in load_jobs_from(tmp_path, [{"name": "Job-A", "env_name": "walkto/fast"},
                                                       {"name": "job-a", "env_name": "walkto/fast"},
                                                       {"name": "job-a", "env_name": "walkto/fast"}])
              if isinstance(job, JobError)]
    batch = run_batch(errors, tmp_path / "batch_results.json", previous={"jobs": [done]})
    assert [r["status"] for r in batch["jobs"]] == ["done", "failed"] and batch["n_done"] == 1


def load_jobs_from(folder, jobs):
    path = folder / "jobs.json"
    path.write_text(json.dumps({"jobs": [{**job, "policy_server": {"host": "127.0.0.1", "port": 1}} for job in jobs]}))
    return load_jobs(path)


def test_a_jobs_failure_is_logged_and_recorded_as_one_bounded_escaped_line(tmp_path, caplog):
    """The job's error was logged (and listed in the batch's table) raw: a connection error quoting a server's or a
    simulator's words put forged log lines, terminal escapes and 200,000-character lines on the console."""
    forged = "ERROR:gr00t_eval.batch:FORGED \x1b[31mred\x1b[0m"
    message = "cannot reach the server\n" + forged + "\n" + "x" * 200_000
    job = Job("j", "walkto/fast", PolicyServerAddress("127.0.0.1", 1), {})
    batch = run_batch([job], policy_factory=lambda server: (_ for _ in ()).throw(ConnectionError(message)))
    reason = batch["jobs"][0]["reason"]
    assert reason.startswith("ConnectionError: cannot reach the server\\nERROR:gr00t_eval.batch:FORGED \\x1b[31m")
    assert reason.isprintable() and len(reason) <= 4000 and reason.endswith("more characters)")
    logged = [r.getMessage() for r in caplog.records if "job j failed" in r.getMessage()]
    assert logged == [f"job j failed: {reason}"]
