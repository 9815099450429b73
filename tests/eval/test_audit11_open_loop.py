"""open-loop (audit11): a --modality-keys key the dataset lacks is refused before connecting (M2); a Ctrl-C while a
scored trajectory's plot is drawn keeps it scored (L2); the execution-horizon mismatch names the server's number (L8).
Real replay servers on loopback, real datasets, the real CLI."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from eval.dataset_factory import make_dataset
from eval.scale_fixtures import free_port
from gr00t_eval import cli
from gr00t_server.policies.replay import ReplayPolicy
from serving import running_server


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("audit11") / "ds", lengths=(6, 9, 4))


@pytest.fixture(scope="module")
def server(dataset):
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as running:
        yield running


def open_loop(dataset, port, out, *extra):
    return cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(port), "--execution-horizon", "4",
                     "--output-dir", str(out), *extra])


def results(out) -> dict:
    return json.loads((Path(out) / "results.json").read_text())


# --- M2: --modality-keys checked against the local dataset before connecting ---------------------------------------


def test_a_modality_key_the_dataset_lacks_is_refused_in_one_line_before_connecting(dataset, tmp_path, capsys):
    nobody = free_port()  # nothing listens: a connection attempt would wait out its timeout
    started = time.monotonic()
    code = open_loop(dataset, nobody, tmp_path / "out", "--no-plots", "--modality-keys", "arm", "grippr",
                     "--timeout-ms", "20000")
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    assert code == 2 and elapsed < 10
    [line] = captured.err.strip().splitlines()
    assert line.startswith("gr00t-eval open-loop: error: --modality-keys") and "['grippr']" in line
    assert "['arm', 'gripper']" in line  # the dataset's keys
    assert not (tmp_path / "out" / "results.json").exists()


def test_the_corrected_command_reuses_the_refused_runs_folder(dataset, server, tmp_path, capsys):
    assert open_loop(dataset, server.port, tmp_path / "out", "--no-plots", "--modality-keys", "arm", "grippr") == 2
    assert open_loop(dataset, server.port, tmp_path / "out", "--no-plots", "--modality-keys", "arm", "gripper") == 0
    assert results(tmp_path / "out")["status"] == "complete"


def test_the_flat_action_spelling_names_the_same_key(dataset, server, tmp_path):
    assert open_loop(dataset, server.port, tmp_path / "out", "--no-plots", "--traj-ids", "1",
                     "--modality-keys", "action.gripper") == 0
    data = results(tmp_path / "out")
    assert data["config"]["modality_keys"] == ["gripper"] and data["aggregated"]["avg_mse"] == 0.0


def test_a_key_named_in_both_spellings_is_refused_as_named_twice(dataset, tmp_path, capsys):
    assert open_loop(dataset, free_port(), tmp_path / "out", "--no-plots", "--modality-keys", "gripper",
                     "action.gripper") == 2
    err = capsys.readouterr().err
    assert "'gripper' more than once (gripper and action.gripper)" in err
    assert not (tmp_path / "out" / "results.json").exists()


# --- L2: a stop while a scored trajectory's plot is drawn --------------------------------------------------------


def test_ctrl_c_while_a_scored_trajectorys_plot_is_drawn_keeps_it_scored(dataset, server, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from gr00t_eval import plots

    draw = plots.plot_trajectory

    def ctrl_c_while_drawing_trajectory_1(path, traj_id, *args, **kwargs):
        if traj_id == 1:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, taken in the middle of the real drawing
        return draw(path, traj_id, *args, **kwargs)

    monkeypatch.setattr(plots, "plot_trajectory", ctrl_c_while_drawing_trajectory_1)
    code = open_loop(dataset, server.port, tmp_path / "out", "--traj-ids", "0", "1", "2")
    out = capsys.readouterr().out
    assert code == 130
    assert "Unnormalized Action MSE across single traj" in out.split("Running trajectory: 1")[1]  # its MSE was printed
    data = results(tmp_path / "out")
    assert data["status"] == "interrupted"
    assert sorted(data["trajectories"]) == ["0", "1"] and data["not_run_trajectories"] == [2]
    assert data["aggregated"]["n_trajectories"] == 2


# --- L8: the execution-horizon mismatch names the server's number ----------------------------------------------


def test_an_execution_horizon_mismatch_names_the_servers_horizon(dataset, server, tmp_path, capsys):
    # the server advances 4 steps per call (its identity says so); this run would query every 2: refused before any
    # trajectory, where it errored each one after querying the server
    assert open_loop(dataset, server.port, tmp_path / "out", "--no-plots", "--traj-ids", "1",
                     "--execution-horizon", "2") == 2
    err = capsys.readouterr().err
    assert "execution_horizon (--execution-horizon) is 2" in err and "advances 4 per call" in err
    assert "pass --execution-horizon 4" in err
    assert not (tmp_path / "out" / "results.json").exists()
