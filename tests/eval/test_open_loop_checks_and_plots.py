"""open-loop: settings the policy refuses leave an earlier run's results in place, only the scored rows of a
recording must be finite, results.json names absolute paths, and plots draw each key's own state and one artist of
inference points. Real replay servers on loopback, real datasets, the real CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eval.dataset_factory import make_dataset
from gr00t_eval import cli, plots
from gr00t_server.policies.replay import ReplayPolicy
from serving import ReplayOfAnyCopy, running_server


def open_loop(dataset, server, out, *extra):
    return cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(server.port), "--output-dir", str(out),
                     *extra])


def results(out) -> dict:
    return json.loads((Path(out) / "results.json").read_text())


def put_nan_in_recorded_action(dataset: Path, episode: int, frame: int) -> None:
    for path in sorted((dataset / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        rows = table.to_pydict()
        actions = [list(map(float, action)) for action in rows["action"]]
        for i, (e, f) in enumerate(zip(rows["episode_index"], rows["frame_index"])):
            if (e, f) == (episode, frame):
                actions[i][0] = float("nan")
        column = table.schema.get_field_index("action")
        field = table.schema.field(column)
        pq.write_table(table.set_column(column, field, pa.array(actions, type=field.type)), path)


@pytest.fixture
def drawn(monkeypatch) -> list:
    """Per saved figure: [(panel title, {line label: (xdata, ydata)})] of its visible panels."""
    pytest.importorskip("matplotlib")
    figures = []
    save = plots._save_aside

    def recording(fig, path, **options):
        figures.append([(ax.get_title(), {line.get_label(): (np.asarray(line.get_xdata(), float),
                                                             np.asarray(line.get_ydata(), float))
                                          for line in ax.get_lines()})
                        for ax in fig.axes if ax.get_visible()])
        save(fig, path, **options)

    monkeypatch.setattr(plots, "_save_aside", recording)
    return figures


def test_a_nan_recorded_after_the_scored_steps_leaves_the_trajectory_scored(tmp_path):
    """A NaN at row 15 of 20 errored the whole trajectory at --steps 8, though no scored row holds it."""
    clean = make_dataset(tmp_path / "clean", lengths=(20,))
    poisoned = tmp_path / "poisoned"
    shutil.copytree(clean, poisoned)
    put_nan_in_recorded_action(poisoned, episode=0, frame=15)
    with running_server(ReplayOfAnyCopy(clean, execution_horizon=4)) as server:
        assert open_loop(poisoned, server, tmp_path / "short", "--steps", "8", "--no-plots") == 0
        assert open_loop(poisoned, server, tmp_path / "long", "--steps", "16", "--no-plots") == 1
    scored = results(tmp_path / "short")
    assert scored["errored_trajectories"] == [] and scored["trajectories"]["0"]["steps"] == 8
    assert np.isfinite(scored["trajectories"]["0"]["mse"])
    [errored] = results(tmp_path / "long")["errored_trajectories"]
    assert "holds nan at row 15" in errored["error"] and "cannot be scored against" in errored["error"]


def test_an_overwrite_refused_after_connecting_leaves_the_earlier_results_in_place(tmp_path, capsys):
    """--overwrite emptied the folder, then the horizon the policy cannot serve was refused: run 1's results and plots
    were gone with nothing in their place."""
    dataset = make_dataset(tmp_path / "ds", lengths=(7,))
    out = tmp_path / "out"
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        assert open_loop(dataset, server, out, "--no-plots") == 0
        (out / "traj_0.jpeg").write_text("run 1's plot")
        before = (out / "results.json").read_text()
        capsys.readouterr()
        assert open_loop(dataset, server, out, "--no-plots", "--overwrite", "--execution-horizon", "17") == 2
        assert "execution_horizon (--execution-horizon) is 17" in capsys.readouterr().err  # the replay's, first
        assert (out / "results.json").read_text() == before and (out / "traj_0.jpeg").read_text() == "run 1's plot"
        assert open_loop(dataset, server, out, "--no-plots", "--overwrite") == 0  # a run that is not refused empties it
    assert not (out / "traj_0.jpeg").exists() and results(out)["status"] == "complete"


def test_a_replay_served_with_its_own_horizon_sets_the_default_and_refuses_another(tmp_path, capsys):
    """The default 16 against a replay advancing 8 steps per call (the documented debug server) queried it and errored
    every trajectory ("the policy reports step 8 while the evaluation is at step 16"): INCOMPLETE, exit 1."""
    dataset = make_dataset(tmp_path / "ds", lengths=(20, 12))
    with running_server(ReplayPolicy(dataset, execution_horizon=8)) as server:
        assert open_loop(dataset, server, tmp_path / "default", "--traj-ids", "0", "1", "--no-plots") == 0
        assert "Execution horizon: 8, the replay server's" in capsys.readouterr().out
        scored = results(tmp_path / "default")
        assert scored["status"] == "complete" and scored["errored_trajectories"] == []
        assert scored["config"]["execution_horizon"] == 8
        assert [scored["trajectories"][t]["mse"] for t in ("0", "1")] == [0.0, 0.0]
        calls = server.stats.snapshot()["policy_calls"]
        assert open_loop(dataset, server, tmp_path / "other", "--execution-horizon", "4", "--no-plots") == 2
        assert server.stats.snapshot()["policy_calls"] == calls  # refused before any trajectory
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "execution_horizon (--execution-horizon) is 4" in err and "advances 8 per call" in err
    assert "pass --execution-horizon 8" in err
    assert not (tmp_path / "other" / "results.json").exists()


def test_an_execution_horizon_past_the_action_horizon_against_a_replay_is_refused_naming_the_replays_own(tmp_path,
                                                                                                         capsys):
    """--execution-horizon 20 against a replay advancing 8 (action horizon 16) advised 'pass --execution-horizon 16 or
    less', which the replay check then refused: one refusal, naming the replay's 8."""
    dataset = make_dataset(tmp_path / "ds", lengths=(20, 12))
    with running_server(ReplayPolicy(dataset, execution_horizon=8)) as server:
        assert open_loop(dataset, server, tmp_path / "out", "--execution-horizon", "20", "--no-plots") == 2
    err = capsys.readouterr().err.strip()
    assert "execution_horizon (--execution-horizon) is 20" in err and "advances 8 per call" in err
    assert "pass --execution-horizon 8" in err and "16 or less" not in err
    assert "serve the replay with" not in err  # a replay cannot be served with 20 (its chunk holds 16)
    assert not (tmp_path / "out" / "results.json").exists()


def test_action_keys_the_dataset_lacks_are_refused_before_any_trajectory(tmp_path, capsys):
    """Found inside trajectory 0 and written as an "aborted" run with results.json, as if the server had gone."""
    served = make_dataset(tmp_path / "served", lengths=(6,), state_dims={"arm": 2, "gripper": 1},
                          action_dims={"qpos": 2, "gripper": 1})
    evaluated = make_dataset(tmp_path / "evaluated", lengths=(6,), state_dims={"arm": 2, "gripper": 1},
                             action_dims={"pose": 2, "gripper": 1})
    with running_server(ReplayPolicy(served, execution_horizon=4)) as server:
        assert open_loop(evaluated, server, tmp_path / "out", "--no-plots") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "the policy's action keys ['qpos', 'gripper']" in err and "['pose', 'gripper']" in err
    assert "--modality-keys gripper" in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_results_json_names_absolute_paths_for_a_run_given_relative_ones(tmp_path, monkeypatch):
    """plot_path, config.output_dir and config.dataset_path were relative to a working directory it does not record."""
    pytest.importorskip("matplotlib")
    dataset = make_dataset(tmp_path / "ds", lengths=(5,))
    monkeypatch.chdir(tmp_path)
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        assert open_loop("ds", server, "out") == 0
    written = results(tmp_path / "out")
    assert written["config"]["dataset_path"] == str(dataset.resolve())
    assert written["config"]["output_dir"] == str((tmp_path / "out").resolve())
    assert written["trajectories"]["0"]["plot_path"] == str((tmp_path / "out" / "traj_0.jpeg").resolve())


def test_a_plot_folder_holding_another_runs_results_is_refused(tmp_path, capsys):
    """--save-plot-path into another run's output folder replaced its plots, which its results.json names."""
    pytest.importorskip("matplotlib")
    dataset = make_dataset(tmp_path / "ds", lengths=(6,))
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        assert open_loop(dataset, server, tmp_path / "out_a") == 0
        plot_a = (tmp_path / "out_a" / "traj_0.jpeg").read_bytes()
        capsys.readouterr()
        assert open_loop(dataset, server, tmp_path / "out_b", "--save-plot-path", f"{tmp_path / 'out_a'}/") == 2
        err = capsys.readouterr().err
        assert f"the plot folder {tmp_path / 'out_a'} holds another run's results.json" in err
        assert (tmp_path / "out_a" / "traj_0.jpeg").read_bytes() == plot_a and not (tmp_path / "out_b").exists()
        # its own output folder is no other run's, --overwrite or not
        assert open_loop(dataset, server, tmp_path / "out_a", "--overwrite", "--save-plot-path",
                         f"{tmp_path / 'out_a'}/") == 0


def test_each_plot_panel_shows_its_own_keys_state_or_none(tmp_path, drawn):
    """Total widths matched (2 + 2 + 2 state, 3 + 1 + 2 action), so panel arm[2] drew the gripper's state."""
    dims = dict(state_dims={"arm": 2, "gripper": 2, "wrist": 2}, action_dims={"arm": 3, "gripper": 1, "wrist": 2})
    dataset = make_dataset(tmp_path / "ds", lengths=(6,), **dims)
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        assert open_loop(dataset, server, tmp_path / "out") == 0
    with_state = {title: lines["state joints"][1] for title, lines in drawn[-1] if "state joints" in lines}
    assert sorted(with_state) == ["wrist[0]", "wrist[1]"]
    state = pq.read_table(next((dataset / "data").rglob("*.parquet"))).to_pydict()["observation.state"]
    modality = json.loads((dataset / "meta" / "modality.json").read_text())["state"]["wrist"]
    recorded = np.asarray(state, float)[:, modality["start"]:modality["end"]]
    for dim in range(2):
        assert np.allclose(with_state[f"wrist[{dim}]"], recorded[:, dim])


def test_the_inference_points_of_a_panel_are_one_plotted_line(tmp_path, drawn):
    """One ax.plot per query per panel: minutes of drawing for long episodes at --execution-horizon 1."""
    dataset = make_dataset(tmp_path / "ds", lengths=(6,))
    with running_server(ReplayPolicy(dataset, execution_horizon=1)) as server:
        assert open_loop(dataset, server, tmp_path / "out", "--execution-horizon", "1") == 0
    for title, lines in drawn[-1]:
        points = [label for label in lines if "inference point" in label]
        assert points == ["inference point"], (title, list(lines))
        assert list(lines["inference point"][0]) == [0, 1, 2, 3, 4, 5]
        assert len(lines) <= 4  # state, recorded, predicted, inference points


def test_modality_keys_the_policy_does_not_output_are_refused_before_overwrite_empties_the_folder(tmp_path, capsys):
    """Checked against the dataset only: --overwrite emptied the folder and every trajectory errored on 'gripper'."""
    dataset = make_dataset(tmp_path / "ds", lengths=(12,))
    out = tmp_path / "out"
    full = ReplayPolicy(dataset, execution_horizon=4)
    with running_server(full) as server:
        assert open_loop(dataset, server, out, "--steps", "8", "--no-plots") == 0
    before = (out / "results.json").read_text()
    configs = dict(full.get_modality_config())
    configs["action"] = dataclasses.replace(configs["action"], modality_keys=["arm"])
    capsys.readouterr()
    with running_server(ReplayPolicy(dataset, modality_configs=configs, execution_horizon=4)) as server:
        assert open_loop(dataset, server, out, "--steps", "8", "--no-plots", "--overwrite",
                         "--modality-keys", "arm", "action.gripper") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "['gripper'] are not among the policy's action keys ['arm']" in err, err
        assert (out / "results.json").read_text() == before
        assert open_loop(dataset, server, tmp_path / "arm", "--steps", "8", "--no-plots",
                         "--modality-keys", "action.arm") == 0


def test_a_check_made_for_other_settings_is_refused_naming_them(tmp_path):
    """evaluate_open_loop ran the checked config's trajectories and steps, labelled as the ones asked for."""
    from gr00t_client import PolicyClient
    from gr00t_eval.open_loop import OpenLoopConfig, check_open_loop_policy, evaluate_open_loop

    dataset = make_dataset(tmp_path / "ds", lengths=(12, 10))
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        client = PolicyClient(host="127.0.0.1", port=server.port)
        checked = check_open_loop_policy(client, OpenLoopConfig(dataset_path=str(dataset), steps=8, plot=False))
        asked = OpenLoopConfig(dataset_path=str(dataset), traj_ids=(0, 1), steps=4, plot=False,
                               output_dir=str(tmp_path / "out"))
        with pytest.raises(ValueError, match=r"traj_ids: checked \[0\], given \[0, 1\]; steps: checked 8, given 4"):
            evaluate_open_loop(client, asked, checked=checked)
        assert not (tmp_path / "out").exists()
        same = dataclasses.replace(asked, traj_ids=[0], steps=8)  # another output_dir is this check's run
        assert sorted(evaluate_open_loop(client, same, checked=checked, progress=False).trajectories) == [0]


def test_a_config_changed_after_its_check_or_spelt_otherwise_is_judged_by_its_values(tmp_path):
    """The check kept the caller's own config object: one changed afterwards compared equal to itself and ran the old
    settings. And equal settings of another type (a tuple of keys, a Path) were refused as another config."""
    from gr00t_client import PolicyClient
    from gr00t_eval.open_loop import OpenLoopConfig, check_open_loop_policy, evaluate_open_loop

    dataset = make_dataset(tmp_path / "ds", lengths=(12, 10))
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        client = PolicyClient(host="127.0.0.1", port=server.port)
        config = OpenLoopConfig(dataset_path=str(dataset), traj_ids=[0], steps=4, plot=False,
                                output_dir=str(tmp_path / "a"))
        checked = check_open_loop_policy(client, config)
        config.traj_ids, config.steps = [1], 8
        with pytest.raises(ValueError, match=r"traj_ids: checked \[0\], given \[1\]; steps: checked 4, given 8"):
            evaluate_open_loop(client, config, checked=checked, progress=False)
        spelt = OpenLoopConfig(dataset_path=dataset, steps=4, plot=False, modality_keys=("arm", "gripper"))
        checked = check_open_loop_policy(client, spelt)
        run = OpenLoopConfig(dataset_path=str(dataset), steps=4, plot=False, modality_keys=["arm", "gripper"],
                             output_dir=str(tmp_path / "b"))
        assert sorted(evaluate_open_loop(client, run, checked=checked, progress=False).trajectories) == [0]


def test_a_check_reused_for_another_output_folder_still_keeps_another_runs_plots(tmp_path):
    """The plot files were checked with the check only: a check reused for a second output folder replaced the plot the
    first run's results.json names."""
    pytest.importorskip("matplotlib")
    from gr00t_client import PolicyClient
    from gr00t_eval.open_loop import OpenLoopConfig, check_open_loop_policy, evaluate_open_loop

    dataset = make_dataset(tmp_path / "ds", lengths=(12,))
    config = OpenLoopConfig(dataset_path=str(dataset), steps=4, plot_path=f"{tmp_path / 'plots'}/")
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        client = PolicyClient(host="127.0.0.1", port=server.port)
        checked = check_open_loop_policy(client, config)
        first = dataclasses.replace(config, output_dir=str(tmp_path / "run1"))
        evaluate_open_loop(client, first, checked=checked, progress=False)
        drawn = (tmp_path / "plots" / "traj_0.jpeg").read_bytes()
        with pytest.raises(ValueError, match=r"would replace .*traj_0.jpeg, which is there already"):
            evaluate_open_loop(client, dataclasses.replace(config, output_dir=str(tmp_path / "run2")),
                               checked=checked, progress=False)
    assert (tmp_path / "plots" / "traj_0.jpeg").read_bytes() == drawn


@pytest.mark.parametrize("modality_keys", [None, ["arm", "gripper"]], ids=["policy's keys", "--modality-keys"])
def test_a_policy_reporting_its_keys_in_the_flat_spelling_is_refused_naming_the_spelling(tmp_path, modality_keys):
    """A policy reporting `action.arm` against a dataset's `arm` was refused as sharing no key with it ('evaluate this
    policy against a dataset of its own embodiment'); taken by its plain names, its state and video keys were sent
    back doubled (`state.state.arm`). Such configs are refused naming their spelling."""
    from gr00t_eval.open_loop import OpenLoopConfig, check_open_loop_policy

    dataset = make_dataset(tmp_path / "ds", lengths=(8,))

    class FlatKeys(ReplayPolicy):
        def get_modality_config(self):
            return {kind: dataclasses.replace(config, modality_keys=[f"{kind}.{k}" for k in config.modality_keys])
                    for kind, config in super().get_modality_config().items()}

    config = OpenLoopConfig(dataset_path=str(dataset), steps=4, plot=False, modality_keys=modality_keys)
    with pytest.raises(ValueError, match=r"names its keys in the flat spelling \(.*action: \['action.arm', "
                       r"'action.gripper'\]\); expected the plain names"):
        check_open_loop_policy(FlatKeys(dataset, execution_horizon=4), config)


def test_a_plot_path_naming_a_users_own_file_is_refused_as_a_file_there_not_as_an_earlier_runs(tmp_path, capsys):
    """A file no run wrote (no results.json anywhere) was refused as "an earlier run's, which its results.json names",
    sending the user looking for a run that never was."""
    pytest.importorskip("matplotlib")
    dataset = make_dataset(tmp_path / "ds", lengths=(12,))
    mine = tmp_path / "figure.png"
    mine.write_bytes(b"\x89PNG\r\n\x1a\nmy own figure")
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        assert open_loop(dataset, server, tmp_path / "out", "--steps", "4", "--save-plot-path", str(mine)) == 2
    err = capsys.readouterr().err
    assert f"would replace {mine}, which is there already (a file this run would replace)" in err
    assert "results.json names" not in err
    assert mine.read_bytes() == b"\x89PNG\r\n\x1a\nmy own figure" and not (tmp_path / "out").exists()


def test_a_plot_path_holding_another_runs_plot_is_refused_naming_the_file(tmp_path, capsys):
    """Run B (another --output-dir, the same --save-plot-path) replaced run A's plot, which A's results.json names."""
    pytest.importorskip("matplotlib")
    dataset = make_dataset(tmp_path / "ds", lengths=(12,))
    plot_dir = tmp_path / "plots"
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        assert open_loop(dataset, server, tmp_path / "a", "--steps", "8", "--save-plot-path", f"{plot_dir}/") == 0
        named = Path(results(tmp_path / "a")["trajectories"]["0"]["plot_path"])
        drawn_by_a = named.read_bytes()
        capsys.readouterr()
        assert open_loop(dataset, server, tmp_path / "b", "--steps", "4", "--save-plot-path", f"{plot_dir}/") == 2
        assert f"would replace {plot_dir / 'traj_0.jpeg'}, which is there already" in capsys.readouterr().err
        assert named.read_bytes() == drawn_by_a and not (tmp_path / "b").exists()
        single = tmp_path / "single.png"
        assert open_loop(dataset, server, tmp_path / "c", "--steps", "4", "--save-plot-path", str(single)) == 0
        assert open_loop(dataset, server, tmp_path / "d", "--steps", "4", "--save-plot-path", str(single)) == 2
        assert f"would replace {single}" in capsys.readouterr().err
        # the run's own --output-dir is its own to write in (an --overwrite run empties it first)
        own = tmp_path / "own"
        assert open_loop(dataset, server, own, "--steps", "4", "--save-plot-path", f"{own}/") == 0
        assert open_loop(dataset, server, own, "--steps", "4", "--save-plot-path", f"{own}/", "--overwrite") == 0
        # run A again with --overwrite: the plot its own earlier results.json names is its own to replace
        capsys.readouterr()
        assert open_loop(dataset, server, tmp_path / "a", "--steps", "4", "--save-plot-path", f"{plot_dir}/",
                         "--overwrite") == 0, capsys.readouterr().err
        assert results(tmp_path / "a")["trajectories"]["0"]["steps"] == 4


def test_results_json_names_the_plot_path_absolute(tmp_path, monkeypatch):
    """dataset_path and output_dir were made absolute; plot_path stayed relative to an unrecorded directory."""
    pytest.importorskip("matplotlib")
    make_dataset(tmp_path / "ds", lengths=(8,))
    monkeypatch.chdir(tmp_path)
    with running_server(ReplayPolicy(tmp_path / "ds", execution_horizon=4)) as server:
        assert open_loop("ds", server, "out", "--steps", "4", "--save-plot-path", "figs/plot.png") == 0
        assert open_loop("ds", server, "out2", "--steps", "4", "--save-plot-path", "folder/") == 0
    assert results(tmp_path / "out")["config"]["plot_path"] == str(tmp_path.resolve() / "figs" / "plot.png")
    assert results(tmp_path / "out2")["config"]["plot_path"] == f"{tmp_path.resolve() / 'folder'}/"


@pytest.mark.parametrize("kind, extra", [("state", "torso"), ("video", "depth_camera")])
def test_policy_keys_the_dataset_lacks_are_refused_before_overwrite_empties_the_folder(tmp_path, capsys, kind, extra):
    """Only action keys were checked before the claim: a state or camera key the dataset lacks was found in the first
    trajectory, after --overwrite had emptied the folder, and the earlier complete results were replaced by an
    aborted run of 0 trajectories."""
    dataset = make_dataset(tmp_path / "ds", lengths=(12,))
    out = tmp_path / "out"
    full = ReplayPolicy(dataset, execution_horizon=4)
    with running_server(full) as server:
        assert open_loop(dataset, server, out, "--steps", "8") == 0
    kept = {path.name: path.read_bytes() for path in out.iterdir()}
    configs = dict(full.get_modality_config())
    configs[kind] = dataclasses.replace(configs[kind], modality_keys=[*configs[kind].modality_keys, extra])
    capsys.readouterr()
    with running_server(ReplayPolicy(dataset, modality_configs=configs, execution_horizon=4)) as server:
        assert open_loop(dataset, server, out, "--steps", "8", "--overwrite") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"the policy's {kind} keys ['{extra}'] are not in the dataset's meta/modality.json" in err, err
        assert server.stats.snapshot()["policy_calls"] == 0  # refused before any trajectory
    assert {path.name: path.read_bytes() for path in out.iterdir()} == kept


def test_a_plot_another_run_writes_into_the_shared_plot_folder_during_the_run_is_kept_and_this_plot_fails(tmp_path,
                                                                                                       capsys):
    """The plot folder was checked only at the start: run B, sharing it, wrote traj_0.jpeg meanwhile, and this run's
    plot replaced it while both results.json named that file as their own plot."""
    pytest.importorskip("matplotlib")
    dataset = make_dataset(tmp_path / "ds", lengths=(12,))
    plot_dir = tmp_path / "plots"
    others = plot_dir / "traj_0.jpeg"

    class OtherRunPlotsFirst(ReplayPolicy):
        def _get_action(self, observation, options=None):
            if not others.exists():  # run B, into the same plot folder, finishes its plot now
                plot_dir.mkdir(exist_ok=True)
                others.write_bytes(b"run B's plot")
            return super()._get_action(observation, options)

    with running_server(OtherRunPlotsFirst(dataset, execution_horizon=4)) as server:
        assert open_loop(dataset, server, tmp_path / "a", "--steps", "8", "--save-plot-path", f"{plot_dir}/") == 0
    assert others.read_bytes() == b"run B's plot"
    entry = results(tmp_path / "a")["trajectories"]["0"]
    assert entry["plot_path"] is None and entry["mse"] == 0.0
    assert entry["plot_error"].startswith(f"{others}: FileExistsError: a file of that name appeared there during this "
                                          "run"), entry["plot_error"]
    assert "Plots not written for trajectories 0" in capsys.readouterr().out
    assert sorted(path.name for path in plot_dir.iterdir()) == ["traj_0.jpeg"]  # no temporary left beside it
