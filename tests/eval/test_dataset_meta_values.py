"""Values in a dataset's meta files and language columns as converters write them: language as UTF-8 bytes (RLDS/TFDS
conversions) or as lists of one, a v3.0 tasks.parquet with null or non-text cells, a negative episode length. Each is
read as the text or number it means, or refused naming the file, column or field and row; never read as a Python repr
("b'pick up the can'", "None") or left to fail later. Real files written by DatasetWriter and edited by hand, a real
policy server on loopback, the real CLIs."""

from __future__ import annotations

import decimal
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eval.dataset_factory import TASKS, expected_actions, make_dataset
from gr00t_client import BasePolicy, ModalityConfig
from gr00t_eval import cli
from gr00t_eval.dataset import DatasetError, LeRobotDataset
from serving import running_server

LANGUAGE = "annotation.human.action.task_description"
LENGTHS = (3, 4)
INSTRUCTION = "pick up the can"


def _dataset(tmp_path, layout="v2.1"):
    return make_dataset(tmp_path / layout, lengths=LENGTHS, cameras=(), layout=layout)


def _data_file(root, episode):
    return root / "data" / "chunk-000" / f"episode_{episode:06d}.parquet"


def _with_language_column(root, cells, kind, name="language_instruction"):
    """Episode 0's data file with a language column `name` of `cells` per row, and modality.json's language key
    reading it."""
    path = _data_file(root, 0)
    table = pq.read_table(path)
    pq.write_table(table.append_column(name, pa.array([cells] * table.num_rows, kind)), path)
    modality = json.loads((root / "meta" / "modality.json").read_text())
    modality["annotation"] = {"human.action.task_description": {"original_key": name}}
    (root / "meta" / "modality.json").write_text(json.dumps(modality))
    return root


def _write_v3_tasks(root, indices, texts, index_kind=pa.int64(), text_kind=None):
    table = pa.table({"task_index": pa.array(indices, index_kind), "task": pa.array(texts, text_kind)})
    pq.write_table(table, root / "meta" / "tasks.parquet")


class RecordingPolicy(BasePolicy):
    """Answers the recorded actions of the episode it was reset to, one step per call, and keeps each observation."""

    def __init__(self):
        super().__init__(strict=True)
        self.episode, self.step, self.observations = 0, 0, []

    def get_modality_config(self):
        return {
            "state": ModalityConfig([0], ["arm", "gripper"]),
            "action": ModalityConfig([0], ["arm", "gripper"]),
            "language": ModalityConfig([0], [LANGUAGE]),
        }

    def reset(self, options=None):
        self.episode, self.step = options["episode_index"], options.get("step_index", 0)
        return {}

    def _get_action(self, observation, options=None):
        self.observations.append(observation)
        actions = expected_actions(self.episode, LENGTHS[self.episode])
        row = min(self.step, LENGTHS[self.episode] - 1)
        self.step += 1
        return {key: values[[row]][None] for key, values in actions.items()}, {}


# --- language as bytes, or as lists of one --------------------------------------------------------------------------


def test_open_loop_sends_a_binary_language_column_to_the_policy_as_its_utf8_text(tmp_path):
    root = _with_language_column(_dataset(tmp_path), INSTRUCTION.encode(), pa.binary())
    policy = RecordingPolicy()
    with running_server(policy) as server:
        code = cli.main(["open-loop", "--dataset-path", str(root), "--port", str(server.port), "--no-plots",
                         "--execution-horizon", "1", "--output-dir", str(tmp_path / "out"), "--traj-ids", "0"])
    assert code == 0
    assert [observation["language"][LANGUAGE] for observation in policy.observations] == [[[INSTRUCTION]]] * LENGTHS[0]


def test_a_language_column_of_lists_of_one_string_is_that_string(tmp_path):
    root = _with_language_column(_dataset(tmp_path), [INSTRUCTION], pa.list_(pa.string()))
    assert LeRobotDataset(root).episode(0).language(LANGUAGE) == [INSTRUCTION] * LENGTHS[0]


def test_a_binary_task_in_a_v3_tasks_parquet_is_its_utf8_text(tmp_path):
    root = _dataset(tmp_path, "v3.0")
    _write_v3_tasks(root, [0, 1], [TASKS[0].encode(), TASKS[1].encode()], text_kind=pa.binary())
    dataset = LeRobotDataset(root)
    assert dataset.tasks == {0: TASKS[0], 1: TASKS[1]}
    assert dataset.episode(0).language(LANGUAGE) == [TASKS[0]] * LENGTHS[0]


def test_language_bytes_that_are_not_utf8_are_refused_naming_the_file_column_and_row(tmp_path):
    root = _with_language_column(_dataset(tmp_path), b"pick up the \xff can", pa.binary())
    with pytest.raises(DatasetError, match=r"episode_000000\.parquet: column 'language_instruction' of episode 0, "
                                           r"row 0, holds b'pick up the \\xff can', which is not UTF-8 text"):
        LeRobotDataset(root).episode(0).language(LANGUAGE)


@pytest.mark.parametrize("cell, kind, shown", [
    ({"text": INSTRUCTION}, pa.struct([("text", pa.string())]), "{'text': 'pick up the can'}"),
    (decimal.Decimal("1.5"), pa.decimal128(3, 1), "Decimal('1.5')"),
])
def test_a_language_column_of_neither_text_nor_task_indices_is_refused_naming_the_file_column_and_row(tmp_path, cell,
                                                                                                     kind, shown):
    root = _with_language_column(_dataset(tmp_path), cell, kind)
    with pytest.raises(DatasetError, match=r"episode_000000\.parquet: column 'language_instruction' of episode 0, "
                                           r"row 0, holds (.*); expected text") as caught:
        LeRobotDataset(root).episode(0).language(LANGUAGE)
    assert shown in str(caught.value)


def test_a_language_column_of_lists_of_two_strings_is_refused_naming_the_file_and_column(tmp_path):
    root = _with_language_column(_dataset(tmp_path), [INSTRUCTION, "then stop"], pa.list_(pa.string()))
    with pytest.raises(DatasetError, match=r"episode_000000\.parquet: column 'language_instruction' of episode 0 holds "
                                           r"2 values per row; a language column holds one task index or string "
                                           r"per row"):
        LeRobotDataset(root).episode(0).language(LANGUAGE)


# --- task indices stored as lists of one ----------------------------------------------------------------------------


def test_a_language_column_of_task_indices_stored_as_lists_of_one_gives_their_tasks(tmp_path):
    root = _dataset(tmp_path)
    for episode in range(len(LENGTHS)):  # GR00T's default: the column named like the key, as a shape-[1] column
        path = _data_file(root, episode)
        table = pq.read_table(path)
        indices = [[v] for v in table.column("task_index").to_pylist()]
        pq.write_table(table.append_column(LANGUAGE, pa.array(indices, pa.list_(pa.int64()))), path)
    modality = json.loads((root / "meta" / "modality.json").read_text())
    modality["annotation"] = {"human.action.task_description": {}}
    (root / "meta" / "modality.json").write_text(json.dumps(modality))
    dataset = LeRobotDataset(root)
    assert dataset.episode(1).language(LANGUAGE) == [TASKS[1]] * LENGTHS[1]


def test_a_language_column_of_task_indices_stored_as_lists_of_two_is_refused_naming_the_file_and_column(tmp_path):
    root = _with_language_column(_dataset(tmp_path), [0, 1], pa.list_(pa.int64()))
    with pytest.raises(DatasetError, match=r"episode_000000\.parquet: column 'language_instruction' of episode 0 holds "
                                           r"2 values per row"):
        LeRobotDataset(root).episode(0).language(LANGUAGE)


# --- tasks.parquet cells --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("texts, kind, shown", [([None, TASKS[1]], pa.string(), "null"), ([5, 6], pa.int64(), "5")])
def test_a_v3_task_that_is_not_text_is_refused_naming_tasks_parquet_and_the_row(tmp_path, texts, kind, shown):
    root = _dataset(tmp_path, "v3.0")
    _write_v3_tasks(root, [0, 1], texts, text_kind=kind)
    with pytest.raises(DatasetError, match=rf"tasks\.parquet \(row 0\): column 'task' holds {shown}; expected text"):
        LeRobotDataset(root)


@pytest.mark.parametrize("index, kind, shown", [(None, pa.int64(), "null"), (1.5, pa.float64(), "1.5")])
def test_a_v3_task_index_that_is_not_an_integer_is_refused_naming_tasks_parquet_and_the_row(tmp_path, index, kind,
                                                                                             shown):
    root = _dataset(tmp_path, "v3.0")
    _write_v3_tasks(root, [0, index], list(TASKS), index_kind=kind)
    with pytest.raises(DatasetError, match=rf"tasks\.parquet \(row 1\): column 'task_index' holds {shown}; expected an "
                                           r"integer task index"):
        LeRobotDataset(root)


def test_serve_refuses_a_null_task_index_with_one_line_naming_tasks_parquet(tmp_path, capsys):
    from gr00t_server.cli import main

    root = _dataset(tmp_path, "v3.0")
    _write_v3_tasks(root, [0, None], list(TASKS))
    assert main(["serve", "--dataset-path", str(root), "--host", "127.0.0.1", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "gr00t-server serve: error:" in err and "tasks.parquet (row 1): column 'task_index' holds null" in err
    assert "Traceback" not in err


# --- episode lengths ------------------------------------------------------------------------------------------------


def test_a_negative_v2_episode_length_is_refused_at_open_naming_the_episodes_file_and_field(tmp_path):
    root = _dataset(tmp_path)
    path = root / "meta" / "episodes.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["length"] = -1
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DatasetError, match=r"episodes\.jsonl \(line for position 1\): field 'length' must be >= 0 "
                                           r"\(the episode's number of rows\), got -1"):
        LeRobotDataset(root)


def test_a_negative_v3_episode_length_is_refused_at_open_naming_the_episodes_file_and_field(tmp_path):
    root = _dataset(tmp_path, "v3.0")
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path)
    lengths = pa.array([LENGTHS[0], -1], table.schema.field("length").type)
    pq.write_table(table.set_column(table.column_names.index("length"), "length", lengths), path)
    with pytest.raises(DatasetError, match=r"file-000\.parquet \(row for position 1\): field 'length' must be >= 0"):
        LeRobotDataset(root)


def test_open_loop_refuses_a_negative_episode_length_before_querying_naming_the_episodes_file_and_field(tmp_path,
                                                                                                       capsys):
    root = _dataset(tmp_path)
    path = root / "meta" / "episodes.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["length"] = -1
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    policy = RecordingPolicy()
    with running_server(policy) as server:
        code = cli.main(["open-loop", "--dataset-path", str(root), "--port", str(server.port), "--no-plots",
                         "--execution-horizon", "1", "--output-dir", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2 and policy.observations == []
    assert "episodes.jsonl (line for position 1): field 'length' must be >= 0" in captured.out + captured.err


def test_a_v3_episode_rows_tasks_cell_of_bytes_is_its_text_and_one_of_null_is_refused():
    """The episode list's `tasks` cell: UTF-8 bytes were kept as their repr ("b'pick'"), a null item as "None"."""
    from gr00t_eval.dataset.meta import _v3_tasks

    assert _v3_tasks([b"pick the can", "place it"], "episodes.parquet (row 0)") == ("pick the can", "place it")
    assert _v3_tasks(b"pick the can", "episodes.parquet (row 0)") == ("pick the can",)
    with pytest.raises(DatasetError, match=r"episodes.parquet \(row 0\): field 'tasks' item 1 holds null; expected text"):
        _v3_tasks(["pick the can", None], "episodes.parquet (row 0)")


@pytest.mark.parametrize("layout, task_file, episode_list", [("v2.1", "tasks.jsonl", "episodes.jsonl"),
                                                             ("v3.0", "tasks.parquet", "episodes/")])
def test_a_task_index_naming_a_task_the_episode_list_does_not_give_the_episode_is_refused_naming_both(tmp_path, layout,
                                                                                                     task_file,
                                                                                                     episode_list):
    """The task list's two tasks swapped: each episode was served the other's instruction without a word."""
    root = _dataset(tmp_path, layout)
    if layout == "v3.0":
        _write_v3_tasks(root, [0, 1], [TASKS[1], TASKS[0]])
    else:
        (root / "meta" / "tasks.jsonl").write_text("".join(
            json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate([TASKS[1], TASKS[0]])))
    with pytest.raises(DatasetError, match=rf"column 'task_index' of episode 1 holds task index 1, which "
                                           rf"meta/{task_file} names '{TASKS[0]}', and meta/{episode_list} gives the "
                                           rf"episode the tasks \['{TASKS[1]}'\]; expected a task of the episode's own"):
        LeRobotDataset(root).episode(1).language(LANGUAGE)


def declare_version(root, version):
    """Set meta/info.json's codebase_version to `version` (None: remove the field, which reads as v2.1)."""
    info = json.loads((root / "meta" / "info.json").read_text())
    info.pop("codebase_version")
    if version is not None:
        info["codebase_version"] = version
    (root / "meta" / "info.json").write_text(json.dumps(info))


@pytest.mark.parametrize("version, said", [("v2.1", "says codebase_version 'v2.1'"),
                                           (None, "has no codebase_version, which reads as v2.1")],
                         ids=["declared v2.1", "no version"])
def test_a_v3_folder_declared_v2_is_refused_naming_codebase_version_and_the_v3_files_found(tmp_path, version, said):
    """It was refused over 'tasks file not found: meta/tasks.jsonl', naming neither the version nor the files there."""
    root = make_dataset(tmp_path / "ds", lengths=(2, 3), layout="v3.0", cameras=())
    declare_version(root, version)
    with pytest.raises(DatasetError, match=rf"meta/info\.json {said}, but .* has the LeRobot v3\.0 files "
                                           r"meta/tasks\.parquet, meta/episodes/chunk-000/file-000\.parquet .*no "
                                           r"meta/tasks\.jsonl, meta/episodes\.jsonl.*set codebase_version to 'v3\.0'"):
        LeRobotDataset(root)


def test_a_v2_folder_declared_v3_is_refused_naming_codebase_version_and_the_v2_files_found(tmp_path):
    root = make_dataset(tmp_path / "ds", lengths=(2, 3), cameras=())
    declare_version(root, "v3.0")
    with pytest.raises(DatasetError, match=r"meta/info\.json says codebase_version 'v3\.0', but .* has the LeRobot "
                                           r"v2\.1 files meta/tasks\.jsonl, meta/episodes\.jsonl .*no "
                                           r"meta/tasks\.parquet, "
                                           r"meta/episodes/chunk-\*/file-\*\.parquet.*set codebase_version to 'v2\.1'"):
        LeRobotDataset(root)
