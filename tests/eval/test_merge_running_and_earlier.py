"""`gr00t-eval merge` never presents a shard still running as final, never replaces an earlier merge of another
evaluation without --overwrite, and a merge of a merge says nothing stale. Real shards on a loopback PolicyServer, real
claim files held by a live process, the real CLI."""

from __future__ import annotations

import json
import shutil

import pytest

from eval.scale_fixtures import ConstantPolicy, policy_server, two_shards
from gr00t_eval import cli

SHARD_FLAGS = ["--env-name", "walkto/fast", "--n-episodes", "4", "--n-envs", "1", "--vectorization", "sync",
               "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A folder holding both shards of a 4-episode run (seed 0). Read-only: copy it to change it."""
    return two_shards(tmp_path_factory.mktemp("merge_running") / "shards")


def held_by(run_file, pid):
    """Give the shard run file `run_file` the claim of process `pid` on this host, as a --resume of it leaves it."""
    saved = json.loads(run_file.read_text())
    saved["claim"] = {"pid": pid, "hostname": __import__("socket").gethostname(), "started": "now",
                      "started_unix": __import__("time").time(), "finished": False}
    run_file.write_text(json.dumps(saved))


def test_a_merge_of_a_shard_still_running_is_refused_naming_the_shard(shards, tmp_path, capsys, live_process):
    split = tmp_path / "split"
    shutil.copytree(shards, split)
    held_by(split / "run_shard1of2.json", live_process.pid)  # shard 1/2 is being resumed
    assert cli.main(["merge", str(split), "--output", str(tmp_path / "merged.json"), "--allow-errors"]) == 2
    err = capsys.readouterr().err
    assert f"shard 1/2 in {split} is still running" in err and f"pid {live_process.pid}" in err
    assert not (tmp_path / "merged.json").exists()


def test_allow_missing_leaves_a_running_shard_out_and_the_merge_incomplete(shards, tmp_path, capsys, live_process):
    split = tmp_path / "split"
    shutil.copytree(shards, split)
    held_by(split / "run_shard1of2.json", live_process.pid)
    assert cli.main(["merge", str(split), "--output", str(tmp_path / "merged.json"), "--allow-missing"]) == 1
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["status"] == "incomplete" and merged["missing_episodes"] == ["walkto/fast#2", "walkto/fast#3"]
    assert merged["merged_files"] == [str(split / "results_shard0of2.json")]
    assert f"shard 1/2 in {split} is still running" in capsys.readouterr().out


class MergeCopyingPolicy(ConstantPolicy):
    """ConstantPolicy that, on its first action, puts a merge of the shard's earlier results into the shard's folder:
    a merge that checked the shard's claim just before the shard took it, and wrote its file while the shard ran."""

    def __init__(self, merge, into):
        super().__init__()
        self.merge, self.into = merge, into

    def _get_action(self, observation, options=None):
        if not self.into.exists():
            shutil.copy(self.merge, self.into)
        return super()._get_action(observation, options)


def test_a_shard_that_writes_its_results_removes_a_merge_of_its_file_written_while_it_ran(shards, tmp_path):
    split = tmp_path / "split"
    shutil.copytree(shards, split)
    side = tmp_path / "side" / "merged.json"
    side.parent.mkdir()
    assert cli.main(["merge", str(split), "--output", str(side)]) == 0  # records split/results_shard*.json
    with policy_server(MergeCopyingPolicy(side, split / "merged.json")) as server:
        assert cli.main(["rollout", *SHARD_FLAGS, "--seed", "0", "--policy-client-port", str(server.port),
                         "--shard", "1/2", "--output-dir", str(split), "--overwrite"]) == 0
    assert not (split / "merged.json").exists()


@pytest.fixture(scope="module")
def other_evaluation(tmp_path_factory):
    """Both shards of the same 4-episode run with seed 100: another evaluation than `shards`."""
    out = tmp_path_factory.mktemp("merge_other") / "shards"
    with policy_server() as server:
        for index in (0, 1):
            assert cli.main(["rollout", *SHARD_FLAGS, "--seed", "100", "--policy-client-port", str(server.port),
                             "--shard", f"{index}/2", "--output-dir", str(out)]) == 0
    return out


def test_a_merge_of_another_evaluation_does_not_replace_an_earlier_merge_without_overwrite(
        shards, other_evaluation, tmp_path, capsys):
    report = tmp_path / "report" / "eval.json"
    assert cli.main(["merge", str(shards), "--output", str(report)]) == 0
    before = report.read_bytes(), (report.parent / "eval_info.json").read_bytes()
    assert cli.main(["merge", str(other_evaluation), "--output", str(report)]) == 2
    err = capsys.readouterr().err
    assert f"--output {report} holds the merge of another evaluation" in err
    assert "seed 100" in err and "--overwrite" in err
    assert (report.read_bytes(), (report.parent / "eval_info.json").read_bytes()) == before
    assert cli.main(["merge", str(other_evaluation), "--output", str(report), "--overwrite"]) == 0
    assert json.loads(report.read_text())["plan"]["seed"] == 100


def test_the_same_merge_run_again_replaces_its_earlier_output(shards, tmp_path):
    report = tmp_path / "eval.json"
    assert cli.main(["merge", str(shards), "--output", str(report)]) == 0
    assert cli.main(["merge", str(shards / "results_shard1of2.json"), str(shards / "results_shard0of2.json"),
                     "--output", str(report)]) == 0
    assert json.loads(report.read_text())["plan"]["seed"] == 0


def test_a_merge_of_a_partial_merge_and_its_missing_shard_is_complete_with_no_stop_reason(shards, tmp_path):
    partial, full = tmp_path / "m" / "partial.json", tmp_path / "m2" / "full.json"
    assert cli.main(["merge", str(shards / "results_shard0of2.json"), "--allow-missing", "--output", str(partial)]) == 1
    assert cli.main(["merge", str(partial), str(shards / "results_shard1of2.json"), "--output", str(full)]) == 0
    merged = json.loads(full.read_text())
    assert merged["status"] == "complete" and merged["stop_reason"] is None
    assert json.loads((full.parent / "eval_info.json").read_text()).get("stop_reason") is None


def test_an_incomplete_merge_merged_again_is_told_to_be_merged_with_its_missing_shards(shards, tmp_path, capsys):
    partial = tmp_path / "m" / "partial.json"
    assert cli.main(["merge", str(shards / "results_shard0of2.json"), "--allow-missing", "--output", str(partial)]) == 1
    capsys.readouterr()
    assert cli.main(["merge", str(partial), "--allow-missing", "--output", str(tmp_path / "m3" / "again.json")]) == 1
    out = capsys.readouterr().out
    assert f"{partial} is an incomplete merge" in out and "merge it again with the missing shards" in out
    assert "rollout --resume" not in out
