"""Both CLIs' --help under `python -OO` (PYTHONOPTIMIZE=2, as some container images and frozen deployments run
Python): docstrings are stripped there, and gr00t-eval built its description from __doc__ (every command crashed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gr00t_eval.cli import build_parser as eval_parser
from gr00t_server.cli import build_parser as server_parser


def _commands(module, parser):
    choices = parser()._subparsers._group_actions[0].choices
    return [(module, [])] + [(module, [command]) for command in choices]


@pytest.mark.parametrize("module, command", _commands("gr00t_eval.cli", eval_parser)
                         + _commands("gr00t_server.cli", server_parser))
def test_help_works_with_docstrings_stripped(module, command):
    optimized = dict(os.environ, PYTHONOPTIMIZE="2")
    result = subprocess.run([sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())",
                             *command, "--help"], capture_output=True, text=True, timeout=120, env=optimized)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith("usage: gr00t-"), result.stdout
