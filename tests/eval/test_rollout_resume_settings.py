"""`rollout --resume DIR` runs with DIR's saved settings: other settings on its command line are refused, not
dropped, and the resumed run's eval_s covers every attempt. A --video-dir holding an earlier run's episode videos is
refused like --output-dir, and --overwrite deletes only those.
Real PolicyServer on loopback, the real CLI."""

from __future__ import annotations

import contextlib
import json
import shutil
import time

import pytest

from eval.scale_fixtures import CameraWalkEnv, ConstantPolicy, SigintOnCall, policy_server, run_cli
from gr00t_client import EmbodimentTag
from gr00t_eval import cli
from gr00t_eval.rollout.envs import register_env_prefix
from serving import running_server

SMALL = ["--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video", "--vectorization", "sync"]


@pytest.fixture(scope="module")
def server():
    with policy_server() as running:
        yield running


def rollout(port, *extra):
    return cli.main(["rollout", "--policy-client-port", str(port), *extra])


@pytest.fixture
def finished_run(server, tmp_path):
    out = tmp_path / "run"
    assert rollout(server.port, "--env-name", "walkto/fast", "--n-episodes", "2", "--seed", "0", *SMALL,
                   "--output-dir", str(out)) == 0
    return out


def test_resume_refuses_settings_that_differ_from_the_saved_run_naming_each(server, finished_run, capsys):
    before = (finished_run / "results.json").read_text()
    capsys.readouterr()
    code = rollout(server.port, "--resume", str(finished_run), "--env-name", "walkto/slow", "--n-episodes", "10",
                   "--max-episode-steps", "5")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--env-name walkto/slow (saved: walkto/fast)" in err
    assert "--n-episodes 10 (saved: 2)" in err and "--max-episode-steps 5 (saved: 6)" in err
    assert "Drop those flags to resume" in err
    assert (finished_run / "results.json").read_text() == before


def test_resume_refuses_a_setting_given_at_its_default_value_when_the_run_saved_another(server, finished_run, capsys):
    assert rollout(server.port, "--resume", str(finished_run), "--n-episodes", "50") == 2  # 50 is the flag's default
    assert "--n-episodes 50 (saved: 2)" in capsys.readouterr().err


def test_resume_accepts_the_saved_settings_repeated_and_connection_flags(server, finished_run):
    assert rollout(server.port, "--resume", str(finished_run), "--env-name", "walkto/fast", "--n-episodes", "2",
                   "--timeout-ms", "5000", "--allow-errors") == 0


def test_resume_through_the_parsed_arguments_alone_refuses_non_default_settings(server, finished_run):
    # Callers that parse the command line themselves (no cli.main) still get the check, against the flag defaults.
    from gr00t_eval.cli_errors import UsageError

    with pytest.raises(UsageError, match="--client-chunking sync \\(saved: off\\)"):
        run_cli(["rollout", "--policy-client-port", str(server.port), "--resume", str(finished_run), "--client-chunking", "sync"])


def test_a_shard_resumes_with_the_auto_n_envs_and_vectorization_it_was_started_with(tmp_path):
    out = tmp_path / "shard"
    command = ["--env-name", "walkto/slow", "--n-envs", "0", "--vectorization", "auto", "--n-action-steps", "2",
               "--max-episode-steps", "6", "--seed", "3", "--n-episodes", "8", "--shard", "0/2", "--no-video",
               "--output-dir", str(out)]
    with running_server(SigintOnCall(4)) as interrupting:
        assert rollout(interrupting.port, *command) == 130
        assert rollout(interrupting.port, *command, "--resume", str(out)) == 0


def test_a_shard_started_with_explicit_envs_refuses_a_resume_that_asks_for_auto(tmp_path, capsys):
    """Auto matched any saved value: the shard's saved 2 envs, sync, ran in place of the flags, without a word."""
    out = tmp_path / "shard"
    command = ["--env-name", "walkto/slow", "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "3",
               "--n-episodes", "8", "--shard", "0/2", "--no-video", "--output-dir", str(out)]
    with running_server(SigintOnCall(4)) as interrupting:
        assert rollout(interrupting.port, *command, "--n-envs", "2", "--vectorization", "sync") == 130
        assert rollout(interrupting.port, *command, "--n-envs", "0", "--vectorization", "auto", "--resume",
                       str(out)) == 2
    assert "--n-envs 0 (saved: 2)" in capsys.readouterr().err


def as_an_earlier_version_saved_it_with_env_timeout(run, seconds):
    """`run` as a version that took --env-timeout with --vectorization sync saved it, its last episode not run."""
    saved = json.loads((run / "run.json").read_text())
    saved["config"]["env_timeout_s"] = seconds
    (run / "run.json").write_text(json.dumps(saved))
    lines = (run / "episodes.jsonl").read_text().splitlines()
    (run / "episodes.jsonl").write_text("\n".join(lines[:-1]) + "\n")


def test_a_sync_run_an_earlier_version_saved_with_an_env_timeout_resumes_without_it_and_warns(server, finished_run,
                                                                                               caplog):
    """Its saved env_timeout_s 60 was refused on resume, advising a --vectorization that --resume refuses."""
    as_an_earlier_version_saved_it_with_env_timeout(finished_run, 60.0)
    assert rollout(server.port, "--resume", str(finished_run)) == 0
    assert "saved env timeout of 60 s cannot apply to its envs, which run in this process" in caplog.text
    results = json.loads((finished_run / "results.json").read_text())
    assert sorted(entry["episode_index"] for entry in results["per_episode"]) == [0, 1]


def test_an_env_timeout_given_to_resume_a_sync_run_is_refused_naming_env_timeout_0(server, finished_run, capsys):
    as_an_earlier_version_saved_it_with_env_timeout(finished_run, 60.0)
    assert rollout(server.port, "--resume", str(finished_run), "--env-timeout", "30") == 2
    err = capsys.readouterr().err
    assert "--env-timeout 30 cannot apply with vectorization 'sync'" in err
    assert "resume with --env-timeout 0 (no limit), or without --env-timeout" in err


class SlowPolicyRefusingOneResetOnce(ConstantPolicy):
    """ConstantPolicy taking 30 ms per call whose first reset of episode 1 is refused (the episode errors)."""

    def __init__(self):
        super().__init__()
        self.refused = False

    def reset(self, options=None):
        episodes = (options or {}).get("episode_index")
        if not self.refused and 1 in (episodes if isinstance(episodes, list) else [episodes]):
            self.refused = True
            raise IndexError("episode_index 1 refused once")
        return {}

    def _get_action(self, observation, options=None):
        time.sleep(0.03)
        return super()._get_action(observation, options)


def test_a_damaged_run_file_is_named_on_resume(server, finished_run, capsys):
    """A cut run.json said 'JSONDecodeError: Unterminated string ...', naming no file."""
    path = finished_run / "run.json"
    path.write_bytes(path.read_bytes()[:200])
    capsys.readouterr()
    assert rollout(server.port, "--resume", str(finished_run)) == 2
    err = capsys.readouterr().err
    assert f"--resume {finished_run}: {path} is not a readable run file (JSONDecodeError: " in err and "cut short" in err


def test_resuming_a_batch_jobs_folder_is_refused_naming_batch_resume(server, tmp_path, capsys):
    """docs/batch-jobs.md lays a job's folder out as a rollout's; `rollout --resume` of it said 'KeyError: env_name'."""
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([{"name": "a", "env_name": "walkto/slow", "n_episodes": 2, "n_envs": 1, "seed": 0,
                                 "max_episode_steps": 6, "policy_server": {"port": server.port},
                                 "overrides": {"n_action_steps": 2, "vectorization": "sync", "video_dir": None}}]))
    batch = tmp_path / "batch"
    assert run_cli(["batch", "--jobs", str(jobs), "--output-dir", str(batch)]) == 0
    job_dir = batch / "jobs" / "a"
    before = (job_dir / "run.json").read_text()
    capsys.readouterr()
    assert rollout(server.port, "--resume", str(job_dir)) == 2
    err = capsys.readouterr().err
    assert f"--resume {job_dir}: this is a batch job's folder" in err
    assert f"continue it with `gr00t-eval batch --resume {batch}`" in err and "KeyError" not in err
    assert (job_dir / "run.json").read_text() == before  # not claimed by the refused resume


def test_a_run_file_without_env_name_is_named_on_resume(server, finished_run, capsys):
    path = finished_run / "run.json"
    saved = json.loads(path.read_text())
    del saved["env_name"]
    path.write_text(json.dumps(saved))
    capsys.readouterr()
    assert rollout(server.port, "--resume", str(finished_run)) == 2
    err = capsys.readouterr().err
    assert f"--resume {finished_run}: {path} holds no 'env_name'" in err and "KeyError" not in err


def test_a_run_file_with_settings_of_a_newer_version_is_named_on_resume(server, finished_run, capsys):
    """It said 'TypeError: RolloutConfig.__init__() got an unexpected keyword argument ...'."""
    path = finished_run / "run.json"
    saved = json.loads(path.read_text())
    saved["config"]["episode_budget"] = 3
    path.write_text(json.dumps(saved))
    capsys.readouterr()
    assert rollout(server.port, "--resume", str(finished_run)) == 2
    assert (f"{path} holds settings this gr00t-eval does not know: episode_budget (was the run started by a newer "
            "version?)") in capsys.readouterr().err


def test_eval_s_after_a_resume_covers_every_attempt(tmp_path):
    out = tmp_path / "run"
    with running_server(SlowPolicyRefusingOneResetOnce()) as slow:
        assert rollout(slow.port, "--env-name", "walkto/fast", "--n-episodes", "4", "--seed", "0", *SMALL,
                       "--output-dir", str(out)) == 1
        first = json.loads((out / "results.json").read_text())
        assert first["overall"]["n_errors"] == 1
        assert rollout(slow.port, "--resume", str(out)) == 0  # reruns the errored episode only
    second = json.loads((out / "results.json").read_text())
    assert second["overall"]["n_errors"] == 0 and second["overall"]["n_episodes"] == 4
    assert second["overall"]["eval_s"] > first["overall"]["eval_s"]
    assert second["per_task"]["walkto/fast"]["eval_s"] == pytest.approx(second["overall"]["eval_s"])
    assert second["overall"]["eval_ep_s"] == pytest.approx(second["overall"]["eval_s"] / 4)
    assert second["aggregated"] == second["overall"]
    assert json.loads((out / "eval_info.json").read_text())["overall"]["eval_s"] == pytest.approx(second["overall"]["eval_s"])


SLOW_START_FAILURE_S = 1.5


def make_slow_failing_env(task, **kwargs):
    time.sleep(SLOW_START_FAILURE_S)  # a simulator start that hangs until a timeout cuts it
    raise RuntimeError("simulator did not start")


register_env_prefix("slowfail", EmbodimentTag.NEW_EMBODIMENT, make_slow_failing_env)


def test_eval_s_after_a_resume_counts_a_task_that_failed_to_start_once(tmp_path):
    out = tmp_path / "run"
    started = time.monotonic()
    with running_server(SigintOnCall(7)) as interrupting:  # Ctrl-C during the second task
        assert rollout(interrupting.port, "--env-name", "slowfail/x,walkto/slow", "--n-episodes", "6", "--seed", "3",
                       *SMALL, "--output-dir", str(out)) == 130
        assert rollout(interrupting.port, "--resume", str(out)) == 1  # slowfail/x fails to start again
    wall_s = time.monotonic() - started

    final = json.loads((out / "results.json").read_text())
    assert final["overall"]["eval_s"] <= wall_s, (final["overall"]["eval_s"], wall_s, final["per_task"])


# --- --video-dir --------------------------------------------------------------------------------------------


def video_run(port, out, video_dir, *extra):
    small = [flag for flag in SMALL if flag != "--no-video"]
    return rollout(port, "--env-name", "walkto/fast", "--n-episodes", "1", "--seed", "0", *small,
                   "--output-dir", str(out), "--video-dir", str(video_dir), *extra)


def test_a_video_dir_holding_episode_videos_is_refused_like_the_output_dir(server, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "episode_0000_failure.mp4").write_bytes(b"an earlier run's video")
    assert video_run(server.port, tmp_path / "run", videos) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"--video-dir {videos} already holds episode videos of an earlier run (episode_0000_failure.mp4)" in err
    assert "--overwrite to delete those" in err
    assert (videos / "episode_0000_failure.mp4").read_bytes() == b"an earlier run's video" and not (tmp_path / "run").exists()


def shared_video_dir(root):
    """A videos folder shared with other tools, holding two episode videos of an earlier rollout."""
    videos = root / "all_my_videos"
    (videos / "metaworld__reach-v3").mkdir(parents=True)
    (videos / "holidays").mkdir()
    (videos / "2024_demo_day.mp4").write_bytes(b"precious")
    (videos / "episode_12.mp4").write_bytes(b"another tool's naming")
    (videos / "holidays" / "beach.mp4").write_bytes(b"precious too")
    (videos / "episode_0000_failure.mp4").write_bytes(b"an earlier run's video")
    (videos / "metaworld__reach-v3" / "episode_0003_success.mp4").write_bytes(b"an earlier run's video")
    return videos


def test_overwrite_deletes_only_episode_videos_from_an_outside_video_dir(server, tmp_path):
    videos = shared_video_dir(tmp_path)
    assert video_run(server.port, tmp_path / "run", videos, "--overwrite") == 0
    assert (videos / "2024_demo_day.mp4").read_bytes() == b"precious"
    assert (videos / "episode_12.mp4").read_bytes() == b"another tool's naming"
    assert (videos / "holidays" / "beach.mp4").read_bytes() == b"precious too"
    assert not (videos / "metaworld__reach-v3").exists()  # the earlier run's task folder, left empty, is removed
    earlier = videos / "episode_0000_failure.mp4"
    assert not earlier.exists() or earlier.read_bytes() != b"an earlier run's video"  # gone, or this run's episode 0


def test_nothing_is_deleted_from_the_video_dir_when_the_output_dir_is_then_refused(server, tmp_path, capsys):
    videos = shared_video_dir(tmp_path)
    before = sorted(p.relative_to(videos) for p in videos.rglob("*"))
    (tmp_path / "out").write_text("not a directory")
    assert video_run(server.port, tmp_path / "out", videos, "--overwrite") == 2
    assert f"--output-dir {tmp_path / 'out'} exists and is not a directory" in capsys.readouterr().err
    assert sorted(p.relative_to(videos) for p in videos.rglob("*")) == before
    assert (videos / "episode_0000_failure.mp4").read_bytes() == b"an earlier run's video"


def test_other_files_in_a_video_dir_neither_block_the_run_nor_are_touched(server, tmp_path):
    videos = tmp_path / "all_my_videos"
    videos.mkdir()
    (videos / "2024_demo_day.mp4").write_bytes(b"precious")
    assert video_run(server.port, tmp_path / "run", videos) == 0
    assert (videos / "2024_demo_day.mp4").read_bytes() == b"precious"


def test_a_video_dir_inside_the_new_output_dir_or_new_is_used_as_given(server, tmp_path):
    assert video_run(server.port, tmp_path / "a", tmp_path / "a" / "clips") == 0
    assert video_run(server.port, tmp_path / "b", tmp_path / "new_videos") == 0


def test_overwrite_recognises_exactly_the_episode_video_names_the_rollout_writes(tmp_path):
    from gr00t_eval.video import episode_video_name, episode_videos

    written = [episode_video_name(7, True), episode_video_name(8, False, errored=True), episode_video_name(12345, False)]
    assert written == ["episode_0007_success", "episode_0008_error", "episode_12345_failure"]
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "deeper").mkdir()
    for name in [f"{written[0]}.mp4", f"{written[1]}.mp4", f"task/{written[2]}.mp4", "episode_000001.mp4",
                 "episode_0007_success.mp4.bak", "task/deeper/episode_0001_success.mp4", "my_episode_0001_success.mp4"]:
        (tmp_path / name).write_bytes(b"")
    assert [str(p.relative_to(tmp_path)) for p in episode_videos(tmp_path)] == [
        f"{written[0]}.mp4", f"{written[1]}.mp4", f"task/{written[2]}.mp4"]



register_env_prefix("resumecam", EmbodimentTag.NEW_EMBODIMENT,
                    lambda task, **kwargs: CameraWalkEnv({"fast": 2.0, "slow": 1.0}[task]))


@contextlib.contextmanager
def interrupted_video_run(out, *extra):
    """A run of 2 tasks x 2 episodes with videos whose first episode 1 errors (its reset refused once): a resume
    reruns it. Yields the server's port while it runs."""
    small = [flag for flag in SMALL if flag != "--no-video"]
    with running_server(SlowPolicyRefusingOneResetOnce()) as slow:
        assert rollout(slow.port, "--env-name", "resumecam/fast,resumecam/slow", "--n-episodes", "2", "--seed", "0",
                       *small, "--output-dir", str(out), *extra) == 1
        yield slow.port


def listed_videos(out):
    results = json.loads((out / "results.json").read_text())
    listed = [e["video_path"] for e in results["per_episode"]] + results["video_paths"]
    return set(listed + json.loads((out / "eval_info.json").read_text())["overall"]["video_paths"])


def videos_of_every_episode(folder):
    return {str(folder / task / f"episode_{index:04d}_success.mp4")
            for task in ("resumecam__fast", "resumecam__slow") for index in range(2)}


def test_a_relative_video_dir_resumed_from_another_directory_keeps_every_video_in_its_first_folder(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    with interrupted_video_run(tmp_path / "run", "--video-dir", "vids") as port:
        monkeypatch.chdir(tmp_path / "b")
        assert rollout(port, "--resume", str(tmp_path / "run")) == 0
    assert listed_videos(tmp_path / "run") == videos_of_every_episode(tmp_path / "a" / "vids")
    assert not (tmp_path / "b" / "vids").exists()


def test_a_moved_run_resumed_lists_its_earlier_videos_where_they_now_are(tmp_path):
    with interrupted_video_run(tmp_path / "old") as port:
        (tmp_path / "old").rename(tmp_path / "new")
        assert rollout(port, "--resume", str(tmp_path / "new")) == 0
    assert listed_videos(tmp_path / "new") == videos_of_every_episode(tmp_path / "new" / "videos")


def test_a_resume_may_repeat_a_relative_video_dir_from_the_directory_the_run_started_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with interrupted_video_run(tmp_path / "run", "--video-dir", "vids") as port:
        assert rollout(port, "--resume", str(tmp_path / "run"), "--video-dir", "vids") == 0
    assert listed_videos(tmp_path / "run") == videos_of_every_episode(tmp_path / "vids")


def test_a_resume_into_a_video_dir_another_run_has_used_since_is_refused_and_that_runs_videos_kept(server, tmp_path,
                                                                                                   capsys):
    videos = tmp_path / "vids"
    small = [flag for flag in SMALL if flag != "--no-video"]
    with interrupted_video_run(tmp_path / "a", "--video-dir", str(videos)) as port:
        assert rollout(server.port, "--env-name", "resumecam/fast,resumecam/slow", "--n-episodes", "2", "--seed", "5",
                       *small, "--output-dir", str(tmp_path / "b"), "--video-dir", str(videos), "--overwrite") == 0
        videos_of_b = {path: path.read_bytes() for path in videos.rglob("*.mp4")}
        capsys.readouterr()
        assert rollout(port, "--resume", str(tmp_path / "a")) == 2
    err = capsys.readouterr().err
    assert f"--video-dir {videos} was used by another run after this one wrote its videos there" in err, err
    assert f"for {tmp_path / 'b'})" in err
    assert {path: path.read_bytes() for path in videos.rglob("*.mp4")} == videos_of_b


def test_a_resumed_run_lists_an_earlier_video_deleted_from_its_video_dir_as_none(tmp_path):
    videos = tmp_path / "vids"
    with interrupted_video_run(tmp_path / "run", "--video-dir", str(videos)) as port:
        gone = videos / "resumecam__fast" / "episode_0000_success.mp4"
        gone.unlink()
        assert rollout(port, "--resume", str(tmp_path / "run")) == 0
    assert listed_videos(tmp_path / "run") == videos_of_every_episode(videos) - {str(gone)} | {None}


def test_a_run_reached_through_a_link_resumes_into_its_own_video_dir(tmp_path):
    """Its own earlier claim, under the folder's real path, was taken for another run's that had used the
    --video-dir since."""
    videos = tmp_path / "vids"
    with interrupted_video_run(tmp_path / "run", "--video-dir", str(videos)) as port:
        (tmp_path / "link").symlink_to(tmp_path / "run")
        assert rollout(port, "--resume", str(tmp_path / "link")) == 0
    assert listed_videos(tmp_path / "link") == videos_of_every_episode(videos)


def as_older_run_file(out, video_dir):
    """Make `out`'s run file one an older gr00t-eval wrote: no default_video_dir, and `video_dir` (as that run was
    given it, relative or absolute) saved for its videos, which its episode log names under it."""
    run = json.loads((out / "run.json").read_text())
    saved = run["config"]["video_dir"]
    del run["default_video_dir"]
    run["config"]["video_dir"] = video_dir
    (out / "run.json").write_text(json.dumps(run))
    lines = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines() if line.strip()]
    for entry in lines:
        if entry.get("video_path"):
            entry["video_path"] = entry["video_path"].replace(saved, video_dir, 1)
    (out / "episodes.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in lines))


def video_bytes(folder):
    return {path: path.read_bytes() for path in folder.rglob("*.mp4")}


def test_a_copy_of_an_older_run_resumed_writes_its_videos_into_the_copy_not_the_original(tmp_path, monkeypatch):
    """An older run file saved `--output-dir run`'s video folder as "run/videos": the copy's resume wrote its videos
    into the original run's folder and listed them there."""
    monkeypatch.chdir(tmp_path)
    with interrupted_video_run(tmp_path / "run") as port:
        as_older_run_file(tmp_path / "run", "run/videos")
        shutil.copytree(tmp_path / "run", tmp_path / "copy")
        original = video_bytes(tmp_path / "run" / "videos")
        assert rollout(port, "--resume", "copy") == 0
    assert video_bytes(tmp_path / "run" / "videos") == original
    assert listed_videos(tmp_path / "copy") == videos_of_every_episode(tmp_path / "copy" / "videos")


def test_a_moved_older_run_with_an_absolute_video_folder_resumes_into_its_own_videos(tmp_path):
    """An older run file saved an absolute --output-dir's video folder as it was: the moved run's resume re-created
    the old location and wrote its videos there."""
    with interrupted_video_run(tmp_path / "old") as port:
        as_older_run_file(tmp_path / "old", str(tmp_path / "old" / "videos"))
        (tmp_path / "old").rename(tmp_path / "new")
        assert rollout(port, "--resume", str(tmp_path / "new")) == 0
    assert not (tmp_path / "old").exists()
    assert listed_videos(tmp_path / "new") == videos_of_every_episode(tmp_path / "new" / "videos")


def test_a_moved_run_is_told_its_claim_is_under_its_old_name_and_resumes_once_that_claim_goes(tmp_path, capsys):
    """A claim names the folder its run wrote to: a moved run's is another run's as far as the folder can tell (a run
    whose output folder was deleted or moved may still own the videos there), so it is refused, saying why."""
    videos = tmp_path / "vids"
    with interrupted_video_run(tmp_path / "run", "--video-dir", str(videos)) as port:
        (tmp_path / "run").rename(tmp_path / "moved")
        capsys.readouterr()
        assert rollout(port, "--resume", str(tmp_path / "moved")) == 2
        err = capsys.readouterr().err
        assert f"--video-dir {videos} holds no claim of this run (was its output folder moved or renamed" in err, err
        (claim,) = videos.glob(".gr00t_videos_*.json")
        assert f"delete {claim} and resume again" in err
        claim.unlink()
        assert rollout(port, "--resume", str(tmp_path / "moved")) == 0
    assert listed_videos(tmp_path / "moved") == videos_of_every_episode(videos)


def test_a_run_refused_at_its_start_leaves_no_claim_in_the_way_of_an_earlier_runs_resume(tmp_path, capsys):
    """A run that wrote nothing (no server answered) kept its newer claim on the --video-dir, and the earlier run's
    resume was refused as if that run had used the folder since."""
    videos = tmp_path / "vids"
    with interrupted_video_run(tmp_path / "run", "--video-dir", str(videos)) as port:
        with running_server(SlowPolicyRefusingOneResetOnce()) as gone:
            dead_port = gone.port
        claims = set(videos.glob(".gr00t_videos_*.json"))
        assert rollout(dead_port, "--env-name", "resumecam/fast", "--n-episodes", "1", "--seed", "3", "--timeout-ms",
                       "500", "--output-dir", str(tmp_path / "refused"), "--video-dir", str(videos), "--overwrite") == 2
        assert set(videos.glob(".gr00t_videos_*.json")) == claims
        capsys.readouterr()
        assert rollout(port, "--resume", str(tmp_path / "run")) == 0, capsys.readouterr().err


CAMERA_RUN = ["--env-name", "resumecam/fast", "--n-episodes", "1", "--seed", "0",
              *[flag for flag in SMALL if flag != "--no-video"]]


def linked_dotdot(tmp_path, monkeypatch):
    """A working directory holding `link` -> real/inner: `link/../X` is real/X to the OS, not ./X."""
    (tmp_path / "real" / "inner").mkdir(parents=True)
    (tmp_path / "link").symlink_to("real/inner")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_an_output_dir_through_a_link_and_dotdot_keeps_its_videos_inside_it_and_another_runs_videos_untouched(
        server, tmp_path, monkeypatch):
    work = linked_dotdot(tmp_path, monkeypatch)
    assert rollout(server.port, *CAMERA_RUN, "--output-dir", "run") == 0
    (video_of_a,) = (work / "run" / "videos").glob("episode_0000_*.mp4")
    video_of_a.write_bytes(b"run A's video")
    earlier = {path: path.read_bytes() for path in (work / "run" / "videos").glob("*.mp4")}
    assert rollout(server.port, *CAMERA_RUN, "--output-dir", "link/../run") == 0
    assert {path: path.read_bytes() for path in (work / "run" / "videos").glob("*.mp4")} == earlier
    assert len(list((work / "real" / "run" / "videos").glob("episode_0000_*.mp4"))) == 1


def test_a_video_dir_through_a_link_and_dotdot_is_checked_and_written_in_the_same_folder(server, tmp_path, monkeypatch):
    work = linked_dotdot(tmp_path, monkeypatch)
    (work / "v").mkdir()
    (work / "v" / "episode_0000_success.mp4").write_bytes(b"another run's video")
    assert rollout(server.port, *CAMERA_RUN, "--output-dir", "out", "--video-dir", "link/../v") == 0
    assert (work / "v" / "episode_0000_success.mp4").read_bytes() == b"another run's video"
    assert len(list((work / "real" / "v").glob("episode_0000_*.mp4"))) == 1
