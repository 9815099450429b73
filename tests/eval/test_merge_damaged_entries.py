"""`gr00t-eval merge` refuses a shard results file that is valid JSON but not what a run writes: per-episode entries
outside that shard's episodes or the plan's tasks, and missing or mistyped fields, each named with the file. Real
shards on a loopback PolicyServer, the real CLI."""

from __future__ import annotations

import json
import shutil

import pytest

from eval.scale_fixtures import two_shards
from gr00t_eval import cli


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A folder holding both shards of a 4-episode walkto/fast run: shard 0/2 ran episodes 0-1, shard 1/2 2-3."""
    return two_shards(tmp_path_factory.mktemp("merge_damaged") / "shards")


def merge_with_edited_shard1(shards, tmp_path, edit):
    """Merge shard 0 as written with shard 1 after `edit(results)`; the exit status and the merged file (or None)."""
    folder = tmp_path / "edited"
    folder.mkdir()
    shutil.copy(shards / "results_shard0of2.json", folder)
    results = json.loads((shards / "results_shard1of2.json").read_text())
    edit(results)
    (folder / "results_shard1of2.json").write_text(json.dumps(results))
    merged = tmp_path / "merged.json"
    code = cli.main(["merge", str(folder), "--output", str(merged)])
    return code, json.loads(merged.read_text()) if merged.exists() else None


def add_entry(**changes):
    def edit(results):
        results["per_episode"].append({**results["per_episode"][0], **changes})
    return edit


@pytest.mark.parametrize("episode_index", [99, -1, 0], ids=["past-n-episodes", "negative", "another-shards"])
def test_an_entry_outside_its_shards_episodes_is_refused_naming_the_file_and_the_episode(shards, tmp_path, capsys,
                                                                                          episode_index):
    code, merged = merge_with_edited_shard1(shards, tmp_path, add_entry(episode_index=episode_index))
    err = capsys.readouterr().err
    assert code == 2 and merged is None
    assert "results_shard1of2.json: per_episode has episode" in err
    assert f"episode {episode_index} of walkto/fast, which is not in shard 1/2's episodes (walkto/fast 2..3)" in err


def test_an_entry_of_a_task_not_in_the_plan_is_refused_not_dropped(shards, tmp_path, capsys):
    code, merged = merge_with_edited_shard1(shards, tmp_path, add_entry(task="walkto/slow", success=False))
    err = capsys.readouterr().err
    assert code == 2 and merged is None
    assert "results_shard1of2.json: per_episode has episode 2 of walkto/slow, a task not in the plan (tasks walkto/fast)" in err


def test_an_episode_twice_in_one_shard_file_is_refused(shards, tmp_path, capsys):
    code, merged = merge_with_edited_shard1(shards, tmp_path, add_entry())
    assert code == 2 and merged is None
    assert "episode 2 of walkto/fast is in both" in capsys.readouterr().err


def _pop_entry_key(key):
    return lambda results: results["per_episode"][0].pop(key)


@pytest.mark.parametrize("edit, named", [
    (_pop_entry_key("task"), "per_episode[0] has task None, expected the env name it ran"),
    (_pop_entry_key("episode_index"), "per_episode[0] (walkto/fast) has episode_index None, expected a whole number"),
    (lambda r: r["per_episode"].append("x"), "per_episode[2] is 'x', expected an object with task and episode_index"),
    (lambda r: r.update(per_episode=None), "'per_episode' is null, expected a list"),
    (lambda r: r.update(per_task=[]), "'per_task' is [], expected an object"),
    (lambda r: r["per_task"].update({"walkto/fast": 3}), "per_task['walkto/fast'] is 3, expected an object"),
    (lambda r: r["plan"].pop("n_episodes"), "'plan' has no 'n_episodes'"),
    (lambda r: r["plan"].update(tasks="walkto/fast"), "'plan.tasks' is 'walkto/fast', expected a list of [env_name, group]"),
    (lambda r: r["plan"].update(shard=[2, 2]), "'plan.shard' is [2, 2], expected null or [index, count]"),
    (lambda r: r.update(policy="ConstantPolicy"), "'policy' is \"ConstantPolicy\", expected an object or null"),
], ids=["entry-without-task", "entry-without-episode-index", "entry-not-an-object", "per-episode-null",
        "per-task-a-list", "per-task-entry-not-an-object", "plan-without-n-episodes", "plan-tasks-a-string",
        "plan-shard-out-of-range", "policy-a-string"])
def test_a_damaged_shard_file_is_refused_naming_the_file_and_the_field(shards, tmp_path, capsys, edit, named):
    code, merged = merge_with_edited_shard1(shards, tmp_path, edit)
    err = capsys.readouterr().err
    assert code == 2 and merged is None
    assert f"results_shard1of2.json: {named}" in err
    assert "Traceback" not in err and "KeyError" not in err and "TypeError" not in err
