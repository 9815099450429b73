"""scripts/demo.sh (make demo) guards its DEMO_DIR before any step: a folder holding someone's files is refused and
kept, a folder another demo is running in is refused at once, and a relative DEMO_DIR is the caller's; SIGTERM stops
the running step with the demo. scripts/demo_latency.py (the demo's step 7) ends with one line on Ctrl-C or with no
server. No test runs a whole demo."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from session_processes import kill_session, session_processes

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo.sh"
REFUSED_EXIT_CODE = 2

pytestmark = pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "gr00t-eval").exists(),
                                reason="demo.sh needs the repository's .venv (make install)")


def start_demo(demo_dir: str, cwd: Path, **popen: object) -> subprocess.Popen:
    """demo.sh in its own session (so that all it started can be found and stopped), with SIGINT at its default."""
    # no DEMO_PORT: the demo picks a free one (a fixed port in use elsewhere is refused before the guards under test)
    env = {**{k: v for k, v in os.environ.items() if k != "DEMO_PORT"}, "DEMO_DIR": demo_dir, "DEMO_EPISODES": "1"}
    return subprocess.Popen(["bash", str(DEMO)], cwd=cwd, env=env, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


def run_demo(demo_dir: str, cwd: Path, timeout_s: float = 20.0) -> subprocess.CompletedProcess:
    """demo.sh to its end; a run that gets past its guards into the demo's steps is stopped, whole."""
    proc = start_demo(demo_dir, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"demo.sh got past its DEMO_DIR guards and ran its steps:\n{out[-800:]}{err[-800:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("kept", ["evaluations.csv", "dataset/meta/info.json", "checkpoint/model.safetensors"],
                         ids=["a results file", "a dataset", "a checkpoint"])
def test_a_demo_dir_holding_other_files_is_refused_and_its_files_kept(tmp_path, kept):
    """Folders named as the demo names its own (dataset/, checkpoint/) are a user's too, until the demo marked them."""
    results = tmp_path / "my_results"
    (results / kept).parent.mkdir(parents=True)
    (results / kept).write_text("run,success\n1,0.93\n")
    done = run_demo(str(results), cwd=tmp_path)
    assert done.returncode == REFUSED_EXIT_CODE, done.stderr
    assert (results / kept).read_text() == "run,success\n1,0.93\n"
    assert str(results) in done.stderr and "not a demo's output" in done.stderr
    assert "== 1/7" not in done.stdout


@pytest.mark.parametrize("case", ["a dangling link", "a path under a file"])
def test_a_demo_dir_that_cannot_be_made_is_refused_naming_why(tmp_path, case):
    demo_dir = tmp_path / "demo"
    if case == "a dangling link":
        demo_dir.symlink_to(tmp_path / "gone")
        expected = f"DEMO_DIR {demo_dir} is a link to {tmp_path / 'gone'}, which does not exist"
    else:
        (tmp_path / "notes.txt").write_text("mine")
        demo_dir = tmp_path / "notes.txt" / "demo"
        expected = f"DEMO_DIR {demo_dir} cannot be made ("
    done = run_demo(str(demo_dir), cwd=tmp_path)
    assert done.returncode == REFUSED_EXIT_CODE, done.stderr
    assert expected in done.stderr and "set DEMO_DIR to" in done.stderr, done.stderr
    assert "== 1/7" not in done.stdout


def test_a_second_demo_into_a_folder_another_demo_holds_is_refused_at_once(tmp_path):
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    (demo_dir / "dataset").mkdir()
    marker = demo_dir / ".gr00t_demo"
    marker.write_text(f"{os.getpid()}\n")
    with open(marker) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the running demo holds it
        started = time.monotonic()
        done = run_demo(str(demo_dir), cwd=tmp_path)
    assert done.returncode == REFUSED_EXIT_CODE, done.stderr
    assert time.monotonic() - started < 10
    assert f"another demo is running in {demo_dir} (pid {os.getpid()})" in done.stderr
    assert (demo_dir / "dataset").is_dir()


def test_a_relative_demo_dir_is_resolved_against_the_callers_folder(tmp_path):
    name = f"demo_rel_{os.getpid()}"
    in_caller = tmp_path / name
    in_caller.mkdir()
    (in_caller / "notes.txt").write_text("mine\n")  # refused at once where the folder is the caller's
    try:
        done = run_demo(name, cwd=tmp_path)
    finally:
        in_repo = ROOT / name
        if in_repo.is_dir():
            subprocess.run(["rm", "-rf", str(in_repo)], check=True)
    assert done.returncode == REFUSED_EXIT_CODE, done.stderr
    assert str(in_caller) in done.stderr
    assert (in_caller / "notes.txt").exists()


def test_sigterm_stops_the_running_step_and_the_demo(tmp_path):
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        proc = start_demo(str(tmp_path / "demo"), tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "== 1/7" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # into the recording step
        os.kill(proc.pid, signal.SIGTERM)  # the script alone, as make forwards it
        assert proc.wait(timeout=20) == 143, log.read_text()
        time.sleep(1.0)
        assert session_processes(proc.pid) == []
    finally:
        kill_session(proc.pid)


def _free_port() -> int:
    """A loopback port nothing listens on now (a fixed one could be another program's server on a shared box)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _latency_script(tmp_path: Path, *flags: str, port: int = 0) -> subprocess.Popen:
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "demo_latency.py"),
                             "--port", str(port or _free_port()), "--calls", "2", *flags], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_demo_latency_ends_with_one_line_and_130_on_ctrl_c(tmp_path):
    import socket

    pytest.importorskip("metaworld")
    # A fixed 4 s nap sent the Ctrl-C into whatever the script had reached: on a loaded box still its imports (Python's
    # own KeyboardInterrupt traceback) or mujoco's (an ImportError, exit 1). A server that never answers: once the
    # script connects, it has built its observation and waits on the server, where the Ctrl-C is meant to land.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        silent.settimeout(120)
        proc = _latency_script(tmp_path, port=silent.getsockname()[1])
        try:
            connection, _ = silent.accept()
        except socket.timeout:
            proc.kill()
            pytest.fail(f"demo_latency never connected: {proc.communicate()[1]}")
        with connection:
            time.sleep(0.5)  # its get_action is waiting for the reply
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert err.strip().splitlines()[-1] == "demo_latency: interrupted"


def test_demo_latency_with_no_server_ends_with_one_line(tmp_path):
    pytest.importorskip("metaworld")
    port = _free_port()
    proc = _latency_script(tmp_path, "--timeout-ms", "300", port=port)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert f"127.0.0.1:{port}" in err.strip().splitlines()[-1]


def test_demo_latency_refuses_counts_sizes_and_ports_out_of_range_before_any_work(tmp_path):
    """--calls 0 crashed in np.percentile([]) after the env and the untimed call; --timeout-ms 0, --image-size 0 and
    --port 70000 ended in tracebacks."""
    cases = [(["--calls", "0"], "argument --calls: must be >= 1, got 0"),
             (["--calls", "-3"], "argument --calls: must be >= 1, got -3"),
             (["--timeout-ms", "0"], "argument --timeout-ms: must be >= 1, got 0"),
             (["--image-size", "0"], "argument --image-size: must be >= 1, got 0"),
             (["--port", "70000"], "argument --port: must be a port number from 1 to 65535, got 70000")]
    runs = [_latency_script(tmp_path, *flags) for flags, _message in cases]  # a later --port wins over the helper's
    errors = [run.communicate(timeout=60)[1] for run in runs]
    for (flags, message), run, err in zip(cases, runs, errors):
        assert run.returncode == 2 and "Traceback" not in err, (flags, err)
        assert message in err, (flags, err)


def test_a_marked_demo_dir_holding_a_users_files_too_is_refused_naming_them_and_nothing_deleted(tmp_path):
    """An earlier demo's folder (its marker there) where the user has since put their own results: the demo empties
    only what a demo writes, so it refuses to run while anything else is at the top."""
    demo_dir = tmp_path / "demo"
    (demo_dir / "dataset" / "meta").mkdir(parents=True)
    (demo_dir / "dataset" / "meta" / "info.json").write_text("{}")
    (demo_dir / ".gr00t_demo").write_text("999999999\n")  # an earlier demo's, ended
    (demo_dir / "my_finetune_eval").mkdir()
    (demo_dir / "my_finetune_eval" / "results.json").write_text("{}")
    (demo_dir / "my_notes.txt").write_text("mine")
    done = run_demo(str(demo_dir), cwd=tmp_path)
    assert done.returncode == REFUSED_EXIT_CODE, done.stderr
    assert "also my_finetune_eval my_notes.txt, which are not a demo's output" in done.stderr
    assert (demo_dir / "my_notes.txt").read_text() == "mine"
    assert (demo_dir / "my_finetune_eval" / "results.json").is_file()
    assert (demo_dir / "dataset" / "meta" / "info.json").is_file()
    assert "== 1/7" not in done.stdout
