"""gr00t-server commands that write files (keygen, make-test-checkpoint) on a disk that is full from the start (a file
size limit, RLIMIT_FSIZE, as in tests/eval/test_disk_full, or a real tmpfs filled up): the error names the file."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file size limits (RLIMIT_FSIZE)")

_SERVER_CLI_WITHOUT_ROOM = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))  # room for a probe of the temporary folder, not a file
    from gr00t_server.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def server_cli_without_room(*argv):
    return subprocess.run([sys.executable, "-c", _SERVER_CLI_WITHOUT_ROOM, *argv], capture_output=True, text=True,
                          timeout=120)


def test_keygen_on_a_full_disk_names_the_key_file_and_leaves_none(tmp_path):
    result = server_cli_without_room("keygen", str(tmp_path / "keys"))
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]
    assert str(tmp_path / "keys" / "server.key") in line and "File too large" in line, line
    assert not list((tmp_path / "keys").iterdir())


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("mount") is None or os.geteuid() != 0,
                    reason="mounts a tmpfs (root on Linux)")
def test_make_test_checkpoint_on_a_full_disk_names_the_file_it_could_not_write(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        with open(disk / "filler", "ab", buffering=0) as filler:
            with pytest.raises(OSError):
                while True:
                    filler.write(b"\0" * 4096)
        result = subprocess.run([sys.executable, "-m", "gr00t_server.cli", "make-test-checkpoint", "--embodiment",
                                 "metaworld", str(disk / "ckpt")], capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]
    assert f"No space left on device: '{disk / 'ckpt'}/" in line, line
