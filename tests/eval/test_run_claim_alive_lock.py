"""A claim's holder keeps the claim's alive file flock'ed while it holds the claim: a holder whose pid cannot be checked
here (another pid namespace of this host: a container, restarted with a new one after a kill) is judged by that lock,
so a killed run's claim is stale and its run resumes, while a live one is refused. A claim without such a lock (an older
version's) is refused with advice that keeps its file: a rollout's run.json is the run itself."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval.claimants import CLAIMANT, end
from gr00t_eval import cli
from gr00t_eval.output_files import OutputDirError
from gr00t_eval.run_claim import CLAIM_KEY, claim_output_dir, finish_claim, read_holder, take_claim

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/ns/pid").exists() or sys.platform != "linux",
    reason="pid namespaces come from /proc and the alive lock is a flock (Linux)")

ANOTHER_NAMESPACE = "pid:[4026599999]"
TESTS = str(Path(__file__).resolve().parents[1])
_ROLLOUT = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/eval"]
import eval.scale_fixtures  # registers the walkto/* envs
from gr00t_eval.cli import main
sys.exit(main(["--log-level", "WARNING", *sys.argv[2:]]))
"""


def _as_if_in_another_container(claim: Path) -> None:
    """Rewrite the holder record of `claim` to another pid namespace of this host (a container's): its pid says
    nothing here then."""
    data = json.loads(claim.read_text())
    data[CLAIM_KEY]["pid_namespace"] = ANOTHER_NAMESPACE
    aside = claim.with_name(f".{claim.name}.rewritten")
    aside.write_text(json.dumps(data))
    os.replace(aside, claim)


def _claimant(out: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", CLAIMANT, str(out)], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout.readline().strip() == "claimed"
    return process


def test_a_live_holder_in_another_pid_namespace_is_refused_by_its_alive_lock(tmp_path):
    process = _claimant(tmp_path)
    try:
        _as_if_in_another_container(tmp_path / "claim.json")
        before = (tmp_path / "claim.json").read_text()
        with pytest.raises(OutputDirError, match=r"still running .*holds \.gr00t_claim\.json\.alive locked"):
            take_claim(tmp_path, "claim.json", {"settings": 2})
        assert (tmp_path / "claim.json").read_text() == before
    finally:
        end(process)


def test_a_killed_holder_in_another_pid_namespace_is_stale_and_taken_over(tmp_path, caplog):
    process = _claimant(tmp_path)
    _as_if_in_another_container(tmp_path / "claim.json")
    end(process)  # kill -9: its claim never finished, its flock went with it
    with caplog.at_level(logging.WARNING, logger="gr00t_eval.run_claim"):
        take_claim(tmp_path, "claim.json", {"settings": 2})
    assert read_holder(tmp_path / "claim.json").pid == os.getpid()
    assert "ended without finishing" in caplog.text, caplog.text
    finish_claim(tmp_path / "claim.json", "complete")


def test_a_claim_without_an_alive_lock_from_another_namespace_is_refused_with_advice_that_keeps_the_file(tmp_path):
    # an older version's claim: no lock to tell by, and the claim file holds the run's settings
    claim = claim_output_dir(tmp_path, "run.json", {"config": {"n_episodes": 3}})
    finish_claim(claim, "complete")
    data = json.loads(claim.read_text())
    data[CLAIM_KEY] = {**data[CLAIM_KEY], "finished": False, "pid_namespace": ANOTHER_NAMESPACE}
    data[CLAIM_KEY].pop("alive_lock", None)
    claim.write_text(json.dumps(data))
    with pytest.raises(OutputDirError) as refused:
        take_claim(tmp_path, "run.json", {"config": {}})
    message = str(refused.value)
    assert f"delete {claim}" not in message, message
    assert f'set "finished": true in the "{CLAIM_KEY}" record of {claim}' in message, message
    data[CLAIM_KEY]["finished"] = True  # the advice followed
    claim.write_text(json.dumps(data))
    take_claim(tmp_path, "run.json", {"config": {}})
    assert read_holder(claim).pid == os.getpid()
    finish_claim(claim, "complete")


def test_a_rollout_killed_in_another_pid_namespace_resumes_and_a_live_one_is_refused(tmp_path, capsys):
    from eval.scale_fixtures import policy_server

    out = tmp_path / "run"
    with policy_server() as server:
        common = ["--policy-client-port", str(server.port), "--timeout-ms", "5000"]
        first = subprocess.Popen(
            [sys.executable, "-c", _ROLLOUT, TESTS, "rollout", "--env-name", "walkto/slow", "--output-dir", str(out),
             "--n-episodes", "300", "--seed", "3", "--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps",
             "6", "--no-video", "--vectorization", "sync", *common],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            log = out / "episodes.jsonl"
            while not (log.is_file() and log.read_text().count("\n") >= 2):
                assert first.poll() is None, first.stderr.read()
                time.sleep(0.1)
            _as_if_in_another_container(out / "run.json")
            assert cli.main(["rollout", "--resume", str(out), *common]) == 2  # its holder runs: refused
            assert "still running" in capsys.readouterr().err
        finally:
            end(first)  # the container killed, and started again with a new pid namespace
        assert cli.main(["rollout", "--resume", str(out), *common]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and len(log.read_text().splitlines()) == 300, results


_VIDEOCLAIMANT = """
import sys, time
from gr00t_eval.video_claims import claim_video_dir
print(claim_video_dir(sys.argv[1], "/elsewhere/run"), flush=True)
time.sleep(120)
"""


def test_a_video_claim_of_a_killed_run_in_another_pid_namespace_is_stale(tmp_path):
    from gr00t_eval.video_claims import claim_video_dir

    videos = tmp_path / "videos"
    process = subprocess.Popen([sys.executable, "-c", _VIDEOCLAIMANT, str(videos)], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        theirs = Path(process.stdout.readline().strip())
        _as_if_in_another_container(theirs)
        with pytest.raises(OutputDirError, match="is in use"):  # alive: its lock is held
            claim_video_dir(videos, str(tmp_path / "run"))
    finally:
        end(process)
    mine = claim_video_dir(videos, str(tmp_path / "run"))
    assert read_holder(mine).pid == os.getpid()
    finish_claim(mine, "complete")


_FORKINGCLAIMANT = """
import os, sys, time
from gr00t_eval.run_claim import claim_output_dir
claim_output_dir(sys.argv[1], "claim.json", {"settings": 1})
if os.fork() == 0:  # a helper it forks (an in-process env's renderer, a fork pool's worker) that outlives it
    time.sleep(60)
    os._exit(0)
print("claimed", flush=True)
time.sleep(120)
"""


def test_a_forked_child_of_a_killed_holder_does_not_keep_its_claim_alive(tmp_path):
    """The child inherited the flock'ed descriptor (O_CLOEXEC covers exec only): after the holder was killed the claim
    stayed 'still running' for as long as the child lived."""
    out = tmp_path / "run"
    out.mkdir()
    process = subprocess.Popen([sys.executable, "-c", _FORKINGCLAIMANT, str(out)], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        assert process.stdout.readline().strip() == "claimed"
        process.send_signal(signal.SIGKILL)  # the holder alone: its forked child lives on
        process.wait(30)
        _as_if_in_another_container(out / "claim.json")
        take_claim(out, "claim.json", {"settings": 2})
        assert json.loads((out / "claim.json").read_text())["settings"] == 2
        finish_claim(out / "claim.json", "complete")
    finally:
        os.killpg(process.pid, signal.SIGKILL)


def test_a_claim_never_written_leaves_no_alive_file_and_a_stray_one_is_no_content(tmp_path):
    """A claim write that failed (a full disk) left its alive file: the same command again was refused as 'not
    empty'."""
    from gr00t_eval.run_claim import claim_alive_name, holding_claim
    from gr00t_eval.run_dir import check_output_dir

    with pytest.raises(OSError):
        with holding_claim(tmp_path / "run.json"):
            raise OSError(28, "No space left on device")
    assert os.listdir(tmp_path) == []
    (tmp_path / claim_alive_name("run.json")).touch()  # one an older build left
    check_output_dir(tmp_path, overwrite=False)
