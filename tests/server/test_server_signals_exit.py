"""Stop signals at the edges of a gr00t-server command: during its start, after a clean stop, and in the commands
other than serve (keygen, make-test-checkpoint, export).

Each child process sends the signal to itself at the exact point under test (an import hook, an exit hook), so the
window is hit every time rather than by luck.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from eval.dataset_factory import make_dataset
from serving import free_port, wait_ready
from stop_signals import LATE_STOP_SIGNALS, stop_on_import

SERVER_MAIN = "import sys\nfrom gr00t_server.cli import main\nsys.exit(main())\n"  # what the console script runs


def program(prelude: str, *args: str) -> list:
    """`python -c PRELUDE + the console script` with ARGS (PYTHONPATH and the rest of the environment inherited)."""
    return [sys.executable, "-c", prelude + SERVER_MAIN, *args]


def test_a_stop_signal_while_serve_exits_after_a_clean_stop_leaves_exit_0(tmp_path):
    """After 'stopped after', the interpreter's teardown took 1-5 s, and a second Ctrl-C, SIGTERM or SIGHUP in it
    ended the clean stop with 130/143/129 (docs/serving.md promises 0)."""
    dataset = make_dataset(tmp_path / "ds", lengths=(6,))
    proc = subprocess.Popen(program(LATE_STOP_SIGNALS, "serve", "--dataset-path", str(dataset), "--port",
                                    str(free_port())),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(proc)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "stopped after 0 requests" in rest and "Traceback" not in rest


@pytest.mark.parametrize("command, module, signum", [
    (["keygen", "{tmp}/keys"], "gr00t_server.curve", signal.SIGTERM),
    (["make-test-checkpoint", "{tmp}/ckpt"], "gr00t_server.test_checkpoint", signal.SIGHUP),
], ids=["keygen-sigterm", "make-test-checkpoint-sighup"])
def test_sigterm_and_sighup_stop_the_other_commands_as_ctrl_c_does(tmp_path, command, module, signum):
    """keygen and make-test-checkpoint never took SIGTERM or SIGHUP: they were killed silently with 143/129."""
    args = [word.format(tmp=tmp_path) for word in command]
    result = subprocess.run(program(stop_on_import(module, signum), *args), capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr == f"gr00t-server {command[0]}: interrupted\n"


def test_sigterm_while_an_export_starts_leaves_no_output_folder(tmp_path):
    """SIGTERM during the torch import that starts an export killed it with 143 and left the new --output empty."""
    output = tmp_path / "export"
    result = subprocess.run(
        program(stop_on_import("gr00t_server.backends.export", signal.SIGTERM), "export", "--model-path",
                str(tmp_path / "ckpt"), "--output", str(output), "--device", "cpu", "--mode", "dit_only"),
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr.endswith(f"gr00t-server export: interrupted; nothing was written (there was no export in "
                                  f"{output} before)\n")
    assert not output.exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_during_the_first_imports_is_one_line_and_exit_130(tmp_path, signum):
    """Ctrl-C while numpy and ZeroMQ were imported (before main's try) printed a traceback; SIGTERM killed serve
    silently with 143. (gr00t_client itself is imported before main, at no cost: it loads numpy on first use.)"""
    result = subprocess.run(program(stop_on_import("numpy", signum), "serve", "--dataset-path", str(tmp_path)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr == "gr00t-server serve: interrupted\n"
