"""A path the shell left with its '~' (`--flag=~/x`, a quoted '~/x', an exec-form Docker CMD, a job file) is the home
folder's in every gr00t-eval path flag and in a batch job's video_dir. Before, --dataset-path, --output-dir,
--video-dir, record's --output and a job's video_dir made or read a folder literally named '~' in the working
directory, while the server took '~' as the home folder in --model-path and its key flags."""

from __future__ import annotations

import json

import pytest

from eval.scale_fixtures import policy_server
from gr00t_eval.batch import load_jobs
from gr00t_eval.cli import build_parser, main

SMALL = ["--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video", "--vectorization", "sync"]


@pytest.mark.parametrize("argv, dest", [
    (["open-loop", "--dataset-path=~/x"], "dataset_path"),
    (["open-loop", "--dataset-path", "d", "--output-dir=~/x"], "output_dir"),
    (["open-loop", "--dataset-path", "d", "--save-plot-path=~/x"], "save_plot_path"),
    (["rollout", "--output-dir=~/x"], "output_dir"),
    (["rollout", "--video-dir=~/x"], "video_dir"),
    (["rollout", "--resume=~/x"], "resume"),
    (["record", "--env-name", "metaworld/reach-v3", "--output=~/x"], "output"),
    (["batch", "--jobs=~/x"], "jobs"),
    (["batch", "--output-dir=~/x"], "output_dir"),
    (["batch", "--resume=~/x"], "resume"),
    (["merge", "--output", "m", "~/x"], "results"),
    (["merge", "r", "--output=~/x"], "output"),
])
def test_every_path_flag_takes_a_leading_tilde_as_the_home_folder(home, argv, dest):
    value = getattr(build_parser().parse_args(argv), dest)
    assert (value[0] if isinstance(value, list) else value) == str(home / "x")


def test_a_path_with_a_tilde_inside_it_is_left_as_written(home):
    assert build_parser().parse_args(["rollout", "--output-dir=./~/x"]).output_dir == "./~/x"


def test_a_rollout_output_dir_given_as_tilde_after_equals_is_written_in_the_home_folder(home, tmp_path):
    with policy_server() as server:
        assert main(["rollout", "--env-name", "walkto/fast", "--n-episodes", "1", "--seed", "0", *SMALL,
                     "--policy-client-port", str(server.port), "--output-dir=~/run"]) == 0
    assert json.loads((home / "run" / "results.json").read_text())["status"] == "complete"
    assert not (tmp_path / "work" / "~").exists()


def test_a_batch_jobs_video_dir_starting_with_tilde_is_in_the_home_folder(home, tmp_path):
    jobs = tmp_path / "jobs.json"
    job = {"env_name": "walkto/fast", "policy_server": {"port": 5555}}
    jobs.write_text(json.dumps([{**job, "name": "walk", "overrides": {"video_dir": "~/vids"}},
                                {**job, "name": "here", "overrides": {"video_dir": "./~/vids"}}]))
    (walk, here) = load_jobs(jobs)
    assert walk.config["video_dir"] == str(home / "vids")
    assert here.config["video_dir"] == str(tmp_path / "work" / "~" / "vids")


def test_a_dataset_writer_root_starting_with_tilde_is_in_the_home_folder(home, tmp_path):
    from gr00t_eval import DatasetWriter

    assert DatasetWriter("~/ds", 10).root == home / "ds"
    assert (home / "ds").is_dir() and not (tmp_path / "work" / "~").exists()
