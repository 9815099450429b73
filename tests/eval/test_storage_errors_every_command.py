"""batch, open-loop and record stopped by storage they cannot write (a full disk, a read-only folder, a folder this
user may not write) say so as rollout does: one line naming the file and what to do, never Python's
`OSError: [Errno 28] ...`. The full disk and the read-only folder are writes made to fail as they fail them."""

from __future__ import annotations

import errno
import json
import os
import pathlib
from pathlib import Path

import pytest

from eval.dataset_factory import make_dataset
from eval.scale_fixtures import policy_server
from eval.test_storage_failures_named import fail_writes_of
from gr00t_eval.cli import main
from gr00t_eval.record import RecordSummary
from gr00t_server.policies.replay import ReplayPolicy
from serving import running_server

ADVICE = {errno.ENOSPC: "Free some space", errno.EROFS: "Make the folder writable again"}
STRERROR = {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system"}


def last_error_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def assert_no_errno_form(line: str) -> None:
    assert "[Errno" not in line and "OSError" not in line and "PermissionError" not in line, line


# --- batch -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["full-disk", "read-only"])
def test_a_batch_that_cannot_write_its_results_names_the_file_and_the_remedy(tmp_path, capsys, monkeypatch, err):
    out, jobs = tmp_path / "batch", tmp_path / "jobs.json"
    with policy_server() as server:
        jobs.write_text(json.dumps({
            "defaults": {"policy_server": {"port": server.port}, "n_episodes": 2, "seed": 0, "max_episode_steps": 6,
                         "overrides": {"n_action_steps": 2, "vectorization": "sync", "n_envs": 1}},
            "jobs": [{"name": "slow", "env_name": "walkto/slow"}]}))
        fail_writes_of(monkeypatch, ".batch_results.json.", err)
        assert main(["--log-level", "ERROR", "batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 2
    line = last_error_line(capsys)
    # its first write failed: no job started, and nothing is kept in a file that was never written
    assert f"{STRERROR[err]} writing {out / 'batch_results.json'}: the batch stopped before any job started" in line, line
    assert ADVICE[err].lower() in line and f"gr00t-eval batch --resume {out}" in line, line
    assert_no_errno_form(line)


# --- open-loop -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("storage") / "ds", lengths=(6, 4))


@pytest.fixture(scope="module")
def replay_server(dataset):
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as running:
        yield running


def open_loop(dataset, port, out):
    return main(["open-loop", "--dataset-path", str(dataset), "--port", str(port), "--no-plots",
                 "--execution-horizon", "4", "--output-dir", str(out), "--traj-ids", "0", "1"])


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["full-disk", "read-only"])
def test_an_open_loop_run_that_cannot_write_results_json_names_it_and_the_remedy(dataset, replay_server, tmp_path,
                                                                                capsys, monkeypatch, err):
    out = tmp_path / "out"
    fail_writes_of(monkeypatch, ".results.json.", err)
    assert open_loop(dataset, replay_server.port, out) == 2
    line = last_error_line(capsys)
    assert f"{STRERROR[err]} writing {out / 'results.json'}: the run stopped; no results.json was written" in line, line
    assert ADVICE[err] in line and "then run the same command again with --overwrite" in line, line
    assert_no_errno_form(line)


def test_an_open_loop_run_refused_its_claim_by_permissions_names_the_file_and_the_remedy(dataset, replay_server,
                                                                                        tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    write_text = pathlib.Path.write_text

    def refused(self, *args, **kwargs):
        if self.name.startswith(".open_loop_run.json.") or self.name == "open_loop_run.json":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", refused)
    assert open_loop(dataset, replay_server.port, out) == 2
    line = last_error_line(capsys)
    assert "Permission denied writing " in line and "open_loop_run.json" in line, line
    assert "Give this user write access to the folder" in line, line
    assert_no_errno_form(line)


# --- record ----------------------------------------------------------------------------------------------------------


def record_failing_with(monkeypatch, exc: OSError, summary: RecordSummary) -> None:
    """record_metaworld stands in for a recording stopped by `exc` having done what `summary` says."""
    def failing(*args, **kwargs):
        exc.record_summary = summary
        raise exc

    monkeypatch.setattr("gr00t_eval.record.record_metaworld", failing)


def record(out, *extra):
    return main(["record", "--env-name", "metaworld/reach-v3", "--episodes", "3", "--output", str(out), *extra])


def test_a_recording_stopped_by_a_full_disk_names_the_file_what_is_kept_and_the_remedy(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ds"
    summary = RecordSummary(out, started=True)
    summary.add(0, 10, True)
    record_failing_with(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "meta" / "info.json")),
                        summary)
    assert record(out) == 2
    line = last_error_line(capsys)
    assert f"No space left on device writing {out / 'meta' / 'info.json'}: recording stopped" in line, line
    assert "holds the 1 episodes finished before it" in line, line
    assert "Free some space, then run the same command with --overwrite to record anew" in line, line


def test_a_recording_whose_folder_is_read_only_from_the_start_names_it_and_the_remedy(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ds"
    record_failing_with(monkeypatch, OSError(errno.EROFS, os.strerror(errno.EROFS), str(out)), RecordSummary(out))
    assert record(out) == 2
    line = last_error_line(capsys)
    assert f"Read-only file system writing {out}: recording did not start; {out} was left as it was" in line, line
    assert "Make the folder writable again (remount its file system read-write), then run the same command again" \
        in line, line
    assert_no_errno_form(line)
