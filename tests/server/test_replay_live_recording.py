"""`gr00t-server serve --dataset-path D` on a dataset `gr00t-eval record` is still writing (its claim in D is live):
the server says so at start, naming the recording's process."""

from __future__ import annotations

import os

import pytest

from eval.dataset_factory import make_dataset
from eval.recording_claims import killed_recording, stopped_recording
from gr00t_eval.dataset.overwrite import RECORD_CLAIM
from gr00t_eval.run_claim import finish_claim, take_claim
from serving import served


def test_serve_warns_at_start_naming_the_pid_of_a_recording_still_writing_the_dataset(tmp_path):
    """It served the episodes finished so far without a word, though record's claim said the recording ran."""
    dataset = make_dataset(tmp_path / "ds", lengths=(6, 9))
    take_claim(dataset, RECORD_CLAIM, {"env_name": "metaworld/reach-v3"}, flag="--output")  # this test: a live run
    with served("serve", "--dataset-path", str(dataset), "--port", "0") as proc:
        warned = [line for line in proc.ready_lines if "still being recorded" in line]
    assert len(warned) == 1, proc.ready_lines
    assert f"dataset {dataset} is still being recorded by `gr00t-eval record` (pid {os.getpid()}" in warned[0]
    assert "serving the 2 episodes finished so far" in warned[0]


def test_serve_says_nothing_of_a_recording_that_finished(tmp_path):
    dataset = make_dataset(tmp_path / "ds", lengths=(6,))
    finish_claim(take_claim(dataset, RECORD_CLAIM, {}, flag="--output"), "complete")
    with served("serve", "--dataset-path", str(dataset), "--port", "0") as proc:
        assert not [line for line in proc.ready_lines if "recorded" in line], proc.ready_lines


def test_a_recording_in_another_pid_namespace_is_taken_as_still_writing(tmp_path, caplog):
    """Its pid is no process of this namespace: a recording in another container was taken for a gone one, silently."""
    import json
    import subprocess
    import sys

    from gr00t_eval.run_claim import CLAIM_KEY
    from gr00t_server.policies.replay import _warn_if_still_recorded

    dataset = make_dataset(tmp_path / "ds", lengths=(6,))
    claim = take_claim(dataset, RECORD_CLAIM, {}, flag="--output")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(30)
    data = json.loads(claim.read_text())
    data[CLAIM_KEY].update(pid=gone.pid, pid_namespace="pid:[4026599999]")
    claim.write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="gr00t_server"):
        _warn_if_still_recorded(dataset, 1)
    assert f"is still being recorded by `gr00t-eval record` (pid {gone.pid}" in caplog.text


def test_serve_warns_of_a_recording_that_ended_without_finishing(tmp_path):
    """A recording killed half-way was served as if finished, without a word."""
    dataset = make_dataset(tmp_path / "ds", lengths=(6, 9))
    killed_recording(dataset, 40)
    with served("serve", "--dataset-path", str(dataset), "--port", "0") as proc:
        warned = [line for line in proc.ready_lines if "without finishing" in line]
    assert len(warned) == 1, proc.ready_lines
    assert (f"dataset {dataset} was recorded by a run that ended without finishing (2 of 40 episodes)"
            in warned[0])


def test_a_test_checkpoint_from_a_recording_that_ended_without_finishing_warns(tmp_path, caplog):
    from gr00t_server.test_checkpoint import make_test_checkpoint

    dataset = make_dataset(tmp_path / "ds", lengths=(6, 9))
    killed_recording(dataset, 40)
    with caplog.at_level("WARNING", logger="gr00t_server"):
        make_test_checkpoint(tmp_path / "ck", dataset_path=dataset)
    assert f"dataset {dataset} was recorded by a run that ended without finishing (2 of 40 episodes)" in caplog.text


@pytest.mark.parametrize("planned, warned", [(40, True), (2, False)], ids=["2-of-40", "all-2"])
def test_a_recording_stopped_part_way_is_warned_and_a_whole_one_not(tmp_path, planned, warned):
    """A Ctrl-C, SIGTERM or error closes the claim as finished: a recording stopped at 2 of 40 episodes was taken as
    whole without a word (only a killed one was warned); one killed after its last episode is whole."""
    from gr00t_eval.dataset.unfinished_recording import unfinished_recording_warning

    dataset = make_dataset(tmp_path / "ds", lengths=(6, 9))
    stopped_recording(dataset, planned)
    said = unfinished_recording_warning(dataset, 2)
    if warned:
        assert said.startswith(f"dataset {dataset} was recorded by a run that stopped before finishing (2 of 40 "), said
    else:
        assert said is None
    killed = make_dataset(tmp_path / "killed", lengths=(6, 9))
    killed_recording(killed, 2)
    assert unfinished_recording_warning(killed, 2) is None  # killed after its last episode: all there
