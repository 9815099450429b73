"""`rollout --shard I/N --overwrite` deletes only the listed videos that lie, links resolved, in the run's own videos/
or in a --video-dir this run claimed: never the files of the run a folder was copied from (its log lists them by
absolute path), nor any file a hand-edited log names elsewhere. Real shards on a loopback PolicyServer, the real CLI,
a run folder copied with cp -r."""

from __future__ import annotations

import json
import subprocess

import pytest

from eval.scale_fixtures import ConstantPolicy
from gr00t_eval import cli
from serving import running_server

LOG = "episodes_shard0of2.jsonl"


@pytest.fixture(scope="module")
def server():
    with running_server(ConstantPolicy()) as running:
        yield running


def rollout(port, out, *extra):
    return cli.main(["rollout", "--env-name", "walkto/fast", "--n-episodes", "4", "--n-envs", "1", "--vectorization", "sync",
                     "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0", "--shard", "0/2",
                     "--policy-client-port", str(port), "--output-dir", str(out), *extra])


def list_videos(out, videos, results=True):
    """Give each episode of shard 0's log (and its results) a video in `videos`, as a rendering env's episodes have."""
    videos.mkdir(parents=True, exist_ok=True)
    files = [out / LOG] + ([out / "results_shard0of2.json"] if results else [])
    for file in files:
        if file.suffix == ".jsonl":
            entries = [json.loads(line) for line in file.read_text().splitlines()]
        else:
            data = json.loads(file.read_text())
            entries = data["per_episode"]
        for entry in entries:
            video = videos / f"episode_{entry['episode_index']:04d}_success.mp4"
            video.write_bytes(b"mp4 of " + str(out).encode())
            entry["video_path"] = str(video)
        file.write_text("".join(json.dumps(entry) + "\n" for entry in entries) if file.suffix == ".jsonl"
                        else json.dumps(data))


def names(folder):
    return sorted(path.name for path in folder.iterdir())


def test_a_shard_overwrite_in_a_copied_run_keeps_the_original_runs_videos_and_replaces_the_copys_own(server, tmp_path):
    original, copy = tmp_path / "a", tmp_path / "b"
    assert rollout(server.port, original) == 0
    list_videos(original, original / "videos")
    kept = names(original / "videos")
    subprocess.run(["cp", "-r", str(original), str(copy)], check=True)
    assert rollout(server.port, copy, "--overwrite") == 0
    assert names(original / "videos") == kept
    assert names(copy / "videos") == []  # the copy's own videos of the run it replaced, found where --resume finds them


def test_a_shard_overwrite_keeps_a_file_elsewhere_that_a_hand_edited_log_lists(server, tmp_path):
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    assert rollout(server.port, out) == 0
    list_videos(out, elsewhere)
    kept = names(elsewhere)
    assert rollout(server.port, out, "--overwrite") == 0
    assert names(elsewhere) == kept


def test_a_shard_overwrite_deletes_the_listed_videos_in_the_video_dir_it_claimed(server, tmp_path):
    out, videos = tmp_path / "run", tmp_path / "shared_videos"
    assert rollout(server.port, out, "--video-dir", str(videos)) == 0
    list_videos(out, videos)
    (videos / "notes.txt").write_text("not a video")
    assert rollout(server.port, out, "--video-dir", str(videos), "--overwrite") == 0
    assert [name for name in names(videos) if name.endswith(".mp4")] == []
    assert "notes.txt" in names(videos)


def test_a_shard_overwrite_in_a_moved_run_replaces_the_videos_its_log_lists_where_they_now_are(server, tmp_path):
    original, moved = tmp_path / "a", tmp_path / "b"
    assert rollout(server.port, original) == 0
    list_videos(original, original / "videos")
    (original / "videos" / "notes.txt").write_text("mine")
    subprocess.run(["mv", str(original), str(moved)], check=True)
    assert rollout(server.port, moved, "--overwrite") == 0
    assert names(moved / "videos") == ["notes.txt"]
