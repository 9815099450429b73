"""A mistake is one line on stderr and exit status 2 in both programs; --log-level DEBUG (and, for gr00t-server,
GR00T_DEBUG=1) adds its traceback after that line without changing the exit status (docs/evaluation.md,
docs/serving.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gr00t_eval.cli import main as eval_main
from gr00t_server.cli import main as server_main

TRACEBACK = "Traceback (most recent call last)"


def _assert_line_then_traceback(err: str, line: str) -> None:
    assert err.startswith(line), err
    assert err.count(TRACEBACK) == 1, err
    assert "During handling of the above exception" not in err, err


@pytest.fixture(autouse=True)
def _no_gr00t_debug(monkeypatch):
    monkeypatch.delenv("GR00T_DEBUG", raising=False)


@pytest.mark.parametrize("argv, command", [
    (["--log-level", "DEBUG", "open-loop", "--dataset-path", "{missing}"], "open-loop"),
    (["rollout", "--log-level", "DEBUG", "--resume", "{missing}"], "rollout"),
])
def test_gr00t_eval_at_debug_prints_the_line_then_the_traceback_and_exits_2(argv, command, tmp_path, capsys):
    argv = [word.format(missing=tmp_path / "nonexistent") for word in argv]
    assert eval_main(argv) == 2
    _assert_line_then_traceback(capsys.readouterr().err, f"gr00t-eval {command}: error: ")


@pytest.mark.parametrize("argv", [
    ["--log-level", "DEBUG", "keygen", "{blocked}"],
    ["keygen", "{blocked}", "--log-level", "debug"],
])
def test_gr00t_server_keygen_at_debug_prints_the_line_then_the_traceback_and_exits_2(argv, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    argv = [word.format(blocked=tmp_path / "a-file" / "keys") for word in argv]
    assert server_main(argv) == 2
    _assert_line_then_traceback(capsys.readouterr().err, "gr00t-server keygen: error: ")


def test_gr00t_server_serve_at_debug_gives_the_traceback_of_a_missing_model_path(tmp_path, capsys):
    assert server_main(["serve", "--log-level", "DEBUG", "--model-path", str(tmp_path / "nonexistent")]) == 2
    _assert_line_then_traceback(capsys.readouterr().err, "gr00t-server serve: error: ")


def test_gr00t_debug_keeps_exit_status_2_of_the_program(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    done = subprocess.run([sys.executable, "-m", "gr00t_server.cli", "keygen", str(tmp_path / "a-file" / "keys")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GR00T_DEBUG": "1"})
    assert done.returncode == 2, done.stderr
    _assert_line_then_traceback(done.stderr, "gr00t-server keygen: error: ")
