"""A merge of a partial merge (`merge --allow-missing`) counts that merge by the episodes it covers and the shards that
failed in it, never the whole plan, and takes each shard once. Real shards of walkto on a loopback PolicyServer (one
stopped by a real SIGINT, or one whose walkto/slow env cannot be built), the real CLI."""

from __future__ import annotations

import json

import pytest

from eval.scale_fixtures import SigintOnCall, make_walkto_env, policy_server
from gr00t_eval import cli
from gr00t_eval.rollout import envs

FLAGS = ["--env-name", "walkto/slow", "--n-episodes", "6", "--n-envs", "1", "--vectorization", "sync",
         "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0", "--no-video"]


# Two tasks of 6 episodes in 5 shards: 0/5 slow#0-1, 1/5 slow#2-3, 2/5 slow#4-5 and fast#0, 3/5 and 4/5 fast's others.
TWO_TASKS = ["--env-name", "walkto/slow,walkto/fast"]


def run_shard(index, port, out, count=3, tasks=()):
    return cli.main(["rollout", *FLAGS, *tasks, "--policy-client-port", str(port), "--shard", f"{index}/{count}",
                     "--output-dir", str(out)])


def resume_shard(index, port, out, count=3):
    return cli.main(["rollout", "--resume", str(out), "--shard", f"{index}/{count}", "--policy-client-port", str(port)])


def merge(*args):
    return cli.main(["merge", *map(str, args)])


def slow_cannot_build(task, **kwargs):
    """walkto's adapter, but walkto/slow cannot be built (an asset it reads is missing)."""
    if task == "slow":
        raise RuntimeError("the env of walkto/slow cannot be built (an asset missing)")
    return make_walkto_env(task, **kwargs)


@pytest.fixture
def interrupted_partial(tmp_path):
    """Shard 0/3 stopped by SIGINT before its first episode ended, shard 1/3 complete, merged with --allow-missing into
    m1 (shard 2/3 not run yet); then shard 0/3 resumed and shard 2/3 run. Returns (shards folder, m1)."""
    shards, partial = tmp_path / "shards", tmp_path / "m1" / "merged.json"
    with policy_server(SigintOnCall(call=1)) as server:  # one policy: its first call only is stopped
        assert run_shard(0, server.port, shards) == 130
        assert run_shard(1, server.port, shards) == 0
        assert merge(shards, "--allow-missing", "--output", partial) == 1
        assert resume_shard(0, server.port, shards) == 0
        assert run_shard(2, server.port, shards) == 0
    return shards, partial


@pytest.fixture
def failed_partial(tmp_path, monkeypatch):
    """TWO_TASKS: walkto/slow could not be built in shard 2/5 (a failed task), shards 0/5, 3/5 and 4/5 complete, merged
    with --allow-missing into m1 (shard 1/5 not run). Returns (shards folder, m1)."""
    shards, partial = tmp_path / "shards", tmp_path / "m1" / "merged.json"
    with policy_server() as server:
        with monkeypatch.context() as broken:
            broken.setitem(envs._ADAPTERS, "walkto", slow_cannot_build)
            assert run_shard(2, server.port, shards, 5, TWO_TASKS) == 1
        for index in (0, 3, 4):
            assert run_shard(index, server.port, shards, 5, TWO_TASKS) == 0
    assert merge(shards, "--allow-missing", "--output", partial) == 1
    assert json.loads(partial.read_text())["missing_episodes"] == ["walkto/slow#2", "walkto/slow#3"]
    return shards, partial


def incomplete_line(out):
    return next(line for line in out.splitlines() if line.startswith(("INCOMPLETE", "INTERRUPTED")))


def test_a_partial_merge_merged_again_with_a_shard_it_holds_is_refused_naming_both(interrupted_partial, tmp_path,
                                                                                  capsys):
    """m1 holds shard 0/3 (stopped); merged beside shard 0/3's resumed file it said INTERRUPTED, '4 episodes are in no
    results file' and '0 episodes did not run', exit 1, and counted shard 0/3's first attempt's time twice."""
    shards, partial = interrupted_partial
    shard0 = shards / "results_shard0of3.json"
    capsys.readouterr()
    output = tmp_path / "m2" / "merged.json"
    assert merge(partial, shard0, shards / "results_shard2of3.json", "--output", output) == 2
    err = capsys.readouterr().err
    assert f"shard 0/3 reaches this merge twice: in {partial} (merged from {shard0}) and as {shard0}" in err, err
    assert f"gr00t-eval merge {shards}" in err, err
    assert not output.exists()
    assert merge(shards, "--output", tmp_path / "direct" / "merged.json") == 0


def test_a_partial_merges_stopped_shard_is_named_with_its_resume_and_the_missing_shard_by_number(tmp_path, capsys):
    shards, partial = tmp_path / "shards", tmp_path / "m1" / "merged.json"
    with policy_server(SigintOnCall(call=1)) as server:
        assert run_shard(0, server.port, shards) == 130
        assert run_shard(1, server.port, shards) == 0
    assert merge(shards, "--allow-missing", "--output", partial) == 1
    capsys.readouterr()
    assert merge(partial, "--allow-missing", "--output", tmp_path / "m2" / "merged.json") == 1
    line = incomplete_line(capsys.readouterr().out)
    assert f"gr00t-eval rollout --resume {shards} --shard 0/3" in line, line
    assert "--shard 1/3" not in line and "run the missing shards (shard 2/3)" in line, line
    # merging it again beside the continued shard would be refused: that shard would reach the merge twice
    assert f"merge the shards' own results files (gr00t-eval merge {shards}), each once" in line, line
    assert "0 episodes did not run" not in line, line


def test_a_partial_merge_whose_task_failed_merged_alone_still_misses_the_shard_that_never_ran(failed_partial,
                                                                                               tmp_path, capsys):
    """Its failed task was counted over the whole plan: shard 1/5's episodes left missing_episodes (no --allow-missing
    needed), and the advice resumed shard 0/5 (complete) and never named shard 1/5."""
    shards, partial = failed_partial
    capsys.readouterr()
    assert merge(partial, "--output", tmp_path / "m2" / "merged.json") == 2
    assert "2 episodes are in no results file: walkto/slow#2, walkto/slow#3" in capsys.readouterr().err
    output = tmp_path / "m3" / "merged.json"
    assert merge(partial, "--allow-missing", "--output", output) == 1
    merged = json.loads(output.read_text())
    assert merged["missing_episodes"] == ["walkto/slow#2", "walkto/slow#3"] and merged["n_not_run"] == 4
    assert merged["not_run_episodes"] == ["walkto/slow#4", "walkto/slow#5"]
    line = incomplete_line(capsys.readouterr().out)
    assert f"gr00t-eval rollout --resume {shards} --shard 2/5" in line, line
    assert "--shard 0/5" not in line and "(shard 1/5)" in line, line


def test_a_partial_merge_whose_task_failed_beside_its_resumed_shard_is_refused_naming_both(failed_partial, tmp_path,
                                                                                          capsys):
    """Merged beside shard 2/5's resumed file and shard 1/5 (every episode present) it said its task failed, exit 1,
    where merging the shard files says complete."""
    shards, partial = failed_partial
    with policy_server() as server:
        assert resume_shard(2, server.port, shards, 5) == 0
        assert run_shard(1, server.port, shards, 5, TWO_TASKS) == 0
    shard2 = shards / "results_shard2of5.json"
    capsys.readouterr()
    assert merge(partial, shard2, shards / "results_shard1of5.json", "--output", tmp_path / "m2" / "m.json") == 2
    err = capsys.readouterr().err
    assert f"shard 2/5 reaches this merge twice: in {partial} (merged from {shard2}) and as {shard2}" in err, err
    direct = tmp_path / "direct" / "merged.json"
    assert merge(shards, "--output", direct) == 0
    assert json.loads(direct.read_text())["status"] == "complete"
