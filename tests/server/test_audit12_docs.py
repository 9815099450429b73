"""Audit 12 (docs against the code): `serve --log-level DEBUG` prints a start-up error's traceback, and the
ServerLimits docstring, the serve --help and docs/serving.md say which flags exist."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from gr00t_server import ServerLimits
from gr00t_server.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _serve_flags() -> set:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    return {option for action in serve._actions for option in action.option_strings}


def test_serve_log_level_debug_prints_the_traceback_of_a_start_up_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GR00T_DEBUG", raising=False)
    (tmp_path / "empty").mkdir()
    argv = ["serve", "--dataset-path", str(tmp_path / "empty"), "--port", "0"]
    assert main(argv) == 2  # one line, no traceback, at the default level
    assert "gr00t-server serve: error: dataset info file (meta/info.json) not found" in capsys.readouterr().err
    assert main([*argv, "--log-level", "debug"]) == 2  # still a mistake's exit code
    err = capsys.readouterr().err
    assert err.startswith("gr00t-server serve: error: dataset info file"), err  # the line first
    assert "Traceback (most recent call last)" in err and "meta/info.json" in err.split("Traceback", 1)[1]


def test_gr00t_debug_prints_the_traceback_after_the_line_and_is_documented(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GR00T_DEBUG", "1")
    (tmp_path / "empty").mkdir()
    assert main(["serve", "--dataset-path", str(tmp_path / "empty"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gr00t-server serve: error: dataset info file"), err
    assert "Traceback (most recent call last)" in err
    text = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
    assert "GR00T_DEBUG" in text and "--log-level DEBUG" in text


def test_the_server_limits_docstring_names_exactly_the_fields_without_a_serve_flag():
    flags = _serve_flags()
    byte_flags = {"max_client_queued_bytes": "--max-client-queued-mb", "max_queued_bytes": "--max-queued-mb"}
    without = {f.name for f in dataclasses.fields(ServerLimits)
               if byte_flags.get(f.name, "--" + f.name.replace("_", "-")) not in flags}
    assert without == {"max_session_id_chars", "max_queued_requests"}
    doc = " ".join(ServerLimits.__doc__.split())
    assert "every field has" not in doc
    assert all(name in doc for name in without)


def test_max_sessions_help_says_sessions_used_once_go_first():
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    help_text = next(a.help for a in serve._actions if "--max-sessions" in a.option_strings)
    assert "least recently used evicted first" not in help_text and "used only once" in help_text


def test_serving_md_names_the_on_off_flags_that_have_both_forms_and_the_one_that_has_not():
    flags = _serve_flags()
    text = " ".join((ROOT / "docs" / "serving.md").read_text(encoding="utf-8").split())
    sentence = re.search(r"These on/off flags of `serve` have both forms: (.*?) has only the plain form", text).group(1)
    for name in re.findall(r"`--(?!no-)([a-z-]+)`/`--no-", sentence):
        assert f"--{name}" in flags and f"--no-{name}" in flags, name
    assert "--allow-remote-kill" in flags and "--no-allow-remote-kill" not in flags
