"""DatasetWriter produces LeRobot v2.1 / v3.0 files with GR00T's modality.json and stats.json."""

from __future__ import annotations

import json
import re

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from eval.dataset_factory import TASKS, episode_frames, expected_actions, expected_states, make_dataset
from gr00t_eval.dataset import STAT_NAMES, DatasetWriter, LeRobotDataset, available_codecs
from gr00t_eval.dataset.video import ENCODERS


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def v2_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("w") / "ds", lengths=(5, 3), codec="h264")


def test_v2_layout_has_one_parquet_and_one_mp4_per_camera_per_episode(v2_root):
    assert sorted(p.name for p in (v2_root / "data" / "chunk-000").iterdir()) == ["episode_000000.parquet", "episode_000001.parquet"]
    for camera in ("image", "wrist_image"):
        assert (v2_root / "videos" / "chunk-000" / f"observation.images.{camera}" / "episode_000001.mp4").is_file()


def test_info_json_describes_the_dataset(v2_root):
    info = json.loads((v2_root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v2.1"
    assert (info["fps"], info["total_episodes"], info["total_frames"], info["total_tasks"]) == (10, 2, 8, 2)
    assert info["data_path"] == "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    assert info["features"]["observation.state"]["shape"] == [4]
    assert info["features"]["observation.images.image"]["info"]["video.codec"] == "h264"
    assert info["features"]["observation.images.image"]["shape"] == [32, 32, 3]


def test_modality_json_maps_groups_to_slices_and_cameras(v2_root):
    modality = json.loads((v2_root / "meta" / "modality.json").read_text())
    assert modality["state"] == {"arm": {"start": 0, "end": 3}, "gripper": {"start": 3, "end": 4}}
    assert modality["action"]["gripper"] == {"start": 3, "end": 4}
    assert modality["video"]["wrist_image"] == {"original_key": "observation.images.wrist_image"}
    assert modality["annotation"] == {"human.action.task_description": {"original_key": "task_index"}}


def test_episodes_and_tasks_jsonl_carry_lengths_tasks_and_metadata(v2_root):
    episodes = _read_jsonl(v2_root / "meta" / "episodes.jsonl")
    assert episodes == [
        {"episode_index": 0, "tasks": [TASKS[0]], "length": 5, "seed": 100},
        {"episode_index": 1, "tasks": [TASKS[1]], "length": 3, "seed": 101},
    ]
    assert _read_jsonl(v2_root / "meta" / "tasks.jsonl") == [{"task_index": 0, "task": TASKS[0]}, {"task_index": 1, "task": TASKS[1]}]


def test_parquet_rows_hold_concatenated_state_and_index_columns(v2_root):
    table = pq.read_table(v2_root / "data" / "chunk-000" / "episode_000001.parquet")
    state = np.array(table.column("observation.state").to_pylist(), np.float32)
    expected = expected_states(1, 3)
    np.testing.assert_array_equal(state, np.concatenate([expected["arm"], expected["gripper"]], axis=1))
    assert table.column("index").to_pylist() == [5, 6, 7]
    assert table.column("frame_index").to_pylist() == [0, 1, 2]
    assert table.column("task_index").to_pylist() == [1, 1, 1]
    np.testing.assert_allclose(table.column("timestamp").to_pylist(), [0.0, 0.1, 0.2], rtol=1e-6)


def test_stats_json_has_all_statistics_per_column(v2_root):
    stats = json.loads((v2_root / "meta" / "stats.json").read_text())
    actions = np.concatenate([np.concatenate(list(expected_actions(e, n).values()), axis=1) for e, n in ((0, 5), (1, 3))])
    assert set(stats["action"]) == set(STAT_NAMES)  # v2.1: GR00T's own form (LeRobot's is in episodes_stats.jsonl)
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], actions.std(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["min"], actions.min(axis=0))
    np.testing.assert_allclose(stats["action"]["q01"], np.quantile(actions, 0.01, axis=0), rtol=1e-6)
    assert "observation.state" in stats and "next.reward" in stats


@pytest.mark.parametrize("codec, decoder_names", [("h264", {"h264"}), ("av1", {"libdav1d", "av1", "libaom-av1"})])
def test_videos_use_the_requested_codec_and_frame_count(tmp_path, codec, decoder_names):
    root = make_dataset(tmp_path / codec, lengths=(7,), cameras=("image",), codec=codec)
    with av.open(str(root / "videos" / "chunk-000" / "observation.images.image" / "episode_000000.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in decoder_names
        assert sum(1 for _ in container.decode(stream)) == 7


def test_a_codec_is_encoded_with_the_first_of_its_encoders_this_pyav_build_has(tmp_path, monkeypatch):
    # av 12 wheels have libaom-av1 but not SVT-AV1: av1 falls back to the second encoder the same way
    monkeypatch.setitem(ENCODERS, "h264", ("no-such-encoder", "libx264"))
    root = make_dataset(tmp_path / "fallback", lengths=(4,), cameras=("image",), codec="h264")
    with av.open(str(root / "videos" / "chunk-000" / "observation.images.image" / "episode_000000.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in container.decode(container.streams.video[0])) == 4


def test_a_codec_this_pyav_build_cannot_encode_is_refused_before_the_folder_is_made(tmp_path, monkeypatch):
    monkeypatch.setitem(ENCODERS, "av1", ("no-such-encoder", "nor-this-one"))
    assert available_codecs() == ["h264"]
    with pytest.raises(ValueError, match=r"video codec 'av1' needs one of the encoders no-such-encoder, nor-this-one, "
                                         r"and this PyAV build \(av [0-9.]+\) has none of them; use video codec 'h264'"):
        DatasetWriter(tmp_path / "out", 10, video_codec="av1")
    assert not (tmp_path / "out").exists()


def test_v3_layout_groups_episodes_into_files(tmp_path):
    root = make_dataset(tmp_path / "v3", lengths=(2, 3, 4), layout="v3.0", episodes_per_file=2)
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    episodes = pq.read_table(next((root / "meta" / "episodes").rglob("*.parquet"))).to_pylist()
    assert [(e["dataset_from_index"], e["dataset_to_index"], e["data/file_index"]) for e in episodes] == [(0, 2, 0), (2, 5, 0), (5, 9, 1)]
    assert [e["videos/observation.images.image/from_timestamp"] for e in episodes] == [0.0, 0.2, 0.0]
    assert pq.read_table(root / "data" / "chunk-000" / "file-000.parquet").num_rows == 5
    assert pq.read_table(root / "meta" / "tasks.parquet").column("__index_level_0__").to_pylist() == list(TASKS)


def _episode(length=3, state_dim=2, camera="cam"):
    return dict(
        frames={camera: episode_frames(0, 0, length, (16, 16))},
        states={"s": np.zeros((length, state_dim), np.float32)},
        actions={"a": np.zeros((length, 1), np.float32)},
        task="t",
    )


def test_episodes_must_match_the_first_episodes_layout(tmp_path):
    writer = DatasetWriter(tmp_path / "ds", fps=5)
    writer.add_episode(**_episode())
    with pytest.raises(ValueError, match="state dims"):
        writer.add_episode(**_episode(state_dim=3))
    with pytest.raises(ValueError, match="cameras"):
        writer.add_episode(**_episode(camera="other"))


def test_frames_must_be_uint8_with_one_frame_per_step(tmp_path):
    writer = DatasetWriter(tmp_path / "ds", fps=5)
    bad = _episode()
    bad["frames"] = {"cam": bad["frames"]["cam"].astype(np.float32)}
    with pytest.raises(ValueError, match=r"frames\['cam'\] must be uint8"):
        writer.add_episode(**bad)
    short = _episode()
    short["frames"] = {"cam": short["frames"]["cam"][:2]}
    with pytest.raises(ValueError, match="2 frames; expected 3"):
        writer.add_episode(**short)


@pytest.mark.parametrize("layout", ["v2.1", "v3.0"])
@pytest.mark.parametrize("camera", ["../../escaped", "left/wrist", "left\\wrist", "..", ".", "", "wrist\nleft", "cam\x00"])
def test_a_camera_name_that_is_not_one_folder_name_is_refused_before_any_file_is_written(tmp_path, camera, layout):
    """The camera is spliced into videos/.../observation.images.<camera>/: '../..' wrote its mp4 outside the dataset."""
    root = tmp_path / "parent" / "ds"
    writer = DatasetWriter(root, fps=5, layout=layout)
    with pytest.raises(ValueError, match=r"camera name " + re.escape(repr(camera))):
        writer.add_episode(**_episode(camera=camera))
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []
    writer.add_episode(**_episode(camera="wrist"))
    writer.finalize()
    assert LeRobotDataset(root).num_episodes == 1


def test_writer_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        DatasetWriter(tmp_path / "ds", fps=5)


def test_overwrite_replaces_a_dataset_but_deletes_nothing_from_a_folder_that_is_not_one(tmp_path):
    """overwrite=True deleted any folder: a thesis beside a dataset, or a folder that never was one."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    (folder / "meta").mkdir()
    with pytest.raises(FileExistsError, match="thesis.tex.*nothing was deleted"):
        DatasetWriter(folder, fps=5, overwrite=True)
    assert (folder / "thesis.tex").read_text() == "years of work" and (folder / "meta").is_dir()

    dataset = tmp_path / "ds"
    with DatasetWriter(dataset, fps=5) as writer:
        writer.add_episode(**_episode())
        writer.add_episode(**_episode())
    (dataset / ".gr00t_record.json").write_text("{}")  # an earlier recording's claim belongs to the dataset
    link = tmp_path / "ds-link"
    link.symlink_to(dataset)
    with DatasetWriter(link, fps=5, overwrite=True) as writer:
        writer.add_episode(**_episode(length=4))
    assert link.is_symlink() and json.loads((dataset / "meta" / "info.json").read_text())["total_episodes"] == 1
    assert not (dataset / ".gr00t_record.json").exists()


def test_episodes_listed_beyond_info_json_total_are_not_read(tmp_path):
    """info.json is written last: a recording killed between episodes.jsonl and info.json lists an episode it never
    committed, which the reader served while the CLI counted one fewer."""
    from gr00t_eval.dataset import LeRobotDataset

    root = tmp_path / "ds"
    with DatasetWriter(root, fps=5) as writer:
        for length in (3, 4):
            writer.add_episode(**_episode(length=length))
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["total_episodes"] = 1
    info_path.write_text(json.dumps(info))
    dataset = LeRobotDataset(root)
    assert dataset.episode_lengths == [3]


@pytest.mark.parametrize("setting, value", [
    ("episodes_per_file", 0), ("episodes_per_file", -3), ("episodes_per_file", True), ("episodes_per_file", 2.5),
    ("episodes_per_file", "2"), ("gop", None), ("gop", "abc"), ("gop", 0), ("gop", 10**12), ("gop", True),
    ("fps", True),
])
def test_a_setting_the_files_cannot_be_written_with_is_refused_naming_it_before_the_old_dataset_is_deleted(
        tmp_path, setting, value):
    """They passed __init__, whose overwrite=True had deleted the old dataset, and the first add_episode failed with
    a bare TypeError or PyAV's `avcodec_open2 ... returned 22` (or 0 and -3 wrote one episode per file silently)."""
    root = tmp_path / "ds"
    with DatasetWriter(root, fps=5, layout="v3.0") as writer:
        writer.add_episode(**_episode())
    settings = {"fps": 5, "layout": "v3.0", "overwrite": True, setting: value}
    with pytest.raises(ValueError, match=rf"^{setting} must be .*, got {re.escape(repr(value))}$"):
        DatasetWriter(root, **settings)
    assert LeRobotDataset(root).num_episodes == 1


def test_av1_at_a_frame_rate_over_svt_av1s_limit_is_refused_naming_fps_and_the_limit_before_the_folder_is_made(
        tmp_path):
    """SVT-AV1 takes at most 240 fps, and said so on stderr only: every add_episode failed with `avcodec_open2 ...
    returned 22`."""
    from gr00t_eval.dataset.video import encoder_for

    if "av1" not in available_codecs() or encoder_for("av1") != "libsvtav1":
        pytest.skip("this PyAV build encodes av1 with another encoder than SVT-AV1")
    with pytest.raises(ValueError, match=r"^fps 300 is over 240, the most the libsvtav1 encoder of video_codec 'av1' "
                                         r"takes"):
        DatasetWriter(tmp_path / "fast", fps=300, video_codec="av1")
    assert not (tmp_path / "fast").exists()
    with DatasetWriter(tmp_path / "at_limit", fps=240, video_codec="av1") as writer:
        writer.add_episode(**_episode())
    assert LeRobotDataset(tmp_path / "at_limit").fps == 240


@pytest.mark.parametrize("layout, counted", [
    ("v2.1", "episodes per chunk folder"),
    ("v3.0", "data files, and each camera's video files, per chunk folder"),
])
def test_a_chunks_size_refusal_says_what_a_chunk_folder_counts_in_the_layout(tmp_path, layout, counted):
    with pytest.raises(ValueError, match=rf"chunks_size must be an int >= 1 \({counted} in layout {layout}\), got 0"):
        DatasetWriter(tmp_path / "ds", fps=5, layout=layout, chunks_size=0)


def test_the_writer_docstring_says_what_chunks_size_episodes_per_file_and_gop_are():
    doc = " ".join(DatasetWriter.__doc__.split())
    assert "`chunks_size` counts what one chunk folder (chunk-000, chunk-001, ...) holds: episodes in v2.1; in v3.0 " \
           "data files, and each camera's video files." in doc
    assert "None puts all episodes in one data file and one mp4 per camera" in doc
    assert "`gop`: frames from one video keyframe to the next" in doc


def test_unknown_codec_is_refused(tmp_path):
    with pytest.raises(ValueError, match="video_codec"):
        DatasetWriter(tmp_path / "ds", fps=5, video_codec="vp9")


def test_an_exception_inside_the_with_block_leaves_no_metadata(tmp_path):
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "ds", fps=5) as writer:
            writer.add_episode(**_episode())
            raise RuntimeError("recorder crashed")
    assert not (tmp_path / "ds" / "meta" / "info.json").exists()


def test_groups_are_concatenated_in_the_first_episodes_order(tmp_path):
    with DatasetWriter(tmp_path / "ds", fps=5) as writer:
        for order in (("a", "b"), ("b", "a")):
            values = {"a": np.zeros((2, 1), np.float32), "b": np.ones((2, 2), np.float32)}
            writer.add_episode({}, {k: values[k] for k in order}, {"x": np.zeros((2, 1), np.float32)}, "t")
    table = pq.read_table(tmp_path / "ds" / "data" / "chunk-000" / "episode_000001.parquet")
    assert table.column("observation.state").to_pylist()[0] == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("layout", ["v2.1", "v3.0"])
def test_a_writer_dropped_without_finalize_says_its_episodes_are_not_in_meta(tmp_path, caplog, layout):
    """A v3.0 writer used without `with` or finalize() lost every episode without a word."""
    import gc

    writer = DatasetWriter(tmp_path / "ds", 10, layout=layout)
    writer.add_episode(**_episode())
    writer.add_episode(**_episode())
    with caplog.at_level("WARNING"):
        del writer
        gc.collect()
    assert "was dropped without finalize(): its last 2 episode(s) are not in meta/" in caplog.text


def test_a_finalized_writer_says_nothing_when_dropped(tmp_path, caplog):
    import gc

    writer = DatasetWriter(tmp_path / "ds", 10, layout="v3.0")
    writer.add_episode(**_episode())
    writer.finalize()
    with caplog.at_level("WARNING"):
        del writer
        gc.collect()
    assert "dropped without finalize" not in caplog.text


# --- v3.0 files shared by episodes of other types (code-review audit) -------------------------------------------


def _small_episode(writer, **extra):
    return writer.add_episode(frames={"cam": np.zeros((5, 16, 16, 3), np.uint8)}, states={"arm": np.zeros((5, 2))},
                              actions={"arm": np.zeros((5, 2))}, task="t", **extra)


@pytest.mark.parametrize("layout", ["v2.1", "v3.0"])
def test_a_step_column_given_in_another_float_type_is_written_in_the_first_episodes(tmp_path, layout):
    """float32 rewards, then a list of Python floats: a v3.0 finalize() failed and every episode was lost."""
    from gr00t_eval.dataset import DatasetWriter, LeRobotDataset

    root = tmp_path / "ds"
    with DatasetWriter(root, fps=10, layout=layout) as writer:
        for rewards in (np.zeros(5, np.float32), [0.0, 0.1, 0.2, 0.3, 1.0], np.ones(5, np.float32)):
            _small_episode(writer, step_columns={"next.reward": rewards})
    dataset = LeRobotDataset(root)
    assert dataset.num_episodes == 3
    rewards = dataset.episode(1).column("next.reward")
    assert rewards.dtype == np.float32 and np.allclose(rewards, [0.0, 0.1, 0.2, 0.3, 1.0])


@pytest.mark.parametrize("layout", ["v2.1", "v3.0"])
def test_a_float_too_large_for_the_first_episodes_column_type_is_refused_not_written_as_inf(tmp_path, layout):
    from gr00t_eval.dataset import DatasetWriter, LeRobotDataset

    root = tmp_path / "ds"
    with DatasetWriter(root, fps=10, layout=layout) as writer:
        _small_episode(writer, step_columns={"score": np.zeros(5, np.float32)})
        with pytest.raises(ValueError, match="column 'score' holds double, and earlier episodes float.*out of float's "
                                             "range"):
            _small_episode(writer, step_columns={"score": np.array([1e300, 0.1, -1e300, 2.0, 0.0])})
    assert LeRobotDataset(root).num_episodes == 1


def test_a_step_column_whose_type_cannot_be_cast_is_refused_at_add_episode_and_the_others_survive(tmp_path):
    from gr00t_eval.dataset import DatasetWriter, LeRobotDataset

    root = tmp_path / "ds"
    with DatasetWriter(root, fps=10, layout="v3.0") as writer:
        _small_episode(writer, step_columns={"label": np.arange(5, dtype=np.int64)})
        with pytest.raises(ValueError, match="episode 1: column 'label' holds string, and earlier episodes int64"):
            _small_episode(writer, step_columns={"label": np.array(["a", "b", "c", "d", "e"])})
        _small_episode(writer, step_columns={"label": np.arange(5, dtype=np.int64)})
    assert LeRobotDataset(root).num_episodes == 2


@pytest.mark.parametrize("values, bad", [((3, "three"), "seed"), (([1, "a"],), "seed"), (({},), "seed")],
                         ids=["int-then-str", "mixed-list", "empty-map"])
def test_v3_metadata_the_episode_list_cannot_hold_is_refused_at_add_episode(tmp_path, values, bad):
    """Each was accepted, then finalize() failed and nothing was written but an mp4."""
    from gr00t_eval.dataset import DatasetWriter, LeRobotDataset

    root = tmp_path / "ds"
    with DatasetWriter(root, fps=10, layout="v3.0") as writer:
        for value in values[:-1]:
            _small_episode(writer, metadata={bad: value})
        with pytest.raises(ValueError, match=f"metadata\\['{bad}'\\] .* cannot be stored in a v3.0 episode list"):
            _small_episode(writer, metadata={bad: values[-1]})
        _small_episode(writer)
    assert LeRobotDataset(root).num_episodes == len(values)


@pytest.mark.parametrize("layout", ["v2.1", "v3.0"])
@pytest.mark.parametrize("later", [np.array([0, 2, 1, 7, 0]), np.array([0.0, 0.5, 1.0, -3.0, 0.0])],
                         ids=["int", "float"])
def test_a_bool_column_refuses_a_later_episodes_numbers_instead_of_writing_them_as_true_false(tmp_path, layout, later):
    """Arrow's safe cast maps any non-zero number to True: [0, 2, 1, 7] was written as [F, T, T, T] and stats.json
    kept the numbers."""
    from gr00t_eval.dataset import DatasetWriter, LeRobotDataset

    root = tmp_path / "ds"
    with DatasetWriter(root, fps=10, layout=layout) as writer:
        _small_episode(writer, step_columns={"flag": np.array([0, 1, 0, 1, 1], bool)})
        with pytest.raises(ValueError, match=r"episode 1: column 'flag' holds (int64|double), and earlier episodes "
                                             r"bool.*2 value\(s\) would change"):
            _small_episode(writer, step_columns={"flag": later})
        _small_episode(writer, step_columns={"flag": np.array([0, 1, 1, 0, 1])})  # 0/1 ints lose nothing
    dataset = LeRobotDataset(root)
    assert dataset.num_episodes == 2
    assert dataset.episode(1).column("flag").tolist() == [False, True, True, False, True]


@pytest.mark.parametrize("kind", ["states", "actions"])
@pytest.mark.parametrize("value", [1e39, -1e300, np.nan, np.inf], ids=["beyond-float32", "huge", "nan", "inf"])
def test_a_state_or_action_float32_cannot_hold_is_refused_naming_the_group_and_step(tmp_path, kind, value):
    """A finite float64 beyond float32's range was stored as inf (and NaN accepted), turning stats.json to inf/NaN."""
    import json

    from gr00t_eval.dataset import DatasetWriter, LeRobotDataset

    root = tmp_path / "ds"
    groups = {"arm": np.zeros((5, 2))}
    bad = {"arm": np.zeros((5, 2))}
    bad["arm"][3, 1] = value
    with DatasetWriter(root, fps=10) as writer:
        _small_episode(writer)
        with pytest.raises(ValueError, match=rf"{kind}\['arm'\] has a value float32 cannot hold finitely at step 3"):
            writer.add_episode(frames={"cam": np.zeros((5, 16, 16, 3), np.uint8)},
                               **{"states": groups, "actions": groups, kind: bad}, task="t")
    assert LeRobotDataset(root).num_episodes == 1
    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert all(np.isfinite(v).all() for column in stats.values() for v in column.values())


@pytest.mark.parametrize("key", ["dataset_from_index", "dataset_to_index", "data/source", "videos/rig", "meta/note",
                                 "stats/operator"])
def test_v3_metadata_keys_lerobot_keeps_for_its_bookkeeping_are_refused_before_any_file_is_written(tmp_path, key):
    """The writer overwrote dataset_from_index, and the reader dropped every data/, videos/, meta/ and stats/ key:
    the episode's metadata was lost without a word."""
    root = tmp_path / "ds"
    writer = DatasetWriter(root, fps=10, layout="v3.0")
    with pytest.raises(ValueError, match=f"metadata key '{key}' is reserved by LeRobot v3.0"):
        _small_episode(writer, metadata={key: 7, "seed": 3})
    assert writer.n_episodes == 0 and not (root / "videos").exists() and not (root / "data").exists()


def test_v3_metadata_beside_the_bookkeeping_columns_reads_back_as_the_episodes_extras(tmp_path):
    from gr00t_eval.dataset import LeRobotDataset

    root = tmp_path / "ds"
    with DatasetWriter(root, fps=10, layout="v3.0") as writer:
        _small_episode(writer, metadata={"source": "teleop-rig-3", "operator/name": "alice", "seed": 7})
    assert LeRobotDataset(root).episode(0).extras == {"source": "teleop-rig-3", "operator/name": "alice", "seed": 7}


@pytest.mark.parametrize("kind", ["states", "actions"])
def test_a_state_or_action_group_of_width_zero_is_refused_naming_it_before_any_file_is_written(tmp_path, kind):
    """modality.json cannot hold an empty slice: the writer finalized a dataset its own reader refused to open."""
    root = tmp_path / "ds"
    writer = DatasetWriter(root, fps=10)
    groups = {"arm": np.ones((4, 3), np.float32)}
    with pytest.raises(ValueError, match=rf"{kind}\['force'\] has shape \(4, 0\), no values per step"):
        writer.add_episode(frames={"cam": np.zeros((4, 16, 16, 3), np.uint8)},
                           **{"states": groups, "actions": groups, kind: {**groups, "force": np.zeros((4, 0))}}, task="t")
    assert writer.n_episodes == 0 and not (root / "videos").exists() and not (root / "data").exists()


@pytest.mark.parametrize("codec, size, smallest", [("av1", (2, 64), 4), ("av1", (64, 2), 4), ("h264", (0, 16), 2)])
def test_frames_under_the_codecs_smallest_size_are_refused_naming_camera_size_and_minimum(tmp_path, codec, size,
                                                                                          smallest):
    """SVT-AV1 refuses a side under 4 only when encoding starts: its own `avcodec_open2 ... returned 22` was the
    error, and in v3.0 the camera's shared file refused every later episode."""
    from gr00t_eval.dataset.video import min_frame_side

    if codec not in available_codecs():
        pytest.skip(f"this PyAV build has no {codec} encoder")
    if min_frame_side(codec) != smallest:  # libaom-av1 (older PyAV wheels' av1) encodes 2-pixel sides
        pytest.skip(f"this PyAV build's {codec} encoder takes sides of {min_frame_side(codec)} pixels")
    root = tmp_path / "ds"
    writer = DatasetWriter(root, fps=10, video_codec=codec, layout="v3.0")
    state = {"a": np.zeros((3, 2), np.float32)}
    with pytest.raises(ValueError, match=rf"frames\['cam'\] has size {size[0]}x{size[1]}; {codec} videos .*at least "
                                         rf"{smallest} pixels"):
        writer.add_episode({"cam": np.zeros((3, *size, 3), np.uint8)}, state, state, "t")
    assert not (root / "videos").exists()
    writer.add_episode({"cam": np.zeros((3, 64, 64, 3), np.uint8)}, state, state, "t")
    writer.finalize()


def test_v3_a_camera_video_the_encoder_would_not_open_does_not_refuse_the_files_later_episodes(tmp_path):
    """libx264 refuses a frame 16400 pixels wide when it opens: the failed encoder stayed the camera's for the file,
    so every later episode was refused as "frame size (16, 16) differs from this file's (16, 16400)"."""
    from gr00t_eval.dataset import LeRobotDataset

    root = tmp_path / "ds"
    writer = DatasetWriter(root, fps=10, layout="v3.0")
    state = {"a": np.zeros((3, 2), np.float32)}
    with pytest.raises(av.error.FFmpegError):
        writer.add_episode({"cam": np.zeros((3, 16, 16400, 3), np.uint8)}, state, state, "t")
    assert not list((root / "videos").rglob("*.mp4"))
    writer.add_episode({"cam": episode_frames(0, 0, 3, (16, 16))}, state, state, "t")
    writer.finalize()
    frames = LeRobotDataset(root).episode(0).frames("cam", [0, 1, 2]).astype(int)
    np.testing.assert_allclose(frames, episode_frames(0, 0, 3, (16, 16)), atol=4)  # h264 is lossy


_KILLED_DURING_THIRD_META_REWRITE = """
import os, sys
from pathlib import Path
import numpy as np
from gr00t_eval.dataset import DatasetWriter

root, dying_rename = sys.argv[1], sys.argv[2]
real_replace = Path.replace


def replace_then_die(self, target):
    if self.name == dying_rename:  # kill -9 just as meta/ renames this file into place
        os._exit(137)
    return real_replace(self, target)


writer = DatasetWriter(root, fps=10)
for index in range(3):
    arm = np.full((4, 2), index, np.float32)
    writer.add_episode({"cam": np.zeros((4, 16, 16, 3), np.uint8)}, {"arm": arm}, {"arm": arm}, "t")
    if index == 2:
        Path.replace = replace_then_die
    writer.write_meta()
"""


def _kill_during_third_meta_rewrite(root, dying_rename):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _KILLED_DURING_THIRD_META_REWRITE, str(root), dying_rename],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 137, result.stderr[-2000:]


def _listed_episodes(root, name):
    return [row["episode_index"] for row in _read_jsonl(root / "meta" / name)]


def test_a_recording_killed_as_meta_is_renamed_keeps_episodes_stats_to_the_listed_episodes(tmp_path):
    """episodes_stats.jsonl was appended before the renames: a kill -9 then left it a line ahead of episodes.jsonl
    and info.json, and LeRobot v2.1 aggregates every line of it, an episode the dataset does not list."""
    from gr00t_eval.dataset import LeRobotDataset

    root = tmp_path / "ds"
    _kill_during_third_meta_rewrite(root, ".modality.json.tmp")
    assert _listed_episodes(root, "episodes_stats.jsonl") == _listed_episodes(root, "episodes.jsonl") == [0, 1]
    assert LeRobotDataset(root).num_episodes == 2


@pytest.mark.parametrize("dying_rename", [".stats.json.tmp", ".episodes.jsonl.tmp", ".info.json.tmp"])
def test_a_recording_killed_at_any_meta_rename_never_has_statistics_of_an_unlisted_episode(tmp_path, dying_rename):
    root = tmp_path / "ds"
    _kill_during_third_meta_rewrite(root, dying_rename)
    with_stats = _listed_episodes(root, "episodes_stats.jsonl")
    listed = _listed_episodes(root, "episodes.jsonl")
    assert with_stats == listed[:len(with_stats)], (with_stats, listed)


def test_the_reader_refuses_a_meta_a_kill_left_half_renamed_naming_the_leftover_files(tmp_path):
    # stats.json was renamed into place with episode 2 counted, episodes.jsonl and info.json not: the reader opened it
    # without a word and served statistics of an episode nothing lists
    from gr00t_eval.dataset import DatasetError

    root = tmp_path / "ds"
    _kill_during_third_meta_rewrite(root, ".episodes.jsonl.tmp")
    with pytest.raises(DatasetError) as refused:
        LeRobotDataset(root)
    message = str(refused.value)
    assert ".episodes.jsonl.tmp" in message and ".stats.json.prev" in message, message
    assert "record --overwrite" in message, message


def test_the_reader_refuses_a_meta_an_earlier_writer_left_half_renamed_under_visible_names(tmp_path):
    # record versions before the hidden names staged NAME.tmp / NAME.prev: the same half-renamed meta/ opened silently
    from gr00t_eval.dataset import DatasetError

    root = tmp_path / "ds"
    _kill_during_third_meta_rewrite(root, ".episodes.jsonl.tmp")
    for path in [*(root / "meta").glob(".*.tmp"), *(root / "meta").glob(".*.prev")]:
        path.rename(path.with_name(path.name[1:]))
    with pytest.raises(DatasetError) as refused:
        LeRobotDataset(root)
    message = str(refused.value)
    assert "episodes.jsonl.tmp" in message and "stats.json.prev" in message, message
    assert ".episodes.jsonl.tmp" not in message, message


def test_a_users_files_ending_in_tmp_or_prev_in_meta_are_no_leftovers_of_the_writer(tmp_path):
    # A `sed -i.prev` backup and a draft in a sub-folder refused a whole finished dataset as half-renamed
    root = make_dataset(tmp_path / "ds", lengths=(4, 5))
    (root / "meta" / "modality.json.prev").write_text((root / "meta" / "modality.json").read_text())
    (root / "meta" / "notes").mkdir()
    (root / "meta" / "notes" / "draft.tmp").write_text("to do")
    assert LeRobotDataset(root).num_episodes == 2


def test_overwriting_a_killed_recording_leaves_no_temporary_meta_file(tmp_path):
    root = tmp_path / "ds"
    _kill_during_third_meta_rewrite(root, ".episodes.jsonl.tmp")
    assert list((root / "meta").glob(".*.tmp"))  # what the kill left
    with DatasetWriter(root, fps=10, overwrite=True) as writer:
        writer.add_episode(**_episode(length=3))
    assert sorted(path.name for path in (root / "meta").iterdir()) == [
        "episodes.jsonl", "episodes_stats.jsonl", "info.json", "modality.json", "stats.json", "tasks.jsonl"]


def test_a_recording_killed_mid_meta_rewrite_leaves_nothing_a_replays_identity_hashes(tmp_path):
    """The writer staged meta files as visible NAME.tmp: one a kill -9 left was hashed into the replay's identity, so
    deleting it made the same episodes another dataset (a resume or merge refused 'another dataset')."""
    from gr00t_eval.dataset.identity import dataset_hashes, meta_files

    root = tmp_path / "ds"
    _kill_during_third_meta_rewrite(root, ".modality.json.tmp")
    left = [path for path in (root / "meta").iterdir() if path.name.endswith((".tmp", ".prev"))]
    assert left  # what the kill left
    before = dataset_hashes(root, [])
    assert not set(left) & set(meta_files(root))
    for path in left:
        path.unlink()
    assert dataset_hashes(root, []) == before


def test_meta_files_an_earlier_writer_left_are_not_hashed(tmp_path):
    from gr00t_eval.dataset.identity import dataset_hashes

    root = tmp_path / "ds"
    with DatasetWriter(root, fps=10) as writer:
        writer.add_episode(**_episode(length=3))
    clean = dataset_hashes(root, [])
    (root / "meta" / "modality.json.tmp").write_text("{}", encoding="utf-8")
    (root / "meta" / "info.json.prev").write_text("{}", encoding="utf-8")
    assert dataset_hashes(root, []) == clean


@pytest.mark.parametrize("layout", ["v2.1", "v3.0"])
def test_a_task_holding_a_lone_surrogate_is_refused_at_add_episode_naming_it_and_the_others_survive(tmp_path, layout):
    """What os.fsdecode makes of a non-UTF-8 byte: v3.0's finalize() failed with a bare UnicodeEncodeError and no
    meta/info.json (every episode lost); v2.1 stored it and open-loop later failed on it."""
    root = tmp_path / "ds"
    with DatasetWriter(root, fps=10, layout=layout) as writer:
        _small_episode(writer)
        with pytest.raises(ValueError, match=r"episode 1: task 'pick \\udcff' holds a lone surrogate .*expected text"):
            writer.add_episode(frames={"cam": np.zeros((5, 16, 16, 3), np.uint8)}, states={"arm": np.zeros((5, 2))},
                               actions={"arm": np.zeros((5, 2))}, task="pick \udcff")
        _small_episode(writer)
    dataset = LeRobotDataset(root)
    assert dataset.num_episodes == 2
    assert [dataset.episode(p).language(dataset.language_keys[0])[0] for p in range(2)] == ["t", "t"]
