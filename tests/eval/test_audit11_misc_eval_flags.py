"""Flag mistakes a newcomer makes with gr00t-eval get a hint (audit 11, L6): rollout's --host/--port (open-loop's
names) are refused naming --policy-client-host/--policy-client-port, and --log-level takes any case, before or
after the command (where gr00t-server serve takes it)."""

from __future__ import annotations

import pytest

from gr00t_eval.cli import main


@pytest.mark.parametrize("flag, value, right", [
    ("--host", "127.0.0.1", "--policy-client-host"),
    ("--port", "5658", "--policy-client-port"),
    ("--port", None, "--policy-client-port"),
])
def test_rollout_with_open_loops_connection_flags_names_its_own(capsys, flag, value, right):
    argv = ["rollout", "--env-name", "metaworld/reach-v3", flag] + ([value] if value else [])
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"gr00t-eval rollout: error: {flag} is open-loop's flag; rollout's is {right}" in err, err


@pytest.mark.parametrize("argv", [
    ["--log-level", "warning", "open-loop"],
    ["open-loop", "--log-level", "Warning"],
    ["--log_level", "ERROR", "open-loop", "--log_level", "error"],
])
def test_log_level_takes_any_case_before_or_after_the_command(tmp_path, capsys, argv):
    missing = tmp_path / "no-such-dataset"
    assert main(argv + ["--dataset-path", str(missing), "--output-dir", str(tmp_path / "out")]) == 2  # argparse would exit
    err = capsys.readouterr().err
    assert err.startswith("gr00t-eval open-loop: error:") and str(missing) in err, err
