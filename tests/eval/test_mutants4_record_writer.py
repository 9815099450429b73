"""The v3.0 paths and the v2.1 roll-back of DatasetWriter, and `gr00t-eval record`'s checks and episode limits, at
the points mutants of dataset/writer.py and record.py showed no test held: a v3.0 file past the first chunk folder,
info.json's file counts, an episode interrupted after its values were counted, a directory that holds only a finished
recording's claim."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering

from eval.dataset_factory import (  # noqa: E402
    add_known_episode, episode_frames, expected_actions, expected_states, make_dataset,
)
from test_dataset_lerobot_layout import _jsonl  # noqa: E402
from gr00t_eval.dataset import DatasetWriter, LeRobotDataset  # noqa: E402
from gr00t_eval.dataset import writer as writer_module  # noqa: E402


# -- v3.0 -------------------------------------------------------------------------------------------------------------
def test_v3_files_past_the_first_chunk_folder_are_listed_where_they_are_written(tmp_path):
    # mutant: _append_v3_episode listed every file in chunk 0 (chunk_index, file_index = 0, self._file_index)
    root = tmp_path / "v3"
    with DatasetWriter(root, 10, layout="v3.0", chunks_size=1, episodes_per_file=1) as writer:
        for episode in range(3):
            add_known_episode(writer, episode, length=2 + episode)
    assert sorted(str(p.relative_to(root)) for p in (root / "data").rglob("*.parquet")) == [
        "data/chunk-000/file-000.parquet", "data/chunk-001/file-000.parquet", "data/chunk-002/file-000.parquet"]
    dataset = LeRobotDataset(root)
    assert dataset.episode_lengths == [2, 3, 4]
    for position in range(3):
        episode = dataset.episode(position)
        assert np.array_equal(episode.states("arm"), expected_states(position, 2 + position)["arm"])
        assert episode.frames("cam", [episode.length - 1]).shape == (1, 16, 16, 3)


def test_v3_info_json_counts_files_not_episodes(tmp_path):
    # mutant: _info counted one file (and one video per camera) per episode in v3.0 as in v2.1
    root = make_dataset(tmp_path / "v3", lengths=(2, 3, 4, 2, 3), layout="v3.0", episodes_per_file=2)
    info = json.loads((root / "meta" / "info.json").read_text())
    assert len(list((root / "data").rglob("*.parquet"))) == 3
    assert len(list((root / "videos").rglob("*.mp4"))) == info["total_videos"] == 3 * 2
    assert info["total_chunks"] == 1 and info["total_episodes"] == 5


def test_a_v3_writer_left_by_an_exception_keeps_no_file_of_the_dataset_open(tmp_path):
    # mutant: __exit__ after an exception left the unfinished file's mp4 encoders open
    root = tmp_path / "v3"
    with pytest.raises(RuntimeError, match="stop"):
        with DatasetWriter(root, 10, layout="v3.0") as writer:
            add_known_episode(writer, 0, length=40)  # enough frames for the encoder to have written to its file
            raise RuntimeError("stop")
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        pytest.skip("needs /proc")
    open_paths = []
    for fd in os.listdir(fd_dir):
        try:
            open_paths.append(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:
            pass
    assert not [p for p in open_paths if p.startswith(str(root))]
    assert not (root / "meta").exists()


# -- v2.1 roll-back ---------------------------------------------------------------------------------------------------
def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def _interrupted_second_episode(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    writer = DatasetWriter(root, 10)
    add_known_episode(writer, 0, task="first task")
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        # Ctrl-C at add_episode's last line (its debug log line), once its files, task and values are all recorded
        patch.setattr(writer_module.logger, "debug", _ctrl_c)
        add_known_episode(writer, 1, length=5, task="a task only the interrupted episode has")
    add_known_episode(writer, 2, length=4, task="first task")
    writer.finalize()
    return root


def test_an_interrupted_v21_episode_leaves_no_task(tmp_path, monkeypatch):
    # mutant: _forget_v2_episode did not put the task list back
    root = _interrupted_second_episode(tmp_path, monkeypatch)
    assert _jsonl(root / "meta" / "tasks.jsonl") == [{"task_index": 0, "task": "first task"}]
    assert json.loads((root / "meta" / "info.json").read_text())["total_tasks"] == 1


def test_an_interrupted_v21_episode_leaves_no_statistics(tmp_path, monkeypatch):
    # mutants: _forget_v2_episode kept its episodes_stats.jsonl row, or its values in stats.json (no copy of the
    # running statistics taken before it)
    root = _interrupted_second_episode(tmp_path, monkeypatch)
    rows = _jsonl(root / "meta" / "episodes_stats.jsonl")
    assert [row["episode_index"] for row in rows] == [0, 1]
    assert [row["stats"]["observation.state"]["count"] for row in rows] == [[3], [4]]
    kept = np.concatenate([np.concatenate(list(expected_states(e, n).values()), axis=1) for e, n in ((0, 3), (2, 4))])
    stats = json.loads((root / "meta" / "stats.json").read_text())["observation.state"]
    assert np.allclose(stats["max"], kept.max(axis=0)) and np.allclose(stats["mean"], kept.mean(axis=0))


def test_a_step_column_named_like_the_language_column_is_refused(tmp_path):
    # mutant: _check_layout let a step column take the name of a separate language column
    writer = DatasetWriter(tmp_path / "ds", 10, language_column="annotation_index")
    with pytest.raises(ValueError, match="step column 'annotation_index' clashes with a LeRobot column"):
        writer.add_episode({"cam": episode_frames(0, 0, 3, (16, 16))}, expected_states(0, 3), expected_actions(0, 3), "t",
                           step_columns={"annotation_index": np.zeros(3, np.int64)})
    assert writer.n_episodes == 0


# -- gr00t-eval record ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_recording(tmp_path_factory):
    """Two reach-v3 episodes cut at 3 steps (the expert never succeeds that fast), seeds 5 and 6, 32x32."""
    pytest.importorskip("metaworld")
    from gr00t_eval.record import record_metaworld

    root = tmp_path_factory.mktemp("record") / "reach"
    summary = record_metaworld("metaworld/reach-v3", 2, root, seed=5, max_episode_steps=3, image_size=32, progress=False)
    return summary, root


def _record(*args, **kwargs):
    from gr00t_eval.record import record_metaworld

    return record_metaworld(*args, **{"image_size": 32, "progress": False, **kwargs})


@pytest.mark.sim
def test_an_episode_the_expert_does_not_finish_has_exactly_max_episode_steps_steps(short_recording):
    # mutant: _record_episode stepped max_steps - 1 times
    summary, root = short_recording
    assert summary.lengths == [3, 3] and summary.successes == [False, False] and summary.seeds == [5, 6]
    assert LeRobotDataset(root).episode_lengths == [3, 3]


@pytest.mark.sim
def test_recorded_actions_are_the_clipped_ones_the_env_executed(short_recording):
    # mutant: the expert's action stored unclipped (reach-v3's expert asks 1.32 at seed 5's first step)
    _summary, root = short_recording
    actions = LeRobotDataset(root).episode(0).actions("eef_delta")
    assert np.abs(actions).max() <= 1.0
    assert actions[0, 1] == 1.0


@pytest.mark.sim
def test_an_episode_ends_at_the_experts_first_success(recorded_reach):
    # mutant: _record_episode went on after success until Meta-World truncated it
    for path in sorted((recorded_reach / "data").rglob("*.parquet")):
        flags = pq.read_table(path).column("next.success").to_pylist()
        assert flags[-1] is True and not any(flags[:-1]), path


@pytest.mark.sim
def test_ctrl_c_inside_an_episodes_add_episode_counts_only_the_episodes_before_it(tmp_path, monkeypatch):
    # mutant: writer.n_episodes >= summary.n_episodes: the episode add_episode did not finish was counted as kept
    pytest.importorskip("metaworld")
    calls = []

    def ctrl_c_in_the_second_episode(*args, **kwargs):  # add_episode's last line, its files and values all in
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(writer_module.logger, "debug", ctrl_c_in_the_second_episode)
    root = tmp_path / "reach"
    with pytest.raises(KeyboardInterrupt) as stopped:
        _record("metaworld/reach-v3", 3, root, seed=11, max_episode_steps=2)
    assert stopped.value.record_summary.seeds == [11]
    assert LeRobotDataset(root).episode_lengths == [2]


@pytest.mark.sim
def test_record_refuses_seed_minus_one_before_the_folder_exists(tmp_path):
    # mutant: seed < -1 (the CLI's test refuses -3 only)
    pytest.importorskip("metaworld")
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        _record("metaworld/reach-v3", 1, tmp_path / "ds", seed=-1)
    assert not (tmp_path / "ds").exists()


@pytest.mark.sim
def test_record_into_a_path_that_is_a_file_is_refused_naming_it(tmp_path):
    # mutant: the "exists and is not a directory" check dropped (mkdir's bare [Errno 17] came later, after the env)
    pytest.importorskip("metaworld")
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt exists and is not a directory"):
        _record("metaworld/reach-v3", 1, target)
    assert target.read_text() == "keep me"


@pytest.mark.sim
def test_a_folder_a_live_recording_fills_is_refused_as_in_use_without_overwrite_too(short_recording, tmp_path):
    # mutant: refuse_live_claim dropped: the refusal said "not empty", and so suggested --overwrite
    import shutil

    from gr00t_eval.record import RECORD_CLAIM
    from gr00t_eval.run_claim import claim_output_dir, finish_claim
    from gr00t_eval.run_dir import OutputDirError

    summary, _ = short_recording
    root = tmp_path / "reach"
    shutil.copytree(summary.root, root)
    (root / RECORD_CLAIM).unlink()
    claim = claim_output_dir(root, RECORD_CLAIM, {})  # a recording of this (live) process, not finished
    try:
        with pytest.raises(OutputDirError, match=r"--output .* is in use"):
            _record("metaworld/reach-v3", 1, root)
    finally:
        finish_claim(claim, "complete")
    assert LeRobotDataset(root).episode_lengths == [3, 3]


@pytest.mark.sim
def test_a_folder_holding_only_a_finished_recordings_claim_is_recorded_into_without_overwrite(tmp_path):
    # mutant: the claim file and its lock counted as content: a recording stopped before its first episode left a
    # folder only --overwrite would take
    from gr00t_eval.record import RECORD_CLAIM
    from gr00t_eval.run_claim import claim_lock_name, claim_output_dir, finish_claim

    pytest.importorskip("metaworld")
    root = tmp_path / "reach"
    root.mkdir()
    (root / claim_lock_name(RECORD_CLAIM)).touch()
    finish_claim(claim_output_dir(root, RECORD_CLAIM, {}), "interrupted")
    summary = _record("metaworld/reach-v3", 1, root, seed=9, max_episode_steps=2)
    assert summary.seeds == [9]
    assert LeRobotDataset(root).episode(0).extras["seed"] == 9


# -- checks -----------------------------------------------------------------------------------------------------------
def test_frames_of_an_odd_width_are_refused_before_anything_is_encoded(tmp_path):
    # mutant: only the frames' height was checked for yuv420p
    root = tmp_path / "v3"
    writer = DatasetWriter(root, 10, layout="v3.0")
    with pytest.raises(ValueError, match=r"frames\['cam'\] has size 16x15; the videos are yuv420p, whose height and "
                                         r"width must be even"):
        writer.add_episode({"cam": episode_frames(0, 0, 3, (16, 15))}, expected_states(0, 3), expected_actions(0, 3), "t")
    assert writer.n_episodes == 0 and not (root / "videos").exists()


def test_a_refused_first_episode_does_not_fix_the_datasets_layout(tmp_path):
    # mutant: add_episode did not put back the cameras, dims, frame sizes and schema a refused episode had set
    root = tmp_path / "ds"
    writer = DatasetWriter(root, 10)
    with pytest.raises(ValueError, match=r"metadata\['score'\]"):  # refused after its layout was checked
        writer.add_episode({"cam": episode_frames(0, 0, 3, (16, 16))}, {"arm": np.zeros((3, 2), np.float32)},
                           {"arm": np.zeros((3, 2), np.float32)}, "t", metadata={"score": float("nan")})
    add_known_episode(writer, 0, cameras=("front",))  # another camera, frame size and dims: the dataset's first episode
    writer.finalize()
    dataset = LeRobotDataset(root)
    assert dataset.video_keys == ["front"] and dataset.state_dims() == {"arm": 3, "gripper": 1}


def test_a_later_episode_of_another_frame_size_is_refused_and_leaves_no_file(tmp_path):
    # mutant: _check_layout's "earlier episodes had" frame-size check dropped (info.json declares one size per camera)
    root = tmp_path / "ds"
    writer = DatasetWriter(root, 10)
    add_known_episode(writer, 0)
    with pytest.raises(ValueError, match=r"frames\['cam'\] has size \(32, 32\); earlier episodes had \(16, 16\)"):
        writer.add_episode({"cam": episode_frames(1, 0, 3, (32, 32))}, expected_states(1, 3), expected_actions(1, 3), "t")
    writer.finalize()
    assert LeRobotDataset(root).episode_lengths == [3]
    assert len(list((root / "videos").rglob("*.mp4"))) == 1


def test_a_finalized_v3_writer_refuses_another_episode(tmp_path):
    # mutant: finalize() did not mark the writer finalized (a later episode went into a file meta/ never lists)
    root = tmp_path / "v3"
    writer = DatasetWriter(root, 10, layout="v3.0")
    add_known_episode(writer, 0)
    writer.finalize()
    with pytest.raises(RuntimeError, match="writer already finalized"):
        add_known_episode(writer, 1)
    assert LeRobotDataset(root).episode_lengths == [3]


def test_write_meta_of_a_v3_writer_is_refused_before_its_data_file_exists(tmp_path):
    # mutant: write_meta() ran in v3.0: meta/ listed an episode whose data file was not written yet (unloadable)
    root = tmp_path / "v3"
    writer = DatasetWriter(root, 10, layout="v3.0")
    add_known_episode(writer, 0)
    with pytest.raises(RuntimeError, match=r"write_meta\(\) before finalize\(\) needs layout 'v2.1'"):
        writer.write_meta()
    assert not (root / "meta").exists()
    writer.finalize()
    assert LeRobotDataset(root).episode_lengths == [3]
