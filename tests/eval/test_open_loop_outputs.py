"""open-loop's output directory follows rollout's policy: a new dated directory by default, a non-empty
--output-dir refused unless --overwrite (open-loop runs do not resume). Real replay server, real CLI."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from eval.dataset_factory import make_dataset
from gr00t_eval import cli, open_loop_cli
from gr00t_server.policies.replay import ReplayPolicy
from serving import running_server


EARLIER_RESULTS = json.dumps({"kind": "open_loop", "status": "complete"})  # an earlier run's own results


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("open_loop_outputs") / "my_robot", lengths=(6,))


@pytest.fixture(scope="module")
def server(dataset):
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as running:
        yield running


def open_loop(dataset, server, *extra):
    return cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(server.port), "--traj-ids", "0",
                     "--no-plots", *extra])


def test_the_default_output_dir_is_a_new_dated_directory_per_run(dataset, server, tmp_path, monkeypatch):
    monkeypatch.setattr(open_loop_cli, "DEFAULT_OPEN_LOOP_BASE", str(tmp_path / "base"))
    assert open_loop(dataset, server) == 0
    assert open_loop(dataset, server) == 0  # within the same second: a second directory, not a refusal
    runs = sorted((tmp_path / "base").glob("*/*_my_robot*"))
    assert len(runs) == 2 and runs[0].parent.name == time.strftime("%Y-%m-%d")
    assert all(json.loads((run / "results.json").read_text())["aggregated"]["n_trajectories"] == 1 for run in runs)


def test_a_non_empty_output_dir_is_refused_in_one_line_unless_overwrite_which_empties_it(dataset, server, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "traj_7.jpeg").write_text("an old plot")
    (out / "results.json").write_text(EARLIER_RESULTS)  # what makes it an earlier run's folder
    assert open_loop(dataset, server, "--output-dir", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and "do not resume" in err, err
    assert (out / "traj_7.jpeg").is_file() and (out / "results.json").read_text() == EARLIER_RESULTS

    assert open_loop(dataset, server, "--output-dir", str(out), "--overwrite") == 0
    assert not (out / "traj_7.jpeg").exists() and "aggregated" in json.loads((out / "results.json").read_text())


def test_a_new_or_empty_output_dir_is_used_as_given(dataset, server, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert open_loop(dataset, server, "--output-dir", str(empty)) == 0
    assert open_loop(dataset, server, "--output-dir", str(tmp_path / "new" / "nested")) == 0
    assert (empty / "results.json").is_file() and (tmp_path / "new" / "nested" / "results.json").is_file()


def test_a_dated_directory_taken_in_the_same_second_gets_a_numbered_sibling(tmp_path):
    from gr00t_eval.run_dir import make_fresh_dated_output_dir

    now = time.time()
    first = make_fresh_dated_output_dir(tmp_path, "reach/v3", now=now)
    second = make_fresh_dated_output_dir(tmp_path, "reach/v3", now=now)
    assert first.is_dir() and second.is_dir() and not any(second.iterdir())
    assert second.parent == first.parent and second.name == f"{first.name}-2"


# --- --save-plot-path -----------------------------------------------------------------------------------------


def open_loop_plotted(dataset, server, out, plot_path, *traj_ids_and_flags):
    return cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(server.port), "--output-dir", str(out),
                     "--execution-horizon", "4", "--save-plot-path", str(plot_path), "--traj-ids", *traj_ids_and_flags])


def plot_paths(out) -> dict:
    return {t: r["plot_path"] for t, r in json.loads((Path(out) / "results.json").read_text())["trajectories"].items()}


def test_a_save_plot_path_that_is_a_directory_gets_the_default_plot_names_there(dataset, server, tmp_path, capsys):
    """The reference's README calls the flag a directory: matplotlib wrote DIR.png beside it while the console and
    results.json named DIR, where there was no plot."""
    pytest.importorskip("matplotlib")
    plots = tmp_path / "plots"
    plots.mkdir()
    assert open_loop_plotted(dataset, server, tmp_path / "out", plots, "0") == 0
    assert plot_paths(tmp_path / "out") == {"0": str(plots / "traj_0.jpeg")}
    assert (plots / "traj_0.jpeg").is_file() and not (tmp_path / "plots.png").exists()
    assert f"Plots: {plots / 'traj_0.jpeg'}" in capsys.readouterr().out

    fresh = tmp_path / "fresh"  # a directory still to be made, written DIR/
    assert open_loop_plotted(dataset, server, tmp_path / "out2", f"{fresh}/", "0") == 0
    assert plot_paths(tmp_path / "out2") == {"0": str(fresh / "traj_0.jpeg")} and (fresh / "traj_0.jpeg").is_file()


@pytest.mark.parametrize("name, problem", [("myplot", "has no file suffix"),
                                           ("p.txt", "has suffix '.txt', which matplotlib cannot write")])
def test_a_save_plot_path_matplotlib_cannot_write_is_refused_before_connecting(dataset, server, tmp_path, capsys,
                                                                               name, problem):
    """No suffix wrote myplot.png while myplot was reported; '.txt' aborted the run after its first trajectory."""
    pytest.importorskip("matplotlib")
    assert open_loop_plotted(dataset, server, tmp_path / "out", tmp_path / name, "0") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"--save-plot-path {tmp_path / name} {problem}; expected a file name ending in one of " in err
    assert ".jpeg" in err and ".png" in err and "or a directory" in err
    assert not (tmp_path / "out" / "results.json").exists() and not list(tmp_path.glob(f"{name}*"))


def test_no_plots_beside_a_save_plot_path_is_refused_as_conflicting_before_connecting(dataset, server, tmp_path, capsys):
    """--no-plots won silently: the plot asked for by --save-plot-path was never written, and nothing said so."""
    plot = tmp_path / "p.png"
    assert open_loop(dataset, server, "--output-dir", str(tmp_path / "out"), "--save-plot-path", str(plot)) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"gr00t-eval open-loop: error: --no-plots and --save-plot-path {plot} conflict: give one"]
    assert not (tmp_path / "out").exists() and not plot.exists()


def test_the_no_suffix_refusal_recommends_only_suffixes_written_without_another_program(tmp_path):
    """It listed .pgf, which a machine without xelatex then refused; .pgf is named with what it needs."""
    pytest.importorskip("matplotlib")
    from gr00t_eval.plots import check_plot_path

    with pytest.raises(ValueError) as refusal:
        check_plot_path(str(tmp_path / "myplot"), "--save-plot-path")
    message = str(refusal.value)
    listed = message.split("one of ", 1)[1].split(", or a directory")[0].split(", ")
    assert ".pgf" not in listed and {".jpeg", ".png", ".pdf"} <= set(listed)
    assert message.endswith("; .pgf needs a TeX installation (xelatex)")
    for suffix in listed:  # each one recommended is written here
        check_plot_path(str(tmp_path / f"p{suffix}"), "--save-plot-path")


def test_a_save_plot_path_with_a_suffix_names_each_trajectorys_plot(dataset, server, tmp_path):
    pytest.importorskip("matplotlib")
    assert open_loop_plotted(dataset, server, tmp_path / "one", tmp_path / "p.png", "0") == 0
    assert plot_paths(tmp_path / "one") == {"0": str(tmp_path / "p.png")} and (tmp_path / "p.png").is_file()


def test_a_save_plot_path_whose_name_is_as_long_as_a_file_name_may_be_gets_its_plot(dataset, server, tmp_path):
    """The plot was written aside as .NAME.partial, 9 bytes over NAME_MAX: no plot, plot_error, exit 0."""
    pytest.importorskip("matplotlib")
    plot = tmp_path / ("q" * 250 + ".jpeg")  # 255 bytes: the longest legal name
    assert open_loop_plotted(dataset, server, tmp_path / "out", plot, "0") == 0
    assert plot_paths(tmp_path / "out") == {"0": str(plot)} and plot.is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_save_plot_path_too_long_for_each_trajectorys_suffix_is_refused_before_connecting(dataset, server, tmp_path,
                                                                                           capsys):
    """A 255-byte name passed the checks, then each trajectory's _traj{id} made a name past NAME_MAX: every plot
    failed after its trajectory was scored."""
    pytest.importorskip("matplotlib")
    plot = tmp_path / ("q" * 250 + ".jpeg")
    assert open_loop_plotted(dataset, server, tmp_path / "out", plot, "0", "12") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"--save-plot-path {plot}: the plot of trajectory 12 would be named {'q' * 250}_traj12.jpeg (262 bytes), " \
           "longer than a file name may be (255 bytes)" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_a_save_plot_path_in_a_format_this_machine_cannot_write_is_refused_before_connecting(dataset, server, tmp_path,
                                                                                             capsys):
    """.pgf is among matplotlib's file types and needs xelatex: without it the first trajectory was scored, its plot
    failed and the run ended ABORTED with the others not run."""
    pytest.importorskip("matplotlib")
    if shutil.which("xelatex"):
        pytest.skip("xelatex is installed: matplotlib writes .pgf here")
    assert open_loop_plotted(dataset, server, tmp_path / "out", tmp_path / "plots" / "p.pgf", "0") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"--save-plot-path {tmp_path / 'plots' / 'p.pgf'}: matplotlib cannot write .pgf plots on this machine" in err
    assert "xelatex" in err and "expected a suffix it writes here" in err
    assert not (tmp_path / "out" / "results.json").exists() and not (tmp_path / "plots").exists()


@pytest.mark.parametrize("under", ["plots/", "plots/p.png"])
def test_a_save_plot_path_under_a_file_is_refused_before_connecting(dataset, server, tmp_path, capsys, under):
    """A folder that cannot be made (a file in the way) failed at the first plot, after its trajectory was scored."""
    pytest.importorskip("matplotlib")
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    assert open_loop_plotted(dataset, server, tmp_path / "out", f"{tmp_path / 'notes.txt'}/{under}", "0") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{tmp_path / 'notes.txt'} is a file, so the plot folder" in err
    assert "expected a path whose existing part is a directory" in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_checking_a_plot_path_in_folders_not_made_yet_creates_nothing(tmp_path):
    """The folders are made when the first plot is written: a run refused for another reason leaves none behind."""
    pytest.importorskip("matplotlib")
    from gr00t_eval.plots import check_plot_path

    check_plot_path(f"{tmp_path / 'new' / 'plots'}/")
    check_plot_path(str(tmp_path / "other" / "p.png"))
    assert list(tmp_path.iterdir()) == []


def test_a_plot_that_cannot_be_written_during_the_run_is_a_warning_and_the_run_goes_on(tmp_path, capsys, caplog):
    """Each trajectory is scored before its plot is drawn: a plot that failed (here a folder sits where trajectory 1's
    plot goes) ended the run ABORTED, trajectory 2 not run. Now it is that trajectory's warning, and why is in
    results.json."""
    pytest.importorskip("matplotlib")
    dataset = make_dataset(tmp_path / "ds", lengths=(6, 5, 4))
    plots = tmp_path / "plots"
    (plots / "p_traj1.png").mkdir(parents=True)
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as running:
        assert open_loop_plotted(dataset, running, tmp_path / "out", plots / "p.png", "0", "1", "2") == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["status"] == "complete" and data["aggregated"]["n_trajectories"] == 3
    assert plot_paths(tmp_path / "out") == {"0": str(plots / "p_traj0.png"), "1": None, "2": str(plots / "p_traj2.png")}
    assert data["trajectories"]["1"]["plot_error"].startswith(f"{plots / 'p_traj1.png'}: IsADirectoryError")
    assert data["trajectories"]["0"]["plot_error"] is None
    assert "Plots not written for trajectories 1 (why: plot_error in results.json)" in capsys.readouterr().out
    assert any("trajectory 1 is scored, and its plot was not written" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_key_names_with_dollar_signs_are_plotted_as_written(tmp_path):
    """Titles were parsed as mathtext: a key named "arm$x^$" failed every plot of the run."""
    pytest.importorskip("matplotlib")
    from gr00t_eval.plots import plot_trajectory

    actions = np.zeros((4, 2))
    path = plot_trajectory(tmp_path / "traj_0.png", 0, actions, actions, [0], state_keys=["s$x^$"],
                           action_keys=["arm$x^$"], dim_labels=["arm$x^$[0]", "arm$x^$[1]"])
    assert path.is_file() and path.stat().st_size > 0


def test_an_action_of_170_dims_is_plotted_within_jpegs_size_limit(tmp_path):
    """One column of 170 panels, 4 inches each, was 68,000 pixels tall: past JPEG's 65,500, the plot failed."""
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from gr00t_eval.plots import plot_trajectory

    actions = np.linspace(0, 1, 4 * 170).reshape(4, 170)
    path = plot_trajectory(tmp_path / "traj_0.jpeg", 0, actions, actions + 0.1, [0])
    height, width, _ = imread(path).shape
    assert height <= 65500 and width <= 65500


@contextlib.contextmanager
def jpeg_saves_stopped_part_way():
    """Saving a JPEG file writes a first part of it, then a Ctrl-C lands (a KeyboardInterrupt from inside savefig):
    Pillow's JPEG writer, which matplotlib saves through, is swapped for the block. A save to memory (check_plot_path's
    trial figure) is left whole."""
    from PIL import Image

    save_whole = Image.SAVE["JPEG"]

    def save_part(image, file, filename):
        if not filename:
            return save_whole(image, file, filename)
        file.write(b"\xff\xd8 the first part of a plot")
        raise KeyboardInterrupt

    Image.register_save("JPEG", save_part)
    try:
        yield
    finally:
        Image.register_save("JPEG", save_whole)


def test_a_stop_while_a_plot_is_saved_leaves_the_earlier_plot_whole_and_results_say_so(dataset, server, tmp_path):
    """The plot was written in place: a Ctrl-C while a rerun saved it left PATH truncated (the earlier complete plot
    gone) and results.json's plot_error null."""
    pytest.importorskip("matplotlib")
    plot = tmp_path / "plots" / "p.jpeg"
    assert open_loop_plotted(dataset, server, tmp_path / "first", plot, "0") == 0
    earlier = plot.read_bytes()
    # the same run again (--overwrite of its own --output-dir): the plot its results.json names is its own to replace
    with jpeg_saves_stopped_part_way():
        assert open_loop_plotted(dataset, server, tmp_path / "first", plot, "0", "--overwrite") == 130
    assert plot.read_bytes() == earlier
    assert sorted(path.name for path in plot.parent.iterdir()) == ["p.jpeg"]  # no temporary left
    data = json.loads((tmp_path / "first" / "results.json").read_text())
    assert data["status"] == "interrupted" and data["trajectories"]["0"]["plot_path"] is None
    assert data["trajectories"]["0"]["plot_error"] == f"{plot}: not written: the run was stopped (Ctrl-C/SIGTERM) while it was drawn"


def test_a_stop_while_a_plot_is_saved_in_the_output_dir_leaves_no_empty_plot_file(dataset, server, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    with jpeg_saves_stopped_part_way():
        assert cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(server.port), "--output-dir", str(out),
                         "--execution-horizon", "4", "--traj-ids", "0"]) == 130
    assert [path.name for path in out.iterdir() if "traj_0" in path.name] == []  # no empty plot, no temporary
    plot_error = json.loads((out / "results.json").read_text())["trajectories"]["0"]["plot_error"]
    assert plot_error.startswith(f"{out / 'traj_0.jpeg'}: not written: the run was stopped")


# --- --host HOST:PORT ----------------------------------------------------------------------------------------


def test_a_host_with_a_port_is_taken_as_host_and_port_as_rollout_takes_it(dataset, server, tmp_path):
    """It was refused in the Python API's words ("pass ... the port as port="), naming no flag."""
    out = tmp_path / "out"
    assert cli.main(["open-loop", "--dataset-path", str(dataset), "--host", f"127.0.0.1:{server.port}",
                     "--traj-ids", "0", "--no-plots", "--output-dir", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["status"] == "complete"


def test_a_host_whose_port_differs_from_the_port_flag_is_refused_naming_both_flags(dataset, server, tmp_path, capsys):
    code = cli.main(["open-loop", "--dataset-path", str(dataset), "--host", f"127.0.0.1:{server.port}", "--port",
                     str(server.port + 1), "--traj-ids", "0", "--no-plots", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert (f"--host '127.0.0.1:{server.port}' names port {server.port} and --port is {server.port + 1}; give the "
            "port once, in --host or with --port") in err
    assert "port=" not in err and not (tmp_path / "out").exists()


def test_the_servers_own_tcp_address_as_host_is_taken_as_host_and_port(dataset, server, tmp_path):
    """'--host tcp://127.0.0.1:PORT', as the server prints its address, was refused in the Python API's words."""
    out = tmp_path / "out"
    assert cli.main(["open-loop", "--dataset-path", str(dataset), "--host", f"tcp://127.0.0.1:{server.port}",
                     "--traj-ids", "0", "--no-plots", "--output-dir", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("host", [":5555", "localhost:"])
def test_a_host_with_an_empty_host_or_port_is_refused_naming_the_flag(dataset, tmp_path, capsys, host):
    code = cli.main(["open-loop", "--dataset-path", str(dataset), "--host", host, "--traj-ids", "0", "--no-plots",
                     "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"--host entry {host!r}: the " in err and "expected HOST or HOST:PORT" in err
    assert "port=" not in err and not (tmp_path / "out").exists()


NOBODY = 65534


def _as_nobody(argv):
    """(exit code, stderr) of `gr00t-eval argv` run by user nobody: a forked child of this process (modules loaded
    already; the interpreter's own folder may be closed to that user), its stderr a pipe."""
    import os
    import sys
    import traceback

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.close(read_end)
            sys.stderr = os.fdopen(write_end, "w")
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = cli.main(argv)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as err:
        text = err.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), text


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() != 0,
                    reason="needs root, to run the command as another user")
@pytest.mark.parametrize("in_the_way", ["file", "link to nowhere"])
def test_a_default_output_dir_with_a_file_in_the_way_is_refused_before_connecting(tmp_path, monkeypatch, capsys,
                                                                                  in_the_way):
    """A file or a dangling link where the default's base folder belongs failed after connecting with a bare
    '[Errno 20] Not a directory' or '[Errno 17] File exists', and no word of --output-dir (R55)."""
    base = tmp_path / "open_loop_eval"
    if in_the_way == "file":
        base.write_text("not a folder")
    else:
        base.symlink_to(tmp_path / "unmounted" / "share")
    monkeypatch.setattr(open_loop_cli, "DEFAULT_OPEN_LOOP_BASE", str(base))
    dataset = make_dataset(tmp_path / "ds", lengths=(6,))
    argv = ["open-loop", "--dataset-path", str(dataset), "--port", "9", "--timeout-ms", "500", "--no-plots"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"cannot make the default output folder {base}/" in err
    assert f"{base} is not a folder; pass --output-dir DIR" in err and "no policy server answered" not in err


def test_a_default_output_dir_another_user_made_is_refused_before_connecting_naming_output_dir(monkeypatch):
    """Root's earlier run made /tmp/open_loop_eval/<date> (0755); user nobody's run without --output-dir connected,
    hashed the dataset, and then said only 'cannot open .../17-56-08_ds: Permission denied'."""
    import os
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="open_loop_shared_"))  # /tmp, as the real default: open to every user
    try:
        shared.chmod(0o755)
        dataset = make_dataset(shared / "ds", lengths=(6,))
        date_folder = shared / "open_loop_eval" / time.strftime("%Y-%m-%d")
        date_folder.mkdir(parents=True, mode=0o755)  # made by root's earlier run
        argv = ["open-loop", "--dataset-path", str(dataset), "--port", "9", "--timeout-ms", "500", "--no-plots"]
        monkeypatch.setattr(open_loop_cli, "DEFAULT_OPEN_LOOP_BASE", str(shared / "root_can"))
        assert cli.main(argv) == 2  # as root, the modules the child needs are loaded: no policy server on port 9
        monkeypatch.setattr(open_loop_cli, "DEFAULT_OPEN_LOOP_BASE", str(shared / "open_loop_eval"))
        code, err = _as_nobody(argv)
        assert code == 2, err
        assert f"cannot make the default output folder {date_folder}/" in err
        assert f"{date_folder} is not writable by this user" in err and "pass --output-dir DIR" in err
        assert "no policy server answered" not in err  # refused before connecting
        assert os.listdir(date_folder) == []
    finally:
        shutil.rmtree(shared)
