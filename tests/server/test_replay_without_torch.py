"""Replay serving is torch-free, and without gr00t-eval it (and a test checkpoint made from a dataset) fails with one
line naming `gr00t-server[replay]`.

The torch check runs inside the server process: a wrapper runs the real CLI and, when it exits, reports
whether anything imported torch along the way (start-up, requests, kill, shutdown).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eval.dataset_factory import make_dataset
from gr00t_client import PolicyClient
from gr00t_server.extras import replay_install_advice

READY = "Server is ready and listening on tcp://"

_RUN_CLI_AND_REPORT = textwrap.dedent(
    """
    import atexit, sys
    if sys.argv[1] == "--hide-gr00t-eval":  # as if gr00t-eval were not installed
        sys.modules["gr00t_eval"] = None
    atexit.register(lambda: print("torch imported:", "torch" in sys.modules, flush=True))
    from gr00t_server.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


def _cli_process(*args: str, hide_gr00t_eval: bool = False) -> subprocess.Popen:
    flag = "--hide-gr00t-eval" if hide_gr00t_eval else "--as-installed"
    return subprocess.Popen([sys.executable, "-c", _RUN_CLI_AND_REPORT, flag, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("replay-no-torch") / "ds", lengths=(6,))


def test_replay_server_never_imports_torch_from_start_to_exit(dataset):
    proc = _cli_process("serve", "--dataset-path", str(dataset), "--port", "0")
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(READY):
                break
        assert lines and lines[-1].startswith(READY), "\n".join(lines)
        port = int(lines[-1].rsplit(":", 1)[1])
        with PolicyClient(port=port, timeout_ms=5000) as client:
            assert client.ping()
            action, _ = client.get_action({})
            assert action
            client.kill_server()
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "Device: n/a (replay)" in "\n".join(lines)
    assert "torch imported: False" in rest, rest


def test_replay_without_gr00t_eval_fails_with_one_line_naming_the_extra(dataset):
    proc = _cli_process("serve", "--dataset-path", str(dataset), "--port", "0", hide_gr00t_eval=True)
    output, _ = proc.communicate(timeout=60)
    errors = [line for line in output.splitlines() if "error" in line]
    assert proc.returncode == 2, output
    assert len(errors) == 1 and errors[0].endswith(replay_install_advice()), output
    # the wheel, never a gr00t name an index would answer (the names are unclaimed on PyPI)
    assert "pip install gr00t_eval-" in errors[0] and "pip install 'gr00t-server" not in errors[0], output
    assert "Traceback" not in output


def test_a_test_checkpoint_from_a_dataset_without_gr00t_eval_fails_with_one_line_naming_the_extra(dataset, tmp_path):
    """It said only "No module named 'gr00t_eval'", a distribution a server user may never have heard of."""
    proc = _cli_process("make-test-checkpoint", str(tmp_path / "ckpt"), "--size", "tiny", "--dataset-path",
                        str(dataset), hide_gr00t_eval=True)
    output, _ = proc.communicate(timeout=120)
    errors = [line for line in output.splitlines() if "error" in line]
    assert proc.returncode == 2, output
    assert len(errors) == 1, output
    assert errors[0].startswith("gr00t-server make-test-checkpoint: error: a test checkpoint made from a dataset needs "
                                "gr00t-eval's dataset reader (")
    assert errors[0].endswith(f"): {replay_install_advice()}"), output
    assert "Traceback" not in output and not (tmp_path / "ckpt").exists()


def test_replay_with_gr00t_eval_installed_but_failing_to_import_names_the_cause_not_the_extra(dataset, tmp_path):
    """A numpy 1 host with pyarrow 26 was told to pip install 'gr00t-server[replay]', which it had: nothing changed."""
    stand_in = tmp_path / "stand_in" / "pyarrow"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("raise ImportError('pyarrow requires NumPy 2.0 or newer, found 1.26.4')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stand_in.parent), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", _RUN_CLI_AND_REPORT, "--as-installed", "serve", "--dataset-path",
                             str(dataset), "--port", "0"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "gr00t-server serve: error: replay serving needs gr00t-eval's dataset reader: gr00t_eval.dataset is installed "
        "but failed to import (pyarrow requires NumPy 2.0 or newer, found 1.26.4)"]
