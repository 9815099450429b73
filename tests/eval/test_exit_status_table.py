"""docs/evaluation.md's exit-status table (0 / 1 / 2 / 130 for rollout, open-loop, batch, merge and record) says
what the commands do: the cheap outcomes of each row are run for real (loopback servers, real datasets and shards,
the real CLI) and their exit status checked against the cell that names them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from eval.dataset_factory import make_dataset
from eval.scale_fixtures import free_port, two_shards
from eval.test_open_loop_faults import HangsOnEpisode, ReplayOfAnyCopy, cut_to_empty
from gr00t_eval import cli
from gr00t_server.policies.replay import ReplayPolicy
from serving import running_server

DOCS = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"
COMMANDS = ["rollout", "open-loop", "batch", "merge", "record"]


def exit_table() -> dict:
    """{(exit status, command): cell} of the table under '#### Exit status'."""
    section = DOCS.read_text().split("#### Exit status", 1)[1].split("\n\n|", 1)[1]
    rows = ["|" + section.split("\n\n", 1)[0]][0].splitlines()
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert header == ["exit", *COMMANDS], header
    table = {}
    for row in rows[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        table.update({(int(cells[0]), command): cell for command, cell in zip(COMMANDS, cells[1:])})
    return table


@pytest.fixture(scope="module")
def table():
    return exit_table()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("exit_table") / "ds", lengths=(6, 9, 4))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return two_shards(tmp_path_factory.mktemp("exit_table_shards") / "shards")  # each rollout asserted to exit 0


def open_loop(dataset, port, out, *extra):
    return cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(port), "--no-plots",
                     "--execution-horizon", "4", "--output-dir", str(out), *extra])


def test_the_table_has_every_exit_status_for_every_command(table):
    assert sorted({code for code, _ in table}) == [0, 1, 2, 130]
    assert all(table[code, command] for code in (0, 1, 2, 130) for command in COMMANDS)


def test_open_loop_exits_as_the_table_says(table, dataset, tmp_path):
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as replay:
        assert open_loop(dataset, replay.port, tmp_path / "whole", "--traj-ids", "0", "2") == 0
    assert "every requested trajectory scored" in table[0, "open-loop"]

    assert open_loop(dataset, free_port(), tmp_path / "past", "--traj-ids", "0", "5") == 2
    assert "`--traj-ids` the dataset lacks" in table[2, "open-loop"]

    with_empty = make_dataset(tmp_path / "with_empty", lengths=(6, 9, 4))
    cut_to_empty(with_empty, 1)
    with running_server(ReplayPolicy(with_empty, execution_horizon=4)) as replay:
        assert open_loop(with_empty, replay.port, tmp_path / "empty", "--traj-ids", "0", "1") == 1
    assert "an empty episode was skipped" in table[1, "open-loop"]

    policy = HangsOnEpisode(dataset, execution_horizon=4, hang_on=1)
    try:
        with running_server(policy) as hung:
            code = open_loop(dataset, hung.port, tmp_path / "gone", "--traj-ids", "0", "1", "--timeout-ms", "1500")
            policy.release.set()
    finally:
        policy.release.set()
    assert code == 1 and "the server went away mid-run" in table[1, "open-loop"]


def open_loop_flag_row(flag: str) -> str:
    """The row of `flag` in the open-loop section's flag table."""
    section = DOCS.read_text().split("## Open-loop evaluation", 1)[1].split("## Closed-loop rollout", 1)[0]
    return next(line for line in section.splitlines() if line.startswith(f"| `{flag}` |"))


def test_open_loop_allow_errors_exits_as_its_flag_row_says(dataset, tmp_path):
    # The row said exit 0 with --allow-errors, without the exception: a run whose every trajectory errored exits 1.
    trimmed = make_dataset(tmp_path / "trimmed", lengths=(4, 9, 4))  # episode 0 is not the dataset's: it errors
    with running_server(ReplayOfAnyCopy(trimmed, execution_horizon=4)) as replay:
        assert open_loop(dataset, replay.port, tmp_path / "some", "--traj-ids", "0", "1", "--allow-errors") == 0
        assert open_loop(dataset, replay.port, tmp_path / "all", "--traj-ids", "0", "--allow-errors") == 1
    row = open_loop_flag_row("--allow-errors")
    assert "exit 0 even when trajectories errored" in row
    assert "unless every trajectory errored (a run that scored nothing exits 1)" in row


def test_merge_exits_as_the_table_says(table, shards, tmp_path):
    assert "every episode scored" in table[0, "rollout"]  # the shards' rollouts exited 0
    assert cli.main(["merge", str(shards), "--output", str(tmp_path / "all" / "all.json")]) == 0
    assert "the merged run is complete" in table[0, "merge"]

    assert cli.main(["merge", str(shards / "results_shard0of2.json"), "--allow-missing",
                     "--output", str(tmp_path / "half" / "half.json")]) == 1
    assert "missing with `--allow-missing`" in table[1, "merge"]

    assert cli.main(["merge", str(shards), "--output", str(tmp_path / "info" / "eval_info.json")]) == 2
    assert cli.main(["merge", str(shards), "--output", str(shards / "episodes_shard0of2.jsonl"), "--overwrite"]) == 2
    assert cli.main(["merge", str(shards / "results_shard0of2.json"), "--output", str(tmp_path / "m" / "m.json")]) == 2
    assert re.search(r"missing episodes.*`eval_info.json`, a run's own file", table[2, "merge"])


def test_refused_rollout_and_batch_exit_2_as_the_table_says(table, tmp_path):
    assert cli.main(["rollout", "--env-name", "walkto/fast", "--n-episodes", "0", "--policy-client-port",
                     str(free_port()), "--output-dir", str(tmp_path / "r")]) == 2
    assert "a mistake in the flags" in table[2, "rollout"]
    jobs = tmp_path / "jobs.json"
    jobs.write_text('{"jobs": [')
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "b")]) == 2
    assert "a mistake in the job file" in table[2, "batch"]
