"""An open-loop run whose output folder disappears mid-run (a /tmp cleaner, a share unmounted) stops as rollout and
batch do: an error naming the folder, a non-zero exit, and no folder made again to hold plots or a results.json of a
run that is not there. A real replay server on loopback, a real dataset, the real CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eval.dataset_factory import make_dataset
from gr00t_client import PolicyClient
from gr00t_eval import cli
from gr00t_eval.open_loop import OpenLoopConfig, evaluate_open_loop
from gr00t_eval.run_stop import OutputFolderGone
from gr00t_server.policies.replay import ReplayPolicy
from serving import running_server


class RemovesFolderOnCall(ReplayPolicy):
    """A replay whose `call`-th get_action first runs `remove` (the output folder vanishing mid-run)."""

    def __init__(self, dataset, call, remove):
        super().__init__(dataset, execution_horizon=4)
        self.calls, self.call, self.remove = 0, call, remove

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls == self.call:
            self.remove()
        return super()._get_action(observation, options)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("vanish") / "ds", lengths=(6, 9, 4))


@pytest.mark.parametrize("plots", [False, True], ids=["no-plots", "plots"])
def test_an_open_loop_run_whose_folder_is_deleted_mid_run_stops_naming_it_and_does_not_make_it_again(
        dataset, tmp_path, capsys, plots):
    if plots:
        pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    # trajectory 0 takes calls 1-2, trajectory 1 calls 3-5: the folder goes while trajectory 1 runs
    with running_server(RemovesFolderOnCall(dataset, 3, lambda: shutil.rmtree(out))) as server:
        code = cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(server.port),
                         "--execution-horizon", "4", "--output-dir", str(out), "--traj-ids", "0", "1", "2",
                         *(() if plots else ("--no-plots",))])
    assert code != 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"the output folder {out} disappeared (unmounted or deleted)" in line, line
    assert "wrote nothing more" in line, line
    assert not out.exists()  # no results.json or plot in a folder the run no longer holds


def test_evaluate_open_loop_raises_output_folder_gone_and_writes_no_results_when_its_folder_vanishes(dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with running_server(RemovesFolderOnCall(dataset, 3, lambda: shutil.rmtree(out))) as server:
        with PolicyClient(port=server.port) as client:
            config = OpenLoopConfig(dataset_path=str(dataset), traj_ids=[0, 1], execution_horizon=4, plot=False,
                                    output_dir=str(out))
            with pytest.raises(OutputFolderGone) as raised:
                evaluate_open_loop(client, config, progress=False)
    assert raised.value.filename == str(out)
    assert not out.exists()


def test_evaluate_open_loop_tells_a_folder_deleted_and_made_again_from_its_own(dataset, tmp_path):
    # rm -rf out && mkdir out, as a cleanup script does: ext4 hands the new folder the freed inode, so the folder's
    # (device, inode) alone does not tell it from the run's; the run's own hidden file in it does
    out = tmp_path / "run"
    out.mkdir()

    def replace_folder():
        shutil.rmtree(out)
        out.mkdir()

    with running_server(RemovesFolderOnCall(dataset, 3, replace_folder)) as server:
        with PolicyClient(port=server.port) as client:
            config = OpenLoopConfig(dataset_path=str(dataset), traj_ids=[0, 1, 2], execution_horizon=4, plot=False,
                                    output_dir=str(out))
            with pytest.raises(OutputFolderGone):
                evaluate_open_loop(client, config, progress=False)
    assert list(out.iterdir()) == []  # nothing of this run in the folder made in its place


def test_evaluate_open_loop_leaves_no_file_of_its_own_beside_its_results(dataset, tmp_path):
    out = tmp_path / "run"
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        with PolicyClient(port=server.port) as client:
            config = OpenLoopConfig(dataset_path=str(dataset), traj_ids=[0], execution_horizon=4, plot=False,
                                    output_dir=str(out))
            evaluate_open_loop(client, config, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_an_output_folder_deleted_while_a_plot_is_drawn_is_not_made_again_for_it(dataset, tmp_path, capsys,
                                                                                  monkeypatch):
    pytest.importorskip("matplotlib")
    from gr00t_eval import plots

    out = tmp_path / "run"
    draw = plots.plot_trajectory

    def folder_deleted_while_drawing_trajectory_1(path, traj_id, *args, **kwargs):
        if traj_id == 1:
            shutil.rmtree(out)
        return draw(path, traj_id, *args, **kwargs)

    monkeypatch.setattr(plots, "plot_trajectory", folder_deleted_while_drawing_trajectory_1)
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        code = cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(server.port),
                         "--execution-horizon", "4", "--output-dir", str(out), "--traj-ids", "0", "1"])
    assert code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"the output folder {out} disappeared (unmounted or deleted)" in line, line
    assert not out.exists()  # the plot of trajectory 1 did not make the folder again
