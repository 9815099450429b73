"""A video or plot folder outside the run's output folder (a share) that disappears mid-run is never made again:
rollout and batch stop naming it, as for their own folder, and open-loop gives the plots it could not write a
plot_error. A real server on loopback; the folder vanishes by being renamed (a share unmounted, a /tmp cleaner)."""

import json

import pytest

from eval.dataset_factory import make_dataset
from eval.scale_fixtures import ConstantPolicy, policy_server
from eval.test_run_folder_vanished import RemovesFolderOnCall, rollout  # its vanishcam env, registered on import
from gr00t_eval.cli import main
from gr00t_server.policies.replay import ReplayPolicy
from serving import running_server


def test_a_rollout_whose_video_dir_vanishes_mid_run_stops_naming_it_and_resumes_once_it_is_back(tmp_path, capsys):
    out, videos, aside = tmp_path / "run", tmp_path / "share" / "videos", tmp_path / "aside"
    videos.mkdir(parents=True)
    with policy_server(RemovesFolderOnCall(8, lambda: videos.rename(aside))) as server:  # episode 2 of 6 running
        assert rollout(server.port, out, "vanishcam/slow", "--video-dir", str(videos)) != 0
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"the video folder {videos} disappeared (unmounted or deleted)" in line, line
        assert f"continue with: gr00t-eval rollout --resume {out}" in line, line
        assert not videos.exists()  # not made again to hold the later episodes' videos
        assert len(list(aside.glob("episode_*.mp4"))) == 2  # the episodes before it, in the folder the run claimed

        aside.rename(videos)  # the share mounted again
        assert main(["--log-level", "WARNING", "rollout", "--resume", str(out), "--policy-client-port",
                     str(server.port), "--env-import", "eval.scale_fixtures"]) == 0
    assert json.loads((out / "results.json").read_text())["status"] == "complete"
    assert len(list(videos.glob("episode_*.mp4"))) == 6


def test_a_batch_whose_job_video_dir_vanishes_mid_job_stops_naming_it(tmp_path, capsys):
    out, jobs, videos, aside = tmp_path / "batch", tmp_path / "jobs.json", tmp_path / "share" / "videos", tmp_path / "aside"
    videos.mkdir(parents=True)
    with policy_server(RemovesFolderOnCall(8, lambda: videos.rename(aside))) as server:
        jobs.write_text(json.dumps({"jobs": [{
            "name": "only", "env_name": "vanishcam/slow", "policy_server": {"port": server.port}, "n_episodes": 6,
            "n_envs": 1, "max_episode_steps": 6, "seed": 3,
            "overrides": {"n_action_steps": 2, "vectorization": "sync", "video_dir": str(videos)}}]}))
        assert main(["--log-level", "ERROR", "batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"the video folder of job 'only' {videos} disappeared (unmounted or deleted)" in line, line
    assert f"gr00t-eval batch --resume {out}" in line, line
    assert not videos.exists()
    assert len(list(aside.glob("episode_*.mp4"))) == 2


def test_a_batch_goes_on_when_a_finished_jobs_video_dir_is_moved_away(tmp_path, capsys):
    """Every job's outside video folder was watched for the whole batch: archiving a finished job's videos stopped the
    next job, which never writes there, saying the folder vanished 'while its job wrote to it'."""
    out, jobs, first, second, archive = (tmp_path / "batch", tmp_path / "jobs.json", tmp_path / "share" / "a",
                                         tmp_path / "share" / "b", tmp_path / "archive")

    class ArchivesFinishedJobsVideos(ConstantPolicy):  # job 'first' done (its results written): its videos moved away
        def _get_action(self, observation, options=None):
            if first.exists() and (out / "jobs" / "first" / "results.json").exists():
                first.rename(archive)
            return super()._get_action(observation, options)

    with policy_server(ArchivesFinishedJobsVideos()) as server:
        def job(name, video_dir):
            return {"name": name, "env_name": "vanishcam/slow", "policy_server": {"port": server.port},
                    "n_episodes": 2, "n_envs": 1, "max_episode_steps": 6, "seed": 3,
                    "overrides": {"n_action_steps": 2, "vectorization": "sync", "video_dir": str(video_dir)}}

        jobs.write_text(json.dumps({"jobs": [job("first", first), job("second", second)]}))
        code = main(["--log-level", "ERROR", "batch", "--jobs", str(jobs), "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert not first.exists() and len(list(archive.glob("episode_*.mp4"))) == 2
    assert len(list(second.glob("episode_*.mp4"))) == 2


def test_an_open_loop_run_whose_plot_folder_vanishes_mid_run_gives_those_plots_a_plot_error(tmp_path):
    pytest.importorskip("matplotlib")
    dataset = make_dataset(tmp_path / "ds", lengths=(6, 9, 4))
    out, plots, aside = tmp_path / "ol", tmp_path / "share" / "plots", tmp_path / "aside"
    plots.mkdir(parents=True)

    class RenamesOnCall(ReplayPolicy):  # trajectory 0 takes calls 1-2: the folder goes while trajectory 1 runs
        calls = 0

        def _get_action(self, observation, options=None):
            self.calls += 1
            if self.calls == 3:
                plots.rename(aside)
            return super()._get_action(observation, options)

    with running_server(RenamesOnCall(dataset, execution_horizon=4)) as server:
        code = main(["--log-level", "ERROR", "open-loop", "--dataset-path", str(dataset), "--port", str(server.port),
                     "--execution-horizon", "4", "--output-dir", str(out), "--traj-ids", "0", "1", "2",
                     "--save-plot-path", f"{plots}/"])
    assert code == 0  # every trajectory is scored: a plot never ends the run
    assert not plots.exists()
    trajectories = json.loads((out / "results.json").read_text())["trajectories"]
    assert trajectories["0"]["plot_path"] == str(plots.resolve() / "traj_0.jpeg") and (aside / "traj_0.jpeg").is_file()
    for traj in ("1", "2"):
        assert trajectories[traj]["plot_path"] is None
        assert f"the plot folder disappeared (unmounted or deleted): '{plots}'" in trajectories[traj]["plot_error"]
