"""`gr00t-eval batch` checks job counts as `rollout` checks its flags, and `--resume` reruns a done job whose
settings in DIR/jobs.json changed. Real PolicyServer on loopback, the real CLI."""

from __future__ import annotations

import json

import pytest

from eval.scale_fixtures import policy_server
from gr00t_eval import cli
from gr00t_eval.batch import JobError, load_jobs, setting_changes, with_setting_defaults

SMALL = {"n_episodes": 2, "n_envs": 1, "seed": 0, "max_episode_steps": 6,
         "overrides": {"n_action_steps": 2, "vectorization": "sync", "video_dir": None}}


@pytest.fixture(scope="module")
def server():
    with policy_server() as running:
        yield running


def write_jobs(path, port, jobs):
    path.write_text(json.dumps({"defaults": {**SMALL, "policy_server": {"port": port, "timeout_ms": 5000}}, "jobs": jobs}))
    return path


def batch_results(out):
    return {job["name"]: job for job in json.loads((out / "batch_results.json").read_text())["jobs"]}


@pytest.mark.parametrize("field, value, expected", [
    ("n_episodes", 0, "n_episodes must be a whole number >= 1, got 0"),
    ("n_episodes", -3, "n_episodes must be a whole number >= 1, got -3"),
    ("max_episode_steps", 0, "max_episode_steps must be a whole number >= 1, got 0"),
    ("n_envs", -1, "n_envs must be a whole number >= 0 (0 = auto), got -1"),
    ("seed", -5, "seed must be a whole number >= 0, got -5"),
    ("n_episodes", 2.5, "n_episodes must be a whole number >= 1, got 2.5"),
])
def test_a_job_with_an_impossible_count_is_invalid_naming_the_field(tmp_path, field, value, expected):
    [job] = load_jobs(write_jobs(tmp_path / "jobs.json", 1, [{"name": "typo", "env_name": "walkto/fast", field: value}]))
    assert isinstance(job, JobError) and str(job) == f"job 'typo': {expected}"


def test_an_override_count_is_checked_too(tmp_path):
    [job] = load_jobs(write_jobs(tmp_path / "jobs.json", 1, [
        {"name": "typo", "env_name": "walkto/fast", "overrides": {"n_action_steps": 0}}]))
    assert isinstance(job, JobError) and "override n_action_steps must be a whole number >= 1, got 0" in str(job)


@pytest.mark.parametrize("value", [0, -1, "600", True])
def test_an_env_timeout_override_must_be_positive_seconds(tmp_path, value):
    [job] = load_jobs(write_jobs(tmp_path / "jobs.json", 1, [
        {"name": "typo", "env_name": "walkto/fast", "overrides": {"env_timeout_s": value}}]))
    assert isinstance(job, JobError) and f"override env_timeout_s must be seconds > 0, or null for no limit; got {value!r}" in str(job)


def test_an_env_timeout_override_of_null_or_seconds_is_a_job_setting(tmp_path):
    jobs = load_jobs(write_jobs(tmp_path / "jobs.json", 1, [
        {"name": "off", "env_name": "walkto/fast", "overrides": {"env_timeout_s": None}},
        {"name": "short", "env_name": "walkto/fast", "overrides": {"env_timeout_s": 2.5, "vectorization": "async"}}]))
    assert [job.config["env_timeout_s"] for job in jobs] == [None, 2.5]


def test_jobs_of_zero_or_negative_episodes_fail_as_invalid_and_the_batch_exits_1(server, tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.json", server.port, [
        {"name": "good", "env_name": "walkto/fast"},
        {"name": "zero", "env_name": "walkto/fast", "n_episodes": 0},
        {"name": "negative", "env_name": "walkto/fast", "n_episodes": -3},
    ])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "out")]) == 1
    records = batch_results(tmp_path / "out")
    assert {name: r["status"] for name, r in records.items()} == {"good": "done", "zero": "failed", "negative": "failed"}
    assert records["zero"]["reason"] == "invalid job: job 'zero': n_episodes must be a whole number >= 1, got 0"
    assert "n_episodes must be a whole number >= 1, got -3" in records["negative"]["reason"]
    assert records["zero"]["results"] is None


def test_a_video_dir_holding_a_nul_fails_its_job_alone_naming_the_field(server, tmp_path):
    """It stopped the whole batch with "error: ValueError: embedded null byte", naming neither job nor field."""
    jobs = write_jobs(tmp_path / "jobs.json", server.port, [
        {"name": "good", "env_name": "walkto/fast"},
        {"name": "nul", "env_name": "walkto/fast", "overrides": {"video_dir": "videos\u0000x"}},
    ])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "out")]) == 1
    records = batch_results(tmp_path / "out")
    assert {name: r["status"] for name, r in records.items()} == {"good": "done", "nul": "failed"}
    assert records["nul"]["reason"] == ("invalid job: job 'nul': override video_dir must be a folder path (without NUL "
                                        "characters), or null, got 'videos\\x00x'")


@pytest.mark.parametrize("setting, value", [("video_fps", 5), ("steps_per_frame", 2), ("max_episodes_rendered", 1)])
def test_a_video_setting_without_a_video_dir_fails_its_job_alone_naming_both(server, tmp_path, setting, value):
    """It ran done and recorded the setting in job_config, although a job without video_dir writes no video."""
    jobs = write_jobs(tmp_path / "jobs.json", server.port, [
        {"name": "good", "env_name": "walkto/fast"},
        {"name": "novideo", "env_name": "walkto/fast", "overrides": {setting: value}},
        {"name": "video", "env_name": "walkto/fast", "overrides": {setting: value, "video_dir": str(tmp_path / "v")}},
    ])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "out")]) == 1
    records = batch_results(tmp_path / "out")
    assert {name: r["status"] for name, r in records.items()} == {"good": "done", "novideo": "failed", "video": "done"}
    assert records["novideo"]["reason"] == (
        f"invalid job: job 'novideo': override {setting} {value!r} only applies to videos, and the job names no "
        "video_dir (a batch job writes no videos without one); add a video_dir override, or leave "
        f"{setting} out")
    assert records["video"]["job_config"][setting] == value


def test_a_resumed_job_with_a_video_setting_and_no_video_dir_runs_as_before_warned(tmp_path, caplog):
    """A batch an earlier version started with such a job keeps its settings (and its finished episodes)."""
    [job] = load_jobs(write_jobs(tmp_path / "jobs.json", 1, [
        {"name": "old", "env_name": "walkto/fast", "overrides": {"video_fps": 5}}]), resumed=True,
        started={"old": {"video_fps": 5}}.get)
    assert not isinstance(job, JobError) and job.config["video_fps"] == 5
    assert any("override video_fps 5 only applies to videos" in r.getMessage()
               and "an earlier attempt of this batch started the job with it" in r.getMessage() for r in caplog.records)


def test_resume_still_refuses_a_job_this_version_refused_and_never_started(server, tmp_path):
    """The resume was lenient with every job, so the job refused as invalid ran done with video_fps recorded."""
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.json", server.port, [
        {"name": "novideo", "env_name": "walkto/fast", "overrides": {"video_fps": 5}}])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 1
    assert cli.main(["batch", "--resume", str(out)]) == 1
    record = batch_results(out)["novideo"]
    assert record["status"] == "failed" and record["reason"].startswith(
        "invalid job: job 'novideo': override video_fps 5 only applies to videos")
    assert "job_config" not in record and not (out / "jobs" / "novideo").exists()


def test_resume_runs_a_started_job_with_a_video_setting_and_no_video_dir_as_it_began(server, tmp_path, caplog):
    """An earlier version started it with that very setting (recorded in its job_config): its finished episodes are
    kept."""
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.json", server.port, [
        {"name": "novideo", "env_name": "walkto/fast", "overrides": {"video_fps": 5}}])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 1
    results = json.loads((out / "batch_results.json").read_text())  # as an earlier version's attempt recorded it
    results["jobs"][0]["job_config"] = {"video_fps": 5}
    (out / "batch_results.json").write_text(json.dumps(results))
    assert cli.main(["batch", "--resume", str(out)]) == 0
    assert batch_results(out)["novideo"]["status"] == "done"
    assert any("override video_fps 5 only applies to videos" in r.getMessage() for r in caplog.records)


def test_resume_refuses_a_video_setting_added_since_a_started_job_began(server, tmp_path):
    """A job the first attempt reached (its server was not up) recorded its settings: a video_fps added to its entry
    since was taken as one it began with, and ran done with video_fps recorded, no video written."""
    import socket

    with socket.socket() as probe:  # a port no server listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    out, jobs = tmp_path / "out", tmp_path / "jobs.json"
    write_jobs(jobs, dead_port, [{"name": "late", "env_name": "walkto/fast"}])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 1
    assert "job_config" in batch_results(out)["late"]
    write_jobs(out / "jobs.json", server.port,  # the batch's own copy, which a resume reads
               [{"name": "late", "env_name": "walkto/fast", "overrides": {"video_fps": 5}}])
    assert cli.main(["batch", "--resume", str(out)]) == 1
    record = batch_results(out)["late"]
    assert record["status"] == "failed" and record["reason"].startswith(
        "invalid job: job 'late': override video_fps 5 only applies to videos")


def test_a_job_rendering_no_episodes_needs_no_video_dir(tmp_path):
    [job] = load_jobs(write_jobs(tmp_path / "jobs.json", 1, [
        {"name": "quiet", "env_name": "walkto/fast", "overrides": {"max_episodes_rendered": 0}}]))
    assert not isinstance(job, JobError) and job.config["max_episodes_rendered"] == 0


def test_a_job_with_video_dir_null_turns_off_the_videos_its_defaults_give(server, tmp_path):
    """It was refused, blaming the video_fps and steps_per_frame of `defaults`, which it cannot unset alone."""
    videos, out = tmp_path / "videos", tmp_path / "out"
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"defaults": {
        **SMALL, "policy_server": {"port": server.port, "timeout_ms": 5000},
        "overrides": {**SMALL["overrides"], "video_dir": str(videos), "video_fps": 5, "steps_per_frame": 2}},
        "jobs": [{"name": "quiet", "env_name": "walkto/fast", "overrides": {"video_dir": None}},
                 {"name": "loud", "env_name": "walkto/fast"}]}))
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    quiet = batch_results(out)["quiet"]["job_config"]
    assert quiet["video_dir"] is None and quiet["video_fps"] != 5 and quiet["steps_per_frame"] != 2
    assert batch_results(out)["loud"]["job_config"]["video_fps"] == 5


def test_a_job_with_video_dir_null_and_its_own_video_setting_is_still_invalid(tmp_path):
    [job] = load_jobs(write_jobs(tmp_path / "jobs.json", 1, [
        {"name": "mixed", "env_name": "walkto/fast", "overrides": {"video_dir": None, "video_fps": 5}}]))
    assert isinstance(job, JobError) and "override video_fps 5 only applies to videos" in str(job)


def test_a_job_rendering_no_episodes_may_keep_other_video_settings_without_a_video_dir(tmp_path):
    [job] = load_jobs(write_jobs(tmp_path / "jobs.json", 1, [
        {"name": "quiet", "env_name": "walkto/fast", "overrides": {"max_episodes_rendered": 0, "video_fps": 5}}]))
    assert not isinstance(job, JobError) and job.config["max_episodes_rendered"] == 0


def test_resume_keeps_a_done_job_without_videos_whose_video_settings_were_left_out(server, tmp_path, caplog):
    """It ran the done job again from the start, its finished episodes discarded, though no video was written."""
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.json", server.port, [
        {"name": "quiet", "env_name": "walkto/fast", "overrides": {"max_episodes_rendered": 0, "video_fps": 5}}])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    before = batch_results(out)["quiet"]
    write_jobs(out / "jobs.json", server.port, [{"name": "quiet", "env_name": "walkto/fast"}])
    assert cli.main(["batch", "--resume", str(out)]) == 0
    assert batch_results(out)["quiet"] == before  # not run again
    assert not any("changed since it was done" in r.getMessage() for r in caplog.records)


def test_a_video_setting_of_a_job_with_a_video_dir_is_still_a_setting_change(tmp_path):
    saved = with_setting_defaults({"video_dir": str(tmp_path), "video_fps": 5})
    assert setting_changes(saved, {**saved, "video_fps": 20}, "job") == ["video_fps 5 -> 20"]
    assert setting_changes(saved, {**saved, "video_dir": None, "video_fps": 20}, "job") == [
        f"video_dir {str(tmp_path)!r} -> None", "video_fps 5 -> 20"]


def test_resume_reruns_a_done_job_whose_settings_changed_and_keeps_the_unchanged_one(server, tmp_path, caplog):
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.json", server.port, [
        {"name": "edited", "env_name": "walkto/slow", "max_episode_steps": 1},
        {"name": "same", "env_name": "walkto/fast"},
    ])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    before = batch_results(out)
    assert before["edited"]["results"]["config"]["max_episode_steps"] == 1

    write_jobs(out / "jobs.json", server.port, [
        {"name": "edited", "env_name": "walkto/slow", "max_episode_steps": 6},
        {"name": "same", "env_name": "walkto/fast"},
    ])
    assert cli.main(["batch", "--resume", str(out)]) == 0
    after = batch_results(out)
    assert after["edited"]["status"] == "done" and after["edited"]["results"]["config"]["max_episode_steps"] == 6
    assert after["edited"]["rerun_reason"] == "settings changed since it was done: max_episode_steps 1 -> 6"
    assert after["edited"]["results"]["overall"]["pc_success"] > before["edited"]["results"]["overall"]["pc_success"]
    assert after["same"] == before["same"]  # not run again
    assert any("job edited: max_episode_steps 1 -> 6 changed since it was done" in r.getMessage() for r in caplog.records)
    assert (out / "jobs" / "edited" / "episodes.replaced.jsonl").is_file()  # the old attempt's log is kept aside


def test_resume_reruns_a_done_job_whose_policy_server_changed(server, tmp_path):
    """A done record is kept only for the job it describes: another server may serve another checkpoint (an unnamed
    job inserted above it took its name job-<index> and was reported done with its results)."""
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.json", server.port, [{"name": "moved", "env_name": "walkto/fast"}])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    write_jobs(out / "jobs.json", 1, [{"name": "moved", "env_name": "walkto/fast"}])  # nothing listens on port 1
    assert cli.main(["batch", "--resume", str(out)]) == 1
    after = batch_results(out)["moved"]
    assert after["status"] == "failed" and after["policy_server"] == "127.0.0.1:1"
    assert after["rerun_reason"] == (f"settings changed since it was done: policy_server '127.0.0.1:{server.port}' -> "
                                     "'127.0.0.1:1'")


def test_resume_keeps_a_done_job_whose_run_file_was_cut_short_since(server, tmp_path):
    """The done record's own settings decide: comparing the recorded tasks read run.json for every done job, and a
    cut-short one (a full disk) reran the job, which failed naming the file, its done result replaced by a failure."""
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.json", server.port, [{"name": "a", "env_name": "walkto/fast"}])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    before = batch_results(out)["a"]
    run_file = out / "jobs" / "a" / "run.json"
    run_file.write_text(run_file.read_text()[:40])
    assert cli.main(["batch", "--resume", str(out)]) == 0
    assert batch_results(out)["a"] == before


def test_a_job_folder_saves_the_planned_config_that_later_attempts_are_compared_with(tmp_path):
    from gr00t_eval.batch import planned_config, prepare_job_dir
    from gr00t_eval.rollout import RolloutConfig

    config = RolloutConfig("walkto/fast", n_episodes=2, env_kwargs={"sizes": (1, 2)})
    planned = planned_config(config)
    assert planned["env_kwargs"] == {"sizes": [1, 2]} and planned["seed"] is None  # JSON values, before a seed is drawn
    first, done = prepare_job_dir(tmp_path / "job", config)
    assert json.loads((tmp_path / "job" / "run.json").read_text())["job_config"] == planned and done == []
    again, _ = prepare_job_dir(tmp_path / "job", config)  # unchanged settings: the saved base seed is kept
    assert first.seed is not None and again.seed == first.seed


def test_a_job_whose_suite_was_redefined_since_its_attempt_runs_from_the_start(tmp_path, monkeypatch, caplog):
    """Its logged episodes were kept under the new task list: a removed task's dropped, a regrouped one's pooled under a
    group their records did not name. Its run.json now records its tasks, and another task list is a setting change."""
    from gr00t_eval import suites
    from gr00t_eval.batch import prepare_job_dir
    from gr00t_eval.rollout import RolloutConfig

    monkeypatch.setattr(suites, "_SUITES", dict(suites._SUITES))  # registered for this test only
    suites.register_suite("mine", [("walkto/fast", "easy"), ("walkto/slow", "hard")])
    config = RolloutConfig("mine", n_episodes=2)
    prepare_job_dir(tmp_path / "job", config)
    assert json.loads((tmp_path / "job" / "run.json").read_text())["tasks"] == [["walkto/fast", "easy"],
                                                                                 ["walkto/slow", "hard"]]
    (tmp_path / "job" / "episodes.jsonl").write_text(json.dumps({
        "task": "walkto/slow", "group": "hard", "episode_index": 0, "seed": 0, "success": True, "sum_reward": 1.0,
        "max_reward": 1.0, "length": 2, "env_index": 0}) + "\n")
    suites.register_suite("mine", [("walkto/fast", "hard")], replace=True)
    _, done = prepare_job_dir(tmp_path / "job", config)
    assert done == [] and (tmp_path / "job" / "episodes.replaced.jsonl").is_file()
    assert ("settings changed (tasks: 'walkto/slow' (group 'hard') removed; 'walkto/fast' moved from group 'easy' to "
            "'hard')") in caplog.text


@pytest.mark.parametrize("link", ["a symlink loop", "a dangling link"])
def test_a_video_dir_that_is_a_broken_link_fails_its_job_alone_naming_it(server, tmp_path, link):
    """A symlink loop stopped the whole batch with a bare "Symlink loop" RuntimeError when the jobs' video folders
    were resolved to check they do not overlap."""
    folder = tmp_path / "broken"
    if link == "a symlink loop":
        (tmp_path / "other").symlink_to(folder)
        folder.symlink_to(tmp_path / "other")
        expected = f"override video_dir {folder} is a symlink loop"
    else:
        folder.symlink_to(tmp_path / "gone")
        expected = f"override video_dir {folder} is a symbolic link to {tmp_path / 'gone'}, which does not exist"
    jobs = write_jobs(tmp_path / "jobs.json", server.port, [
        {"name": "good", "env_name": "walkto/fast"},
        {"name": "linked", "env_name": "walkto/fast", "overrides": {"video_dir": str(folder)}},
    ])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "out")]) == 1
    records = batch_results(tmp_path / "out")
    assert {name: r["status"] for name, r in records.items()} == {"good": "done", "linked": "failed"}
    assert expected in records["linked"]["reason"], records["linked"]["reason"]


def test_a_job_with_rtc_against_a_policy_that_does_not_read_it_is_warned_before_it_runs(server, tmp_path, caplog):
    """rollout warned of it; the same setting in a batch job finished done with nothing said."""
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.json", server.port, [
        {"name": "rtc", "env_name": "walkto/fast", "overrides": {"client_chunking": "async", "rtc_frozen_steps": 1}}])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    assert batch_results(out)["rtc"]["results"]["settings_not_applied"] == {"rtc_frozen_steps": 1}
    warned = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING" and "--rtc-frozen-steps 1" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("not known to be applied: --rtc-frozen-steps 1;")


@pytest.mark.parametrize("host", ["tcp://127.0.0.1:5555", "127.0.0.1:5555", "[::1]:5555", "TCP://gpu-box",
                                  "http://127.0.0.1:5555", "localhost::5555", "127.0.0.1:5555:"])
def test_a_job_host_holding_a_scheme_or_port_is_refused_at_load_naming_the_field(tmp_path, host):
    """The address the server prints, pasted as a job's host, passed the load check and failed only at its turn, in
    the Python API's words (pass the port as port=)."""
    raw = json.loads(write_jobs(tmp_path / "jobs.json", 5555, [{"name": "pasted", "env_name": "walkto/fast"}]
                                ).read_text())
    raw["defaults"]["policy_server"]["host"] = host
    (tmp_path / "jobs.json").write_text(json.dumps(raw))
    [job] = load_jobs(tmp_path / "jobs.json")
    assert isinstance(job, JobError) and f"policy_server 'host' {host!r} is not a host alone" in str(job)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "2001:db8::1", "gpu-box.local"])
def test_a_job_host_alone_is_taken(tmp_path, host):
    raw = json.loads(write_jobs(tmp_path / "jobs.json", 5555, [{"name": "ok", "env_name": "walkto/fast"}]).read_text())
    raw["defaults"]["policy_server"]["host"] = host
    (tmp_path / "jobs.json").write_text(json.dumps(raw))
    [job] = load_jobs(tmp_path / "jobs.json")
    assert not isinstance(job, JobError) and job.server.host == host



def test_resume_runs_an_interrupted_job_with_the_video_setting_its_run_file_records(server, tmp_path):
    """A job stopped mid-run (Ctrl-C, a node lost) has a pending record without job_config: its settings are in its
    run.json. One an earlier version started with video_fps and no video_dir was refused on --resume, its logged
    episodes stranded."""
    out, jobs = tmp_path / "out", tmp_path / "jobs.json"
    write_jobs(jobs, server.port, [{"name": "novideo", "env_name": "walkto/fast"}])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    # what an earlier version left when stopped in the middle of the job, started with video_fps 5 and no video_dir
    run_file = out / "jobs" / "novideo" / "run.json"
    run = json.loads(run_file.read_text())
    run["job_config"]["video_fps"] = run["config"]["video_fps"] = 5
    run_file.write_text(json.dumps(run))
    log = out / "jobs" / "novideo" / "episodes.jsonl"
    log.write_text(log.read_text().splitlines()[0] + "\n")  # one episode logged before the stop
    (out / "jobs" / "novideo" / "results.json").unlink(missing_ok=True)
    results = json.loads((out / "batch_results.json").read_text())
    record = results["jobs"][0]
    results["jobs"][0] = {**{key: record[key] for key in ("name", "env_name", "policy_server")},
                          "status": "pending", "reason": None, "n_errors": 0, "results": None, "wall_s": 0.0}
    results["status"] = "interrupted"
    (out / "batch_results.json").write_text(json.dumps(results))
    write_jobs(out / "jobs.json", server.port,
               [{"name": "novideo", "env_name": "walkto/fast", "overrides": {"video_fps": 5}}])
    assert cli.main(["batch", "--resume", str(out)]) == 0
    assert batch_results(out)["novideo"]["status"] == "done"


def _older_job_folder(job_dir, config, logged_task, logged_group):
    """A job folder as an older gr00t-eval left it: a run.json without `tasks`, one episode of `logged_task` logged."""
    from gr00t_eval.batch import prepare_job_dir

    prepare_job_dir(job_dir, config)
    saved = json.loads((job_dir / "run.json").read_text())
    del saved["tasks"]
    (job_dir / "run.json").write_text(json.dumps(saved))
    (job_dir / "episodes.jsonl").write_text(json.dumps({
        "task": logged_task, "group": logged_group, "episode_index": 0, "seed": saved["config"]["seed"],
        "success": True, "sum_reward": 1.0, "max_reward": 1.0, "length": 2, "env_index": 0}) + "\n")


@pytest.mark.parametrize("logged_task, logged_group", [("walkto/slow", "hard"), ("walkto/fast", "easy")],
                         ids=["task removed", "task regrouped"])
def test_an_older_job_folder_whose_logged_episodes_are_outside_the_plan_runs_from_the_start(
        tmp_path, monkeypatch, caplog, logged_task, logged_group):
    """Its run.json (an older gr00t-eval's) recorded no tasks: the job was resumed, run_suite refused its logged
    episodes, and every later --resume failed it the same way."""
    from gr00t_eval import suites
    from gr00t_eval.batch import prepare_job_dir
    from gr00t_eval.rollout import RolloutConfig

    monkeypatch.setattr(suites, "_SUITES", dict(suites._SUITES))  # registered for this test only
    suites.register_suite("mine", [("walkto/fast", "easy"), ("walkto/slow", "hard")])
    config = RolloutConfig("mine", n_episodes=2)
    _older_job_folder(tmp_path / "job", config, logged_task, logged_group)
    suites.register_suite("mine", [("walkto/fast", "hard")], replace=True)
    _, done = prepare_job_dir(tmp_path / "job", config)
    assert done == [] and (tmp_path / "job" / "episodes.replaced.jsonl").is_file()
    assert "settings changed (tasks: its earlier attempt logged episode 0 of " in caplog.text
    assert json.loads((tmp_path / "job" / "run.json").read_text())["tasks"] == [["walkto/fast", "hard"]]


def test_an_older_job_folder_whose_logged_episodes_are_the_plans_resumes_as_before_and_records_its_tasks(
        tmp_path, monkeypatch, caplog):
    from gr00t_eval import suites
    from gr00t_eval.batch import prepare_job_dir
    from gr00t_eval.rollout import RolloutConfig

    monkeypatch.setattr(suites, "_SUITES", dict(suites._SUITES))  # registered for this test only
    suites.register_suite("mine", [("walkto/fast", "easy"), ("walkto/slow", "hard")])
    config = RolloutConfig("mine", n_episodes=2)
    _older_job_folder(tmp_path / "job", config, "walkto/slow", "hard")
    suites.register_suite("mine", [("walkto/slow", "hard"), ("walkto/fast", "easy")], replace=True)  # reordered
    _, done = prepare_job_dir(tmp_path / "job", config)
    assert [outcome.extras["task"] for outcome in done] == ["walkto/slow"]
    assert not (tmp_path / "job" / "episodes.replaced.jsonl").exists() and "changed" not in caplog.text
    # the plan its kept episodes were checked against: a later change of it is a change
    assert json.loads((tmp_path / "job" / "run.json").read_text())["tasks"] == [["walkto/slow", "hard"],
                                                                                 ["walkto/fast", "easy"]]


def test_resume_of_an_older_unfinished_job_whose_suite_lost_a_logged_task_runs_it_from_the_start(
        server, tmp_path, monkeypatch):
    from gr00t_eval import suites
    from gr00t_eval.batch import Job, PolicyServerAddress, run_batch

    monkeypatch.setattr(suites, "_SUITES", dict(suites._SUITES))  # registered for this test only
    suites.register_suite("mine", [("walkto/fast", "easy"), ("walkto/slow", "hard")])
    out = tmp_path / "out" / "batch_results.json"
    settings = {"n_episodes": 2, "n_envs": 1, "n_action_steps": 2, "max_episode_steps": 6, "seed": 0,
                "vectorization": "sync"}
    jobs = [Job("j", "mine", PolicyServerAddress("127.0.0.1", server.port), settings)]
    assert run_batch(jobs, out)["status"] == "complete"
    run_file = out.parent / "jobs" / "j" / "run.json"  # as an older gr00t-eval left it, interrupted before its end
    older = json.loads(run_file.read_text())
    del older["tasks"]
    run_file.write_text(json.dumps(older))
    previous = json.loads(out.read_text())
    previous["jobs"][0]["status"] = "pending"
    suites.register_suite("mine", [("walkto/fast", "easy")], replace=True)
    record = run_batch(jobs, out, previous=previous)["jobs"][0]
    assert (record["status"], record["reason"]) == ("done", None)
    assert list(record["results"]["per_task"]) == ["walkto/fast"] and record["resumed_episodes"] == 0
    assert (out.parent / "jobs" / "j" / "episodes.replaced.jsonl").is_file()


def test_resume_reruns_a_done_job_whose_suite_was_redefined_since(server, tmp_path, monkeypatch, caplog):
    """It was kept as done, the old tasks' results reported under the redefined suite, without a word."""
    from gr00t_eval import suites

    monkeypatch.setattr(suites, "_SUITES", dict(suites._SUITES))  # registered for this test only
    suites.register_suite("mine", [("walkto/fast", "easy"), ("walkto/slow", "hard")])
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.json", server.port, [{"name": "suite", "env_name": "mine"},
                                                            {"name": "same", "env_name": "walkto/fast"}])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    before = batch_results(out)
    suites.register_suite("mine", [("walkto/fast", "hard")], replace=True)
    assert cli.main(["batch", "--resume", str(out)]) == 0
    after = batch_results(out)
    assert after["suite"]["rerun_reason"] == ("settings changed since it was done: tasks: 'walkto/slow' (group 'hard') "
                                              "removed; 'walkto/fast' moved from group 'easy' to 'hard'")
    assert list(after["suite"]["results"]["per_group"]) == ["hard"]
    assert (out / "jobs" / "suite" / "episodes.replaced.jsonl").is_file()
    assert after["same"] == before["same"]  # not run again
