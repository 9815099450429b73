"""Round-trip latency of get_action over the wire with a null policy, beside a raw ZeroMQ floor.

Rows: our client and server (wire="auto", i.e. multipart), the same with the server's InlineGate off
(inline_below_ms=0: every call handed to the policy worker and back), our client forced to wire="reference", the
reference-style client (tests/reference_peer.py) against our server, a bare REQ/REP pair that only runs our
multipart codec (the client encodes the request and decodes the reply, the server decodes and encodes: what
the codec alone costs, with no validation, batching, worker thread or policy), and a raw REQ/REP pair that
carries the same request and reply bytes with no encoding and no copy at all (the floor). Each is timed with CURVE encryption off and on (the
reference-style client speaks plaintext only). The clients run in this process and every server in a process
of its own, on loopback.

    python benchmarks/wire_latency.py --iterations 300
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import zmq
import zmq.auth

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _args import non_negative_int, positive_int  # noqa: E402
from _children import BenchmarkError, run_benchmark, wait_for  # noqa: E402
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


def is_null_reply(reply: object, reply_bytes: bytes) -> bool:
    """Whether a path's reply is the NullPolicy's: the raw floor's bytes, the codec's {"ok", "result"} or a client's
    (action, info) with its zero action chunk. A path answering wrongly would time something else."""
    if isinstance(reply, zmq.Frame):
        return reply.bytes == reply_bytes
    action = (reply["result"] if isinstance(reply, dict) else reply)[0]
    expected = NullPolicy()._action
    return set(action) == set(expected) and all(np.array_equal(action[key], value) for key, value in expected.items())


def _rep_socket(context: zmq.Context, curve_keys: Optional[Tuple[bytes, bytes]]) -> zmq.Socket:
    rep = context.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.copy_threshold = codec.ZERO_COPY_MIN_BYTES
    if curve_keys is not None:  # the same CURVE server setup as PolicyServer's, without ZAP
        rep.curve_server = True
        rep.curve_publickey, rep.curve_secretkey = curve_keys
    return rep


def serve_raw_floor(reply: bytes, curve_keys: Optional[Tuple[bytes, bytes]], ready: Any) -> None:
    """Process: a REP socket that answers every request with fixed reply bytes: ZeroMQ alone, no copy on either side
    (a copying floor is slower than our zero-copy path at large sizes, and flattered our ratio to it 1.7-2.7x)."""
    rep = _rep_socket(zmq.Context(), curve_keys)
    ready.put(rep.bind_to_random_port("tcp://127.0.0.1"))
    while True:
        rep.recv(copy=False)
        rep.send(reply, copy=False)


def serve_codec_floor(curve_keys: Optional[Tuple[bytes, bytes]], ready: Any) -> None:
    """Process: a REP socket that decodes each multipart request and encodes the action reply: the codec alone."""
    policy = NullPolicy()
    rep = _rep_socket(zmq.Context(), curve_keys)
    ready.put(rep.bind_to_random_port("tcp://127.0.0.1"))
    while True:
        request = codec.decode_multipart(rep.recv_multipart(copy=False))
        action, info = policy.get_action(request["data"]["observation"])
        rep.send_multipart(codec.encode_multipart({"ok": True, "result": [action, info]}), copy=False)


def serve_policy_server(server_kwargs: Dict[str, Any], ready: Any) -> None:
    """Process: our PolicyServer with the null policy."""
    import contextlib
    import io

    server = PolicyServer(NullPolicy(), host="127.0.0.1", port=0, **server_kwargs).start()
    ready.put(server.port)
    with contextlib.redirect_stdout(io.StringIO()):
        server.run()


def start_process(target: Callable[..., None], *args: Any) -> Tuple[Any, int]:
    """Start `target(*args, ready)` in a fresh process; (process, the port it bound)."""
    context = mp.get_context("spawn")
    ready = context.Queue()
    process = context.Process(target=target, args=(*args, ready), daemon=True)
    process.start()
    return process, wait_for(f"a port from the {target.__name__} process", ready, {f"{target.__name__} process": process}, 120)


def percentile(samples: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def raw_client(context: zmq.Context, port: int, server_public: Optional[bytes]) -> zmq.Socket:
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    if server_public is not None:
        req.curve_serverkey = server_public
        req.curve_publickey, req.curve_secretkey = zmq.curve_keypair()
    req.connect(f"tcp://127.0.0.1:{port}")
    return req


def run_case(name: str, observation, iterations: int, warmup: int, rounds: int) -> List[tuple]:
    """Time every path on one observation, CURVE off and on; paths take turns in `rounds` slices so load drift hits all alike."""
    client_dir = tempfile.mkdtemp(prefix="wire-latency-keys-")
    try:  # the folder holds a client SECRET key: removed on Ctrl-C or SIGTERM during the servers' start too
        return _run_case_with_keys(name, observation, iterations, warmup, rounds, client_dir)
    finally:
        shutil.rmtree(client_dir, ignore_errors=True)


def _run_case_with_keys(name: str, observation, iterations: int, warmup: int, rounds: int, client_dir: str) -> List[tuple]:
    """run_case, with the CURVE client's key pair written to `client_dir`."""
    request_bytes = codec.encode({"endpoint": "get_action", "data": {"observation": observation, "options": None}})
    reply_bytes = codec.encode(list(NullPolicy().get_action(observation)))
    payload_mib = len(request_bytes) / 2**20
    server_public, server_secret = zmq.curve_keypair()
    client_public_path, client_secret_path = zmq.auth.create_certificates(client_dir, "bench-client")
    os.chmod(client_secret_path, 0o600)  # as `gr00t-server keygen` writes it (the client warns of a readable secret)
    authorized_dir = os.path.join(client_dir, "authorized")  # the server holds the public key only
    os.mkdir(authorized_dir)
    shutil.copy(client_public_path, authorized_dir)
    curve_keys = (server_public, server_secret)
    # Every server in a process of its own, as in a deployment: one interpreter for the client and the servers
    # would make them take turns on its lock and flatten the differences between rows.
    started = {
        ("policy", "off"): start_process(serve_policy_server, {}),
        # the same server with every call handed to its worker thread (no InlineGate): what the hand-offs cost
        ("policy-worker", "off"): start_process(serve_policy_server, {"inline_below_ms": 0}),
        # CURVE with the ZAP authorizer on: it only runs at connection time, so the per-request cost is the cipher's
        ("policy", "on"): start_process(serve_policy_server, {"curve_secret_key": server_secret.decode(), "authorized_keys": authorized_dir}),
        ("raw", "off"): start_process(serve_raw_floor, reply_bytes, None),
        ("raw", "on"): start_process(serve_raw_floor, reply_bytes, curve_keys),
        ("codec", "off"): start_process(serve_codec_floor, None),
        ("codec", "on"): start_process(serve_codec_floor, curve_keys),
    }
    port = {key: bound for key, (_process, bound) in started.items()}
    context = zmq.Context()
    reqs = {key: raw_client(context, port[("raw", key)], None if key == "off" else server_public) for key in ("off", "on")}
    codec_reqs = {key: raw_client(context, port[("codec", key)], None if key == "off" else server_public) for key in ("off", "on")}
    curve = {"server_public_key": server_public.decode(), "client_secret_key": client_secret_path}
    clients = {
        ("ours (auto=multipart)", "off"): PolicyClient(host="127.0.0.1", port=port[("policy", "off")], timeout_ms=30000, wire="auto"),
        ("ours (auto=multipart)", "on"): PolicyClient(host="127.0.0.1", port=port[("policy", "on")], timeout_ms=30000, wire="auto", **curve),
        ('ours (wire="reference")', "off"): PolicyClient(host="127.0.0.1", port=port[("policy", "off")], timeout_ms=30000, wire="reference"),
        ('ours (wire="reference")', "on"): PolicyClient(host="127.0.0.1", port=port[("policy", "on")], timeout_ms=30000, wire="reference", **curve),
    }
    clients[("ours (multipart, inline off)", "off")] = PolicyClient(
        host="127.0.0.1", port=port[("policy-worker", "off")], timeout_ms=30000, wire="auto")
    reference = ReferenceClient(port[("policy", "off")], timeout_ms=30000)

    def raw_round_trip(req: zmq.Socket) -> Callable[[], object]:
        def call() -> object:
            req.send(request_bytes, copy=False)
            return req.recv(copy=False)
        return call

    paths: Dict[Tuple[str, str], Callable[[], object]] = {
        key: (lambda client=client: client.get_action(observation)) for key, client in clients.items()
    }
    paths[("reference-style client (no CURVE)", "off")] = lambda: reference.get_action(observation)
    envelope = {"endpoint": "get_action", "data": {"observation": observation, "options": None}}

    def codec_round_trip(req: zmq.Socket) -> Callable[[], object]:
        req.copy_threshold = codec.ZERO_COPY_MIN_BYTES

        def call() -> object:
            req.send_multipart(codec.encode_multipart(envelope), copy=False)
            return codec.decode_multipart(req.recv_multipart(copy=False))
        return call

    paths[("codec only, no server (multipart)", "off")] = codec_round_trip(codec_reqs["off"])
    paths[("codec only, no server (multipart)", "on")] = codec_round_trip(codec_reqs["on"])
    paths[("raw ZeroMQ REQ/REP floor", "off")] = raw_round_trip(reqs["off"])
    paths[("raw ZeroMQ REQ/REP floor", "on")] = raw_round_trip(reqs["on"])
    samples: Dict[Tuple[str, str], List[float]] = {key: [] for key in paths}
    try:
        for key, call in paths.items():
            measure(call, warmup, 0)
        per_round = max(1, iterations // rounds)
        for _ in range(rounds):
            for key, call in paths.items():
                samples[key].extend(measure(call, per_round, 0))
        wrong = [f"{label} (CURVE {curve})" for (label, curve), call in paths.items() if not is_null_reply(call(), reply_bytes)]
        if wrong:  # one untimed call per path after its timed ones
            raise BenchmarkError(f"FAIL: {name}: {', '.join(wrong)} answered another reply than the null policy's "
                                 "zero action chunk")
    finally:
        for client in clients.values():
            client.close()
        reference.close()
        for req in [*reqs.values(), *codec_reqs.values()]:
            req.close(linger=0)
        context.term()
        for process, _bound in started.values():
            process.terminate()
            process.join(10)
    labels = list(dict.fromkeys(label for label, _ in paths))
    return [(name, label, payload_mib, samples.get((label, "off")), samples.get((label, "on"))) for label in labels]


def _cells(samples: Optional[List[float]], stat: Callable[[List[float]], float]) -> str:
    return f"{stat(samples):8.3f}" if samples else f"{'-':>8s}"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=positive_int, default=200, help="timed round trips per row and column (default 200)")
    parser.add_argument("--warmup", type=non_negative_int, default=20, help="untimed round trips per path first (default 20)")
    parser.add_argument("--rounds", type=positive_int, default=10, help="paths take turns in this many slices (default 10)")
    args = parser.parse_args(argv)
    cases = [
        ("LIBERO-like: 2 cams 256x256 + 8 state", make_observation(2, 256, 256)),
        ("large: 3 cams 480x640 + 8 state", make_observation(3, 480, 640)),
    ]
    rows = []
    for name, observation in cases:
        rows.extend(run_case(name, observation, args.iterations, args.warmup, args.rounds))
    p50, p99 = (lambda s: percentile(s, 50)), (lambda s: percentile(s, 99))
    header = (f"{'observation':40s} {'request MiB':>11s}  {'path':34s} {'p50 off':>8s} {'p50 CURVE':>9s} "
              f"{'p99 off':>8s} {'p99 CURVE':>9s} {'mean off':>8s} {'mean CURVE':>10s}")
    per_cell = max(1, args.iterations // args.rounds) * args.rounds  # what run_case times
    print(f"get_action round trip in ms, null policy, loopback, {per_cell} iterations per cell, interleaved; "
          "CURVE = encrypted, client key checked by ZAP")
    print(header)
    print("-" * len(header))
    for case, label, payload_mib, off, on in rows:
        print(f"{case:40s} {payload_mib:11.2f}  {label:34s} {_cells(off, p50)} {_cells(on, p50)} "
              f"{_cells(off, p99)} {_cells(on, p99)} {_cells(off, statistics.fmean)} {_cells(on, statistics.fmean):>10s}")
    print("\np50 / raw ZeroMQ floor p50 (same run, CURVE off; target <= 1.5x for both of our wire formats). A model's "
          "calls take the worker path, the 'inline off' row; the null policy's run inline on the socket thread:")
    floors = {case: p50(off) for case, label, _mib, off, _on in rows if label.startswith("raw ZeroMQ") and off}
    for case, label, _mib, off, _on in rows:
        if off and case in floors and not label.startswith("raw ZeroMQ"):
            print(f"  {case:40s} {label:34s} {p50(off) / floors[case]:5.2f}x")


if __name__ == "__main__":
    sys.exit(run_benchmark(main))
