"""open-loop when things go wrong: a policy that does not follow the trajectory, two runs into one directory,
empty episodes and repeated --modality-keys. Real replay servers on loopback, real datasets, the real CLI."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from eval.dataset_factory import expected_actions, make_dataset
from gr00t_eval import cli
from gr00t_eval.dataset import DatasetWriter
from gr00t_server.policies.replay import ReplayPolicy
from serving import running_server

LENGTHS = (6, 9, 4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("faults") / "full", lengths=LENGTHS)


@pytest.fixture(scope="module")
def server(dataset):
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as running:
        yield running


def open_loop(dataset, port, out, *extra):
    return cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(port), "--no-plots",
                     "--execution-horizon", "4", "--output-dir", str(out), *extra])


def results(out) -> dict:
    return json.loads((Path(out) / "results.json").read_text())


# --- a policy that does not follow the trajectory -------------------------------------------------------


@pytest.fixture(scope="module")
def stale_server(tmp_path_factory):
    """A replay server of a stale copy of the dataset: only its first two episodes (the same values)."""
    stale = make_dataset(tmp_path_factory.mktemp("faults") / "stale", lengths=LENGTHS[:2])
    with running_server(ReplayPolicy(stale, execution_horizon=4)) as running:
        yield running


def test_a_trajectory_whose_policy_reset_fails_is_errored_not_averaged(dataset, stale_server, tmp_path, capsys):
    code = open_loop(dataset, stale_server.port, tmp_path / "out", "--traj-ids", "0", "1", "2")
    out = capsys.readouterr().out
    assert code == 1
    data = results(tmp_path / "out")
    assert sorted(data["trajectories"]) == ["0", "1"]
    assert data["aggregated"]["n_trajectories"] == 2 and data["aggregated"]["n_errors"] == 1
    assert data["aggregated"]["avg_mse"] == 0.0  # only the two replayed trajectories
    [errored] = data["errored_trajectories"]
    assert errored["traj_id"] == 2 and "policy reset failed" in errored["error"] and "out of range" in errored["error"]
    assert "trajectory 2 errored: policy reset failed" in out
    assert "INCOMPLETE: 1 of 3 trajectories errored" in out
    assert "exit status 1 because trajectories errored" in out


def test_allow_errors_exits_zero_but_still_lists_the_errored_trajectory(dataset, stale_server, tmp_path):
    assert open_loop(dataset, stale_server.port, tmp_path / "out", "--traj-ids", "0", "2", "--allow-errors") == 0
    data = results(tmp_path / "out")
    assert list(data["trajectories"]) == ["0"] and [e["traj_id"] for e in data["errored_trajectories"]] == [2]


def test_a_policy_reporting_another_step_errors_the_trajectory_instead_of_scoring_it(dataset, server, tmp_path, capsys):
    # The server advances 4 steps per call; evaluating every 2 steps compares misaligned chunks.
    code = open_loop(dataset, server.port, tmp_path / "out", "--traj-ids", "1", "--execution-horizon", "2")
    assert code == 1
    data = results(tmp_path / "out")
    assert data["trajectories"] == {} and data["aggregated"]["avg_mse"] is None
    [errored] = data["errored_trajectories"]
    assert errored["traj_id"] == 1
    assert "reports step 4 while the evaluation is at step 2" in errored["error"]
    assert "--execution-horizon 2" in errored["error"]


# --- two runs into one output directory -------------------------------------------------------------------


class GatedReplay(ReplayPolicy):
    """A ReplayPolicy whose first get_action waits until `gate` is set (a slow model, held still)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate, self.waiting = threading.Event(), threading.Event()

    def _get_action(self, observation, options=None):
        self.waiting.set()
        self.gate.wait(30)
        return super()._get_action(observation, options)


def test_a_second_run_into_the_directory_of_a_running_one_is_refused(dataset, tmp_path, capsys):
    policy = GatedReplay(dataset, execution_horizon=4)
    out = tmp_path / "shared"
    codes = {}
    with running_server(policy) as gated:
        first = threading.Thread(target=lambda: codes.setdefault("first", open_loop(dataset, gated.port, out, "--traj-ids", "0")))
        first.start()
        try:
            assert policy.waiting.wait(30), "the first run never reached the server"
            codes["second"] = open_loop(dataset, gated.port, out, "--traj-ids", "1")
        finally:
            policy.gate.set()
            first.join(60)
    err = capsys.readouterr().err
    assert codes == {"first": 0, "second": 2}
    assert f"--output-dir {out}" in err and "not empty" in err
    data = results(out)
    assert data["config"]["traj_ids"] == [0] and list(data["trajectories"]) == ["0"]
    assert json.loads((out / cli.OPEN_LOOP_RUN_FILENAME).read_text())["config"]["traj_ids"] == [0]


def test_claiming_a_directory_twice_is_refused_naming_the_claim(tmp_path):
    from gr00t_eval.run_dir import OutputDirError, claim_output_dir

    claim_output_dir(tmp_path, "open_loop_run.json", {"kind": "open_loop"})
    with pytest.raises(OutputDirError, match="taken by another run.*open_loop_run.json"):
        claim_output_dir(tmp_path, "open_loop_run.json", {"kind": "open_loop"})


def test_a_finished_run_leaves_its_settings_and_a_rerun_needs_overwrite(dataset, server, tmp_path):
    out = tmp_path / "out"
    assert open_loop(dataset, server.port, out, "--traj-ids", "0") == 0
    assert sorted(p.name for p in out.iterdir()) == [cli.OPEN_LOOP_RUN_FILENAME, "results.json"]
    assert open_loop(dataset, server.port, out, "--traj-ids", "1") == 2
    assert open_loop(dataset, server.port, out, "--traj-ids", "1", "--overwrite") == 0
    assert list(results(out)["trajectories"]) == ["1"]


# --- empty episodes ----------------------------------------------------------------------------------------


def cut_to_empty(root: Path, position: int) -> None:
    """Make episode `position` 0 steps long, as other tools can write it (no rows, length 0)."""
    data = root / "data" / "chunk-000" / f"episode_{position:06d}.parquet"
    pq.write_table(pq.read_table(data).slice(0, 0), data)
    episodes = root / "meta" / "episodes.jsonl"
    rows = [json.loads(line) for line in episodes.read_text().splitlines()]
    rows[position]["length"] = 0
    episodes.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_an_empty_episode_is_skipped_with_a_warning_and_the_others_are_evaluated(tmp_path, caplog):
    root = make_dataset(tmp_path / "with_empty", lengths=LENGTHS)
    cut_to_empty(root, 1)
    with running_server(ReplayPolicy(root, execution_horizon=4)) as replay:
        code = open_loop(root, replay.port, tmp_path / "out", "--traj-ids", "0", "1", "2")
    assert code == 0
    data = results(tmp_path / "out")
    assert sorted(data["trajectories"]) == ["0", "2"] and data["aggregated"]["avg_mse"] == 0.0
    assert data["skipped_trajectories"] == [1] and "0 steps" in data["skip_reasons"]["1"]
    assert any("trajectory 1 is empty" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_an_empty_episode_reads_as_zero_rows_of_each_group(tmp_path):
    from gr00t_eval.dataset import LeRobotDataset

    root = make_dataset(tmp_path / "with_empty", lengths=LENGTHS)
    cut_to_empty(root, 1)
    episode = LeRobotDataset(root).episode(1)
    assert episode.actions("arm").shape == (0, 3) and episode.states("gripper").shape == (0, 1)


def test_the_writer_refuses_an_episode_without_steps(tmp_path):
    with pytest.raises(ValueError, match="episode 0 has 0 steps; an episode needs at least one step"):
        with DatasetWriter(tmp_path / "ds", fps=10) as writer:
            writer.add_episode(frames={"image": np.zeros((0, 8, 8, 3), np.uint8)},
                               states={"arm": np.zeros((0, 3), np.float32)}, actions={"arm": np.zeros((0, 3), np.float32)},
                               task="nothing")


# --- --modality-keys ---------------------------------------------------------------------------------------


def test_a_repeated_modality_key_is_refused_up_front_naming_it(dataset, server, tmp_path, capsys):
    code = open_loop(dataset, server.port, tmp_path / "out", "--modality-keys", "arm", "gripper", "arm")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'arm' more than once" in err and "--modality-keys" in err
    assert not (tmp_path / "out").exists()


def test_distinct_modality_keys_still_select_the_compared_keys(dataset, server, tmp_path):
    assert open_loop(dataset, server.port, tmp_path / "out", "--traj-ids", "2", "--modality-keys", "gripper") == 0
    trajectory = results(tmp_path / "out")["trajectories"]["2"]
    assert list(trajectory["per_key"]) == ["gripper"] and trajectory["steps"] == len(expected_actions(2, LENGTHS[2])["gripper"])


def test_open_loop_and_the_rollout_read_a_reported_position_by_one_rule():
    from gr00t_eval import open_loop, reported_position
    from gr00t_eval.rollout import policy_io

    assert open_loop.is_position is reported_position.is_position and policy_io.is_position is reported_position.is_position
    is_position = reported_position.is_position
    assert is_position(0) and is_position(np.int64(7))
    assert not any(is_position(value) for value in (True, 2.0, None, "3", [1]))
