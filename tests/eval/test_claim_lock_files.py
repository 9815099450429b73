"""The files a claim is flock'ed through (a claim's alive file, a folder's lock file, a resumed run's run.json) are
locked through a read-only descriptor, and opened again for writing where the file system refuses that: NFS grants
an exclusive flock only to a file open for writing (flock(2), "NFS details": EBADF otherwise), so a read-only
descriptor alone left every claim on NFS without its alive lock and stopped every rollout into an NFS folder with a
bare "Bad file descriptor"; held open for writing everywhere, the alive file kept a run's file system from being
remounted read-only. A file this process may only read (a read-only mount, another user's) still locks; a lock that
cannot be taken names its file and why."""

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gr00t_eval.output_files import OutputDirError
from gr00t_eval.run_claim import (CLAIM_KEY, claim_alive_name, claim_lock_name, claim_output_dir, finish_claim, read_holder,
                                  take_claim)
from gr00t_eval.run_file import ROLLOUT_LOCK_FILENAME, directory_lock

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="flock, and descriptors read from /proc (Linux)")

# flock(2), "NFS details": an exclusive lock of a descriptor not open for writing fails with EBADF (nfs4_proc_lock);
# no NFS mount here, so the rule is put into fcntl.flock, in this process and in a claimant
NFS_FLOCK_RULE = """
import errno, fcntl, os
_flock = fcntl.flock
def _nfs_flock(fd, operation):
    number = fd if isinstance(fd, int) else fd.fileno()
    if operation & fcntl.LOCK_EX and fcntl.fcntl(number, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    return _flock(fd, operation)
"""
CLAIMANT = NFS_FLOCK_RULE + """
fcntl.flock = _nfs_flock
import sys, time
from gr00t_eval.run_claim import claim_output_dir
claim_output_dir(sys.argv[1], "run.json", {"config": {"n_episodes": 3}})
print("claimed", flush=True)
time.sleep(120)
"""


def _access_modes_of_descriptors_of(path: Path) -> list:
    """The access modes (os.O_RDONLY, os.O_RDWR, ...) of this process's open descriptors of `path`."""
    modes = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.path.samefile(f"/proc/self/fd/{fd}", path):
                modes.append(fcntl.fcntl(int(fd), fcntl.F_GETFL) & os.O_ACCMODE)
        except OSError:  # closed meanwhile (the listing's own descriptor)
            pass
    return modes


def test_a_claims_alive_file_is_held_read_only_where_that_locks(tmp_path):
    """Held open for writing for the whole run, it kept the run's file system from being remounted read-only
    ("mount point is busy")."""
    claim = claim_output_dir(tmp_path, "run.json", {})
    try:
        assert _access_modes_of_descriptors_of(tmp_path / claim_alive_name("run.json")) == [os.O_RDONLY]
    finally:
        finish_claim(claim, "complete")


@pytest.fixture
def nfs_flock_rule(monkeypatch):
    """fcntl.flock refuses an exclusive lock of a read-only descriptor with EBADF, as NFS does."""
    namespace = {}
    exec(NFS_FLOCK_RULE, namespace)
    monkeypatch.setattr(fcntl, "flock", namespace["_nfs_flock"])


def test_under_nfss_flock_rule_the_alive_file_is_held_open_for_writing(tmp_path, nfs_flock_rule):
    claim = claim_output_dir(tmp_path, "run.json", {})
    try:
        assert json.loads(claim.read_text())[CLAIM_KEY].get("alive_lock") is True
        assert _access_modes_of_descriptors_of(tmp_path / claim_alive_name("run.json")) == [os.O_RDWR]
    finally:
        finish_claim(claim, "complete")


def test_a_folders_lock_file_is_held_read_only_where_that_locks_and_for_writing_under_nfss_rule(tmp_path, monkeypatch):
    with directory_lock(tmp_path / ROLLOUT_LOCK_FILENAME):
        assert _access_modes_of_descriptors_of(tmp_path / ROLLOUT_LOCK_FILENAME) == [os.O_RDONLY]
    namespace = {}
    exec(NFS_FLOCK_RULE, namespace)
    monkeypatch.setattr(fcntl, "flock", namespace["_nfs_flock"])
    with directory_lock(tmp_path / ROLLOUT_LOCK_FILENAME):  # a bare "Bad file descriptor" before
        assert _access_modes_of_descriptors_of(tmp_path / ROLLOUT_LOCK_FILENAME) == [os.O_RDWR]


def test_under_nfss_flock_rule_a_killed_holders_claim_is_judged_by_its_alive_lock(tmp_path, nfs_flock_rule):
    """The holder's exclusive flock of a read-only alive file failed (EBADF): its claim recorded no alive lock, and
    once its container was killed every --resume or --overwrite was refused ("cannot check whether it still runs")."""
    holder = subprocess.Popen([sys.executable, "-c", CLAIMANT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        data = json.loads((tmp_path / "run.json").read_text())
        assert data[CLAIM_KEY].get("alive_lock") is True, data
    finally:
        holder.kill()
        holder.wait(30)
    data[CLAIM_KEY]["pid_namespace"] = "pid:[4026599999]"  # its container started again: another pid namespace here
    (tmp_path / "run.json").write_text(json.dumps(data))
    take_claim(tmp_path, "run.json", {"config": {"n_episodes": 3}})
    assert read_holder(tmp_path / "run.json").pid == os.getpid()
    finish_claim(tmp_path / "run.json", "complete")


@pytest.fixture
def no_flock(monkeypatch):
    """flock refuses exclusive locks with ENOLCK, as a file system mounted without locks does."""
    real_flock = fcntl.flock

    def no_locks_here(fd, operation):
        if operation & fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", no_locks_here)


def test_a_folder_lock_that_cannot_be_taken_names_the_lock_file_and_why(tmp_path, no_flock):
    """A file system without flock (or NFS refusing it) stopped a rollout with "OSError: [Errno 9] Bad file
    descriptor", naming no file."""
    lock = tmp_path / ROLLOUT_LOCK_FILENAME
    with pytest.raises(OutputDirError) as refused:
        with directory_lock(lock):
            pass
    assert str(lock) in str(refused.value) and os.strerror(errno.ENOLCK) in str(refused.value), refused.value


def test_a_claim_lock_that_cannot_be_taken_names_the_lock_file_and_why(tmp_path, no_flock):
    """take_claim (batch, record, open-loop's take-over) stopped with a bare "OSError: [Errno 37] No locks available"
    where the folder's lock named its file and the cause."""
    with pytest.raises(OutputDirError) as refused:
        take_claim(tmp_path, "batch.json", {"jobs": []})
    message = str(refused.value)
    assert str(tmp_path / claim_lock_name("batch.json")) in message and "ENOLCK" in message, message
    assert "expected an exclusive flock" in message, message
    assert not (tmp_path / "batch.json").exists()  # not claimed unlocked


_READ_ONLY_CHECK = """
import sys
from pathlib import Path
from gr00t_eval.run_claim import alive_lock_free
from gr00t_eval.run_file import ROLLOUT_LOCK_FILENAME, directory_lock
folder = Path(sys.argv[1])
with directory_lock(folder / ROLLOUT_LOCK_FILENAME):
    print("locked", alive_lock_free(folder / "run.json"), flush=True)
"""


def test_lock_files_on_a_read_only_mount_still_lock(tmp_path):
    """Where a lock file may only be read (a read-only mount here; another user's 0644 file alike), it is locked
    read-only, as before."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs unshare -m as root")
    claim_output_dir(tmp_path, "run.json", {})  # its alive file, and the folder's lock file, made while writable
    finish_claim(tmp_path / "run.json", "complete")
    (tmp_path / ROLLOUT_LOCK_FILENAME).touch()
    script = (f"mount --bind {tmp_path} {tmp_path} && mount -o remount,bind,ro {tmp_path} && "
              f"exec {sys.executable} -c '{_READ_ONLY_CHECK}' {tmp_path}")
    ran = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    if "mount" in ran.stderr and ran.returncode != 0 and "locked" not in ran.stdout:
        pytest.skip(f"no read-only bind mount here: {ran.stderr.strip()}")
    assert ran.returncode == 0 and ran.stdout.strip() == "locked True", (ran.stdout, ran.stderr)
