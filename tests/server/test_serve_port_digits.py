"""gr00t-server serve's port flags take the digits 0-9 only: '٥٥٥٦' was served as port 5556, and '5²' got argparse's
bare "invalid int value"."""

from __future__ import annotations

import pytest

from gr00t_server.cli import build_parser


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
@pytest.mark.parametrize("value", ["\u0665\u0665\u0665\u0666", "5\u00b2"])
def test_a_serve_port_flag_not_in_ascii_digits_is_refused_naming_the_flag_and_the_form(capsys, flag, value):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", flag, value])
    assert exited.value.code == 2
    assert (f"{flag} must be a port number written in the digits 0-9 (such as 5555), got {value!r}"
            in capsys.readouterr().err)


def test_serve_port_flags_in_ascii_digits_are_taken():
    args = build_parser().parse_args(["serve", "--port", "5556", "--metrics-port", "0"])
    assert (args.port, args.metrics_port) == (5556, 0)
