"""Port flags take the digits 0-9 only, as HOST:PORT entries and job files do: int() took Arabic-Indic digits
('٥٥٥٦' connected to port 5556) and refused a superscript with argparse's bare "invalid int value"."""

from __future__ import annotations

import pytest

from gr00t_eval.cli import build_parser


@pytest.mark.parametrize("command, flag", [("rollout", "--policy-client-port"), ("open-loop", "--port")])
@pytest.mark.parametrize("value", ["\u0665\u0665\u0665\u0666", "5\u00b2", "port"])
def test_a_port_flag_not_in_ascii_digits_is_refused_naming_the_flag_and_the_form(capsys, command, flag, value):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, flag, value])
    assert exited.value.code == 2
    assert (f"{flag} must be a port number written in the digits 0-9 (such as 5555), got {value!r}"
            in capsys.readouterr().err)


@pytest.mark.parametrize("command, flag", [("rollout", "--policy-client-port"), ("open-loop", "--port")])
def test_a_port_flag_in_ascii_digits_is_taken(command, flag):
    required = ["--dataset-path", "."] if command == "open-loop" else []
    assert build_parser().parse_args([command, flag, "5556", *required]).port == 5556
