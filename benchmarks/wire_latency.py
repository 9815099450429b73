"""Round-trip latency of get_action over the wire with a null policy, beside a raw ZeroMQ floor.

Rows: our client and server (wire="auto", i.e. multipart), our client forced to wire="reference", the
reference-style client (tests/reference_peer.py) against our server, and a raw REQ/REP pair that carries the
same request and reply bytes with no encoding at all. Everything runs on loopback in one process.

    python benchmarks/wire_latency.py --iterations 300
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from reference_peer import ReferenceClient  # noqa: E402  (the reference-style peer lives with the tests)

from gr00t_client import BasePolicy, PolicyClient  # noqa: E402
from gr00t_client import codec  # noqa: E402
from gr00t_server.server import PolicyServer  # noqa: E402

STATE_KEYS = ["x", "y", "z", "roll", "pitch", "yaw", "gripper", "gripper_2"]
ACTION_HORIZON = 16


class NullPolicy(BasePolicy):
    """Returns a zero action chunk at once; measures the wire, not a model."""

    def __init__(self) -> None:
        super().__init__(strict=False)
        self._action = {"arm": np.zeros((1, ACTION_HORIZON, 7), np.float32), "gripper": np.zeros((1, ACTION_HORIZON, 1), np.float32)}

    def _get_action(self, observation, options=None):
        return self._action, {}

    def reset(self, options=None):
        return {}


def make_observation(cameras: int, height: int, width: int) -> Dict[str, Dict[str, object]]:
    rng = np.random.default_rng(0)
    return {
        "video": {f"camera_{i}": rng.integers(0, 255, (1, 1, height, width, 3), dtype=np.uint8) for i in range(cameras)},
        "state": {k: rng.standard_normal((1, 1, 1)).astype(np.float32) for k in STATE_KEYS},
        "language": {"annotation.human.action.task_description": [["put the bowl on the plate"]]},
    }


def measure(call: Callable[[], object], iterations: int, warmup: int) -> List[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples


class RawFloor:
    """A REP thread that answers every request with fixed reply bytes: ZeroMQ plus copying, nothing else."""

    def __init__(self, reply: bytes) -> None:
        self._context = zmq.Context()
        self._rep = self._context.socket(zmq.REP)
        self._rep.setsockopt(zmq.LINGER, 0)
        self.port = self._rep.bind_to_random_port("tcp://127.0.0.1")
        self._reply = reply
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self._running:
            if self._rep.poll(50):
                self._rep.recv()
                self._rep.send(self._reply)

    def close(self) -> None:
        self._running = False
        self._thread.join(2)
        self._rep.close(linger=0)
        self._context.term()


def percentile(samples: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def run_case(name: str, observation, iterations: int, warmup: int, rounds: int) -> List[tuple]:
    """Time every path on one observation; paths take turns in `rounds` slices so load drift hits all alike."""
    request_bytes = codec.encode({"endpoint": "get_action", "data": {"observation": observation, "options": None}})
    reply_bytes = codec.encode(list(NullPolicy().get_action(observation)))
    payload_mib = len(request_bytes) / 2**20
    server = PolicyServer(NullPolicy(), host="127.0.0.1", port=0).start()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    floor = RawFloor(reply_bytes)
    context = zmq.Context()
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(f"tcp://127.0.0.1:{floor.port}")
    ours = PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=30000, wire="auto")
    ours_reference = PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=30000, wire="reference")
    reference = ReferenceClient(server.port, timeout_ms=30000)

    def raw_round_trip() -> bytes:
        req.send(request_bytes)
        return req.recv()

    paths: Dict[str, Callable[[], object]] = {
        "ours (auto=multipart)": lambda: ours.get_action(observation),
        'ours (wire="reference")': lambda: ours_reference.get_action(observation),
        "reference-style client": lambda: reference.get_action(observation),
        "raw ZeroMQ REQ/REP floor": raw_round_trip,
    }
    samples: Dict[str, List[float]] = {label: [] for label in paths}
    try:
        for label, call in paths.items():
            measure(call, warmup, 0)
        per_round = max(1, iterations // rounds)
        for _ in range(rounds):
            for label, call in paths.items():
                samples[label].extend(measure(call, per_round, 0))
    finally:
        ours.close()
        ours_reference.close()
        reference.close()
        req.close(linger=0)
        context.term()
        floor.close()
        server.stop()
        thread.join(5)
    return [(name, label, payload_mib, values) for label, values in samples.items()]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200, help="timed round trips per row (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed round trips per path first (default 20)")
    parser.add_argument("--rounds", type=int, default=10, help="paths take turns in this many slices (default 10)")
    args = parser.parse_args(argv)
    cases = [
        ("LIBERO-like: 2 cams 256x256 + 8 state", make_observation(2, 256, 256)),
        ("large: 3 cams 480x640 + 8 state", make_observation(3, 480, 640)),
    ]
    rows = []
    for name, observation in cases:
        rows.extend(run_case(name, observation, args.iterations, args.warmup, args.rounds))
    header = f"{'observation':40s} {'request MiB':>11s}  {'path':28s} {'p50 ms':>8s} {'p99 ms':>8s} {'mean ms':>8s}"
    print(f"get_action round trip, null policy, loopback, {args.iterations} iterations per row, interleaved")
    print(header)
    print("-" * len(header))
    for case, label, payload_mib, samples in rows:
        print(
            f"{case:40s} {payload_mib:11.2f}  {label:28s} {percentile(samples, 50):8.3f} {percentile(samples, 99):8.3f} "
            f"{statistics.fmean(samples):8.3f}"
        )


if __name__ == "__main__":
    main()
