"""gr00t-server commands that write files (keygen, make-test-checkpoint) on a disk that is full from the start (a file
size limit, RLIMIT_FSIZE, as in tests/eval/test_disk_full, or a real tmpfs filled up): the error names the file."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file size limits (RLIMIT_FSIZE)")
resource = pytest.importorskip("resource")  # POSIX only

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


def _cli_without_room():
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # a full disk: writes fail with EFBIG (Python ignores SIGXFSZ)


def server_cli(*argv, cwd=None, full_disk=False):
    return subprocess.run([sys.executable, "-m", "gr00t_server.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          preexec_fn=_cli_without_room if full_disk else None, timeout=120)


def test_keygen_force_on_a_full_disk_keeps_the_old_key_pair_and_leaves_no_temporary(tmp_path):
    """The old pair was deleted before the new one was written: a full disk left no key pair at all."""
    keys = tmp_path / "keys"
    assert server_cli("keygen", str(keys)).returncode == 0
    old = {path.name: path.read_bytes() for path in keys.iterdir()}
    result = server_cli("keygen", str(keys), "--force", full_disk=True)
    assert result.returncode == 2
    assert {path.name: path.read_bytes() for path in keys.iterdir()} == old
    line = result.stderr.strip().splitlines()[-1]
    assert f"cannot write {keys / 'server.key'}: File too large; raise the file size limit (ulimit -f)" in line, line


@pytest.mark.parametrize("argv, named, advice", [
    (["keygen", "keys", "--name", "n" * 250], "keys/" + "n" * 250, "choose a shorter --name"),
    (["keygen", "folder", "--force"], "folder/server.key", "it is a folder, not a key file; move that folder away"),
    (["keygen", "keys"], "keys/server.key", "File too large; raise the file size limit (ulimit -f)"),
], ids=["name too long", "NAME.key a folder", "full disk"])
def test_keygen_storage_errors_are_one_line_naming_the_file_and_what_to_do(tmp_path, argv, named, advice):
    """They were raw: '[Errno 36] File name too long', '[Errno 21] Is a directory', '[Errno 27] File too large'."""
    (tmp_path / "folder" / "server.key").mkdir(parents=True)
    result = server_cli(*argv, cwd=tmp_path, full_disk=argv == ["keygen", "keys"])
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"gr00t-server keygen: error: cannot write {named}") and advice in line, line
    assert "[Errno" not in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "folder" / "server.key").is_dir() and not list((tmp_path / "folder").glob("*.key_secret"))
