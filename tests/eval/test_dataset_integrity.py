"""A dataset whose files disagree with each other is refused, naming the file and both numbers, rather than read as
other steps' frames or NaN values; the writer refuses what it cannot store before anything is lost. Real parquet
and mp4 files written by DatasetWriter, then damaged the way recordings and hand edits damage them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eval.dataset_factory import expected_actions, expected_states, frame_colour, make_dataset
from gr00t_eval.dataset import DatasetWriter, LeRobotDataset
from gr00t_eval.dataset.errors import DatasetError

IMAGE = "observation.images.image"


def _v3(tmp_path, **kwargs):
    return make_dataset(tmp_path / "v3", layout="v3.0", episodes_per_file=3, **kwargs)


def _edit_episode_rows(root, edit):
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    rows = pq.read_table(path).to_pylist()
    edit(rows)
    names = list(dict.fromkeys(name for row in rows for name in row))
    pq.write_table(pa.table({name: [row.get(name) for row in rows] for name in names}), path)


def test_a_v3_segment_shorter_than_its_episode_is_refused_not_read_into_the_next_episode(tmp_path):
    root = _v3(tmp_path)

    def drop_two_frames(rows):  # episode 0's camera lost 2 frames; its segment is truthful, its parquet is not
        rows[0][f"videos/{IMAGE}/to_timestamp"] -= 0.2

    _edit_episode_rows(root, drop_two_frames)
    episode = LeRobotDataset(root).episode(0)
    with pytest.raises(DatasetError, match=r"segment 0\.\.0\.4 s holds 4\.0 frames at 10 fps and the episode has 6 steps"):
        episode.frames("image", [5])
    pixel = LeRobotDataset(root).episode(1).frames("wrist_image", [0])[0, 0, 0].astype(int)
    assert np.abs(pixel - frame_colour(1, 1, 0)).max() <= 4  # the next episode still reads (its colour, up to h264)


def test_a_v3_segment_ending_a_frame_late_is_refused(tmp_path):
    root = _v3(tmp_path)

    def one_frame_late(rows):  # the file's last segment: it overlaps no other, its span is one frame too long
        rows[2][f"videos/{IMAGE}/to_timestamp"] += 0.1

    _edit_episode_rows(root, one_frame_late)
    with pytest.raises(DatasetError, match=r"holds 5\.0 frames at 10 fps and the episode has 4 steps"):
        LeRobotDataset(root).episode(2).frames("image", [0])


@pytest.mark.parametrize("case", ["another episode's frames", "a frame early"])
def test_v3_segments_overlapping_in_one_video_are_refused_at_open(tmp_path, case):
    """Each span still its episode's length (so the span check passes): LeRobot's aggregate wrote such metadata before
    huggingface/lerobot#2550, and episode 1 was given episode 0's frames without a word."""
    root = _v3(tmp_path)

    def overlap(rows):
        if case == "another episode's frames":
            rows[1][f"videos/{IMAGE}/from_timestamp"], rows[1][f"videos/{IMAGE}/to_timestamp"] = 0.0, 0.9
        else:
            rows[1][f"videos/{IMAGE}/from_timestamp"] -= 0.1
            rows[1][f"videos/{IMAGE}/to_timestamp"] -= 0.1

    _edit_episode_rows(root, overlap)
    spans = r"\(0\.\.0\.6 s\) and episode 1 \(0\.\.0\.9 s\)" if case == "another episode's frames" else \
        r"\(0\.\.0\.6 s\) and episode 1 \(0\.5\.\.1\.4 s\)"
    with pytest.raises(DatasetError, match=rf"meta/episodes: the video segments of episode 0 {spans} overlap in "
                                           rf".*file-000\.mp4 \(camera '{IMAGE}'\): one episode would be given"):
        LeRobotDataset(root)


def _set_video_path(root, template):
    path = root / "meta" / "info.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "video_path": template}))


@pytest.mark.parametrize("layout, template", [
    ("v2.1", "videos/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.mp4"),
    ("v3.0", "videos/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"),
])
def test_a_video_path_without_video_key_is_refused_naming_it_and_the_cameras_it_gives_one_file(tmp_path, layout,
                                                                                               template):
    """Every camera's frames would come from one mp4: the second camera was served the first one's frames."""
    root = make_dataset(tmp_path / "ds", lengths=(3, 2), layout=layout, episodes_per_file=2)
    _set_video_path(root, template)
    with pytest.raises(DatasetError, match=rf"info\.json: field 'video_path' '{re.escape(template)}' gives cameras "
                                           rf"'{IMAGE}' and 'observation\.images\.wrist_image' of episode 0 the same "
                                           r"video file .*; each camera needs a file of its own"):
        LeRobotDataset(root)


def test_two_cameras_segments_overlapping_in_one_video_are_refused_at_open(tmp_path):
    """A template without {video_key} and cameras in different files per episode: two cameras' segments of one file,
    each checked only against its own camera's, overlapped without a word."""
    root = _v3(tmp_path)
    _set_video_path(root, "videos/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
    wrist = "videos/observation.images.wrist_image"

    def wrist_in_the_next_file_but_episode_1(rows):
        for row in rows:
            row[f"{wrist}/file_index"] = 1
        rows[1][f"{wrist}/file_index"], rows[1][f"videos/{IMAGE}/file_index"] = 0, 1
        rows[1][f"{wrist}/from_timestamp"], rows[1][f"{wrist}/to_timestamp"] = 0.0, 0.9

    _edit_episode_rows(root, wrist_in_the_next_file_but_episode_1)
    with pytest.raises(DatasetError, match=r"episode 0 \(0\.\.0\.6 s\) and episode 1 \(0\.\.0\.9 s\) overlap in "
                                           rf".*file-000\.mp4 \(cameras '{IMAGE}' and 'observation\.images\.wrist_image'\)"):
        LeRobotDataset(root)


def test_v3_segments_meeting_end_to_start_are_read(tmp_path):
    dataset = LeRobotDataset(_v3(tmp_path))  # 0..0.6, 0.6..1.5, 1.5..1.9 s: adjacent, not overlapping
    pixel = dataset.episode(1).frames("image", [0])[0, 0, 0].astype(int)
    assert np.abs(pixel - frame_colour(1, 0, 0)).max() <= 4


@pytest.mark.parametrize("width", [5, 3])
def test_a_column_of_another_width_than_info_json_declares_is_refused(tmp_path, width):
    """A dataset merged from two robot setups: episode 1's action column is 5 wide (or 3) under info.json's shape
    [4]; modality.json's gripper slice [3:4] would pick the arm's fourth joint (or, at 3 wide, be refused anyway)."""
    root = make_dataset(tmp_path / "merged", cameras=())
    path = root / "data" / "chunk-000" / "episode_000001.parquet"
    table = pq.read_table(path)
    actions = np.array(table.column("action").to_pylist(), np.float32)
    other = np.concatenate([actions[:, :3], np.full((len(actions), 1), -7.0, np.float32), actions[:, 3:]], axis=1)
    column = pa.array(other[:, :width].tolist(), pa.list_(pa.float32()))
    pq.write_table(table.set_column(table.column_names.index("action"), "action", column), path)
    dataset = LeRobotDataset(root)
    with pytest.raises(DatasetError, match=rf"episode_000001\.parquet: column 'action' of episode 1 has {width} values "
                                           r"per step and meta/info.json declares 4 \(features.action.shape\)"):
        dataset.episode(1).actions("gripper")
    assert np.array_equal(dataset.episode(0).actions("gripper"), expected_actions(0, 6)["gripper"])


def test_cameras_stored_as_images_are_named_and_a_replay_serves_the_dataset(tmp_path):
    """dtype "image" cameras live in the parquet rows, as many LIBERO/ALOHA conversions store them: the dataset opens
    (a replay never reads cameras) and frames() says what is unsupported, instead of blaming a video_path template."""
    from gr00t_server.policies.replay import ReplayPolicy

    root = make_dataset(tmp_path / "images", cameras=("image",))
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"][IMAGE] = {"dtype": "image", "shape": [32, 32, 3], "names": ["height", "width", "channel"]}
    info["video_path"], info["total_videos"] = None, 0
    (root / "meta" / "info.json").write_text(json.dumps(info))
    shutil.rmtree(root / "videos")
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for path in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        pq.write_table(table.append_column(IMAGE, pa.array([{"bytes": b"png", "path": None}] * table.num_rows, image)), path)
    with pytest.raises(DatasetError, match=rf"camera 'image' \({IMAGE}\) is stored as images in the parquet files "
                                           r"\(dtype 'image'\), and this reader decodes cameras from mp4 videos only"):
        LeRobotDataset(root).episode(0).frames("image", [0])
    policy = ReplayPolicy(root, execution_horizon=2)
    policy.reset({"episode_index": 1})
    action, _ = policy.get_action(None)
    assert np.array_equal(action["gripper"][0, :2], expected_actions(1, 9)["gripper"][:2])


def test_a_v2_video_of_another_length_is_refused(tmp_path):
    root = make_dataset(tmp_path / "v2")
    videos = root / "videos" / "chunk-000" / IMAGE
    shutil.copy(videos / "episode_000001.mp4", videos / "episode_000000.mp4")  # 9 frames for a 6-step episode
    with pytest.raises(DatasetError, match=r"episode_000000\.mp4 \(camera 'observation\.images\.image', episode 0\): "
                                           r"the video holds 9 frames and the episode has 6 steps"):
        LeRobotDataset(root).episode(0).frames("image", [0])


def test_a_video_at_another_frame_rate_than_fps_is_refused(tmp_path):
    root = make_dataset(tmp_path / "fast", fps=20)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["fps"] = 10  # the videos run at 20 frames/s: step k would get frame 2k
    (root / "meta" / "info.json").write_text(json.dumps(info))
    path = root / "data" / "chunk-000" / "episode_000000.parquet"
    table = pq.read_table(path)  # rows on the 10 fps grid (a hand edit of info.json and the rows): only the video is off
    times = pa.array((np.arange(table.num_rows) / 10).astype(np.float32))
    pq.write_table(table.set_column(table.column_names.index("timestamp"), "timestamp", times), path)
    with pytest.raises(DatasetError, match="the video runs at 20 frames/s and meta/info.json says fps 10"):
        LeRobotDataset(root).episode(0).frames("image", [1])


WRIST = "observation.images.wrist_image"
DECLARATIONS = {  # a camera's size as info.json declares it: LeRobot's layout, channels first, video.* fields only
    "height-width-channels": lambda h, w: {"shape": [h, w, 3], "names": ["height", "width", "channels"]},
    "channels-height-width": lambda h, w: {"shape": [3, h, w], "names": ["channels", "height", "width"]},
    "info-fields-only": lambda h, w: {"shape": [3, h, w], "names": None, "info": {"video.height": h, "video.width": w}},
}


def _declare_sizes(root, declaration, sizes):
    info = json.loads((root / "meta" / "info.json").read_text())
    for column, (height, width) in sizes.items():
        info["features"][column].update(DECLARATIONS[declaration](height, width))
    (root / "meta" / "info.json").write_text(json.dumps(info))


def _swap(first, second):
    parked = first.with_suffix(".parked")
    first.rename(parked)
    second.rename(first)
    parked.rename(second)


@pytest.mark.parametrize("declaration", sorted(DECLARATIONS))
def test_two_cameras_videos_swapped_are_refused_naming_both_sizes(tmp_path, declaration):
    """The front camera (32x48) and the wrist camera (16x24) of an episode, files swapped: each camera was served the
    other's frames, as the frame count and rate agree."""
    root = make_dataset(tmp_path / "front", lengths=(6,), size=(32, 48))
    wrist = make_dataset(tmp_path / "wrist", lengths=(6,), size=(16, 24))
    videos = root / "videos" / "chunk-000"
    shutil.copy(wrist / "videos" / "chunk-000" / WRIST / "episode_000000.mp4", videos / WRIST / "episode_000000.mp4")
    _declare_sizes(root, declaration, {IMAGE: (32, 48), WRIST: (16, 24)})
    dataset = LeRobotDataset(root)
    assert dataset.episode(0).frames("image", [0]).shape == (1, 32, 48, 3)  # each size read as declared
    assert dataset.episode(0).frames("wrist_image", [0]).shape == (1, 16, 24, 3)
    _swap(videos / IMAGE / "episode_000000.mp4", videos / WRIST / "episode_000000.mp4")
    with pytest.raises(DatasetError, match=r"episode_000000\.mp4 \(camera 'observation\.images\.image', episode 0\): "
                                           r"its frames are 16x24 \(height x width\) and meta/info\.json declares "
                                           r"32x48 for this camera"):
        LeRobotDataset(root).episode(0).frames("image", [0])


def test_timestamps_off_the_fps_grid_are_refused(tmp_path):
    root = make_dataset(tmp_path / "v2")
    path = root / "data" / "chunk-000" / "episode_000000.parquet"
    table = pq.read_table(path)
    times = pa.array((np.arange(table.num_rows) / 30).astype(np.float32))  # rows at 1/30 s under fps 10
    pq.write_table(table.set_column(table.column_names.index("timestamp"), "timestamp", times), path)
    with pytest.raises(DatasetError, match=r"column 'timestamp' of episode 0 steps from 0 s to 0\.0333.* at step 0; "
                                           r"at fps 10 \(meta/info.json\) each step is 0\.1 s"):
        LeRobotDataset(root).episode(0)  # refused on reading, not only when frames are decoded (replay decodes none)
    assert np.allclose(LeRobotDataset(root).episode(1).timestamps(), np.arange(9) / 10)  # a good episode reads


def test_a_null_inside_an_action_row_is_refused_not_read_as_nan(tmp_path):
    root = make_dataset(tmp_path / "v2")
    path = root / "data" / "chunk-000" / "episode_000000.parquet"
    table = pq.read_table(path)
    rows = table.column("action").to_pylist()
    rows[2][1] = None
    action = pa.array(rows, type=table.schema.field("action").type)
    pq.write_table(table.set_column(table.column_names.index("action"), "action", action), path)
    with pytest.raises(DatasetError, match=r"column 'action' has 1 null values inside its rows \(the first in row 2\)"):
        LeRobotDataset(root).episode(0).actions("arm")


def _episode(writer, length=3, **kwargs):
    writer.add_episode(frames={}, states=expected_states(0, length), actions=expected_actions(0, length), task="t", **kwargs)


@pytest.mark.parametrize("layout", ["v2.1", "v3.0"])
def test_episode_metadata_the_first_episode_lacks_is_kept(tmp_path, layout):
    with DatasetWriter(tmp_path / layout, 10, layout=layout) as writer:
        _episode(writer)
        _episode(writer, metadata={"seed": np.int64(7), "success": np.bool_(True)})
        _episode(writer, metadata={"seed": 8, "success": False})
    dataset = LeRobotDataset(tmp_path / layout)
    assert [dataset.episode_extras(i).get("seed") for i in range(3)] == [None, 7, 8]
    assert [dataset.episode_extras(i).get("success") for i in range(3)] == [None, True, False]


def test_the_writer_refuses_what_it_cannot_store_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="language_column 'timestamp' is a LeRobot column the writer fills itself"):
        DatasetWriter(tmp_path / "a", 10, language_column="timestamp")
    with pytest.raises(ValueError, match="language_column 'action'"):
        DatasetWriter(tmp_path / "a", 10, language_column="action")
    with pytest.raises(ValueError, match="chunks_size must be an int >= 1"):
        DatasetWriter(tmp_path / "a", 10, chunks_size=0)
    writer = DatasetWriter(tmp_path / "b", 10)
    with pytest.raises(ValueError, match=r"metadata\['score'\] = nan cannot be stored"):
        _episode(writer, metadata={"score": float("nan")})
    with pytest.raises(ValueError, match=r"metadata\['where'\] = .* cannot be stored"):
        _episode(writer, metadata={"where": object()})
    with pytest.raises(ValueError, match=r"step_columns\['depth'\] must be \(T,\) or \(T, D\), got shape \(3, 2, 2\)"):
        _episode(writer, step_columns={"depth": np.zeros((3, 2, 2))})
    assert not (tmp_path / "b" / "data").exists()  # nothing of a refused episode reached the disk
    _episode(writer)
    writer.finalize()
    assert LeRobotDataset(tmp_path / "b").num_episodes == 1


def test_chunks_size_zero_in_info_json_is_named(tmp_path):
    root = make_dataset(tmp_path / "v2")
    info = json.loads((root / "meta" / "info.json").read_text())
    info["chunks_size"] = 0
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"info\.json: field 'chunks_size' must be >= 1"):
        LeRobotDataset(root)


def test_an_episode_cut_short_while_written_leaves_no_file_behind(tmp_path, monkeypatch):
    from gr00t_eval.dataset import writer as writer_module

    root = tmp_path / "cut"
    writer = DatasetWriter(root, 10)
    frames = {"image": np.zeros((3, 16, 16, 3), np.uint8)}
    writer.add_episode(frames, expected_states(0, 3), expected_actions(0, 3), "t")
    writer.write_meta()
    real_write = writer_module.Mp4Encoder.write

    def interrupted(self, images):
        real_write(self, images[:1])
        raise KeyboardInterrupt

    monkeypatch.setattr(writer_module.Mp4Encoder, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.add_episode(frames, expected_states(1, 3), expected_actions(1, 3), "t")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "meta" not in p.parts)
    assert files == ["data/chunk-000/episode_000000.parquet", "videos/chunk-000/observation.images.image/episode_000000.mp4"]
    assert LeRobotDataset(root).num_episodes == 1


def test_meta_files_are_read_as_utf8_whatever_the_locale(tmp_path):
    root = make_dataset(tmp_path / "v2", cameras=())
    task = "pick the crème brûlée 拿起杯子"
    (root / "meta" / "tasks.jsonl").write_bytes(
        (json.dumps({"task_index": 0, "task": task}, ensure_ascii=False) + "\n"
         + json.dumps({"task_index": 1, "task": "open the drawer"}) + "\n").encode("utf-8"))
    script = ("import sys, locale; from gr00t_eval.dataset import LeRobotDataset; "
              "sys.stderr.write(locale.getpreferredencoding(False)); "
              "sys.stdout.buffer.write(LeRobotDataset(sys.argv[1]).tasks[0].encode('utf-8'))")
    env = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, env=env)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout.decode("utf-8") == task, done.stderr  # read under an ASCII locale (stderr names it)


def test_open_loop_of_a_long_episode_holds_only_the_frames_it_needs(tmp_path):
    """A buffer for the whole episode (T x H x W x 3) was allocated for a few inference steps: 51.5 GiB for a
    60,000-step 480x640 episode evaluated with --steps 32."""
    from gr00t_eval.open_loop import OpenLoopConfig, evaluate_trajectory
    from gr00t_client import ModalityConfig
    from gr00t_server.policies.replay import ReplayPolicy

    root = make_dataset(tmp_path / "long", lengths=(3000,), cameras=("image",), size=(64, 64), gop=30)
    dataset = LeRobotDataset(root)
    configs = {"video": ModalityConfig([0], ["image"]), "state": ModalityConfig([0], ["arm", "gripper"]),
               "action": ModalityConfig(list(range(8)), ["arm", "gripper"]),
               "language": ModalityConfig([0], ["annotation.human.action.task_description"])}
    policy = ReplayPolicy(dataset, configs, execution_horizon=8, strict=False)
    tracemalloc.start()
    try:
        result = evaluate_trajectory(policy, dataset, 0, OpenLoopConfig(str(root), steps=16, execution_horizon=8,
                                                                          plot=False), configs, report=lambda text: None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.errors.mse == pytest.approx(0.0)
    assert peak < 3000 * 64 * 64 * 3 / 4, peak  # a whole-episode buffer alone is 36.9 MB


def test_concurrent_claims_of_one_folder_leave_exactly_one_holder(tmp_path):
    from gr00t_eval.run_claim import claim_output_dir, finish_claim, take_claim
    from gr00t_eval.run_dir import OutputDirError

    for attempt in range(10):  # a race: several rounds, each from an earlier recording's finished claim
        folder = tmp_path / f"rec{attempt}"
        folder.mkdir()
        finish_claim(claim_output_dir(folder, ".claim.json", {}), "complete")
        outcomes, start = [], threading.Barrier(6)

        def claim():
            start.wait()
            try:
                take_claim(folder, ".claim.json", {})
                outcomes.append("held")
            except OutputDirError as exc:
                outcomes.append(str(exc))

        threads = [threading.Thread(target=claim) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert outcomes.count("held") == 1, outcomes
        assert all("in use" in outcome for outcome in outcomes if outcome != "held"), outcomes


def test_overwriting_keeps_the_recordings_claim_and_does_not_count_it_as_content(tmp_path):
    folder = tmp_path / "rec"
    folder.mkdir()
    (folder / ".claim.json").write_text("{}")
    DatasetWriter(folder, 10, keep=(".claim.json",))  # an otherwise empty folder is empty
    make_dataset(folder / "x")
    shutil.copytree(folder / "x", folder, dirs_exist_ok=True)
    shutil.rmtree(folder / "x")
    DatasetWriter(folder, 10, overwrite=True, keep=(".claim.json",))
    assert sorted(p.name for p in folder.iterdir()) == [".claim.json"]


def test_episode_list_and_info_json_disagreeing_are_read_as_a_stopped_recording_or_warned(tmp_path, caplog):
    root = make_dataset(tmp_path / "v2", cameras=())
    episodes = root / "meta" / "episodes.jsonl"
    text = episodes.read_text()
    episodes.write_text(text + '{"episode_index": 3, "tasks": ["pick')  # LeRobot appends before it rewrites info
    with caplog.at_level("WARNING"):
        assert LeRobotDataset(root).num_episodes == 3
    assert "a line that does not parse after the 3 episodes meta/info.json counts" in caplog.text
    episodes.write_text(text)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["total_episodes"] = 50
    (root / "meta" / "info.json").write_text(json.dumps(info))
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert LeRobotDataset(root).num_episodes == 3
    assert "total_episodes is 50 and the episodes file lists 3" in caplog.text
    info["total_episodes"] = 2  # a bad line among the committed episodes is still an error
    (root / "meta" / "info.json").write_text(json.dumps(info))
    lines = text.splitlines()
    episodes.write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
    with pytest.raises(DatasetError, match="episodes.jsonl:2: invalid JSON"):
        LeRobotDataset(root)


@pytest.mark.parametrize("folder, refused", [(".Trash-1000", False), ("__pycache__", False), ("episodes", True)])
def test_a_meta_folder_that_cannot_be_listed_refuses_the_dataset_unless_no_reader_reads_it(tmp_path, monkeypatch,
                                                                                             folder, refused):
    """Listing errors raise (out of descriptors a replay read every meta file as removed), but another user's hidden
    meta/.Trash-1000 (mode 700) then refused a dataset whose identity leaves hidden folders out."""
    import os

    from gr00t_eval.dataset.identity import meta_files

    root = make_dataset(tmp_path / "ds", lengths=(4,), cameras=())
    unreadable = root / "meta" / folder
    unreadable.mkdir(exist_ok=True)
    listable = os.scandir

    def scandir(path="."):  # as for a folder of another user, mode 700 (root reads every folder: injected here)
        if os.fspath(path) == os.fspath(unreadable):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listable(path)

    monkeypatch.setattr(os, "scandir", scandir)
    if refused:
        with pytest.raises(PermissionError, match="Permission denied"):
            meta_files(root)
    else:
        assert meta_files(root) and all(folder not in path.parts for path in meta_files(root))
