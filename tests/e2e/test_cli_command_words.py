"""Both programs' command lines: an argument no sub-command knows is refused by that sub-command (its name and its
usage, not the program's), and gr00t-server takes --log-level before the command as gr00t-eval does."""

from __future__ import annotations

import pytest

from gr00t_eval.cli import main as eval_main
from gr00t_server.cli import build_parser as server_parser
from gr00t_server.cli import main as server_main


@pytest.mark.parametrize("main, argv, command", [
    (eval_main, ["rollout", "--env-name", "x", "--n-episode", "3"], "gr00t-eval rollout"),
    (eval_main, ["--log-level", "warning", "open-loop", "--dataset-path", "d", "--bogus", "1"], "gr00t-eval open-loop"),
    (eval_main, ["merge", "a.json", "--output", "o", "--extra"], "gr00t-eval merge"),
    (server_main, ["serve", "--model-path", "m", "--batch-size", "5"], "gr00t-server serve"),
    (server_main, ["serve", "--model-pat", "m"], "gr00t-server serve"),  # abbreviations are refused, as gr00t-eval's
    (server_main, ["--log-level", "debug", "verify", "--model-path", "m", "--torch-compile", "--bogus"],
     "gr00t-server verify"),
])
def test_an_unknown_argument_is_refused_by_the_command_it_was_given_to(main, argv, command, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    unknown = [word for word in argv if word in ("--n-episode", "--bogus", "--extra", "--batch-size", "--model-pat")]
    assert f"{command}: error: unrecognized arguments: {unknown[0]}" in err, err
    assert f"usage: {command} " in err, err  # the flags to read are that command's


def test_a_mistyped_command_is_still_named_by_the_program(capsys):
    with pytest.raises(SystemExit):
        eval_main(["rollot", "--env-name", "x"])
    assert "gr00t-eval: error: argument command: invalid choice: 'rollot'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, level", [
    (["serve", "--model-path", "m"], "INFO"),
    (["--log-level", "warning", "serve", "--model-path", "m"], "WARNING"),
    (["serve", "--model-path", "m", "--log-level", "error"], "ERROR"),
    (["--log-level", "warning", "serve", "--model-path", "m", "--log_level", "debug"], "DEBUG"),  # the later one
    (["--log-level", "debug", "export", "--model-path", "m", "--output", "o"], "DEBUG"),
    (["keygen", "keys"], "INFO"),
])
def test_gr00t_server_takes_the_log_level_before_or_after_the_command(argv, level):
    assert server_parser().parse_args(argv).log_level == level


def test_gr00t_server_log_level_debug_before_the_command_prints_a_start_up_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GR00T_DEBUG", raising=False)
    (tmp_path / "empty").mkdir()
    assert server_main(["--log-level", "DEBUG", "serve", "--dataset-path", str(tmp_path / "empty"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gr00t-server serve: error: dataset info file"), err
    assert "Traceback (most recent call last)" in err
