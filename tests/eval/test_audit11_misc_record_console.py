"""`gr00t-eval record` at the default log level shows the user's lines only (audit 11, L9): no PyOpenGL INFO line
about OpenGL_accelerate, and an interrupted recording is described without the writer's internal method names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("metaworld")
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


def test_an_interrupted_recording_says_how_many_episodes_meta_lists_in_the_users_words(tmp_path):
    root = tmp_path / "reach"
    proc = _record(root, "--episodes", "200")
    try:
        deadline = time.monotonic() + 120
        while not (root / "meta" / "info.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "write_meta()" not in output, output
    assert "episode(s) saved before the stop" in output, output
