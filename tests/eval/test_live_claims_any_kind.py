"""Each gr00t-eval command checked only its own kind of claim: `rollout --overwrite` emptied the folder of an
open-loop run still writing there (both exited 0, and DIR/results.json was the open-loop's beside the rollout's
run.json), and a rollout or open-loop into a running batch's folder deleted its jobs. Every command now refuses a
folder holding a live claim of any command's kind (run_claim.CLAIM_FILENAMES), --overwrite or not, and leaves it as
it was; a finished or dead run's claim of another kind is handled as before. A live holder is a real process
(conftest's live_process); a dead one has exited (ended_pid). The real CLI; the refusals come before anything runs."""

from __future__ import annotations

import json
import os
import sys

import pytest

from eval.dataset_factory import make_dataset
from eval.scale_fixtures import policy_server
from gr00t_eval import cli
from gr00t_eval.cli import OPEN_LOOP_RUN_FILENAME
from gr00t_eval.record import RECORD_CLAIM
from gr00t_eval.run_dir import RUN_FILENAME
from gr00t_eval.batch_cli import BATCH_CLAIM_FILENAME
from test_batch_merge_outputs import claim_by, write_jobs
from test_run_dir_leftovers import ended_pid

IN_USE = "is in use: the run that claimed it is still running (pid {pid}"
# Each command's claim file, and a file its run writes beside it.
KINDS = {"rollout": (RUN_FILENAME, "episodes.jsonl"), "open-loop": (OPEN_LOOP_RUN_FILENAME, "traj_0.jpeg"),
         "batch": (BATCH_CLAIM_FILENAME, "jobs.json"), "record": (RECORD_CLAIM, "data/chunk-000/episode_000000.parquet")}
OTHER_KINDS = [(command, kind) for command in KINDS for kind in KINDS if kind != command]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("claims") / "dataset", lengths=(6, 4))


def command_args(command, out, dataset, tmp_path, port=9):
    """The command line of `command` into `out` (nothing listens on port 9: a run that got past its checks fails)."""
    if command == "rollout":
        return ["rollout", "--env-name", "walkto/fast", "--env-import", "eval.scale_fixtures", "--n-episodes", "2",
                "--seed", "0", "--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video",
                "--vectorization", "sync", "--timeout-ms", "3000", "--policy-client-port", str(port), "--output-dir", str(out)]
    if command == "open-loop":
        return ["open-loop", "--dataset-path", str(dataset), "--port", str(port), "--no-plots", "--execution-horizon", "4",
                "--output-dir", str(out)]
    if command == "batch":
        return ["batch", "--jobs", str(write_jobs(tmp_path, port)), "--output-dir", str(out)]
    os.environ.setdefault("MUJOCO_GL", "egl")  # as conftest's recorded_reach: before anything imports mujoco
    return ["record", "--env-name", "metaworld/reach-v3", "--episodes", "1", "--max-episode-steps", "5", "--image-size",
            "32", "--output", str(out)]


def run_cli(args):
    """cli.main's exit status; a command that exits with a message (record) gives 2."""
    try:
        return cli.main(args)
    except SystemExit as exc:
        print(exc.code, file=sys.stderr)
        return 2 if isinstance(exc.code, str) else exc.code


def folder_of(kind, out, pid):
    """`out` as a run of `kind` held by process `pid` leaves it while it runs: its claim and a file it wrote."""
    claim, written = KINDS[kind]
    out.mkdir()
    claim_by(out, pid, claim)
    (out / written).parent.mkdir(parents=True, exist_ok=True)
    (out / written).write_text("the live run's")
    return out


def contents(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_every_commands_claim_file_is_one_every_command_checks():
    from gr00t_eval.run_claim import CLAIM_FILENAMES

    assert {claim for claim, _ in KINDS.values()} == set(CLAIM_FILENAMES)


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("command,kind", OTHER_KINDS, ids=[f"{c}-over-{k}" for c, k in OTHER_KINDS])
def test_a_folder_a_live_run_of_another_command_claimed_is_refused_and_left_as_it_was(command, kind, extra, dataset,
                                                                                      tmp_path, capsys, live_process):
    out = folder_of(kind, tmp_path / "out", live_process.pid)
    before = contents(out)
    assert run_cli([*command_args(command, out, dataset, tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert IN_USE.format(pid=live_process.pid) in err, err
    assert f"in {KINDS[kind][0]})" in err  # names the claim file
    assert "pass --overwrite" not in err
    assert contents(out) == before


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("command", ["open-loop", "batch", "record"])
def test_a_folder_a_live_rollout_shard_claimed_is_refused_by_the_other_commands(command, extra, dataset, tmp_path,
                                                                                capsys, live_process):
    out = tmp_path / "out"
    out.mkdir()
    claim_by(out, live_process.pid, "run_shard0of2.json")
    before = contents(out)
    assert run_cli([*command_args(command, out, dataset, tmp_path), *extra]) == 2
    assert IN_USE.format(pid=live_process.pid) in capsys.readouterr().err
    assert contents(out) == before


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_a_rollout_shard_into_a_folder_a_live_open_loop_claimed_is_refused(extra, dataset, tmp_path, capsys,
                                                                           live_process):
    out = folder_of("open-loop", tmp_path / "out", live_process.pid)
    before = contents(out)
    assert run_cli([*command_args("rollout", out, dataset, tmp_path), "--shard", "0/2", *extra]) == 2
    assert IN_USE.format(pid=live_process.pid) in capsys.readouterr().err
    assert contents(out) == before


def test_a_shard_still_shares_its_folder_with_a_live_shard_of_its_split(dataset, tmp_path, capsys, live_process):
    out = tmp_path / "out"
    out.mkdir()
    claim_by(out, live_process.pid, "run_shard1of2.json")
    with policy_server() as server:
        assert run_cli([*command_args("rollout", out, dataset, tmp_path, server.port), "--shard", "0/2"]) == 0
    assert (out / "results_shard0of2.json").is_file() and (out / "run_shard1of2.json").is_file()


@pytest.mark.parametrize("command,kind", OTHER_KINDS, ids=[f"{c}-over-{k}" for c, k in OTHER_KINDS])
def test_a_dead_runs_claim_of_another_command_is_content_as_before(command, kind, dataset, tmp_path, capsys):
    out = folder_of(kind, tmp_path / "out", ended_pid())
    before = contents(out)
    assert run_cli(command_args(command, out, dataset, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "is in use" not in err and "not empty" in err
    assert contents(out) == before


@pytest.mark.parametrize("command,kind", [("rollout", "open-loop"), ("rollout", "batch"), ("batch", "open-loop"),
                                          ("batch", "rollout")])
def test_overwrite_empties_the_folder_of_a_dead_run_of_another_command(command, kind, dataset, tmp_path, caplog):
    out = folder_of(kind, tmp_path / "out", ended_pid())
    with policy_server() as server, caplog.at_level("WARNING", logger="gr00t_eval.run_claim"):
        assert run_cli([*command_args(command, out, dataset, tmp_path, server.port), "--overwrite"]) == 0
    claim, written = KINDS[kind]
    assert not (out / claim).exists() and not (out / written).exists()
    assert (out / KINDS[command][0]).is_file()
    stale = [r for r in caplog.records if "claimed by a run that ended without finishing" in r.getMessage()]
    assert len(stale) == 1  # said once, however many of the command's checks met the stale claim


def test_overwrite_empties_the_folder_of_a_finished_run_of_another_command(dataset, tmp_path):
    from gr00t_eval.run_claim import finish_claim

    out = folder_of("open-loop", tmp_path / "out", os.getpid())
    finish_claim(out / OPEN_LOOP_RUN_FILENAME, "complete")  # this process's run, which has ended
    with policy_server() as server:
        assert run_cli([*command_args("rollout", out, dataset, tmp_path, server.port), "--overwrite"]) == 0
    assert not (out / OPEN_LOOP_RUN_FILENAME).exists() and (out / "results.json").is_file()


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory):
    """A split run's folder: both shards of walkto/fast done, ready to merge."""
    split = tmp_path_factory.mktemp("split") / "split"
    with policy_server() as server:
        for index in range(2):
            assert run_cli([*command_args("rollout", split, None, None, server.port), "--shard", f"{index}/2"]) == 0
    return split


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_merge_into_the_folder_of_a_live_run_is_refused_and_leaves_it_as_it_was(kind, extra, shard_folder, tmp_path,
                                                                                  capsys, live_process):
    """merge had no check of its own: `merge split --output DIR/merged.json` beside a running open-loop, batch,
    record or rollout wrote its results and eval_info.json there (the run's would later replace them, or the merge
    the run's, depending on who wrote last)."""
    out = folder_of(kind, tmp_path / "out", live_process.pid)
    before = contents(out)
    assert run_cli(["merge", str(shard_folder), "--output", str(out / "merged.json"), *extra]) == 2
    err = capsys.readouterr().err
    assert "--output" in err and IN_USE.format(pid=live_process.pid) in err, err
    assert contents(out) == before


def test_a_merge_into_the_folder_of_its_live_shards_or_a_dead_run_goes_ahead(shard_folder, tmp_path, live_process):
    folder = tmp_path / "split"
    folder.mkdir()
    for name in os.listdir(shard_folder):
        (folder / name).write_bytes((shard_folder / name).read_bytes())
    claim_by(folder, live_process.pid, "run_shard1of2.json")  # a shard still running (resumed, say)
    # its results file there is no final result: the merge is refused, but its folder is no obstacle to the output:
    # left out with --allow-missing, the merge of the other shard is written there (incomplete)
    assert run_cli(["merge", str(folder), "--output", str(folder / "merged.json")]) == 2
    assert run_cli(["merge", str(folder), "--output", str(folder / "merged.json"), "--allow-missing"]) == 1
    assert json.loads((folder / "merged.json").read_text())["overall"]["n_episodes"] == 1

    dead = folder_of("open-loop", tmp_path / "dead", ended_pid())
    assert run_cli(["merge", str(shard_folder), "--output", str(dead / "merged.json")]) == 0
    assert (dead / "merged.json").is_file()
