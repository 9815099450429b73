"""A timeout storm: K clients whose timeout is shorter than a queue of K policy calls, back to back.

Each client thread sends get_action with `--timeout-ms`; the server (its own process, batching off) runs one call at
a time, so most requests wait longer than their client does. A call whose client has given up is wasted. The server
drops a request whose deadline passed, or is nearer than recent calls take (`expired`, no call), and counts a reply
sent after its deadline as `late`. Printed: policy calls, actions the clients received, and the server's counts,
with the fraction of calls that reached a waiting client (the ratio that matters: without deadlines it was 32 of
389 calls, 8%, in docs/serving.md's measurement).

    python benchmarks/timeout_storm.py                                   # tiny Gr00tPolicy on CPU, 6 clients, 150 ms
    python benchmarks/timeout_storm.py --policy sleep --call-ms 40 --clients 8 --duration 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _args import non_negative_float, positive_float, positive_int  # noqa: E402
from _children import BenchmarkError, run_benchmark  # noqa: E402
from throughput import _join_watching, _start_server, _stop_server, server_stats, sleep_observation  # noqa: E402

from gr00t_client import PolicyClient  # noqa: E402
from gr00t_client.client import PolicyTimeoutError  # noqa: E402

COUNTS = ("policy_calls", "late", "expired", "undelivered")


def storm(port: int, observations: List[Dict[str, Any]], clients: int, timeout_ms: int, duration_s: float,
          watched: Dict[str, Any]) -> Dict[str, int]:
    """K client threads sending back to back for `duration_s`; how many actions they got and how many timed out.
    A client's error other than a timeout stops the storm: BenchmarkError naming the first; a watched process (the
    server) that dies stops it at once: ChildDied naming it and its exit code."""
    received = [0] * clients
    timed_out = [0] * clients
    failures: List[BaseException] = []
    stop = threading.Event()
    end = time.monotonic() + duration_s

    def one_client(index: int) -> None:
        try:
            with PolicyClient(port=port, timeout_ms=timeout_ms) as client:
                while time.monotonic() < end and not stop.is_set():
                    try:
                        client.get_action(observations[index % len(observations)])
                        received[index] += 1
                    except PolicyTimeoutError:
                        timed_out[index] += 1
        except Exception as exc:
            failures.append(exc)
            stop.set()

    # daemons: a dead server's clients must not hold the process until their call times out
    threads = [threading.Thread(target=one_client, args=(index,), daemon=True) for index in range(clients)]
    for thread in threads:
        thread.start()
    try:
        _join_watching(threads, watched, "the client threads")
    finally:
        stop.set()  # on SIGTERM or Ctrl-C too: the clients end after their current call
    if failures:
        first = failures[0]
        raise BenchmarkError(f"{len(failures)} of {clients} client threads failed; the first: {type(first).__name__}: {first}")
    return {"received": sum(received), "timed_out": sum(timed_out)}


def _count(stats: Dict[str, Any], key: str) -> int:
    return int(stats.get(key, 0) or 0)


def run(spec: Dict[str, Any], observations: List[Dict[str, Any]], args: argparse.Namespace) -> Dict[str, int]:
    server_args = argparse.Namespace(max_batch_size=1, batch_timeout_ms=0.0)
    process, port = _start_server(spec, observations, server_args, batching=False)
    try:
        before = server_stats(port)
        seen = storm(port, observations, args.clients, args.timeout_ms, args.duration, {"server process": process})
        time.sleep(0.5)  # the last replies counted
        after = server_stats(port)
    finally:
        _stop_server(process, port)
    return {**seen, **{key: _count(after, key) - _count(before, key) for key in COUNTS}}


def report(name: str, counts: Dict[str, int], args: argparse.Namespace) -> None:
    calls = counts["policy_calls"]
    print(f"{name}: {args.clients} clients, timeout {args.timeout_ms} ms, {args.duration:g} s")
    print("  " + "  ".join(f"{key} {counts[key]}" for key in ("policy_calls", "received", "timed_out", *COUNTS[1:])))
    print(f"  ok (answered in time) {calls - counts['late'] - counts['undelivered']}")
    if calls:
        print(f"  calls that reached a waiting client: {counts['received']} / {calls} = {counts['received'] / calls:.0%}; "
              f"late (wasted) calls: {counts['late'] / calls:.0%}")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", choices=("gr00t", "sleep"), default="gr00t")
    parser.add_argument("--clients", type=positive_int, default=6)
    parser.add_argument("--timeout-ms", type=positive_int, default=150)
    parser.add_argument("--duration", type=positive_float, default=15.0)
    parser.add_argument("--call-ms", type=non_negative_float, default=40.0, help="the sleep policy's call time")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.policy == "sleep":
        spec = {"kind": "sleep", "base_ms": args.call_ms, "per_row_ms": 0.0}
        report(f"sleep {args.call_ms:g} ms", run(spec, [sleep_observation(seed) for seed in range(8)], args), args)
        return 0
    from gr00t_server.test_checkpoint import example_observation, make_test_checkpoint

    tag = "new_embodiment"
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = make_test_checkpoint(folder, size="tiny")
        spec = {"kind": "gr00t", "checkpoint": str(checkpoint), "embodiment_tag": tag}
        observations = [example_observation(checkpoint, tag, batch_size=1, seed=seed) for seed in range(8)]
        report("gr00t tiny cpu", run(spec, observations, args), args)
    return 0


if __name__ == "__main__":
    sys.exit(run_benchmark(main))
