"""`gr00t-eval merge --output`: --overwrite replaces an earlier merge or a rollout results file, never a run's own file
(episode log, run or claim file) nor a file that is no results; and never the eval_info.json it writes beside its
output. Real shards on a loopback PolicyServer, the real CLI."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from eval.scale_fixtures import two_shards
from gr00t_eval import cli


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A folder holding both shards of a 4-episode run."""
    return two_shards(tmp_path_factory.mktemp("merge_output_kinds") / "shards")


@pytest.mark.parametrize("name, what", [("episodes_shard0of2.jsonl", "a run's episode log"),
                                        ("run_shard1of2.json", "a run's run or claim file")])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_shards_episode_log_or_run_file_is_never_replaced(shards, capsys, name, what, overwrite):
    target = shards / name
    before = target.read_bytes()
    assert cli.main(["merge", str(shards / "results_shard0of2.json"), str(shards / "results_shard1of2.json"),
                     "--output", str(target), *overwrite]) == 2
    err = capsys.readouterr().err
    assert f"--output {target} exists and is {what}" in err and "merge never replaces such a file" in err
    assert "pass --overwrite" not in err  # it would be refused as well
    assert target.read_bytes() == before
    assert not (shards / "eval_info.json").exists()


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_file_that_is_no_results_is_never_replaced(shards, tmp_path, capsys, overwrite):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    assert cli.main(["merge", str(shards), "--output", str(notes), *overwrite]) == 2
    err = capsys.readouterr().err
    assert f"--output {notes} exists and is not a results file" in err and "pass --overwrite" not in err
    assert notes.read_text() == "my notes\n"


def test_a_rollout_results_file_no_run_keeps_is_replaced_only_with_overwrite(shards, tmp_path, capsys):
    final = tmp_path / "final.json"
    shutil.copy(shards / "results_shard0of2.json", final)  # a copy of one shard's results, away from its run
    assert cli.main(["merge", str(shards), "--output", str(final)]) == 2
    assert "not the output of an earlier merge; name another file, or pass --overwrite" in capsys.readouterr().err
    assert cli.main(["merge", str(shards), "--output", str(final), "--overwrite"]) == 0
    assert [e["episode_index"] for e in json.loads(final.read_text())["per_episode"]] == [0, 1, 2, 3]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_an_output_named_eval_info_is_refused_before_anything_is_written(shards, tmp_path, capsys, overwrite):
    output = tmp_path / "merged" / "eval_info.json"
    output.parent.mkdir()
    assert cli.main(["merge", str(shards), "--output", str(output), *overwrite]) == 2
    err = capsys.readouterr().err
    assert f"--output {output} is the eval_info.json the merge writes beside its results file" in err
    assert f"name --output {output.parent / 'results.json'}" in err
    assert list(output.parent.iterdir()) == []


@pytest.mark.skipif(os.name == "nt", reason="symbolic links")
def test_an_output_link_to_the_eval_info_beside_it_is_refused(shards, tmp_path, capsys):
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "latest.json").symlink_to(folder / "eval_info.json")  # written through: onto the eval_info.json
    (folder / "eval_info.json").write_text("{}\n")
    assert cli.main(["merge", str(shards), "--output", str(folder / "latest.json"), "--overwrite"]) == 2
    assert "is the eval_info.json the merge writes beside its results file" in capsys.readouterr().err
    assert (folder / "eval_info.json").read_text() == "{}\n"
