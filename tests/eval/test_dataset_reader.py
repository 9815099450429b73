"""LeRobotDataset reads back exactly what DatasetWriter wrote (v2.1 and v3.0, H.264 and AV1) and rejects bad files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eval.dataset_factory import (
    CAMERAS,
    TASKS,
    expected_actions,
    expected_states,
    frame_colour,
    make_dataset,
    slice_past_the_data,
)
from gr00t_eval.dataset import DatasetError, DatasetFileNotFoundError, LeRobotDataset, available_codecs

LENGTHS = (6, 9, 4)
COLOUR_TOLERANCE = 8  # yuv420p round trip of solid colours; neighbouring steps differ by >= 28


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """One dataset per (codec, layout); the v3.0 ones put two episodes in the first file."""
    out = {}
    for codec in available_codecs():
        for layout in ("v2.1", "v3.0"):
            root = tmp_path_factory.mktemp(f"{codec}_{layout}") / "ds"
            out[(codec, layout)] = make_dataset(root, lengths=LENGTHS, codec=codec, layout=layout, episodes_per_file=2)
    return out


VARIANTS = [(c, l) for c in ("h264", "av1") for l in ("v2.1", "v3.0")]


@pytest.fixture(params=VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}")
def dataset(request, datasets):
    if request.param not in datasets:
        pytest.skip(f"codec {request.param[0]} cannot be encoded by this PyAV build")
    return LeRobotDataset(datasets[request.param])


def _copy(datasets, tmp_path, variant=("h264", "v2.1")) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(datasets[variant], root)
    return root


def test_both_h264_and_av1_can_be_encoded():
    assert {"h264", "av1"} <= set(available_codecs())


def test_metadata_is_read_without_decoding_video(dataset):
    assert dataset.fps == 10
    assert dataset.num_episodes == 3
    assert dataset.episode_indices == [0, 1, 2]
    assert dataset.episode_lengths == list(LENGTHS)
    assert dataset.video_keys == list(CAMERAS)
    assert dataset.modality.video["image"].original_key == "observation.images.image"
    assert dataset.state_keys == ["arm", "gripper"]
    assert dataset.action_keys == ["arm", "gripper"]
    assert dataset.language_keys == ["annotation.human.action.task_description"]
    dataset.episode(1)
    assert dataset.frames_decoded == 0


def test_states_and_actions_are_exact_float32_slices(dataset):
    for position, length in enumerate(LENGTHS):
        episode = dataset.episode(position)
        assert episode.length == length
        for key, values in expected_states(position, length).items():
            got = episode.states(key)
            assert got.dtype == np.float32 and got.shape == values.shape
            np.testing.assert_array_equal(got, values)
        for key, values in expected_actions(position, length).items():
            np.testing.assert_array_equal(episode.actions(key), values)
        assert episode.action_array().shape == (length, 4)
        np.testing.assert_array_equal(episode.state_array()[:, 3], expected_states(position, length)["gripper"][:, 0])


def test_language_is_one_task_string_per_step(dataset):
    for position, length in enumerate(LENGTHS):
        language = dataset.episode(position).language("annotation.human.action.task_description")
        assert language == [TASKS[position % 2]] * length


def test_extra_step_columns_and_episode_fields_are_available(dataset):
    episode = dataset.episode(2)
    np.testing.assert_allclose(episode.column("next.reward"), np.arange(4) / 10, rtol=1e-6)
    assert episode.extras["seed"] == 102
    assert episode.tasks == [TASKS[0]]


def test_frames_have_the_colours_that_were_encoded(dataset):
    for position, length in enumerate(LENGTHS):
        episode = dataset.episode(position)
        steps = [length - 1, 0, length // 2, length // 2]  # unsorted, repeated
        for camera_number, camera in enumerate(CAMERAS):
            frames = episode.frames(camera, steps)
            assert frames.dtype == np.uint8 and frames.shape == (4, 32, 32, 3)
            for frame, step in zip(frames, steps):
                error = np.abs(frame.astype(int) - frame_colour(position, camera_number, step).astype(int)).max()
                assert error <= COLOUR_TOLERANCE, (position, camera, step, error)


@pytest.mark.parametrize("codec", ["h264", "av1"])
def test_only_the_frames_needed_are_decoded(tmp_path, codec):
    root = make_dataset(tmp_path / "long", lengths=(40,), cameras=("image",), gop=4, codec=codec)
    dataset = LeRobotDataset(root)
    episode = dataset.episode(0)
    frame = episode.frames("image", [33])
    assert np.abs(frame[0].astype(int) - frame_colour(0, 0, 33).astype(int)).max() <= COLOUR_TOLERANCE
    assert 1 <= dataset.frames_decoded <= 4  # from the keyframe at or before step 33, never all 40
    before = dataset.frames_decoded
    episode.frames("image", [2])
    assert dataset.frames_decoded - before <= 3  # stops right after step 2


def test_v3_episodes_in_a_shared_file_get_their_own_rows_and_frames(datasets):
    root = datasets[("h264", "v3.0")]
    assert len(list((root / "data").rglob("*.parquet"))) == 2
    dataset = LeRobotDataset(root)
    assert dataset.codebase_version == "v3.0"
    second = dataset.episode(1)  # rows 6..14 of data/chunk-000/file-000.parquet, frames 6..14 of the mp4
    assert second.record.videos["observation.images.image"].from_timestamp == pytest.approx(0.6)
    np.testing.assert_array_equal(second.actions("arm"), expected_actions(1, 9)["arm"])
    frame = second.frames("wrist_image", [0])[0]
    assert np.abs(frame.astype(int) - frame_colour(1, 1, 0).astype(int)).max() <= COLOUR_TOLERANCE


def test_episode_by_index_uses_the_episode_index_field(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    episodes = (root / "meta" / "episodes.jsonl").read_text().splitlines()
    (root / "meta" / "episodes.jsonl").write_text("\n".join([episodes[2], episodes[0], episodes[1]]) + "\n")
    dataset = LeRobotDataset(root)
    assert dataset.episode_indices == [2, 0, 1]
    assert dataset.episode(0).episode_index == 2
    np.testing.assert_array_equal(dataset.episode_by_index(1).actions("arm"), expected_actions(1, 9)["arm"])


def test_stats_are_sliced_per_group(dataset):
    stats = dataset.group_stats("state", "gripper")
    all_states = np.concatenate([expected_states(e, n)["gripper"] for e, n in enumerate(LENGTHS)])
    np.testing.assert_allclose(stats["mean"], all_states.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats["q99"], np.quantile(all_states, 0.99, axis=0), rtol=1e-5)
    assert dataset.relative_stats is None


def test_relative_stats_are_loaded_without_fingerprints(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    (root / "meta" / "relative_stats.json").write_text(json.dumps({"__fingerprints__": {"arm": "sha256:0"}, "arm": {"mean": [[0.0]]}}))
    assert LeRobotDataset(root).relative_stats == {"arm": {"mean": [[0.0]]}}


def test_annotation_column_with_task_indices_is_resolved(tmp_path):
    root = make_dataset(tmp_path / "annot", lengths=(3, 2), language_column="annotation.human.action.task_description")
    dataset = LeRobotDataset(root)
    assert dataset.modality.language["annotation.human.action.task_description"].original_key == "annotation.human.action.task_description"
    assert dataset.episode(1).language("annotation.human.action.task_description") == [TASKS[1]] * 2


def test_out_of_range_positions_and_steps_raise(dataset):
    with pytest.raises(IndexError, match="position 3"):
        dataset.episode(3)
    with pytest.raises(IndexError, match="episode_index 7"):
        dataset.episode_by_index(7)
    with pytest.raises(IndexError, match=r"\[6\]"):
        dataset.episode(0).frames("image", [6])
    with pytest.raises(KeyError, match="nope"):
        dataset.episode(0).states("nope")


@pytest.mark.parametrize("call, position", [("episode", 1.7), ("episode_by_index", 1.7), ("episode_by_index", True),
                                            ("episode_extras", 1.5), ("episode_data_path", 0.9)])
def test_a_float_or_bool_episode_position_is_refused_by_every_position_method(datasets, call, position):
    dataset = LeRobotDataset(datasets[("h264", "v2.1")])  # int() made 1.7 episode 1, 0.9 episode 0 and True episode 1
    with pytest.raises(TypeError, match=rf"must be an int, got {position!r}"):
        getattr(dataset, call)(position)


# -- malformed datasets -------------------------------------------------------------------------


def test_missing_info_json_names_the_file(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    (root / "meta" / "info.json").unlink()
    with pytest.raises(DatasetFileNotFoundError, match="info.json"):
        LeRobotDataset(root)


def test_missing_modality_json_is_an_error(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    (root / "meta" / "modality.json").unlink()
    with pytest.raises(FileNotFoundError, match="modality.json"):
        LeRobotDataset(root)


def test_invalid_json_line_in_episodes_names_file_and_line(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    lines = (root / "meta" / "episodes.jsonl").read_text().splitlines()
    lines.insert(2, "{not json")  # among the episodes info.json counts (a bad line after them ends the list)
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"episodes.jsonl:3"):
        LeRobotDataset(root)


def test_episode_without_length_names_the_field(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    (root / "meta" / "episodes.jsonl").write_text('{"episode_index": 0, "tasks": []}\n')
    with pytest.raises(DatasetError, match="'length'"):
        LeRobotDataset(root)


def test_info_without_data_path_names_the_field(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    info = json.loads((root / "meta" / "info.json").read_text())
    del info["data_path"]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="data_path"):
        LeRobotDataset(root)


def test_modality_slice_beyond_the_column_names_key_and_column(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    modality = json.loads((root / "meta" / "modality.json").read_text())
    modality["state"]["gripper"] = {"start": 3, "end": 9}
    (root / "meta" / "modality.json").write_text(json.dumps(modality))
    with pytest.raises(DatasetError, match=r"observation.state.*'gripper'"):
        LeRobotDataset(root).episode(0).states("gripper")


def test_modality_entry_without_end_is_an_error(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    modality = json.loads((root / "meta" / "modality.json").read_text())
    modality["action"]["arm"] = {"start": 0}
    (root / "meta" / "modality.json").write_text(json.dumps(modality))
    with pytest.raises(DatasetError, match=r"action.arm"):
        LeRobotDataset(root)


def test_video_key_missing_from_features_is_an_error(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    info = json.loads((root / "meta" / "info.json").read_text())
    del info["features"]["observation.images.wrist_image"]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="observation.images.wrist_image"):
        LeRobotDataset(root)


def test_missing_parquet_file_is_reported_when_the_episode_loads(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    (root / "data" / "chunk-000" / "episode_000001.parquet").unlink()
    dataset = LeRobotDataset(root)
    with pytest.raises(FileNotFoundError, match="episode_000001.parquet"):
        dataset.episode(1)


def test_parquet_shorter_than_the_episode_length_is_an_error(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    path = root / "data" / "chunk-000" / "episode_000000.parquet"
    pq.write_table(pq.read_table(path).slice(0, 3), path)
    with pytest.raises(DatasetError, match="3 rows.*length 6"):
        LeRobotDataset(root).episode(0)


def test_corrupt_parquet_is_a_dataset_error(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    (root / "data" / "chunk-000" / "episode_000000.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="episode_000000.parquet"):
        LeRobotDataset(root).episode(0)


def test_unknown_task_index_is_an_error(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    (root / "meta" / "tasks.jsonl").write_text('{"task_index": 1, "task": "only one"}\n')
    with pytest.raises(DatasetError, match=r"task indices \[0\]"):
        LeRobotDataset(root).episode(0).language("annotation.human.action.task_description")


def test_missing_or_short_video_is_an_error_not_a_black_frame(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    (root / "videos" / "chunk-000" / "observation.images.image" / "episode_000000.mp4").unlink()
    shutil.copy(
        root / "videos" / "chunk-000" / "observation.images.wrist_image" / "episode_000002.mp4",  # 4 frames
        root / "videos" / "chunk-000" / "observation.images.wrist_image" / "episode_000001.mp4",
    )
    dataset = LeRobotDataset(root)
    with pytest.raises(FileNotFoundError, match="episode_000000.mp4"):
        dataset.episode(0).frames("image", [0])
    with pytest.raises(DatasetError, match=r"the video holds 4 frames and the episode has \d+ steps"):
        dataset.episode(1).frames("wrist_image", [0])  # refused before any frame: it is another episode's video


def test_missing_stats_json_is_reported_on_use(datasets, tmp_path):
    root = _copy(datasets, tmp_path)
    (root / "meta" / "stats.json").unlink()
    dataset = LeRobotDataset(root)
    with pytest.raises(FileNotFoundError, match="stats.json"):
        dataset.stats


def test_v3_episode_table_without_file_index_names_the_column(datasets, tmp_path):
    root = _copy(datasets, tmp_path, ("h264", "v3.0"))
    path = next((root / "meta" / "episodes").rglob("*.parquet"))
    table = pq.read_table(path)
    pq.write_table(table.drop(["data/file_index"]), path)
    with pytest.raises(DatasetError, match="data/file_index"):
        LeRobotDataset(root)


def test_a_v3_data_file_without_an_index_column_reads_each_episode_by_its_episode_index(datasets, tmp_path):
    """Without `index` the reader finds an episode's rows in a shared file by `episode_index` (a row search): on
    pyarrow 16 that search aborted the whole process (a chunked filter mask), so the floor is 17 and the search
    passes one chunk; this test is in the lower-bound run (tests/e2e/test_min_versions.py)."""
    root = _copy(datasets, tmp_path, ("h264", "v3.0"))
    expected = {index: LeRobotDataset(root).episode(index).actions("arm") for index in range(len(LENGTHS))}
    for path in (root / "data").rglob("*.parquet"):
        pq.write_table(pq.read_table(path).drop(["index"]), path)
    for index, actions in expected.items():
        np.testing.assert_array_equal(LeRobotDataset(root).episode(index).actions("arm"), actions)


def test_v3_tasks_parquet_is_required(datasets, tmp_path):
    root = _copy(datasets, tmp_path, ("h264", "v3.0"))
    (root / "meta" / "tasks.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="tasks.parquet"):
        LeRobotDataset(root)


@pytest.mark.parametrize("name", ["meta/episodes/chunk-000/file-000.parquet", "meta/tasks.parquet"])
def test_a_v3_meta_parquet_cut_short_is_a_dataset_error_naming_the_file(datasets, tmp_path, name):
    """An interrupted copy leaves a meta parquet without its footer: pyarrow's own error named no file."""
    root = _copy(datasets, tmp_path, ("h264", "v3.0"))
    path = root / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}: cannot read parquet \("):
        LeRobotDataset(root)


def test_v3_tasks_written_by_pandas_index_are_read(datasets, tmp_path):
    root = _copy(datasets, tmp_path, ("h264", "v3.0"))
    table = pa.table({"task_index": pa.array([0, 1], pa.int64()), "__index_level_0__": list(TASKS)})
    pq.write_table(table, root / "meta" / "tasks.parquet")
    assert LeRobotDataset(root).tasks == {0: TASKS[0], 1: TASKS[1]}


@pytest.mark.parametrize("layout, per_file", [("v2.1", None), ("v3.0", 2)])
def test_check_data_files_reads_every_footer_and_names_the_broken_file(tmp_path, layout, per_file):
    root = make_dataset(tmp_path / "ds", lengths=(6, 9, 4), layout=layout, episodes_per_file=per_file)
    dataset = LeRobotDataset(root)
    dataset.check_data_files()  # a sound dataset passes
    last = dataset._records[-1].data_path  # the file of the last episode (shared in v3.0)

    table = pq.read_table(last)
    pq.write_table(table.slice(0, 2), last)  # too few rows for its episodes
    with pytest.raises(DatasetError, match=f"{last}: 2 rows, fewer than the 4 the episode list gives episode 2$"):
        LeRobotDataset(root).check_data_files()

    last.write_bytes(last.read_bytes()[:40])  # truncated: no footer
    with pytest.raises(DatasetError, match=f"{last}: cannot read parquet \\(episode 2\\)"):
        LeRobotDataset(root).check_data_files()

    last.unlink()
    with pytest.raises(DatasetFileNotFoundError, match=f"data file of episode 2 not found: {last}"):
        LeRobotDataset(root).check_data_files()


def test_check_data_files_refuses_a_modality_slice_past_its_columns_declared_width_naming_both_files(tmp_path):
    # info.json's action is 4 wide and modality.json read 'gripper' from [3:5]: a replay started ("Server is ready")
    # and then refused every episode's reset in the middle of an evaluation.
    root = make_dataset(tmp_path / "ds", lengths=(6, 9, 4))
    slice_past_the_data(root)
    modality_path = root / "meta" / "modality.json"
    with pytest.raises(DatasetError) as refused:
        LeRobotDataset(root).check_data_files()
    assert str(refused.value) == (
        f"{modality_path}: action key 'gripper' reads [3:5] of column 'action', which {root / 'meta' / 'info.json'} "
        "declares 4 values wide (features.action.shape [4]); expected a slice within [0:4]")


@pytest.mark.parametrize("shape", [None, [5]], ids=["no declared shape", "declared wider than the data"])
def test_check_data_files_refuses_a_slice_past_the_width_of_the_first_files_first_row(tmp_path, shape):
    # The replay started and then refused every episode's reset: info.json said nothing (or 5) of the 4-wide column.
    root = make_dataset(tmp_path / "ds", lengths=(6, 9, 4))
    slice_past_the_data(root, shape)
    first = root / "data" / "chunk-000" / "episode_000000.parquet"
    with pytest.raises(DatasetError) as refused:
        LeRobotDataset(root).check_data_files()
    assert str(refused.value) == (
        f"{first}: action key 'gripper' (meta/modality.json) reads [3:5] of column 'action', which holds 4 values per "
        f"step (its first row in {first}; episode 0); expected a slice within [0:4]")


def test_check_data_files_refuses_a_slice_past_a_fixed_size_list_columns_width_naming_the_file(tmp_path):
    root = make_dataset(tmp_path / "ds", lengths=(6, 9, 4))
    slice_past_the_data(root, None)
    for path in sorted((root / "data").rglob("*.parquet")):  # the width in the schema, as LeRobot v3.0 writes it
        table = pq.read_table(path)
        fixed = table.column("action").cast(pa.list_(pa.float32(), 4))
        pq.write_table(table.set_column(table.schema.get_field_index("action"), "action", fixed), path)
    with pytest.raises(DatasetError, match=r"episode_000000.parquet: action key 'gripper' \(meta/modality.json\) reads "
                       r"\[3:5\] of column 'action', which holds 4 values per step \(its parquet schema: "
                       r"fixed_size_list of 4; episode 0\); expected a slice within \[0:4\]"):
        LeRobotDataset(root).check_data_files()


def test_check_data_files_passes_slices_within_the_datas_width_without_a_declared_shape(tmp_path):
    root = make_dataset(tmp_path / "ds", lengths=(6, 9, 4))
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    del info["features"]["action"]["shape"]
    info_path.write_text(json.dumps(info))
    LeRobotDataset(root).check_data_files()



def test_an_episode_whose_column_is_wider_than_the_first_files_is_refused_without_a_declared_shape(tmp_path):
    """An extra joint before the gripper in episode 1 (a dataset merged from two robot setups): modality.json's slices
    of its column read the extra joint as the gripper without a word, info.json declaring no width to check."""
    root = make_dataset(tmp_path / "ds", lengths=(6, 9, 4))
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    del info["features"]["action"]["shape"]
    info_path.write_text(json.dumps(info))
    path = root / "data" / "chunk-000" / "episode_000001.parquet"
    table = pq.read_table(path)
    wider = pa.array([row[:3] + [-7.0] + row[3:] for row in table.column("action").to_pylist()], pa.list_(pa.float32()))
    pq.write_table(table.set_column(table.column_names.index("action"), "action", wider), path)
    dataset = LeRobotDataset(root)
    dataset.check_data_files()
    first = root / "data" / "chunk-000" / "episode_000000.parquet"
    with pytest.raises(DatasetError, match=rf"episode_000001\.parquet: column 'action' of episode 1 has 5 values per "
                                           rf"step and the first data file, {re.escape(str(first))}, has 4"):
        dataset.episode(1).action_array()
    assert dataset.episode(2).action_array().shape == (4, 4)

def constant_dataset(root, value: float):
    from gr00t_eval.dataset import DatasetWriter

    with DatasetWriter(root, fps=10) as writer:
        writer.add_episode(frames={"image": np.zeros((5, 16, 16, 3), np.uint8)},
                           states={"arm": np.full((5, 2), value, np.float32)},
                           actions={"arm": np.full((5, 2), value, np.float32)}, task="t")
    return root


@pytest.fixture
def home_dataset(tmp_path, monkeypatch):
    """$HOME/ds, a dataset of actions 7.0; the working directory is tmp_path."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    constant_dataset(tmp_path / "home" / "ds", 7.0)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home" / "ds"


def test_a_dataset_in_a_folder_literally_named_tilde_is_read_whole_from_it(tmp_path, home_dataset):
    """pyarrow expands '~' even in a relative path: ./~/ds had its meta/ read from the folder named and its parquet
    rows from $HOME/ds, another dataset."""
    (tmp_path / "~").mkdir()
    constant_dataset(tmp_path / "made", 1.0).rename(tmp_path / "~" / "ds")
    assert LeRobotDataset("./~/ds").episode(0).actions("arm").tolist() == [[1.0, 1.0]] * 5


def test_a_dataset_written_to_a_folder_literally_named_tilde_lands_whole_in_it(tmp_path, home_dataset):
    before = sorted(home_dataset.rglob("*"))
    constant_dataset("./~/ds", 1.0)
    assert sorted(home_dataset.rglob("*")) == before
    assert LeRobotDataset(tmp_path / "~" / "ds").episode(0).actions("arm").tolist() == [[1.0, 1.0]] * 5


def test_a_dataset_path_starting_with_tilde_is_read_from_the_home_folder_not_a_stale_tilde_folder(tmp_path,
                                                                                                  home_dataset):
    """DatasetWriter('~/ds') writes $HOME/ds; LeRobotDataset('~/ds') read ./~/ds instead, silently another dataset."""
    (tmp_path / "~").mkdir()
    constant_dataset(tmp_path / "made", 1.0).rename(tmp_path / "~" / "ds")
    dataset = LeRobotDataset("~/ds")
    assert dataset.root == home_dataset
    assert dataset.episode(0).actions("arm").tolist() == [[7.0, 7.0]] * 5


def test_a_dataset_named_through_dotdot_reads_its_episodes_after_the_start_folder_is_renamed(tmp_path, monkeypatch):
    """`--dataset-path ../ds` from run/: the root kept run/../ds, which no longer resolves once run/ is renamed, and
    every episode read after that was 'not found'. Named as given in messages, read through the folder found at
    start."""
    make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=CAMERAS)
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    dataset = LeRobotDataset("../ds")
    (tmp_path / "run").rename(tmp_path / "run.old")
    np.testing.assert_array_equal(dataset.episode(1).actions("arm"), expected_actions(1, LENGTHS[1])["arm"])
    assert dataset.episode(2).frames(CAMERAS[0], [0]).shape[0] == 1
