"""The command lines started with stderr closed (`2>&-`, as a cron job or a daemon may run them): their error lines
went to stdout, and child processes found file descriptor 2 closed (glfw's library probe then failed, and `record`
blamed a missing install of metaworld and mujoco, both installed). With stdout closed (`>&-`) the report was
discarded without a word on stderr. Real processes, started through bash."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest


def run_with_stderr_closed(code, *argv):
    """Run `python -c code argv...` with file descriptor 2 closed; its (stdout, exit status)."""
    done = subprocess.run(["bash", "-c", 'exec "$@" 2>&-', "_", sys.executable, "-c", code, *argv],
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=120)
    return done.stdout, done.returncode


def cli(module):
    return f"import sys; from {module} import main; sys.exit(main())"


@pytest.mark.parametrize("module, argv", [
    ("gr00t_eval.cli", ["rollout", "--env-name", "walkto/fast", "--n-episodes", "0"]),
    ("gr00t_server.cli", ["serve", "--dataset-path", "/nonexistent/dataset", "--port", "38123"]),
])
def test_an_error_with_stderr_closed_does_not_land_on_stdout(module, argv):
    out, code = run_with_stderr_closed(cli(module), *argv)
    assert code == 2 and "error:" not in out


def test_child_processes_of_a_command_with_stderr_closed_find_their_stderr_open():
    probe = ("import subprocess, sys\nfrom gr00t_client.stdout_guard import guard_stdout\nguard_stdout()\n"
             "print(subprocess.run([sys.executable, '-c', 'import os; os.fstat(2); print(\"open\")'],"
             " stdout=subprocess.PIPE, text=True).stdout.strip())")
    assert run_with_stderr_closed(probe) == ("open\n", 0)


@pytest.mark.skipif(importlib.util.find_spec("metaworld") is None, reason="needs gr00t-eval[sim]")
def test_record_with_stderr_closed_records(tmp_path):
    out, code = run_with_stderr_closed(cli("gr00t_eval.cli"), "record", "--env-name", "metaworld/reach-v3", "--episodes",
                                       "1", "--max-episode-steps", "5", "--output", str(tmp_path / "ds"))
    assert code == 0 and "install with" not in out and (tmp_path / "ds" / "meta" / "info.json").is_file()


def test_a_metaworld_that_fails_to_load_is_not_called_missing(tmp_path):
    """An installed package whose import fails (a GL library it cannot load) was reported as not installed."""
    (tmp_path / "metaworld").mkdir()
    (tmp_path / "metaworld" / "__init__.py").write_text("raise ImportError('Failed to load GLFW3 shared library.')\n")
    probe = ("from gr00t_eval.extras import MissingExtraError\n"
             "from gr00t_eval.rollout.adapters.metaworld import _import_metaworld\n"
             "try:\n    _import_metaworld()\nexcept MissingExtraError as exc:\n    print(exc)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, stdout=subprocess.PIPE, text=True, timeout=60)
    assert done.stdout == "Meta-World envs could not import metaworld/mujoco (Failed to load GLFW3 shared library.)\n"


def run_with_stdout_closed(code, *argv):
    """Run `python -c code argv...` with file descriptor 1 closed (`>&-`); its (stderr, exit status)."""
    done = subprocess.run(["bash", "-c", 'exec "$@" >&-', "_", sys.executable, "-c", code, *argv],
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=120)
    return done.stderr, done.returncode


@pytest.mark.parametrize("module, argv", [
    ("gr00t_eval.cli", ["suites"]),
    ("gr00t_server.cli", ["keygen", "--force", "{keys}"]),
])
def test_a_report_lost_to_a_stdout_closed_by_the_launcher_is_said_once_on_stderr(module, argv, tmp_path):
    errors, code = run_with_stdout_closed(cli(module), *[word.format(keys=tmp_path / "keys") for word in argv])
    assert code == 0, errors
    assert errors.count("standard output cannot be written (closed by the launcher") == 1, errors
    assert "Traceback" not in errors


def test_a_command_line_writing_to_a_pipe_or_file_flushes_each_line_as_it_is_printed():
    """Under nohup or cron (stdout a log file) rollout's `Output directory:` line sat in the stdout buffer while the run
    went on (`tail -f` showed nothing), and a run killed -9 lost it, and with it the folder to resume."""
    probe = ("import time\nfrom gr00t_client.stdout_guard import guard_stdout\nguard_stdout()\n"
             "print('Output directory: runs/x')\ntime.sleep(60)")
    import os

    environment = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}  # as cron's
    child = subprocess.Popen([sys.executable, "-c", probe], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                             env=environment)
    try:
        import select

        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready and child.stdout.readline() == "Output directory: runs/x\n"  # while the command still runs
    finally:
        child.kill()
        child.wait()
