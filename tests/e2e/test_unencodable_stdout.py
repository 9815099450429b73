"""The command lines with a standard output that cannot hold a path's characters (PYTHONIOENCODING=ascii, a Latin-1
locale, a journald unit): the first print() of a non-ASCII path raised UnicodeEncodeError, and a command that had done
its work (keys written, a checkpoint written, a dataset recorded) exited 2 with a bare codec error. Such a character is
printed escaped (backslashreplace) instead. Real processes, real folders."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest


def run_cli(module, *argv):
    """`python -m module argv...` with an ASCII stdout and stderr; (exit status, stdout, stderr)."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    done = subprocess.run([sys.executable, "-m", module, *argv], env=env, capture_output=True, stdin=subprocess.DEVNULL,
                          timeout=240)
    return done.returncode, done.stdout.decode("ascii"), done.stderr.decode("ascii")


def test_keygen_into_a_non_ascii_folder_prints_the_path_escaped_and_exits_0(tmp_path):
    keys = tmp_path / "\u9375"  # 鍵
    code, out, err = run_cli("gr00t_server.cli", "keygen", str(keys))
    assert code == 0, err
    assert "\\u9375" in out and "codec can't encode" not in err
    assert sorted(os.listdir(keys))  # the key pair is there


def test_make_test_checkpoint_into_a_non_ascii_folder_prints_the_path_escaped_and_exits_0(tmp_path):
    checkpoint = tmp_path / "\u30c1\u30a7\u30c3\u30af"  # チェック
    code, out, err = run_cli("gr00t_server.cli", "make-test-checkpoint", str(checkpoint))
    assert code == 0, err
    assert "Wrote tiny test checkpoint to" in out and "\\u30c1\\u30a7\\u30c3\\u30af" in out
    assert (checkpoint / "model.safetensors").is_file()


@pytest.mark.skipif(importlib.util.find_spec("metaworld") is None, reason="needs gr00t-eval[sim]")
def test_record_to_a_non_ascii_output_prints_the_path_escaped_and_exits_0(tmp_path):
    output = tmp_path / "\u8a18\u9332"  # 記録
    code, out, err = run_cli("gr00t_eval.cli", "record", "--env-name", "metaworld/reach-v3", "--episodes", "1",
                             "--max-episode-steps", "5", "--image-size", "32", "--output", str(output))
    assert code == 0, err
    assert "\\u8a18\\u9332" in out and "codec can't encode" not in err
    assert (output / "meta" / "info.json").is_file()


def test_a_stream_asked_for_surrogateescape_keeps_writing_a_paths_own_bytes(tmp_path):
    """LC_ALL=C, PYTHONUTF8=1 or PYTHONIOENCODING=utf-8:surrogateescape print a name's own bytes (which name the
    file); escaping every stream printed the text '\\udce9' instead."""
    keys = tmp_path / os.fsdecode(b"caf\xe9")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:surrogateescape"}
    done = subprocess.run([sys.executable, "-m", "gr00t_server.cli", "keygen", str(keys)], env=env, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=240)
    assert done.returncode == 0, done.stderr
    assert os.fsencode(keys) in done.stdout and b"\\udce9" not in done.stdout
