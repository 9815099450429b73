"""Shards and episode videos. A `--shard` run skipped the --video-dir check that a whole run gets, so a sharded run
of another plan (another seed or checkpoint, another --output-dir) into one shared --video-dir overwrote the videos
an earlier run's results point to, and deleted those whose episode ended the other way; the shards of one plan
must still share a folder. And `--max-episodes-rendered N` rendered the first N episodes of each shard's slice (50
shards: 50 videos per task) where a single run renders N per task. Real rollouts and mp4 files, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval.scale_fixtures import CameraWalkEnv, ConstantPolicy, policy_server
from gr00t_client import EmbodimentTag
from gr00t_eval.cli import main
from gr00t_eval.rollout.envs import register_env_prefix


class GoalCameraWalkEnv(CameraWalkEnv):
    """CameraWalkEnv whose picture depends on the episode's goal (so videos of two seeds differ)."""

    def _obs(self):
        return {**super()._obs(), "video.cam": np.full((16, 16, 3), int(self.goal * 20) % 255, np.uint8)}


register_env_prefix("shardcam", EmbodimentTag.NEW_EMBODIMENT,
                    lambda task, **kwargs: GoalCameraWalkEnv({"fast": 2.0, "slow": 1.0}[task]))
TASKS = "shardcam/fast,shardcam/slow"


@pytest.fixture(scope="module")
def server():
    with policy_server(ConstantPolicy()) as running:
        yield running


def rollout(server, out, videos, *extra, n_episodes=2):
    return main(["rollout", "--env-name", TASKS, "--n-episodes", str(n_episodes), "--n-envs", "1", "--n-action-steps",
                 "2", "--max-episode-steps", "6", "--vectorization", "sync", "--policy-client-port", str(server.port),
                 "--output-dir", str(out), "--video-dir", str(videos), *extra])


def videos_in(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.mp4"))}


def test_a_shard_of_another_plan_into_a_shared_video_dir_is_refused_and_the_earlier_videos_kept(server, tmp_path, capsys):
    videos = tmp_path / "videos"
    assert rollout(server, tmp_path / "a", videos, "--seed", "0", "--shard", "0/1") == 0
    before = videos_in(videos)
    assert len(before) == 4
    capsys.readouterr()

    assert rollout(server, tmp_path / "b", videos, "--seed", "5", "--shard", "0/1") == 2
    err = capsys.readouterr().err
    assert f"--video-dir {videos} already holds videos of the episodes shard 0/1 runs" in err, err
    assert "shardcam__fast/episode_0000_" in err and "pass --overwrite" in err
    assert videos_in(videos) == before
    results = json.loads((tmp_path / "a" / "results_shard0of1.json").read_text())
    assert all(videos_in(videos)[str(Path(e["video_path"]).relative_to(videos))]
               for e in results["per_episode"])  # every video run A's results name is still there, as written

    # --overwrite deletes those (only those: another file there stays), and the run writes its own
    (videos / "notes.txt").write_text("kept")
    assert rollout(server, tmp_path / "c", videos, "--seed", "5", "--shard", "0/1", "--overwrite") == 0
    assert (videos / "notes.txt").read_text() == "kept"
    after = videos_in(videos)
    assert len(after) == 4 and after != before


def test_a_shard_overwrite_keeps_the_videos_its_log_lists_in_a_video_dir_another_run_has_used_since(server, tmp_path):
    videos = tmp_path / "videos"
    assert rollout(server, tmp_path / "o1", videos, "--seed", "0", "--shard", "0/2", n_episodes=4) == 0
    assert rollout(server, tmp_path / "o2", videos, "--seed", "5", "--shard", "0/2", "--overwrite", n_episodes=4) == 0
    videos_of_o2 = videos_in(videos)
    assert rollout(server, tmp_path / "o1", tmp_path / "new_videos", "--seed", "0", "--shard", "0/2", "--overwrite",
                   n_episodes=4) == 0
    assert videos_in(videos) == videos_of_o2
    results = json.loads((tmp_path / "o2" / "results_shard0of2.json").read_text())
    assert all(Path(episode["video_path"]).is_file() for episode in results["per_episode"])


def test_the_shards_of_one_plan_share_a_video_dir(server, tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "split"
    for index in range(2):
        assert rollout(server, out, videos, "--seed", "0", "--shard", f"{index}/2", n_episodes=4) == 0
    names = sorted(videos_in(videos))
    assert [name.split("_success")[0].split("_failure")[0] for name in names] == [
        f"shardcam__{task}/episode_{index:04d}" for task in ("fast", "slow") for index in range(4)]


def test_max_episodes_rendered_renders_as_many_videos_of_a_split_run_as_of_a_single_one(server, tmp_path):
    assert rollout(server, tmp_path / "whole", tmp_path / "whole_videos", "--seed", "0", "--max-episodes-rendered",
                   "1", n_episodes=4) == 0
    for index in range(4):
        assert rollout(server, tmp_path / "split", tmp_path / "split_videos", "--seed", "0", "--shard", f"{index}/4",
                       "--max-episodes-rendered", "1", n_episodes=4) == 0
    whole, split = videos_in(tmp_path / "whole_videos"), videos_in(tmp_path / "split_videos")
    assert sorted(whole) == ["shardcam__fast/episode_0000_success.mp4", "shardcam__slow/episode_0000_success.mp4"]
    assert sorted(split) == sorted(whole)  # each shard's slice rendered its first episode: 4 per task


@pytest.mark.parametrize("shard", [[], ["--shard", "0/1"]], ids=["whole run", "shard"])
def test_a_refused_video_dir_lists_three_earlier_videos_and_counts_the_rest(server, tmp_path, capsys, shard):
    videos = tmp_path / "videos"
    assert rollout(server, tmp_path / "a", videos, "--seed", "0", *shard) == 0
    assert len(videos_in(videos)) == 4
    capsys.readouterr()

    assert rollout(server, tmp_path / "b", videos, "--seed", "5", *shard) == 2
    err = capsys.readouterr().err
    assert err.count("shardcam__") == 3 and "and 1 more)" in err, err


@pytest.mark.parametrize("shard", [[], ["--shard", "0/1"]], ids=["whole run", "shard"])
def test_a_video_dir_that_is_a_file_is_refused_before_any_episode(server, tmp_path, capsys, shard):
    videos = tmp_path / "videos"
    videos.write_text("not a folder")
    assert rollout(server, tmp_path / "out", videos, "--seed", "0", *shard) == 2
    assert f"--video-dir {videos} exists and is not a directory" in capsys.readouterr().err
    assert videos.read_text() == "not a folder" and not (tmp_path / "out" / "results.json").exists()


def test_a_shard_that_stops_before_scoring_keeps_a_sibling_shards_videos_in_their_shared_folder(server, tmp_path):
    from eval.scale_fixtures import free_port

    out = tmp_path / "out"
    assert rollout(server, out, out / "videos", "--seed", "3", "--shard", "0/2") == 0
    listed = [episode["video_path"] for episode in json.loads((out / "results_shard0of2.json").read_text())["per_episode"]]
    assert listed and all(Path(path).is_file() for path in listed)

    # nothing listens on the port: shard 1/2 stops before its first episode
    assert main(["rollout", "--env-name", TASKS, "--n-episodes", "2", "--n-envs", "1", "--vectorization", "sync",
                 "--n-action-steps", "2", "--max-episode-steps", "6", "--policy-client-port", str(free_port()),
                 "--timeout-ms", "300", "--output-dir", str(out), "--video-dir", str(out / "videos"), "--seed", "3",
                 "--shard", "1/2"]) == 2

    assert [path for path in listed if not Path(path).is_file()] == []
