"""`gr00t-eval record` at the default log level shows the user's lines only (audit 11, L9): no PyOpenGL INFO line
about OpenGL_accelerate. (An interrupted recording's words: test_record.py's SIGTERM test.)"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

if importlib.util.find_spec("metaworld") is None:  # not imported here: this process must not load MuJoCo before
    pytest.skip("needs Meta-World (gr00t-eval[sim])", allow_module_level=True)  # MUJOCO_GL is set (later tests)
pytestmark = pytest.mark.sim


def _record(root, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gr00t_eval.cli", "record", "--env-name", "metaworld/reach-v3", "--output", str(root),
         "--image-size", "32", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")},
    )


def test_record_prints_no_opengl_accelerate_line_at_the_default_log_level(tmp_path):
    proc = _record(tmp_path / "reach", "--episodes", "1", "--max-episode-steps", "5")
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, output
    assert "OpenGL" not in output, output

