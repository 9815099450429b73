"""Datasets as merges and third-party converters leave them: task lists concatenated, a v3.0 `tasks` cell holding one
string, scalar columns stored as lists of one, and JSON Lines strings holding Unicode line breaks. Each is read as
what it means or refused naming the file; none is read silently as something else. Real files, edited by hand."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eval.dataset_factory import TASKS, make_dataset
from gr00t_eval.dataset import DatasetError, LeRobotDataset

LANGUAGE = "annotation.human.action.task_description"
LENGTHS = (3, 4)


def _dataset(tmp_path, layout):
    return make_dataset(tmp_path / layout, lengths=LENGTHS, cameras=(), layout=layout, episodes_per_file=2)


def _write_tasks(root, layout, pairs):
    if layout == "v2.1":
        lines = [json.dumps({"task_index": index, "task": task}) + "\n" for index, task in pairs]
        (root / "meta" / "tasks.jsonl").write_text("".join(lines))
    else:
        table = pa.table({"task_index": pa.array([i for i, _ in pairs], pa.int64()), "task": [t for _, t in pairs]})
        pq.write_table(table, root / "meta" / "tasks.parquet")


def _edit_table(path, edit):
    pq.write_table(edit(pq.read_table(path)), path)


def _as_lists(*names):
    def edit(table):
        for name in names:
            column = table.column(name).combine_chunks()
            lists = pa.ListArray.from_arrays(pa.array(range(len(column) + 1), pa.int32()), column)
            table = table.set_column(table.column_names.index(name), name, lists)
        return table
    return edit


def _data_file(root, layout):
    name = "episode_000000.parquet" if layout == "v2.1" else "file-000.parquet"
    return root / "data" / "chunk-000" / name


# --- a task_index listed twice ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout, file", [("v2.1", "tasks.jsonl"), ("v3.0", "tasks.parquet")])
def test_a_task_index_listed_twice_with_two_tasks_is_refused_naming_the_file_the_index_and_both_tasks(tmp_path, layout,
                                                                                                       file):
    root = _dataset(tmp_path, layout)
    _write_tasks(root, layout, [(0, TASKS[0]), (1, TASKS[1]), (0, "wipe the table")])  # two task lists concatenated
    with pytest.raises(DatasetError, match=rf"{file}: task_index 0 is listed twice, as '{TASKS[0]}' and as 'wipe the table'"):
        LeRobotDataset(root).episode(0).language(LANGUAGE)


@pytest.mark.parametrize("layout", ["v2.1", "v3.0"])
def test_a_task_index_repeated_with_the_same_task_is_read(tmp_path, layout):
    root = _dataset(tmp_path, layout)
    _write_tasks(root, layout, [(0, TASKS[0]), (1, TASKS[1]), (0, TASKS[0])])
    assert LeRobotDataset(root).episode(0).language(LANGUAGE) == [TASKS[0]] * LENGTHS[0]


# --- a v3.0 tasks cell holding one string --------------------------------------------------------------------------


def _set_v3_tasks(root, cells, kind):
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    _edit_table(path, lambda t: t.set_column(t.column_names.index("tasks"), "tasks", pa.array(cells, kind)))


def test_a_v3_tasks_cell_holding_one_string_is_that_one_task_not_its_characters(tmp_path):
    root = _dataset(tmp_path, "v3.0")
    _set_v3_tasks(root, list(TASKS), pa.string())
    assert [episode.tasks for episode in LeRobotDataset(root)] == [[TASKS[0]], [TASKS[1]]]


def test_a_v3_tasks_cell_neither_a_list_nor_a_string_is_refused_naming_the_file_and_row(tmp_path):
    root = _dataset(tmp_path, "v3.0")
    _set_v3_tasks(root, [7, 8], pa.int64())
    with pytest.raises(DatasetError, match=r"file-000\.parquet \(row for position 0\): field 'tasks' must be a list of str, got 7"):
        LeRobotDataset(root)


# --- scalar columns stored as lists of one -------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["v2.1", "v3.0"])
@pytest.mark.parametrize("column", ["episode_index", "task_index", "index"])
def test_scalar_columns_stored_as_lists_of_one_are_read_as_the_scalars_they_are(tmp_path, layout, column):
    root = _dataset(tmp_path, layout)
    _edit_table(_data_file(root, layout), _as_lists(column))
    dataset = LeRobotDataset(root)
    assert dataset.episode(0).language(LANGUAGE) == [TASKS[0]] * LENGTHS[0]
    assert dataset.episode(1).language(LANGUAGE) == [TASKS[1]] * LENGTHS[1]
    assert dataset.episode(1).column(column).shape == (LENGTHS[1],)


def test_a_scalar_column_holding_lists_of_two_is_refused_naming_the_file_column_and_type(tmp_path):
    root = _dataset(tmp_path, "v2.1")

    def pairs(table):
        doubled = pa.array([[v, v] for v in table.column("episode_index").to_pylist()])
        return table.set_column(table.column_names.index("episode_index"), "episode_index", doubled)

    _edit_table(_data_file(root, "v2.1"), pairs)
    with pytest.raises(DatasetError, match=r"episode_000000\.parquet: column 'episode_index' holds lists \(list<\w+: "
                                           r"int64>\) not all one value long"):
        LeRobotDataset(root).episode(0)


# --- JSON Lines strings holding Unicode line breaks -----------------------------------------------------------------


@pytest.mark.parametrize("line_break", ["\u2028", "\u2029", "\u0085"])
def test_a_jsonl_task_holding_a_unicode_line_break_is_read_whole(tmp_path, line_break):
    root = _dataset(tmp_path, "v2.1")
    task = f"pick the cube{line_break}then place it in the bowl"
    rows = [{"task_index": 0, "task": task}, {"task_index": 1, "task": TASKS[1]}]
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows),
                                               encoding="utf-8")
    episodes = [json.loads(line) for line in (root / "meta" / "episodes.jsonl").read_text().splitlines()]
    for episode in episodes:  # the episode list names the same task
        episode["tasks"] = [task if t == TASKS[0] else t for t in episode["tasks"]]
    (root / "meta" / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    dataset = LeRobotDataset(root)
    assert dataset.tasks == {0: task, 1: TASKS[1]}
    assert dataset.episode(0).language(LANGUAGE)[0] == task
