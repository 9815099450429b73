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


def _rewrite_holder(claim: Path, **changes) -> None:
    """Rewrite fields of the holder record of `claim` (atomically: its live holder goes on holding its alive lock)."""
    data = json.loads(claim.read_text())
    data[CLAIM_KEY].update(changes)
    aside = claim.with_name(f".{claim.name}.rewritten")
    aside.write_text(json.dumps(data))
    os.replace(aside, claim)


def _gone_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(30)
    return process.pid


@pytest.mark.parametrize("changes", [
    {"boot_id": "00000000-1111-2222-3333-444444444444"},  # another machine of this host's name sharing the folder
    {"pid": None},  # a pid that is no process here
], ids=["another_boot", "a_gone_pid"])
def test_a_held_alive_lock_vetoes_every_sign_of_a_gone_holder(tmp_path, changes):
    """A claim of another boot (a machine of the same host name, a container of a fixed --hostname on another node)
    was taken for an earlier boot's and its live run's folder taken over, though its holder held the alive lock."""
    from gr00t_eval.run_claim import holder_gone

    process = _claimant(tmp_path)
    try:
        claim = tmp_path / "claim.json"
        _rewrite_holder(claim, **{key: _gone_pid() if value is None else value for key, value in changes.items()})
        before = claim.read_text()
        assert not holder_gone(read_holder(claim), claim)  # video claims and the replay's warning ask this
        with pytest.raises(OutputDirError, match=r"still running .*holds \.gr00t_claim\.json\.alive locked"):
            take_claim(tmp_path, "claim.json", {"settings": 2})
        assert claim.read_text() == before
    finally:
        end(process)


def test_a_killed_holder_of_another_boot_is_still_stale(tmp_path):
    process = _claimant(tmp_path)
    _rewrite_holder(tmp_path / "claim.json", boot_id="00000000-1111-2222-3333-444444444444")
    end(process)  # its alive lock went with it
    take_claim(tmp_path, "claim.json", {"settings": 2})
    assert read_holder(tmp_path / "claim.json").pid == os.getpid()
    finish_claim(tmp_path / "claim.json", "complete")


def test_a_refusal_of_a_live_holder_in_another_pid_namespace_says_its_pid_is_that_namespaces(tmp_path):
    """'still running (pid 1 on host vm, ...)': pid 1 here is init; the line did not say the pid is a container's."""
    process = _claimant(tmp_path)
    try:
        _as_if_in_another_container(tmp_path / "claim.json")
        with pytest.raises(OutputDirError) as refused:
            take_claim(tmp_path, "claim.json", {"settings": 2})
        assert (f"pid {process.pid} in another container's pid namespace, {ANOTHER_NAMESPACE}, on host"
                in str(refused.value)), refused.value
        (tmp_path / "mine").mkdir()
        mine = claim_output_dir(tmp_path / "mine", "claim.json", {})
        assert "namespace" not in read_holder(mine).describe()  # a pid of this namespace is this host's, as before
        finish_claim(mine, "complete")
    finally:
        end(process)


def test_a_merge_of_a_shard_running_in_another_pid_namespace_says_whose_pid_it_names(tmp_path, capsys):
    shard = tmp_path / "split"
    process = subprocess.Popen([sys.executable, "-c", _SHARDCLAIMANT, str(shard)], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        assert process.stdout.readline().strip() == "claimed"
        _as_if_in_another_container(shard / "run_shard0of2.json")
        assert cli.main(["merge", str(shard / "results_shard0of2.json"), "--output", str(tmp_path / "m.json")]) == 2
        err = capsys.readouterr().err
        assert "is still running" in err and f"another container's pid namespace, {ANOTHER_NAMESPACE}" in err, err
    finally:
        end(process)


_SHARDCLAIMANT = """
import json, sys, time
from pathlib import Path
from gr00t_eval.run_claim import claim_output_dir
folder = Path(sys.argv[1])
folder.mkdir()
claim_output_dir(folder, "run_shard0of2.json", {"config": {"n_episodes": 4}, "env_name": "walkto/fast", "shard": "0/2"})
(folder / "results_shard0of2.json").write_text(json.dumps({"kind": "rollout", "plan": {"shard": [0, 2]}}))
print("claimed", flush=True)
time.sleep(120)
"""
