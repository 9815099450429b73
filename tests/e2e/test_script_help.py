"""The benchmark and helper scripts' --help, as a user runs them: the description is the docstring's whole first
paragraph (batching_timeline.py's was its first line, cut mid-sentence after 'with the sleep policy of')."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# preprocessing.py is left out: it imports torch before parsing its flags (15 s for --help)
SCRIPTS = ["benchmarks/batching_timeline.py", "benchmarks/record_stats.py", "benchmarks/throughput.py",
           "benchmarks/wire_latency.py", "scripts/demo_latency.py", "scripts/dist_check.py"]


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_describes_the_script_by_the_first_paragraph_of_its_docstring(script):
    path = ROOT / script
    first_paragraph = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))).split("\n\n")[0]
    wide = dict(os.environ, COLUMNS="1000")  # unwrapped: argparse breaks lines at hyphens ('Meta-', 'World')
    result = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=60,
                            cwd=path.parent, env=wide)
    assert result.returncode == 0, result.stderr
    description = result.stdout.split("\n\n")[1]
    assert _words(description) == _words(first_paragraph)
