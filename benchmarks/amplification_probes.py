"""Replay the amplification probes of issue 12 against a real server process and print what each one cost it.

Per probe: the bytes sent, how long the server took to answer it, how long a ping right after it took (the
server's block time), and the growth of the server's resident memory. Then: ping latency while a 3 s policy
call runs, and how many policy calls ran for requests whose client had already timed out. (Replay's
batch_size=10**7 probe needs a dataset; tests/server/test_serving_work_limits.py covers it.)

    .venv/bin/python benchmarks/amplification_probes.py
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import msgpack
import numpy as np
import zmq

from gr00t_client import PolicyClient, PolicyServerError, PolicyTimeoutError, codec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _children import BenchmarkError, run_benchmark  # noqa: E402

SERVER_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from gr00t_client import BasePolicy
    from gr00t_server import PolicyServer

    class ProbePolicy(BasePolicy):
        '''Answers at once, or sleeps options["sleep_s"] first (the long call the ping probe runs beside), or holds
        while the file options["hold_while"] exists (at most 60 s).'''
        def _get_action(self, observation, options=None):
            options = options or {}
            time.sleep(float(options.get("sleep_s", 0.0)))
            held_until = time.monotonic() + 60.0
            while options.get("hold_while") and os.path.exists(options["hold_while"]) and time.monotonic() < held_until:
                time.sleep(0.01)
            return {"x": np.zeros((1, 16, 7), np.float32)}, {}
        def reset(self, options=None):
            return {}

    PolicyServer(ProbePolicy(strict=False), port=int(sys.argv[1]), poll_interval_ms=50).run()
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def raw_request(port: int, frames: List[bytes], timeout_s: float = 30.0) -> Tuple[float, str]:
    """Send frames on a fresh REQ socket; (seconds to the reply, the reply's error or 'ok')."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    started = time.monotonic()
    try:
        sock.send_multipart(frames)
        if not sock.poll(int(timeout_s * 1000)):
            return time.monotonic() - started, "no reply"
        reply = codec.decode(sock.recv_multipart()[-1])
    finally:
        sock.close(linger=0)
    error = reply.get("error") if isinstance(reply, dict) else None
    return time.monotonic() - started, str(error)[:70] if error else "ok"


def ping_ms(client: PolicyClient) -> Optional[float]:
    """A ping on a client connected before the probe: the server's block time, without a connection's set-up
    (a fresh client's first ping took 1.4 ms against 0.34 ms, hiding blocks of a millisecond or two); None when
    the server did not answer."""
    started = time.monotonic()
    if not client.ping():
        return None
    return (time.monotonic() - started) * 1000.0


def block_ms_after(probe: str, server: "subprocess.Popen[str]", pinger: PolicyClient) -> float:
    """The ping right after `probe`; BenchmarkError naming the probe when the server died or did not answer, so a
    dead server is not printed as a block time."""
    block_ms = ping_ms(pinger) if server.poll() is None else None
    if block_ms is not None:
        return block_ms
    if server.poll() is None:
        raise BenchmarkError(f"the server process (pid {server.pid}) did not answer a ping within "
                             f"{pinger.timeout_ms} ms after the probe {probe!r}")
    raise BenchmarkError(f"the server process (pid {server.pid}) exited with code {server.returncode} after the "
                         f"probe {probe!r}")


def start_server(port: int, stderr: Any) -> "subprocess.Popen[str]":
    """The probe server on `port`, once it printed that it is ready; BenchmarkError with its exit code and the
    end of its stderr when it exits first (such as when another program took the port after free_port())."""
    server = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(port)], stdout=subprocess.PIPE,
                              stderr=stderr, text=True)
    assert server.stdout is not None
    try:
        ready = "ready" in server.stdout.readline()
    except BaseException:  # a SIGTERM or Ctrl-C while it starts: no server is left serving (its stdout's reader gone
        server.kill()  # is no reason for it to stop: PolicyServer.run() serves on without its ready line)
        server.wait()
        raise
    if ready:
        return server
    try:
        code = server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        code = server.wait()
    stderr.seek(0)
    tail = stderr.read().decode(errors="replace").strip().splitlines()[-3:]
    raise BenchmarkError(f"the server process (pid {server.pid}) exited with code {code} before it was ready on port "
                         f"{port}; its stderr ended: {' | '.join(tail) or '(nothing)'}")


def envelope(observation: Any, options: Any = None, **extra: Any) -> bytes:
    return codec.encode({"endpoint": "get_action", "data": {"observation": observation, "options": options}, **extra})


def probe_queue_flood(port: int) -> Tuple[float, str]:
    """12 x 32 MiB on one DEALER connection while a call is held: the byte budget (16 MiB beyond the first request)
    refuses all but the first, which runs once the held call is let go (after the 11 refusals, however long the
    flood took to arrive: a call of fixed length could end mid-flood on a slow machine and make room for more)."""
    with tempfile.NamedTemporaryFile(prefix="probe-hold-") as hold:
        busy = threading.Thread(target=lambda: raw_request(port, [envelope({}, {"hold_while": hold.name})]))
        busy.start()
        time.sleep(0.1)
        big = envelope({"state": {"x": np.zeros((1, 1, 8 * 1024 * 1024), np.float32)}})
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"tcp://127.0.0.1:{port}")
        started = time.monotonic()
        for _ in range(12):
            dealer.send_multipart([b"", big])
        replies = []
        while len(replies) < 12 and dealer.poll(30000):
            replies.append(codec.decode(dealer.recv_multipart()[-1]))
            if len(replies) == 11:
                hold.close()  # deleted: the held call ends, and the queued first request runs
    dealer.close(linger=0)
    busy.join()
    refused = sum(isinstance(reply, dict) and "budget" in str(reply.get("error")) for reply in replies)
    return time.monotonic() - started, f"{refused} of 12 refused by the per-connection byte budget"


def probes() -> List[Tuple[str, Callable[[int], Tuple[float, str]], int]]:
    count = 8_000_000
    empty_arrays = b"\xdd" + count.to_bytes(4, "big") + b"\x90" * count
    deep: Any = ["pick"]
    for _ in range(1000):
        deep = [deep]
    table: List[Tuple[str, bytes]] = [
        ("8 M empty arrays (8 MB)", empty_arrays),
        ("300 k items in small arrays", msgpack.packb([[[]] * 1000] * 300)),
        ("100 KB language string", envelope({"language": {"task": [["a " * 50_000]]}})),
        ("160 rows of 2x2 images", envelope({"video": {"front": np.zeros((160, 1, 2, 2, 3), np.uint8)}})),
        ("512 KiB session_id", envelope({}, session_id="s" * 512 * 1024)),
        ("NaN state", envelope({"state": {"eef_9d": np.full((1, 1, 9), np.nan, np.float32)}})),
        ("1000-deep language row", envelope({"language": {"task": [deep]}})),
    ]
    listed = [(name, (lambda port, m=message: raw_request(port, [m])), len(message)) for name, message in table]
    return listed + [("12 x 32 MiB queued on one connection", probe_queue_flood, 12 * 32 * 1024 * 1024)]


def ping_during_long_call(port: int, call_s: float = 3.0) -> List[float]:
    busy = threading.Thread(target=lambda: raw_request(port, [envelope({}, {"sleep_s": call_s})]))
    busy.start()
    time.sleep(0.2)
    latencies = []
    with PolicyClient(port=port, timeout_ms=1000) as client:
        client.get_server_info()
        while busy.is_alive() and len(latencies) < 20:
            started = time.monotonic()
            latencies.append((time.monotonic() - started) * 1000.0 if client.ping() else float("inf"))
            time.sleep(0.1)
    busy.join()
    return latencies


def expired_calls(port: int, impatient_clients: int = 20) -> Dict[str, Any]:
    with PolicyClient(port=port, timeout_ms=5000) as client:
        before = client.get_server_info()["stats"]
    hold = tempfile.NamedTemporaryFile(prefix="probe-hold-")  # the busy call lasts until every client gave up
    busy = threading.Thread(target=lambda: raw_request(port, [envelope({}, {"hold_while": hold.name})]))
    busy.start()
    time.sleep(0.2)

    def impatient() -> None:
        with PolicyClient(port=port, timeout_ms=300) as client:
            try:
                client.get_action({})
            except (PolicyTimeoutError, PolicyServerError):
                pass

    threads = [threading.Thread(target=impatient) for _ in range(impatient_clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    hold.close()
    busy.join()
    time.sleep(0.5)
    with PolicyClient(port=port, timeout_ms=5000) as client:
        after = client.get_server_info()["stats"]
    return {
        "impatient requests": impatient_clients,
        "policy calls for them": after["policy_calls"] - before["policy_calls"] - 1,
        "dropped as expired": after["expired"] - before["expired"],
    }


def main(argv: Optional[List[str]] = None) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    port = free_port()
    # a file, not a pipe nobody reads: the server's log must not fill a pipe and block it mid-run
    server_stderr = tempfile.TemporaryFile()
    server = start_server(port, server_stderr)
    pinger: Optional[PolicyClient] = None
    try:
        pinger = PolicyClient(port=port, timeout_ms=30000)
        pinger.ping()  # connected and negotiated before anything is timed
        baseline_ms = ping_ms(pinger)
        print(f"ping with an idle server: {baseline_ms:.1f} ms\n")
        print(f"{'probe':38} {'bytes':>11} {'reply s':>8} {'ping ms':>8} {'RSS +MiB':>8} {'RSS/msg':>8}  reply")
        for name, run, size in probes():
            rss_before = rss_bytes(server.pid)
            seconds, outcome = run(port)
            block_ms = block_ms_after(name, server, pinger)
            growth = max(0, rss_bytes(server.pid) - rss_before)
            ratio = f"{growth / size:.2f}" if size >= 2**20 else "-"  # page-size noise says nothing about tiny messages
            print(f"{name:38} {size:>11} {seconds:>8.3f} {block_ms:>8.1f} {growth / 2**20:>8.1f} {ratio:>8}  {outcome}")
        latencies = ping_during_long_call(port)
        print(f"\nping during a 3 s policy call: {len(latencies)} pings, max {max(latencies):.1f} ms, "
              f"median {float(np.median(latencies)):.1f} ms")
        print("requests whose client timed out during a held call:", expired_calls(port))
    finally:
        if pinger is not None:
            pinger.close()
        server.terminate()
        server.wait(10)
        server_stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_benchmark(main))
