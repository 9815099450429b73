"""A command started in a folder that was deleted meanwhile (`cd d`, then `rm -r d` from another shell, or a release
folder replaced under a deploy): every relative path failed with a bare '[Errno 2] No such file or directory', even
commands given only absolute paths, and `serve --model-path` died inside oneMKL as a broken torch install would. Each
CLI now says so in one line first (exit 2)."""

import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = os.pathsep.join(os.path.join(REPO, "packages", package, "src")
                          for package in ("gr00t-client", "gr00t-server", "gr00t-eval"))
GONE = ("error: the current working directory no longer exists (deleted while this shell was in it); "
        "cd to an existing folder")


def _run_in_a_deleted_folder(tmp_path, module, *args):
    """`python -c main()` of `module`, started from a folder removed before the program runs."""
    program = f"import sys; from {module} import main; sys.exit(main())"
    line = " ".join(shlex.quote(word) for word in (sys.executable, "-c", program, *args))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (SOURCES, os.environ.get("PYTHONPATH"))))}
    (tmp_path / "gone").mkdir()
    return subprocess.run(["sh", "-c", f"cd gone && rmdir ../gone && exec {line}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("module", "args"), [
    ("gr00t_server.cli", ["make-test-checkpoint", "--embodiment", "metaworld", "{tmp}/ck"]),
    ("gr00t_server.cli", ["keygen", "keys"]),
    ("gr00t_eval.cli", ["open-loop", "--dataset-path", "{tmp}/ds", "--output-dir", "out"]),
    ("gr00t_eval.cli", ["batch", "--jobs", "{tmp}/jobs.json", "--output-dir", "{tmp}/batch"]),
], ids=["server make-test-checkpoint", "server keygen", "eval open-loop", "eval batch"])
def test_a_command_started_in_a_deleted_folder_says_so_in_one_line(tmp_path, module, args):
    done = _run_in_a_deleted_folder(tmp_path, module, *(arg.format(tmp=tmp_path) for arg in args))
    program = module.split("_")[1].split(".")[0]
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"gr00t-{program}: {GONE}\n"
    assert sorted(os.listdir(tmp_path)) == []  # nothing made anywhere


@pytest.mark.parametrize("module", ["gr00t_server.cli", "gr00t_eval.cli"])
def test_help_is_answered_in_a_deleted_folder(tmp_path, module):
    """--help needs no folder: it was refused with the rest (R56)."""
    done = _run_in_a_deleted_folder(tmp_path, module, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "no longer exists" not in done.stderr


def test_a_file_named_help_after_the_double_dash_does_not_skip_the_refusal(tmp_path):
    """After '--', '--help' names a file: it skipped the refusal, and the command failed with the bare error (R57)."""
    done = _run_in_a_deleted_folder(tmp_path, "gr00t_eval.cli", "merge", "--output", "m.json", "--", "--help")
    assert done.returncode == 2 and done.stderr == f"gr00t-eval: {GONE}\n"
