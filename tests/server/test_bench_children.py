"""The benchmarks' server and client processes: a child that dies ends the run at once with its exit code (the
benchmarks waited 2 to 10 minutes for a port or a result that could no longer come), and SIGTERM to a benchmark
leaves none of its children serving on their ports."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from _children import BenchmarkError, ChildDied, run_benchmark, wait_for  # noqa: E402


def _stat(pid):
    """(session id, parent pid, start time) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[3]), int(fields[1]), int(fields[19])


def _session_members(sid):
    pids = [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != sid]
    return [pid for pid in pids if (_stat(pid) or (None,))[0] == sid]


def _spawned_children(parent):
    """The multiprocessing children of `parent`, oldest first."""
    children = []
    for pid in _session_members(parent):
        stat = _stat(pid)
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if stat and stat[1] == parent and b"spawn_main" in command:
            children.append((stat[2], pid))
    return [pid for _started, pid in sorted(children)]


def _wait_until(condition, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()


def _start(script, *args):
    return subprocess.Popen([sys.executable, str(BENCHMARKS / script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=BENCHMARKS, start_new_session=True)


def _kill_session(proc):
    for pid in _session_members(proc.pid) + [proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_wait_on_a_child_that_exited_names_its_exit_code():
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=os._exit, args=(3,))
    child.start()
    with pytest.raises(ChildDied, match=rf"the server process \(pid {child.pid}\) exited with code 3 while waiting "
                                        r"for a port"):
        wait_for("a port", ctx.Queue(), {"server process": child}, timeout_s=120)


def test_a_run_that_can_give_no_result_is_one_line_on_stderr_and_exit_status_1(capsys):
    def main():
        raise BenchmarkError("2 of 2 client threads failed; the first: ValueError: broken")

    before = signal.getsignal(signal.SIGTERM)
    try:
        assert run_benchmark(main) == 1
    finally:
        signal.signal(signal.SIGTERM, before)  # run_benchmark's handler is for a benchmark's process, not pytest's
    assert capsys.readouterr().err == "error: 2 of 2 client threads failed; the first: ValueError: broken\n"


@pytest.mark.parametrize("script, args", [
    ("throughput.py", ["--policy", "sleep", "--clients", "1", "--duration", "0.5"]),
    ("batching_timeline.py", ["--clients", "2", "--duration", "0.5"]),
])
def test_a_server_that_dies_at_start_up_ends_the_benchmark_with_its_exit_code(script, args):
    proc = _start(script, *args, "--batch-timeout-ms=-5")  # refused by PolicyServer in the server process
    try:
        _stdout, stderr = proc.communicate(timeout=90)
    finally:
        _kill_session(proc)
    assert proc.returncode == 1, stderr
    assert "batch_timeout_ms must be" in stderr  # the server's own error, printed by its process
    assert stderr.strip().splitlines()[-1].startswith("error: the server process (pid "), stderr
    assert "exited with code 1 while waiting for a port from the server process" in stderr


@pytest.mark.slow
@pytest.mark.parametrize("script, args, children", [
    ("throughput.py", ["--policy", "sleep", "--clients", "1", "--duration", "60"], 2),
    ("wire_latency.py", ["--iterations", "100000"], 7),
    ("batching_timeline.py", ["--clients", "2", "--duration", "60"], 3),
    ("timeout_storm.py", ["--policy", "sleep", "--clients", "2", "--duration", "60"], 1),
    ("amplification_probes.py", [], 1),
])
def test_sigterm_leaves_no_child_of_the_benchmark_running(script, args, children):
    proc = _start(script, *args)
    try:
        assert _wait_until(lambda: len(_session_members(proc.pid)) >= children, 120), "its servers never started"
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=60)[1]
        assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]  # its traceback, where it ended otherwise
        assert _wait_until(lambda: not _session_members(proc.pid), 15), _session_members(proc.pid)
    finally:
        _kill_session(proc)


@pytest.mark.slow
@pytest.mark.parametrize("clients_as, children", [("raw-sockets", 3), ("raw-processes", 3), ("threads", 2)])
def test_clients_end_the_run_within_seconds_when_their_server_is_killed(clients_as, children):
    """Client threads waited out their 120 s timeout on a server that had died."""
    proc = _start("throughput.py", "--policy", "sleep", "--clients", "2", "--duration", "60", "--slices", "1",
                  "--clients-as", clients_as)
    try:
        # both servers, and the first point's client processes where the clients are processes
        assert _wait_until(lambda: len(_spawned_children(proc.pid)) >= children, 120), "the point never started"
        time.sleep(3)  # measuring
        server = _spawned_children(proc.pid)[0]  # batching off: started, and measured, first
        os.kill(server, signal.SIGKILL)
        killed = time.monotonic()
        _stdout, stderr = proc.communicate(timeout=90)
        ended_after_s = time.monotonic() - killed
    finally:
        _kill_session(proc)
    assert proc.returncode == 1, stderr
    assert f"error: the server process (pid {server}) exited with code -9" in stderr
    assert ended_after_s < 20, ended_after_s


def _load_benchmark(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_amplification_probes_stop_naming_the_probe_after_which_the_server_died(monkeypatch):
    """A killed server was printed as a 30,000 ms "ping ms" block time, and the run went on against it."""
    probes = _load_benchmark("amplification_probes")
    servers = []
    popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: servers.append(popen(*args, **kwargs)) or servers[-1])

    def kill_server(_port):
        servers[0].kill()
        servers[0].wait(10)
        return 0.0, "server killed"

    def went_on(_port):
        raise AssertionError("the run went on against a dead server")

    monkeypatch.setattr(probes, "probes", lambda: [("probe that kills the server", kill_server, 1)])
    monkeypatch.setattr(probes, "ping_during_long_call", went_on)
    with pytest.raises(BenchmarkError, match=r"the server process \(pid \d+\) exited with code -9 after the probe "
                                             r"'probe that kills the server'"):
        probes.main([])


def test_amplification_probes_name_a_server_that_could_not_bind_its_port(monkeypatch):
    """A port taken between free_port() and the server's bind was a bare AssertionError (its stderr discarded)."""
    import zmq

    probes = _load_benchmark("amplification_probes")
    taken = zmq.Context.instance().socket(zmq.REP)
    try:
        port = taken.bind_to_random_port("tcp://127.0.0.1")
        monkeypatch.setattr(probes, "free_port", lambda: port)
        with pytest.raises(BenchmarkError, match=rf"the server process \(pid \d+\) exited with code 1 before it was "
                                                 rf"ready on port {port}; its stderr ended: .*Address already in use"):
            probes.main([])
    finally:
        taken.close(linger=0)


def test_timeout_storm_stops_at_once_naming_a_server_that_died():
    """The clients counted timeouts until --duration ended, then a PolicyTimeoutError traceback came."""
    proc = _start("timeout_storm.py", "--policy", "sleep", "--call-ms", "40", "--clients", "2", "--duration", "60",
                  "--timeout-ms", "200")
    try:
        assert _wait_until(lambda: _spawned_children(proc.pid), 120), "its server never started"
        server = _spawned_children(proc.pid)[0]
        time.sleep(2)  # the storm is running
        os.kill(server, signal.SIGKILL)
        _stdout, stderr = proc.communicate(timeout=40)  # well before --duration ends
    finally:
        _kill_session(proc)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"error: the server process (pid {server}) exited with code -9"), stderr


def test_sigterm_while_wire_latency_starts_its_servers_leaves_no_curve_key_behind(tmp_path):
    """The folder holding the CURVE client's secret key was made outside the try that removes it."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, str(BENCHMARKS / "wire_latency.py"), "--iterations", "10", "--rounds", "1",
                             "--warmup", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=BENCHMARKS, env=env, start_new_session=True)
    try:
        assert _wait_until(lambda: list(tmp_path.glob("wire-latency-keys-*")), 60), "the key folder never appeared"
        proc.send_signal(signal.SIGTERM)  # the servers are still starting
        stderr = proc.communicate(timeout=60)[1]
    finally:
        _kill_session(proc)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]  # its traceback, where it ended otherwise
    assert not list(tmp_path.glob("wire-latency-keys-*"))


@pytest.mark.parametrize("script, args", [
    ("policy_latency.py", ["--sizes", "tiny", "--batch-sizes", "1", "--iterations", "1000", "--backends", "pytorch",
                           "--device", "cpu"]),
    ("preprocessing.py", ["--rounds", "40", "--device", "cpu"]),
    ("policy_profile.py", ["--size", "tiny", "--device", "cpu", "--batch-size", "16"]),
])
def test_sigterm_removes_the_temporary_folder_holding_the_checkpoint(tmp_path, script, args):
    """gpu_checks.sh runs these under `timeout` (SIGTERM), which killed them before their TemporaryDirectory went."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, str(BENCHMARKS / script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=BENCHMARKS, env=env, start_new_session=True)
    try:
        assert _wait_until(lambda: list(tmp_path.rglob("*.safetensors")) or proc.poll() is not None, 120)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=60)[1]
    finally:
        _kill_session(proc)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]  # its traceback, where it ended otherwise
    assert [path.name for path in tmp_path.iterdir() if not path.name.startswith("torchinductor")] == []
