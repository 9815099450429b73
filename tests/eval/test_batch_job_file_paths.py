"""`gr00t-eval batch` and its job file: --overwrite of the folder holding the --jobs file keeps that file, and a job's
relative video_dir names one folder, from the directory the batch started in, whichever directory a --resume runs
from. Real rollouts and mp4 files against a loopback PolicyServer, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.scale_fixtures import CameraWalkEnv, ConstantPolicy, SigintOnCall, run_cli
from gr00t_client import EmbodimentTag
from gr00t_eval.cli_errors import UsageError
from gr00t_eval.rollout.envs import register_env_prefix
from serving import running_server


register_env_prefix("jobcam", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: CameraWalkEnv(1.0))


def job_file(path: Path, port: int, **overrides) -> Path:
    path.write_text(json.dumps({"jobs": [{
        "name": "walk", "env_name": "jobcam/slow", "n_episodes": 4, "n_envs": 1, "seed": 0, "max_episode_steps": 6,
        "policy_server": {"port": port, "timeout_ms": 5000},
        "overrides": {"n_action_steps": 2, "vectorization": "sync", **overrides}}]}, indent=1))
    return path


def test_overwrite_of_the_folder_holding_the_jobs_file_keeps_it_and_runs_the_batch(tmp_path):
    out = tmp_path / "batch"
    out.mkdir()
    with running_server(ConstantPolicy()) as server:
        jobs = job_file(out / "jobs.json", server.port, video_dir=None)
        text = jobs.read_text()
        (out / "batch_results.json").write_text(json.dumps({"kind": "batch", "jobs": [], "status": "complete"}))
        assert run_cli(["batch", "--jobs", str(jobs), "--output-dir", str(out), "--overwrite"]) == 0
    assert jobs.read_text() == text
    assert json.loads((out / "batch_results.json").read_text())["jobs"][0]["status"] == "done"


def stopped_here_and_resumed_there(jobs, out, started, elsewhere, monkeypatch):
    """A batch stopped by its server's Ctrl-C (exit 130) in `started`, then resumed to the end from `elsewhere`: the
    job's record, done with resumed episodes."""
    monkeypatch.chdir(started)
    assert run_cli(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 130
    monkeypatch.chdir(elsewhere)
    assert run_cli(["batch", "--resume", str(out)]) == 0
    record = json.loads((out / "batch_results.json").read_text())["jobs"][0]
    assert record["status"] == "done" and record["resumed_episodes"] >= 1
    return record


def test_a_relative_video_dir_is_the_start_directorys_when_the_batch_resumes_elsewhere(tmp_path, monkeypatch):
    started, elsewhere, out = tmp_path / "A", tmp_path / "B", tmp_path / "batch"
    started.mkdir()
    elsewhere.mkdir()
    with running_server(SigintOnCall(call=5)) as server:
        jobs = job_file(tmp_path / "jobs.json", server.port, video_dir="vids")
        record = stopped_here_and_resumed_there(jobs, out, started, elsewhere, monkeypatch)
    videos = started / "vids"
    assert record["job_config"]["video_dir"] == str(videos)
    listed = [e["video_path"] for e in record["results"]["per_episode"]]
    assert sorted(listed) == sorted(str(p) for p in videos.glob("episode_*.mp4")) and len(listed) == 4
    assert not list(elsewhere.rglob("*.mp4"))


def test_a_tilde_video_dir_is_the_first_attempts_home_when_the_batch_resumes_under_another(tmp_path, monkeypatch,
                                                                                          caplog):
    """'~' was expanded again by each attempt: a resume under another $HOME (sudo, a container) took the video_dir
    for a changed setting, set the job's logged episodes aside and wrote its videos into another folder."""
    home_a, home_b, out = tmp_path / "homeA", tmp_path / "homeB", tmp_path / "batch"
    home_a.mkdir()
    home_b.mkdir()
    monkeypatch.chdir(tmp_path)
    with running_server(SigintOnCall(call=5)) as server:
        jobs = job_file(tmp_path / "jobs.json", server.port, video_dir="~/vids")
        monkeypatch.setenv("HOME", str(home_a))
        assert run_cli(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 130
        monkeypatch.setenv("HOME", str(home_b))
        assert run_cli(["batch", "--resume", str(out)]) == 0
    record = json.loads((out / "batch_results.json").read_text())["jobs"][0]
    assert record["status"] == "done" and record["resumed_episodes"] >= 1
    assert "running the job from the start" not in caplog.text
    listed = [e["video_path"] for e in record["results"]["per_episode"]]
    assert sorted(listed) == sorted(str(p) for p in (home_a / "vids").glob("episode_*.mp4")) and len(listed) == 4
    assert not list(home_b.rglob("*.mp4"))


def test_a_sync_job_an_earlier_version_took_with_an_env_timeout_resumes_without_it_and_warns(tmp_path, caplog):
    """A job file of vectorization 'sync' and env_timeout_s 60 (taken before, never kept) failed on batch --resume."""
    out = tmp_path / "batch"
    with running_server(SigintOnCall(call=5)) as server:
        assert run_cli(["batch", "--jobs", str(job_file(tmp_path / "jobs.json", server.port, video_dir=None)),
                        "--output-dir", str(out)]) == 130
        job_file(out / "jobs.json", server.port, video_dir=None, env_timeout_s=60)
        run_file = out / "jobs" / "walk" / "run.json"
        saved = json.loads(run_file.read_text())
        saved["job_config"]["env_timeout_s"] = saved["config"]["env_timeout_s"] = 60.0
        run_file.write_text(json.dumps(saved))
        assert run_cli(["batch", "--resume", str(out)]) == 0
    record = json.loads((out / "batch_results.json").read_text())["jobs"][0]
    assert record["status"] == "done" and record["resumed_episodes"] >= 1
    assert "env_timeout_s 60 cannot apply with vectorization 'sync'" in caplog.text
    assert "running the job from the start" not in caplog.text


def test_an_older_batchs_relative_video_dir_matches_that_folder_made_absolute(tmp_path, monkeypatch):
    from gr00t_eval.batch import planned_config, setting_changes
    from gr00t_eval.rollout.runner import RolloutConfig

    monkeypatch.chdir(tmp_path)
    recorded = planned_config(RolloutConfig(env_name="jobcam/slow", video_dir="vids"))
    planned = planned_config(RolloutConfig(env_name="jobcam/slow", video_dir=str(tmp_path / "vids")))
    assert setting_changes(recorded, planned, "walk") == []
    assert setting_changes(recorded, {**planned, "video_dir": str(tmp_path / "other")}, "walk") != []


@pytest.mark.parametrize("z_video_dir, relation", [("videos/a", "is"), ("videos/a/z", "holds"), (".", "lies inside")])
def test_a_job_whose_video_folder_overlaps_another_jobs_is_refused_before_any_runs(tmp_path, monkeypatch, z_video_dir,
                                                                                    relation):
    """Jobs a and b share `videos` and are moved to videos/a and videos/b; job z naming videos/a (or a folder inside or
    above it) would overwrite a's episode videos and delete those of the other outcome."""
    monkeypatch.chdir(tmp_path)
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({
        "defaults": {"env_name": "jobcam/slow", "n_episodes": 2, "policy_server": {"port": 1},
                     "overrides": {"video_dir": "videos"}},
        "jobs": [{"name": "a"}, {"name": "b"}, {"name": "z", "overrides": {"video_dir": z_video_dir}}]}))
    with pytest.raises(UsageError) as refused:
        run_cli(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "out")])
    z_folder = (tmp_path / z_video_dir).resolve()
    assert str(refused.value).startswith(f"job 'a' writes its videos to {tmp_path / 'videos' / 'a'}, which {relation} "
                                         f"the video folder of job 'z' ({z_folder})")
    assert not (tmp_path / "out").exists() and not (tmp_path / "videos").exists()


def test_a_video_dir_through_a_link_and_dotdot_gets_the_videos_in_the_folder_the_os_names(tmp_path, monkeypatch):
    """link -> real/inner: link/../vids is real/vids; os.path.abspath made it ./vids, another folder."""
    (tmp_path / "real" / "inner").mkdir(parents=True)
    (tmp_path / "link").symlink_to("real/inner")
    (tmp_path / "vids").mkdir()
    (tmp_path / "vids" / "episode_0000_success.mp4").write_bytes(b"another run's video")
    monkeypatch.chdir(tmp_path)
    with running_server(ConstantPolicy()) as server:
        jobs = job_file(tmp_path / "jobs.json", server.port, video_dir="link/../vids")
        assert run_cli(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "batch")]) == 0
    assert (tmp_path / "vids" / "episode_0000_success.mp4").read_bytes() == b"another run's video"
    assert len(list((tmp_path / "real" / "vids").glob("episode_*.mp4"))) == 4


@pytest.mark.parametrize("key_field", ["server_public_key", "client_key"])
def test_a_relative_key_file_is_the_start_directorys_when_the_batch_resumes_elsewhere(tmp_path, monkeypatch, key_field):
    """A relative server_public_key / client_key was read from the directory of each attempt: a resume from another
    directory failed every job still to run ("neither an existing certificate file nor a z85 key")."""
    from gr00t_server.curve import generate_certificates

    started, elsewhere, out = tmp_path / "A", tmp_path / "B", tmp_path / "batch"
    elsewhere.mkdir()
    server_public, server_secret = generate_certificates(started / "keys", "server")
    _, client_secret = generate_certificates(started / "keys", "client")
    given = {"server_public_key": "keys/server.key"}
    given.update({"server_public_key": str(server_public), "client_key": "keys/client.key_secret"}
                 if key_field == "client_key" else {})
    with running_server(SigintOnCall(call=5), curve_secret_key=str(server_secret)) as server:
        jobs = job_file(tmp_path / "jobs.json", server.port, video_dir=None)
        raw = json.loads(jobs.read_text())
        raw["jobs"][0]["policy_server"].update(given)
        jobs.write_text(json.dumps(raw))
        stopped_here_and_resumed_there(jobs, out, started, elsewhere, monkeypatch)


def test_load_jobs_resolves_key_files_against_start_dir_and_home_dir_and_keeps_z85_keys(tmp_path, monkeypatch):
    from gr00t_eval.batch_jobs import load_jobs

    started, home = tmp_path / "A", tmp_path / "home"
    (started / "keys").mkdir(parents=True)
    (started / "keys" / "server_pub").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "other_home"))
    z85_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"  # holds '/' and '.': a key, not a path

    def server(**keys):
        path = job_file(tmp_path / "jobs.json", 5555, video_dir=None)
        raw = json.loads(path.read_text())
        raw["jobs"][0]["policy_server"].update(keys)
        path.write_text(json.dumps(raw))
        (job,) = load_jobs(path, started, str(home))
        return job.server

    assert server(server_public_key="keys/server_pub").server_public_key == str(started / "keys" / "server_pub")
    assert server(server_public_key="keys/missing.key").server_public_key == str(started / "keys" / "missing.key")
    assert server(server_public_key="~/k/server.key", client_key="~/k/me.key_secret").client_key == str(
        home / "k" / "me.key_secret")
    assert server(server_public_key=z85_key).server_public_key == z85_key
    assert server(server_public_key=z85_key, client_key=z85_key).client_key == z85_key
    key_named_like_a_file = z85_key[:35] + "0.key"  # 40 z85 characters that end as a certificate file's name does
    assert server(server_public_key=key_named_like_a_file).server_public_key == key_named_like_a_file
    # Quoted as an env file keeps it (the client drops the quotes): still the start directory's file, and home's
    assert server(server_public_key='"keys/server_pub"').server_public_key == str(started / "keys" / "server_pub")
    assert server(server_public_key="'~/k/server.key'").server_public_key == str(home / "k" / "server.key")
    assert server(server_public_key=f'"{z85_key}"').server_public_key == f'"{z85_key}"'
