"""Output directories: two runs started together into one directory, an --output-dir that is (or holds) the dataset
or a checkpoint, a symbolic link to nowhere, a folder --overwrite must not empty (a project's, one of other runs'
folders) and the earlier run's own folder it empties, and a path under a file."""

import json
import os
from pathlib import Path

import pytest
from eval.dataset_factory import make_dataset
from eval.deep_paths import folder_near_path_max

from gr00t_eval.cli import main
from gr00t_eval.run_dir import OutputDirError, write_run_file


def test_of_two_runs_started_into_one_directory_the_second_is_refused_at_its_run_file(tmp_path):
    # Both passed the "empty" check together; the run file, written over by the second, hid the first run's results.
    write_run_file(tmp_path, {"env_name": "walkto/slow", "config": {"seed": 1}})
    with pytest.raises(OutputDirError, match="is taken by another run started meanwhile"):
        write_run_file(tmp_path, {"env_name": "walkto/fast", "config": {"seed": 2}})
    assert json.loads((tmp_path / "run.json").read_text())["env_name"] == "walkto/slow"


@pytest.mark.parametrize("where", ["the dataset", "its parent", "its meta folder"])
def test_open_loop_overwrite_never_deletes_the_dataset_it_evaluates(tmp_path, capsys, where):
    dataset = make_dataset(tmp_path / "parent" / "dataset")
    (tmp_path / "parent" / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = {"the dataset": dataset, "its parent": dataset.parent, "its meta folder": dataset / "meta"}[where]
    code = main(["open-loop", "--dataset-path", str(dataset), "--output-dir", str(out), "--overwrite",
                 "--port", "9", "--timeout-ms", "500"])
    assert code == 2
    err = capsys.readouterr().err
    assert "name another directory" in err and ("is the dataset" in err or "a folder holding the dataset" in err
                                                 or "inside the dataset" in err)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def _rollout_overwrite(out):
    """`gr00t-eval rollout --output-dir out --overwrite` (refused before it connects: no server on port 9)."""
    return main(["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--output-dir",
                 str(out), "--overwrite", "--policy-client-port", "9", "--timeout-ms", "500"])


@pytest.mark.parametrize("inside", ["recorded", ".cache/recorded", ".gr00t_data/recorded", ".gr00t/datasets/recorded"])
def test_rollout_overwrite_refuses_a_directory_holding_a_dataset(tmp_path, capsys, inside):
    """A user's folder named .gr00t... is not one of the tools' own: a dataset in it was emptied (R52)."""
    make_dataset(tmp_path / "out" / inside)
    (tmp_path / "out" / "episodes.jsonl").write_text("")  # an earlier run's folder, which --overwrite empties
    assert _rollout_overwrite(tmp_path / "out") == 2
    assert (f"holds, in {inside}/, a LeRobot dataset (meta/info.json); --overwrite never deletes one"
            in capsys.readouterr().err)
    assert (tmp_path / "out" / inside / "meta" / "info.json").is_file()


@pytest.mark.skipif(os.name == "nt", reason="symbolic links")
def test_rollout_overwrite_refuses_a_directory_holding_a_dataset_whose_info_json_is_not_fetched(tmp_path, capsys):
    """meta/info.json a link to a file git-annex has not fetched yet (dangling): still a dataset, never emptied."""
    dataset = make_dataset(tmp_path / "out" / "recorded")
    (dataset / "meta" / "info.json").unlink()
    (dataset / "meta" / "info.json").symlink_to(tmp_path / "annex" / "objects" / "info.json")
    (tmp_path / "out" / "episodes.jsonl").write_text("")
    assert _rollout_overwrite(tmp_path / "out") == 2
    assert "holds, in recorded/, a LeRobot dataset (meta/info.json)" in capsys.readouterr().err
    assert (dataset / "data").is_dir()


def test_overwrite_empties_an_earlier_runs_folder_whose_trash_holds_a_dataset_tree(tmp_path):
    """The tools' own folders are not searched: what a stopped overwrite moved into .gr00t_overwritten/ is deleted."""
    from gr00t_eval.run_dir import prepare_output_dir

    out = tmp_path / "out"
    make_dataset(out / ".gr00t_overwritten" / "tmpaside" / "0_recorded")
    (out / "episodes.jsonl").write_text("")
    prepare_output_dir(out, overwrite=True)
    assert list(out.iterdir()) == []


@pytest.mark.skipif(os.name == "nt", reason="symbolic links")
def test_an_output_dir_that_is_a_link_to_nowhere_is_named(tmp_path, capsys):
    (tmp_path / "out").symlink_to(tmp_path / "missing")
    code = main(["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--output-dir",
                 str(tmp_path / "out"), "--policy-client-port", "9", "--timeout-ms", "500"])
    assert code == 2
    assert f"is a symbolic link to {tmp_path / 'missing'}, which does not exist" in capsys.readouterr().err


@pytest.mark.skipif(os.name == "nt", reason="symbolic links")
@pytest.mark.parametrize("flag, link, expected", [
    ("--video-dir", "dangling", "--video-dir {tmp}/dangling is a symbolic link to {tmp}/missing, which does not exist"),
    ("--video-dir", "loop1", "--video-dir {tmp}/loop1 is a symlink loop"),
    ("--video-dir", "dangling/cam", "--video-dir {tmp}/dangling/cam lies under {tmp}/dangling, a symbolic link to "
                                    "{tmp}/missing, which does not exist"),
    ("--output-dir", "loop1", "--output-dir {tmp}/loop1 is a symlink loop"),
])
def test_a_rollout_folder_that_is_a_dangling_link_or_a_symlink_loop_is_named_in_one_line(tmp_path, capsys, flag, link,
                                                                                         expected):
    """A dangling --video-dir read "is not writable (File exists)", a looping one a raw RuntimeError, and a looping
    --output-dir "a symbolic link to loop2, which does not exist" (loop2 exists: it links back)."""
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    folders = {"--output-dir": str(tmp_path / "out"), flag: str(tmp_path / link)}
    code = main(["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--policy-client-port",
                 "38054", "--timeout-ms", "500", *[arg for item in folders.items() for arg in item]])
    assert code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert expected.format(tmp=tmp_path) in last_line and "Error" not in last_line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "loop1", "loop2"]


def test_an_overwrite_started_while_another_run_takes_the_directory_is_refused_not_emptying_it(tmp_path):
    # Run A holds the directory's lock while it empties it and writes its run file; run B, started meanwhile with
    # --overwrite, used to empty A's fresh run.json away and run too (both exit 0, one run's results lost).
    import subprocess
    import sys
    import time
    from pathlib import Path

    from gr00t_eval.run_claim import finish_claim
    from gr00t_eval.run_dir import ROLLOUT_LOCK_FILENAME, directory_lock, held_run_claims

    out = tmp_path / "out"
    out.mkdir()
    with held_run_claims():
        write_run_file(out, {"env_name": "walkto/slow", "config": {"seed": 0}})  # an earlier run, finished below
    tests = str(Path(__file__).resolve().parents[1])
    with directory_lock(out / ROLLOUT_LOCK_FILENAME):
        b = subprocess.Popen(
            [sys.executable, "-c", "import sys; from gr00t_eval.cli import main; sys.exit(main())", "rollout",
             "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--output-dir", str(out), "--overwrite",
             "--policy-client-port", "9", "--timeout-ms", "500", "--seed", "1"],
            env={**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # B passes its first check (the earlier run finished) and waits for the lock: seen in /proc/locks (a fixed 4 s
        # nap let a slow start reach its first check only after A's claim below, and the race went untested)
        deadline = time.monotonic() + 60
        while not _waits_for_a_flock(b.pid) and b.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        (out / "run.json").unlink()  # A empties the directory and takes it
        write_run_file(out, {"env_name": "walkto/fast", "config": {"seed": 2}})
    _, err = b.communicate(timeout=120)
    assert b.returncode == 2, err
    assert "is in use: the run that claimed it is still running" in err
    assert json.loads((out / "run.json").read_text())["env_name"] == "walkto/fast"  # A's claim is intact
    finish_claim(out / "run.json", "complete")


def _waits_for_a_flock(pid: int) -> bool:
    """Whether process `pid` is blocked in flock (Linux's /proc/locks); without /proc/locks, after a 4 s nap."""
    import time
    from pathlib import Path

    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        time.sleep(4)
        return True
    return any(len(parts) > 5 and parts[1] == "->" and parts[5] == str(pid) for parts in map(str.split, lines))


@pytest.mark.parametrize("inside", ["meta", "data/chunk-000"])
def test_rollout_overwrite_refuses_a_directory_inside_a_dataset_or_holding_a_checkpoint_deep_down(tmp_path, capsys, inside):
    dataset = make_dataset(tmp_path / "dataset")
    before = sorted(p.relative_to(tmp_path) for p in dataset.rglob("*"))
    code = main(["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--output-dir",
                 str(dataset / inside), "--overwrite", "--policy-client-port", "9", "--timeout-ms", "500"])
    assert code == 2 and f"lies inside {dataset}, a LeRobot dataset" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in dataset.rglob("*")) == before
    deep = tmp_path / "runs" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "config.json").write_text("{}")
    (deep / "model.safetensors").write_bytes(b"0")
    code = main(["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--output-dir",
                 str(tmp_path / "runs"), "--overwrite", "--policy-client-port", "9", "--timeout-ms", "500"])
    assert code == 2 and "holds, in a/b/, a model checkpoint" in capsys.readouterr().err
    assert (deep / "model.safetensors").is_file()


def test_a_rollout_that_stopped_before_its_first_episode_leaves_no_run_file_in_the_way(tmp_path, capsys):
    from eval.scale_fixtures import free_port, policy_server

    out = tmp_path / "out"
    args = ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--output-dir", str(out),
            "--timeout-ms", "1000", "--n-episodes", "2", "--seed", "0", "--n-envs", "1", "--n-action-steps", "2",
            "--max-episode-steps", "6", "--no-video", "--vectorization", "sync"]
    assert main([*args, "--policy-client-port", str(free_port())]) == 2  # no server there yet
    assert not (out / "run.json").exists()
    with policy_server() as server:  # the same command, once the server is up: not refused as "not empty"
        assert main([*args, "--policy-client-port", str(server.port)]) == 0
    assert json.loads((out / "results.json").read_text())["overall"]["n_episodes"] == 2


def _project_folder(folder):
    """A folder of the user's own that holds no run: --overwrite must not empty it."""
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "main.py").write_text("print('hi')\n")
    (folder / "thesis.txt").write_text("three years of work\n")
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


@pytest.mark.parametrize("command", ["rollout", "open-loop", "batch"])
def test_overwrite_refuses_a_folder_holding_no_earlier_run_and_deletes_nothing(tmp_path, capsys, command):
    out = tmp_path / "project"
    before = _project_folder(out)
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"jobs": [{"name": "j1", "env_name": "metaworld/reach-v3", "n_episodes": 1, "n_envs": 1,
                                          "policy_server": {"host": "127.0.0.1", "port": 9, "timeout_ms": 500}}]}))
    args = {"rollout": ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures",
                        "--policy-client-port", "9", "--timeout-ms", "500"],
            "open-loop": ["open-loop", "--dataset-path", str(make_dataset(tmp_path / "dataset")), "--port", "9",
                          "--timeout-ms", "500"],
            "batch": ["batch", "--jobs", str(jobs)]}[command]
    assert main([*args, "--output-dir", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {out} holds src, thesis.txt but no earlier run's own file at its top" in err
    assert "nothing was deleted" in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_batch_overwrite_refuses_a_project_folder_whose_own_folders_are_named_jobs_and_videos(tmp_path, capsys):
    from eval.scale_fixtures import policy_server

    project = tmp_path / "project"
    (project / "jobs").mkdir(parents=True)
    (project / "videos").mkdir()
    (project / "jobs" / "train.sbatch").write_text("#!/bin/bash\n# the user's cluster script\n")
    (project / "videos" / "demo_take3.mp4").write_bytes(b"\0" * 100)
    with policy_server() as server:
        (project / "jobs.json").write_text(json.dumps({"jobs": [{
            "name": "a", "env_name": "walkto/fast", "n_episodes": 1, "n_envs": 1,
            "policy_server": {"host": "127.0.0.1", "port": server.port}, "overrides": {"n_action_steps": 2}}]}))
        before = sorted(p.relative_to(project) for p in project.rglob("*"))
        assert main(["batch", "--jobs", str(project / "jobs.json"), "--output-dir", str(project), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {project} holds jobs, videos but no earlier run's own file at its top" in err
    assert "nothing was deleted" in err
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before


def test_rollout_overwrite_refuses_a_folder_holding_other_runs_dated_folders(tmp_path, capsys):
    from eval.scale_fixtures import policy_server

    base = tmp_path / "rollouts"
    args = ["rollout", "--env-name", "walkto/fast", "--env-import", "eval.scale_fixtures", "--timeout-ms", "5000",
            "--n-episodes", "2", "--seed", "0", "--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6",
            "--no-video", "--vectorization", "sync"]
    with policy_server() as server:
        for run in ("2026-12-05/09-00-00_walkto", "2026-12-06/10-00-00_walkto"):
            assert main([*args, "--policy-client-port", str(server.port), "--output-dir", str(base / run)]) == 0
        # a merge of them kept beside them (`merge ... --output rollouts/merged.json`) makes it no run's folder
        assert main(["merge", str(base / "2026-12-05/09-00-00_walkto/results.json"), "--output",
                     str(base / "merged.json")]) == 0
        before = sorted(p.relative_to(base) for p in base.rglob("*"))
        capsys.readouterr()
        assert main([*args, "--policy-client-port", str(server.port), "--output-dir", str(base), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {base} holds 2026-12-05, 2026-12-06, eval_info.json, merged.json but no earlier run's own " \
           "file at its top" in err, err
    assert "nothing was deleted" in err
    assert sorted(p.relative_to(base) for p in base.rglob("*")) == before


def test_open_loop_overwrite_empties_its_own_earlier_folder_holding_plots_of_its_own_names(tmp_path):
    from gr00t_server.policies.replay import ReplayPolicy
    from serving import running_server

    dataset = make_dataset(tmp_path / "dataset", lengths=(6, 6))
    out = tmp_path / "out"
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        args = ["open-loop", "--dataset-path", str(dataset), "--port", str(server.port), "--output-dir", str(out),
                "--traj-ids", "0", "1", "--save-plot-path", str(out / "plot.png")]
        assert main(args) == 0
        assert main([*args, "--overwrite"]) == 0  # the same command, replacing its own earlier output
    # and the claim's alive file (run_claim.holding_claim), hidden, this tool's own
    assert sorted(p.name for p in out.iterdir()) == [".gr00t_open_loop_run.json.alive", "open_loop_run.json",
                                                     "plot_traj0.png", "plot_traj1.png", "results.json"]


@pytest.mark.parametrize("command", ["rollout", "batch", "record"])
def test_an_output_dir_under_a_file_names_that_file(tmp_path, capsys, command):
    (tmp_path / "afile").write_text("a plain file\n")
    out = tmp_path / "afile" / "sub" / "run"
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"jobs": [{"name": "j1", "env_name": "metaworld/reach-v3", "n_episodes": 1, "n_envs": 1,
                                          "policy_server": {"host": "127.0.0.1", "port": 9, "timeout_ms": 500}}]}))
    args = {"rollout": ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures",
                        "--policy-client-port", "9", "--timeout-ms", "500", "--output-dir", str(out)],
            "batch": ["batch", "--jobs", str(jobs), "--output-dir", str(out)],
            "record": ["record", "--env-name", "metaworld/reach-v3", "--episodes", "1", "--output", str(out)]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'afile'} exists and is not a directory" in err
    assert "[Errno" not in err
    assert (tmp_path / "afile").read_text() == "a plain file\n"


def test_overwrite_of_a_run_stopped_before_its_first_file_goes_ahead_for_another_command(tmp_path):
    # A rollout that reached no server left only its claim's lock: batch --overwrite called that lock a user's file.
    out = tmp_path / "out"
    assert main(["rollout", "--env-name", "walkto/fast", "--env-import", "eval.scale_fixtures", "--policy-client-port",
                 "9", "--timeout-ms", "300", "--output-dir", str(out), "--n-envs", "1", "--no-video"]) != 0
    assert [p.name for p in out.iterdir()] == [".gr00t_rollout.lock"]
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"jobs": [{"name": "a", "env_name": "walkto/fast", "n_episodes": 1,
                                          "policy_server": {"host": "127.0.0.1", "port": 9, "timeout_ms": 300}}]}))
    main(["batch", "--jobs", str(jobs), "--output-dir", str(out), "--overwrite"])
    assert (out / "batch_results.json").is_file()  # the batch took the folder (its job fails: no server)


def test_batch_overwrite_writes_a_jobs_file_kept_in_the_folder_back_under_its_own_name(tmp_path):
    from eval.scale_fixtures import policy_server

    out = tmp_path / "sweep"
    with policy_server() as server:
        jobs = {"jobs": [{"name": "a", "env_name": "walkto/fast", "n_episodes": 1, "n_envs": 1,
                          "policy_server": {"host": "127.0.0.1", "port": server.port},
                          "overrides": {"n_action_steps": 2, "max_episode_steps": 4}}]}
        out.mkdir()
        (out / "sweep_v2.json").write_text(json.dumps(jobs))
        args = ["batch", "--jobs", str(out / "sweep_v2.json"), "--output-dir", str(out)]
        assert main([*args, "--overwrite"]) == 0
        assert main([*args, "--overwrite"]) == 0  # the same command again: its job file is still there
    assert json.loads((out / "sweep_v2.json").read_text()) == jobs


def test_overwrite_refusing_a_merges_folder_says_its_results_json_is_no_runs(tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"kind": "rollout", "merged_from": 2}))
    assert main(["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--policy-client-port",
                 "9", "--timeout-ms", "500", "--output-dir", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {out} holds results.json but no earlier run's own file at its top" in err, err
    assert "(its results.json is no run's own: a merge's, or not a gr00t-eval run's)" in err
    assert (out / "results.json").is_file()


def _command_args(tmp_path, command):
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"jobs": [{"name": "j1", "env_name": "metaworld/reach-v3", "n_episodes": 1, "n_envs": 1,
                                          "policy_server": {"host": "127.0.0.1", "port": 9, "timeout_ms": 500}}]}))
    return {"rollout": ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures",
                        "--policy-client-port", "9", "--timeout-ms", "500"],
            "open-loop": ["open-loop", "--dataset-path", str(make_dataset(tmp_path / "dataset")), "--port", "9",
                          "--timeout-ms", "500"],
            "batch": ["batch", "--jobs", str(jobs)]}[command]


@pytest.mark.parametrize("command", ["rollout", "open-loop", "batch"])
def test_a_folder_overwrite_would_not_empty_is_refused_without_suggesting_overwrite(tmp_path, capsys, command):
    """'not empty; pass --overwrite to empty it' for a project folder, which --overwrite then refused: a circle."""
    out = tmp_path / "project"
    before = _project_folder(out)
    assert main([*_command_args(tmp_path, command), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {out} holds src, thesis.txt but no earlier run's own file at its top" in err
    assert "name another directory" in err and "pass --overwrite" not in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


@pytest.mark.parametrize("command", ["rollout", "open-loop", "batch"])
def test_a_dataset_folder_is_refused_without_suggesting_overwrite(tmp_path, capsys, command):
    out = make_dataset(tmp_path / "mydata")
    assert main([*_command_args(tmp_path, command), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {out} is a LeRobot dataset (meta/info.json); --overwrite never deletes one: name another " \
           "directory" in err
    assert "pass --overwrite" not in err
    assert (out / "meta" / "info.json").is_file()


@pytest.mark.parametrize("command", ["rollout", "open-loop", "batch"])
def test_an_output_dir_too_long_for_the_files_a_run_writes_is_refused_before_it_is_made(tmp_path, capsys, command):
    """A 4070-byte folder was claimed, every episode ran, and then results.json (written aside under a longer name)
    failed with 'File name too long', on every --resume too."""
    out, limit = folder_near_path_max(tmp_path, room=len("/results.json") + 1)
    assert main([*_command_args(tmp_path, command), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {out} is too long a path for the files written there: it is {len(str(out))} bytes" in err
    assert f"past this file system's limit of {limit} bytes for a path (PATH_MAX)" in err
    assert not out.exists()  # refused before anything is claimed


def test_an_output_dir_without_room_for_a_tasks_video_folder_is_refused(tmp_path, capsys):
    """The reserve counted videos/ alone: a run of several tasks writes into videos/<task folder>/ (up to 255
    characters), and in a folder with room for the one but not the other every video write failed while the run exited
    0 (R55)."""
    out, limit = folder_near_path_max(tmp_path, room=200)
    assert main([*_command_args(tmp_path, "rollout"), "--output-dir", str(out)]) == 2
    assert "a task's folder of 255 characters" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", ["rollout", "batch"])
def test_a_run_moved_too_deep_for_its_files_is_refused_on_resume_before_it_runs(tmp_path, capsys, command):
    """A stopped run moved deeper (an archive) was resumed: its missing episodes ran, and then eval_info.json failed
    with a bare 'File name too long' (R55)."""
    out, _limit = folder_near_path_max(tmp_path, room=300)
    out.mkdir()
    if command == "rollout":
        (out / "run.json").write_text("{}")
    else:
        args = _command_args(tmp_path, "batch")
        (out / "jobs.json").write_text(Path(args[args.index("--jobs") + 1]).read_text())
        (out / "batch_results.json").write_text(json.dumps({"jobs": []}))
    before = sorted(p.name for p in out.iterdir())
    assert main([command, "--resume", str(out)]) == 2
    assert f"--resume {out} is too long a path for the files written there" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before  # nothing claimed


def test_a_video_dir_too_long_for_the_videos_a_run_writes_is_refused_before_the_output_dir_is_claimed(tmp_path,
                                                                                                     capsys):
    videos, limit = folder_near_path_max(tmp_path / "v", room=len("/episode_0000_failure.mp4") + 1)
    out = tmp_path / "out"
    assert main([*_command_args(tmp_path, "rollout"), "--output-dir", str(out), "--video-dir", str(videos)]) == 2
    err = capsys.readouterr().err
    assert f"--video-dir {videos} is too long a path" in err and f"limit of {limit} bytes" in err
    assert not out.exists() and not videos.exists()
