"""Stop signals in the instants where keygen and export put their files in place, and once the files are complete
while the command reports them: a key pair is whole or absent, the export's line says what its folder holds, and a
command whose files are complete exits 0.

Each child process sends the signal to itself at the exact point under test (a wrapped library call), so the window
is hit every time rather than by luck.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

from stop_signals import stop_at_call

SERVER_MAIN = "import sys\nfrom gr00t_server.cli import main\nsys.exit(main())\n"  # what the console script runs


def run_program(prelude: str, *args: str) -> subprocess.CompletedProcess:
    """`python -c PRELUDE + the console script` with ARGS (PYTHONPATH and the rest of the environment inherited)."""
    return subprocess.run([sys.executable, "-c", prelude + SERVER_MAIN, *args], capture_output=True, text=True,
                          timeout=180)


def public_key_in(path) -> str:
    return re.search(r'public-key = "([^"]+)"', path.read_text()).group(1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from gr00t_server.test_checkpoint import make_test_checkpoint

    return make_test_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def export_args(checkpoint, output, batch_size: int = 1) -> list:
    return ["export", "--model-path", str(checkpoint), "--output", str(output), "--mode", "dit_only", "--device", "cpu",
            "--batch-size", str(batch_size), "--log-level", "WARNING"]


@pytest.mark.parametrize("force", [False, True], ids=["fresh-folder", "force-over-a-pair"])
def test_ctrl_c_between_keygens_two_renames_leaves_the_new_pair_whole_and_says_so(tmp_path, force):
    """Ctrl-C right after NAME.key_secret was renamed in left it beside the old NAME.key (clients given it refused), or
    alone in a fresh folder (the rerun refused as 'already exists'), and said only 'interrupted'."""
    keys = tmp_path / "keys"
    if force:
        assert run_program("", "keygen", str(keys)).returncode == 0
        old_public = public_key_in(keys / "server.key")
    result = run_program(stop_at_call("os:replace", "server.key_secret", signal.SIGINT), "keygen", str(keys),
                         *(["--force"] if force else []))
    assert result.returncode == 130, result.stderr
    assert sorted(p.name for p in keys.iterdir()) == ["server.key", "server.key_secret"]
    public = public_key_in(keys / "server.key")
    assert public == public_key_in(keys / "server.key_secret")
    if force:
        assert public != old_public
    assert result.stderr == (f"gr00t-server keygen: interrupted; the new key pair {keys / 'server.key'} and "
                             f"{keys / 'server.key_secret'} is in place\n")


@pytest.mark.parametrize("command, report", [
    (["keygen", "{tmp}/keys"], "Public key:"),
    (["make-test-checkpoint", "{tmp}/ckpt"], "Wrote "),
], ids=["keygen", "make-test-checkpoint"])
def test_ctrl_c_while_a_complete_command_reports_leaves_exit_0(tmp_path, command, report):
    """Files complete, a Ctrl-C as their first report line was printed ended the command with 'interrupted' and 130."""
    args = [word.format(tmp=tmp_path) for word in command]
    result = run_program(stop_at_call("builtins:print", report, signal.SIGINT, after=False), *args)
    assert result.returncode == 0, result.stderr
    assert report in result.stdout and "interrupted" not in result.stderr
    if command[0] == "make-test-checkpoint":
        assert json.loads((tmp_path / "ckpt" / "gr00t_test_checkpoint.json").read_text())["complete"] is True


def test_ctrl_c_while_a_complete_export_reports_leaves_exit_0(tmp_path, checkpoint):
    """The export swapped in, a Ctrl-C as 'Exported ...' was printed ended it with 'interrupted' and 130."""
    output = tmp_path / "onnx"
    result = run_program(stop_at_call("builtins:print", "Exported ", signal.SIGINT, after=False),
                         *export_args(checkpoint, output))
    assert result.returncode == 0, result.stderr
    assert "Exported dit_only" in result.stdout and "interrupted" not in result.stderr
    assert (output / "export_metadata.json").is_file()


def test_sighup_as_the_swapped_out_export_is_deleted_waits_and_the_export_finishes(tmp_path, checkpoint):
    """SIGHUP (a closed terminal) was not deferred with Ctrl-C and SIGTERM: right after the swap it exited 130 with
    'the earlier export ... is unchanged' while the new export was in place, and left the backup folder behind."""
    output = tmp_path / "onnx"
    assert run_program("", *export_args(checkpoint, output)).returncode == 0
    result = run_program(stop_at_call("shutil:rmtree", ".gr00t-export-previous", signal.SIGHUP, after=False),
                         *export_args(checkpoint, output, batch_size=2))
    assert result.returncode == 0, result.stderr
    assert "SIGHUP came during the swap, which it waited for" in result.stderr
    assert json.loads((output / "export_metadata.json").read_text())["batch_size"] == 2
    assert not list(output.glob(".gr00t-export-*"))


def test_a_second_stop_right_after_the_swap_says_the_folder_holds_the_new_export(tmp_path, checkpoint):
    """A stop held during the swap, then another as the swap returned (before the command noted it was done): the
    line said the folder was left as it was, while it held the new export."""
    output = tmp_path / "onnx"
    prelude = (stop_at_call("shutil:rmtree", ".gr00t-export-previous", signal.SIGHUP, after=False)
               + stop_at_call("logging:Logger.warning", "came during the swap", signal.SIGINT, after=False))
    result = run_program(prelude, *export_args(checkpoint, output))
    assert result.returncode == 130, result.stderr
    assert result.stderr.endswith(f"gr00t-server export: interrupted; {output} holds the new export\n")
    assert (output / "export_metadata.json").is_file()


def test_ctrl_c_once_the_checkpoint_marker_says_complete_leaves_exit_0(tmp_path):
    """A Ctrl-C as the writer logged the complete checkpoint (its marker written, before the command ignored stops)
    ended with 'interrupted' and 130 for a whole, usable checkpoint."""
    result = run_program(stop_at_call("logging:Logger.info", "test checkpoint for", signal.SIGINT, after=False),
                         "make-test-checkpoint", str(tmp_path / "ckpt"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Wrote tiny test checkpoint to {tmp_path / 'ckpt'}\n"
    assert json.loads((tmp_path / "ckpt" / "gr00t_test_checkpoint.json").read_text())["complete"] is True


def test_ctrl_c_before_an_earlier_checkpoint_is_replaced_still_says_interrupted(tmp_path):
    """The earlier checkpoint's marker says complete too: a stop before the new one is written is no finished run."""
    output = tmp_path / "ckpt"
    assert run_program("", "make-test-checkpoint", str(output)).returncode == 0
    result = run_program(stop_at_call("pathlib:Path.unlink", str(output), signal.SIGINT, after=False),
                         "make-test-checkpoint", str(output), "--seed", "1")
    assert result.returncode == 130, result.stderr
    assert result.stderr == "gr00t-server make-test-checkpoint: interrupted\n"
