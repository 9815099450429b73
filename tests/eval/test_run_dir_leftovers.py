"""A rollout killed (kill -9, out of memory, a power loss) while it created its run file leaves only the half-written
`.run.json.PID.N.tmp` (and the folder's lock). The same command then refused the folder as "not empty", and the
`--resume` it suggested failed: there was no run.json. A dead process's half-written files now count as nothing
(and are deleted when the folder is claimed); a folder without run.json is never advised to be resumed. The leftover
is made here with the pid of a process that has certainly ended; the real CLI runs against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from eval.scale_fixtures import policy_server
from gr00t_eval.cli import main
from gr00t_eval.run_dir import ROLLOUT_LOCK_FILENAME


def ended_pid():
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def killed_while_creating_its_run_file(out, pid):
    """What a rollout killed between writing its run file aside and linking it into place leaves behind."""
    out.mkdir()
    (out / ROLLOUT_LOCK_FILENAME).touch()
    partial = out / f".run.json.{pid}.45999126453709.tmp"
    partial.write_text('{"created": "2026-01-01T00:00:00Z", "claim": {"pid": %d}}\n' % pid)
    return partial


def rollout_args(out, port):
    return ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--output-dir", str(out),
            "--timeout-ms", "3000", "--n-episodes", "2", "--seed", "0", "--n-envs", "1", "--n-action-steps", "2",
            "--max-episode-steps", "6", "--no-video", "--vectorization", "sync", "--policy-client-port", str(port)]


def test_the_same_rollout_runs_in_a_folder_left_with_a_dead_processs_half_written_run_file(tmp_path):
    out = tmp_path / "out"
    partial = killed_while_creating_its_run_file(out, ended_pid())
    with policy_server() as server:
        assert main(rollout_args(out, server.port)) == 0
    assert not partial.exists()  # deleted when the folder was claimed
    assert not list(out.glob(".*.tmp"))
    assert json.loads((out / "results.json").read_text())["overall"]["n_episodes"] == 2
    assert json.loads((out / "run.json").read_text())["claim"]["finished"] is True


def test_a_live_writers_half_written_file_is_content_and_the_refusal_does_not_suggest_resume(tmp_path, capsys,
                                                                                            live_process):
    out = tmp_path / "out"
    partial = killed_while_creating_its_run_file(out, live_process.pid)
    assert main(rollout_args(out, 9)) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {out} is not empty; pass --overwrite to empty it or name another directory" in err
    assert "--resume" not in err.replace("there is no run to --resume", "")  # no advice that cannot work
    assert partial.exists()  # never deleted while its writer runs


def test_the_refusal_suggests_resume_only_for_a_folder_holding_a_run(tmp_path, capsys):
    from gr00t_eval.run_dir import held_run_claims, write_run_file

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(rollout_args(out, 9)) == 2
    err = capsys.readouterr().err  # no earlier run's file: --overwrite would be refused too, so it is not suggested
    assert "--overwrite would not empty it either" in err and "pass --overwrite" not in err
    assert f"--resume {out}" not in err
    (out / "episodes.jsonl").write_text("")  # an earlier run's episode log, without its run.json
    assert main(rollout_args(out, 9)) == 2
    err = capsys.readouterr().err
    assert "is not empty; pass --overwrite to empty it or name another directory (it holds no run.json" in err
    assert f"--resume {out}" not in err
    (out / "episodes.jsonl").unlink()
    with held_run_claims():
        write_run_file(out, {"env_name": "walkto/slow", "config": {"seed": 0}})
    (out / f".results.json.{ended_pid()}.140001.tmp").write_text("{")  # a dead writer's: not what is refused
    assert main(rollout_args(out, 9)) == 2
    assert f"pass --overwrite to empty it or --resume {out} to continue that run" in capsys.readouterr().err


def test_prepare_output_dir_deletes_only_the_half_written_files_of_processes_that_are_gone(tmp_path, live_process):
    from gr00t_eval.run_dir import prepare_output_dir

    out = tmp_path / "out"
    out.mkdir()
    dead = [out / f".run.json.{ended_pid()}.1.tmp", out / f".batch.json.{ended_pid()}.tmp"]
    for file in dead:
        file.write_text("{")
    prepare_output_dir(out, keep=(ROLLOUT_LOCK_FILENAME,))
    assert not any(file.exists() for file in dead)
    live = out / f".run.json.{live_process.pid}.2.tmp"
    live.write_text("{")
    with pytest.raises(Exception, match="is not empty"):
        prepare_output_dir(out)
    assert live.exists()


def open_loop_args(dataset, out):
    return ["open-loop", "--dataset-path", str(dataset), "--output-dir", str(out), "--port", "9", "--timeout-ms", "300"]


def test_open_loop_runs_in_a_folder_left_with_only_a_dead_processs_half_written_claim(tmp_path, capsys, live_process):
    """An open-loop run killed while it wrote its claim left `.open_loop_run.json.PID.N.tmp`; the same command then
    refused the folder as "not empty" and asked for --overwrite. A live writer's file still counts."""
    from eval.dataset_factory import make_dataset

    dataset, out = make_dataset(tmp_path / "dataset"), tmp_path / "out"
    out.mkdir()
    partial = out / f".open_loop_run.json.{ended_pid()}.45999126453709.tmp"
    partial.write_text("{")
    assert main(open_loop_args(dataset, out)) != 0  # nothing serves port 9: it fails there, past the folder check
    err = capsys.readouterr().err
    assert "not empty" not in err and "127.0.0.1:9" in err, err
    assert partial.exists()  # the folder is emptied of it only once the server has answered (the run was refused)
    live = out / f".open_loop_run.json.{live_process.pid}.1.tmp"
    live.write_text("{")
    assert main(open_loop_args(dataset, out)) == 2
    assert f"--output-dir {out} is not empty; pass --overwrite" in capsys.readouterr().err
    assert live.exists()


@pytest.mark.parametrize("name", ["results.json", "q" * 250 + ".jpeg", "é" * 125 + ".json"])
def test_a_file_written_aside_has_a_legal_temporary_name_a_dead_writers_cleanup_recognises(tmp_path, name):
    from gr00t_eval.run_claim import PARTIAL_FILE_NAME, partial_path

    temporary = partial_path(tmp_path / name)
    assert temporary.parent == tmp_path and len(temporary.name.encode()) <= 255
    match = PARTIAL_FILE_NAME.fullmatch(temporary.name)
    assert match and int(match.group("pid")) == os.getpid()
    assert match.group("name") == (name if name == "results.json" else "gr00t")


def half_written_by_an_ended_process(folder, hostname=None):
    """The file a process (on host `hostname`: its socket.gethostname() says so; None: this host) wrote aside and
    never renamed before it ended."""
    pretend = "" if hostname is None else f"import socket; socket.gethostname = lambda: {hostname!r}; "
    code = (f"{pretend}from pathlib import Path; from gr00t_eval.run_claim import partial_path; "
            f"path = partial_path(Path({str(folder)!r}) / 'results.json'); path.write_text('{{'); print(path.name)")
    written = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return folder / written.stdout.strip()


def test_a_half_written_file_of_a_writer_on_another_host_is_left_to_it(tmp_path):
    """A shard on another host writing to a shared folder had its live half-written file deleted: its pid is no
    process here. Only this host's ended writers' files are dead."""
    from gr00t_eval.run_claim import dead_partial_files

    elsewhere = half_written_by_an_ended_process(tmp_path, "gpu-node-7.cluster")
    here = half_written_by_an_ended_process(tmp_path)
    old_format = tmp_path / f".results.json.{ended_pid()}.3.tmp"
    old_format.write_text("{")
    assert elsewhere.is_file() and dead_partial_files(tmp_path) == sorted([here, old_format])
