"""scripts/demo.sh (make demo) checks its settings before any step, reads its numbers in base 10, empties a DEMO_DIR
that links to an earlier demo's output, names what holds a folder whose demo has ended, and leaves no server or step
behind when the script itself is killed with SIGKILL. Each test runs the real script in a copy of the repository
whose .venv/bin runs this checkout's packages (as the probe's repros do), and stops it once the behaviour is seen: no
test runs a whole demo."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from session_processes import kill_session, session_processes

ROOT = Path(__file__).resolve().parents[2]
REFUSED_EXIT_CODE = 2
PACKAGES = ("gr00t-client", "gr00t-server", "gr00t-eval")


@pytest.fixture
def repo(tmp_path) -> Path:
    """A copy of the demo's scripts with a .venv/bin whose entry points run this checkout's packages."""
    root = tmp_path / "repo"
    for name in ("scripts/demo.sh", "scripts/demo_latency.py", "benchmarks/_args.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python_path = ":".join(str(ROOT / "packages" / package / "src") for package in PACKAGES)
    for name, module in (("python", None), ("gr00t-eval", "gr00t_eval.cli"), ("gr00t-server", "gr00t_server.cli")):
        run = f'exec {sys.executable} -m {module} "$@"' if module else f'exec {sys.executable} "$@"'
        (bin_dir / name).write_text(f"#!/bin/bash\nexport PYTHONPATH={python_path}\n{run}\n")
        (bin_dir / name).chmod(0o755)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_demo(repo: Path, demo_dir: Path, log: Path, **settings: str) -> subprocess.Popen:
    """demo.sh in its own session (so that all it started can be found and stopped), its output in `log`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEMO_")}
    env.update({"DEMO_DIR": str(demo_dir), "DEMO_EPISODES": "1", **settings})
    with open(log, "w") as out:
        return subprocess.Popen(["bash", str(repo / "scripts" / "demo.sh")], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def run_until(proc: subprocess.Popen, log: Path, text: str, timeout_s: float = 60.0) -> str:
    """The demo's output once `text` shows in it, or once the demo has ended."""
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return log.read_text()


def refused(repo: Path, demo_dir: Path, **settings: str) -> tuple:
    """(exit status, output) of a demo expected to stop in its guards; one that gets into its steps is stopped (None)."""
    log = demo_dir.parent / "refused.log"
    proc = start_demo(repo, demo_dir, log, **settings)
    try:
        output = run_until(proc, log, "== 1/7", timeout_s=30)
        return (proc.wait(timeout=5) if "== 1/7" not in output else None), output
    finally:
        kill_session(proc.pid)


@pytest.mark.parametrize("setting, value, expected", [
    ("DEMO_EPISODES", "0", "DEMO_EPISODES must be a whole number from 1 to 100000, got '0'"),
    ("DEMO_EPISODES", "ten", "DEMO_EPISODES must be a whole number from 1 to 100000, got 'ten'"),
    ("DEMO_EPISODES", "-3", "DEMO_EPISODES must be a whole number from 1 to 100000, got '-3'"),
    ("DEMO_MODEL_EPISODES", "0", "DEMO_MODEL_EPISODES must be a whole number from 1 to 100000, got '0'"),
    ("DEMO_PORT", "0", "DEMO_PORT must be a whole number from 1 to 65535, got '0'"),
    ("DEMO_PORT", "70000", "DEMO_PORT must be a whole number from 1 to 65535, got '70000'"),
])
def test_a_number_setting_out_of_range_is_refused_naming_it_before_any_work(repo, tmp_path, setting, value, expected):
    """DEMO_PORT=0 and DEMO_MODEL_EPISODES=0 failed only after the recording, naming a flag (--port, --n-episodes)."""
    code, output = refused(repo, tmp_path / "demo", **{setting: value})
    assert code == REFUSED_EXIT_CODE, output
    assert expected in output
    assert not (tmp_path / "demo").exists()


def test_a_demo_port_in_use_is_refused_naming_demo_port_before_any_work(repo, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        code, output = refused(repo, tmp_path / "demo", DEMO_PORT=str(port))
    assert code == REFUSED_EXIT_CODE, output
    assert f"DEMO_PORT {port} cannot be used on 127.0.0.1" in output and "set another DEMO_PORT" in output
    assert "== 1/7" not in output


@pytest.mark.parametrize("value, episodes", [("08", 8), ("010", 10), ("0003", 3)])
def test_demo_episodes_with_a_leading_zero_is_read_in_base_10(repo, tmp_path, value, episodes):
    """`record` read 010 as ten, the open-loop step's $((EPISODES - 1)) as octal: 0..7 checked, and 08 broke it."""
    log = tmp_path / "demo.log"
    proc = start_demo(repo, tmp_path / "demo", log, DEMO_EPISODES=value, DEMO_PORT=str(free_port()))
    try:
        output = run_until(proc, log, "== 1/7")
    finally:
        kill_session(proc.pid)
    assert f"== 1/7 Recording {episodes} episodes of" in output


def test_a_demo_dir_linking_to_an_earlier_demos_output_is_emptied_and_reused(repo, tmp_path):
    """find without -H did not descend into a DEMO_DIR that is a symlink, so `record` met the old dataset."""
    earlier = tmp_path / "scratch_demo"
    (earlier / "dataset" / "meta").mkdir(parents=True)
    (earlier / "dataset" / "meta" / "info.json").write_text("{}")
    (earlier / "open_loop").mkdir()
    (earlier / "open_loop" / "results.json").write_text("{}")
    (earlier / ".gr00t_demo").write_text("12345\n")
    link = tmp_path / "demo"
    link.symlink_to(earlier)
    log = tmp_path / "demo.log"
    proc = start_demo(repo, link, log, DEMO_PORT=str(free_port()))
    try:
        output = run_until(proc, log, "== 1/7")
        left = sorted(path.name for path in earlier.iterdir())
    finally:
        kill_session(proc.pid)
    assert "== 1/7" in output and "not empty" not in output, output
    assert "open_loop" not in left and "12345" not in (earlier / ".gr00t_demo").read_text()


def test_a_folder_held_after_its_demo_ended_names_the_holders_not_the_dead_demo(repo, tmp_path):
    """'another demo is running (pid N); wait for it to end' named a dead pid: the wait would never end."""
    import fcntl

    ended = subprocess.Popen(["true"])
    ended.wait()
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    marker = demo_dir / ".gr00t_demo"
    marker.write_text(f"{ended.pid}\n")
    with open(marker) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a server the ended demo left behind holds it
        code, output = refused(repo, tmp_path / "demo", DEMO_PORT=str(free_port()))
    assert code == REFUSED_EXIT_CODE, output
    assert "another demo is running" not in output
    assert f"the demo that ran in {demo_dir} (pid {ended.pid}) has ended" in output
    if shutil.which("fuser"):
        assert f"(pid {os.getpid()})" in output, output


@pytest.mark.sim
@pytest.mark.slow
def test_a_sigkill_of_the_script_stops_its_server_and_step_and_frees_the_folder(repo, tmp_path):
    """kill -9 of the script (no trap runs) left `gr00t-server serve` listening and holding DEMO_DIR's lock."""
    pytest.importorskip("metaworld")
    port = free_port()
    demo_dir = tmp_path / "demo"
    log = tmp_path / "demo.log"
    proc = start_demo(repo, demo_dir, log, DEMO_PORT=str(port), MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    try:
        output = run_until(proc, log, "Server is ready", timeout_s=120)
        assert "Server is ready" in output, output
        proc.kill()  # the script alone
        proc.wait()
        deadline = time.monotonic() + 30
        while session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session_processes(proc.pid) == []
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
        code, output = refused(repo, demo_dir, DEMO_PORT=str(free_port()))
    finally:
        kill_session(proc.pid)
    assert code is None, output  # the next demo into the folder got into its steps


@pytest.mark.sim
@pytest.mark.slow
def test_a_sigkill_of_the_scripts_process_group_stops_the_running_step(repo, tmp_path):
    """kill -9 -PGID (CI runners, timeout -s KILL) missed the step, which runs in a process group of its own: a
    recording of many episodes went on, holding DEMO_DIR's lock."""
    pytest.importorskip("metaworld")
    log = tmp_path / "demo.log"
    proc = start_demo(repo, tmp_path / "demo", log, DEMO_EPISODES="200", DEMO_PORT=str(free_port()),
                      MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    try:
        output = run_until(proc, log, "== 1/7")
        assert "== 1/7" in output, output
        time.sleep(1.0)  # into the recording step
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30  # far less than 200 episodes take
        while session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session_processes(proc.pid) == []
    finally:
        kill_session(proc.pid)
