"""`gr00t-eval merge` reads each results file once, however it was named, and refuses an --output that is one of the
shard files it would read, a link to nowhere or a path under a file; it writes through a live link. Real shards on a
loopback PolicyServer, the real CLI."""

from __future__ import annotations

import json
import os

import pytest

from eval.scale_fixtures import two_shards
from gr00t_eval import cli


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A folder holding both shards of a 4-episode run."""
    return two_shards(tmp_path_factory.mktemp("merge_inputs") / "shards")


def test_a_shard_file_named_beside_its_folder_is_merged_once(shards, tmp_path, capsys):
    merged = tmp_path / "merged.json"
    assert cli.main(["merge", str(shards), str(shards / "results_shard0of2.json"), "--output", str(merged)]) == 0
    assert "Merged 2 files" in capsys.readouterr().out
    results = json.loads(merged.read_text())
    assert [e["episode_index"] for e in results["per_episode"]] == [0, 1, 2, 3]
    assert results["merged_files"] == [str(shards / "results_shard0of2.json"), str(shards / "results_shard1of2.json")]


def test_an_output_whose_name_is_as_long_as_a_file_name_may_be_is_written(shards, tmp_path):
    """It was written aside as .NAME.PID.TID.tmp, past NAME_MAX: "File name too long" for a legal --output."""
    merged = tmp_path / "merged" / ("m" * 250 + ".json")  # 255 bytes: the longest legal name
    assert cli.main(["merge", str(shards), "--output", str(merged)]) == 0
    assert [e["episode_index"] for e in json.loads(merged.read_text())["per_episode"]] == [0, 1, 2, 3]
    assert [p.name for p in merged.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("extra", [[], ["--allow-missing"]])
def test_an_output_that_is_a_shard_file_of_the_folder_merged_is_refused(shards, capsys, extra):
    shard0 = shards / "results_shard0of2.json"
    before = shard0.read_bytes()
    assert cli.main(["merge", str(shards), "--output", str(shard0), "--overwrite", *extra]) == 2
    assert f"--output {shard0} is also one of the files to merge" in capsys.readouterr().err
    assert shard0.read_bytes() == before


@pytest.mark.skipif(os.name == "nt", reason="symbolic links")
def test_an_output_that_is_a_link_to_nowhere_is_refused_naming_its_target(shards, tmp_path, capsys):
    link = tmp_path / "latest.json"
    link.symlink_to(tmp_path / "unmounted_share" / "merged.json")
    assert cli.main(["merge", str(shards), "--output", str(link)]) == 2
    assert (f"--output {link} is a symbolic link to {tmp_path / 'unmounted_share' / 'merged.json'}, which does not exist"
            in capsys.readouterr().err)
    assert link.is_symlink() and not (tmp_path / "unmounted_share").exists()


@pytest.mark.skipif(os.name == "nt", reason="symbolic links")
def test_an_output_that_is_a_link_is_written_where_it_points_and_stays_a_link(shards, tmp_path, capsys):
    target = tmp_path / "share" / "merged.json"
    target.parent.mkdir()
    assert cli.main(["merge", str(shards), "--output", str(target)]) == 0  # an earlier merge's output
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    assert cli.main(["merge", str(shards), "--output", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert [e["episode_index"] for e in json.loads(target.read_text())["per_episode"]] == [0, 1, 2, 3]
    assert json.loads((target.parent / "eval_info.json").read_text())["merged_results"] == "merged.json"
    assert sorted(p.name for p in target.parent.iterdir()) == ["eval_info.json", "merged.json"]  # no temporary left


def test_an_output_under_a_file_names_that_file(shards, tmp_path, capsys):
    (tmp_path / "afile").write_text("a plain file\n")
    assert cli.main(["merge", str(shards), "--output", str(tmp_path / "afile" / "m.json")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'afile'} exists and is not a directory" in err and "[Errno" not in err
    assert (tmp_path / "afile").read_text() == "a plain file\n"


@pytest.mark.skipif(os.name == "nt", reason="symbolic links")
def test_an_output_through_a_chain_of_links_to_nowhere_names_the_missing_file(shards, tmp_path, capsys, monkeypatch):
    """out.json -> current.json -> results/v2.json was refused as "a symbolic link to current.json, which does not
    exist": current.json does (a link); results/v2.json is what is missing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "current.json").symlink_to("results/v2.json")
    (tmp_path / "out.json").symlink_to("current.json")
    assert cli.main(["merge", str(shards), "--output", "out.json"]) == 2
    assert ("--output out.json is a symbolic link (through current.json) to results/v2.json, which does not exist: "
            "create results/v2.json or name another" in capsys.readouterr().err)
    assert not (tmp_path / "results" / "v2.json").exists()
