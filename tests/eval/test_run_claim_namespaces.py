"""A claim records its process's pid namespace: a run in another pid namespace of this host (another container, even
one with this host's name, as `--network host` gives) is never judged by a pid of this namespace, but by its alive
lock (test_run_claim_alive_lock), or, without one, refused, saying how to free the claim once it has ended; and a claim
at this process's own pid by another process (the killed PID 1 of a container started again) is stale, not this
process's."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eval.claimants import CLAIMANT, end
from gr00t_eval.output_files import OutputDirError
from gr00t_eval.run_claim import CLAIM_KEY, claim_output_dir, holder_alive, read_holder, refuse_live_claim, take_claim
from gr00t_eval.video_claims import VIDEO_CLAIM_PREFIX, claim_video_dir

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/ns/pid").exists() or not Path("/proc/sys/kernel/random/boot_id").exists(),
    reason="pid namespaces, start ticks and the boot id come from /proc (Linux)")

ANOTHER_NAMESPACE = "pid:[4026599999]"
_TAKER = """
import sys
from gr00t_eval.run_claim import take_claim
try:
    take_claim(sys.argv[1], "claim.json", {"settings": 2})
    print("took it")
except ValueError as exc:
    print("refused:", exc)
"""


def _gone_pid() -> int:
    """The pid of a process that has ended (and was reaped): none runs under it in this namespace."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(30)
    return process.pid


def _claim_with(folder: Path, **changes) -> Path:
    """A claim of `folder` by this process, its holder record then changed as `changes` say (None: key removed)."""
    claim = claim_output_dir(folder, "claim.json", {"settings": 1})
    data = json.loads(claim.read_text())
    data[CLAIM_KEY].update({key: value for key, value in changes.items() if value is not None})
    for key in [key for key, value in changes.items() if value is None]:
        data[CLAIM_KEY].pop(key, None)
    claim.write_text(json.dumps(data))
    return claim


def test_a_claim_records_the_pid_namespace_of_its_process(tmp_path):
    claim = claim_output_dir(tmp_path, "claim.json", {})
    assert json.loads(claim.read_text())[CLAIM_KEY]["pid_namespace"] == os.readlink("/proc/self/ns/pid")
    assert read_holder(claim).pid_namespace == os.readlink("/proc/self/ns/pid")


def test_a_claim_from_another_pid_namespace_of_this_host_without_an_alive_lock_is_refused_saying_how_to_free_it(
        tmp_path):
    # its pid is no process here: judged by this namespace's pids, the live run was taken for a gone one
    claim = _claim_with(tmp_path, pid=_gone_pid(), pid_namespace=ANOTHER_NAMESPACE, alive_lock=None)
    before = claim.read_text()
    with pytest.raises(OutputDirError) as refused:
        refuse_live_claim(tmp_path, "claim.json")
    message = str(refused.value)
    assert f"pid namespace {ANOTHER_NAMESPACE}" in message and f'"finished": true in the "claim" record of {claim}' \
        in message, message
    # it may have ended: this process cannot tell; and the claim file holds the run's settings, never to be deleted
    assert "still running" not in message and f"delete {claim}" not in message, message
    with pytest.raises(OutputDirError):
        take_claim(tmp_path, "claim.json", {"settings": 2})
    assert claim.read_text() == before


def test_a_claim_without_a_namespace_from_an_older_version_is_judged_by_its_pid_as_before(tmp_path):
    _claim_with(tmp_path, pid=_gone_pid(), pid_namespace=None)
    assert refuse_live_claim(tmp_path, "claim.json", quiet=True) is not None  # stale: its process is gone
    take_claim(tmp_path, "claim.json", {"settings": 2})
    assert read_holder(tmp_path / "claim.json").pid == os.getpid()


def test_a_claim_at_this_processs_pid_with_other_start_ticks_is_another_processs_and_stale(tmp_path):
    # the killed PID 1 of a container started again: the same host name, boot and pid, another start
    ticks = json.loads(claim_output_dir(tmp_path, "claim.json", {}).read_text())[CLAIM_KEY]["start_ticks"]
    (tmp_path / "old").mkdir()
    claim = _claim_with(tmp_path / "old", start_ticks=ticks - 1)
    assert not holder_alive(read_holder(claim))
    assert refuse_live_claim(tmp_path / "old", "claim.json", quiet=True) is not None
    take_claim(tmp_path / "old", "claim.json", {"settings": 2})
    assert read_holder(claim).start_ticks == ticks


def test_this_processs_own_unfinished_claim_is_still_running(tmp_path):
    claim_output_dir(tmp_path, "claim.json", {})
    assert holder_alive(read_holder(tmp_path / "claim.json"))
    running = rf"is in use: the run that claimed it is still running \(pid {os.getpid()}"
    with pytest.raises(OutputDirError, match=running):
        refuse_live_claim(tmp_path, "claim.json")


def test_a_video_claim_from_another_pid_namespace_is_refused_naming_the_file_to_delete(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    record = json.loads(claim_output_dir(tmp_path, "claim.json", {}).read_text())[CLAIM_KEY]
    record.update(pid=_gone_pid(), pid_namespace=ANOTHER_NAMESPACE)
    theirs = videos / f"{VIDEO_CLAIM_PREFIX}0123456789abcdef.json"
    theirs.write_text(json.dumps({"writer": "/elsewhere/run", "plan": None, "shard_index": None, CLAIM_KEY: record}))
    with pytest.raises(OutputDirError) as refused:
        claim_video_dir(videos, str(tmp_path / "run"))
    assert f"pid namespace {ANOTHER_NAMESPACE}" in str(refused.value) and f"delete {theirs}" in str(refused.value)


def _in_new_pid_namespace(*command: str) -> list:
    return ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL", *command]


@pytest.fixture
def pid_namespaces():
    """Skips unless this user may make pid namespaces (root, or unprivileged user namespaces off here)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    tried = subprocess.run(_in_new_pid_namespace("true"), capture_output=True, timeout=30)
    if tried.returncode != 0:
        pytest.skip(f"cannot make a pid namespace here: {tried.stderr.decode(errors='replace').strip()}")


def _claim_in_new_pid_namespace(out: Path) -> subprocess.Popen:
    """A run that claimed `out` as PID 1 of a pid namespace of its own (a container's), and still runs."""
    process = subprocess.Popen(_in_new_pid_namespace(sys.executable, "-c", CLAIMANT, str(out)),
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout.readline().strip() == "claimed"
    assert read_holder(out / "claim.json").pid == 1
    return process


def test_a_live_run_that_is_pid_1_of_another_pid_namespace_is_refused(tmp_path, pid_namespaces):
    # pid 1 here is this namespace's init, started at other ticks: the live run was judged gone and its folder taken
    out = tmp_path / "out"
    out.mkdir()
    process = _claim_in_new_pid_namespace(out)
    try:
        with pytest.raises(OutputDirError, match=r"still running .*holds \.gr00t_claim\.json\.alive locked"):
            take_claim(out, "claim.json", {"settings": 2})
        assert read_holder(out / "claim.json").pid == 1 and process.poll() is None
    finally:
        end(process)


def test_the_claim_of_a_killed_pid_1_does_not_read_as_running_to_the_next_pid_1(tmp_path, pid_namespaces):
    # a container killed and started again: its run is PID 1 again, on the same host name and boot
    out = tmp_path / "out"
    out.mkdir()
    end(_claim_in_new_pid_namespace(out))
    again = subprocess.run(_in_new_pid_namespace(sys.executable, "-c", _TAKER, str(out)), capture_output=True,
                           text=True, timeout=60)
    said = again.stdout + again.stderr
    assert again.returncode == 0, said
    assert "still running" not in said and "is in use" not in said, said
    # its namespace is gone, and its alive lock with it (or the kernel gave the new container the same id, and the
    # other start ticks make the claim stale): a container killed and started again resumes its run
    assert "took it" in said, said
