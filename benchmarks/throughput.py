"""Throughput of one PolicyServer under K concurrent clients, with batching across clients off and on.

Each client is a thread with its own PolicyClient that sends get_action back to back. The server runs in its own
process. Two policies:
  sleep  a batching policy whose call costs a fixed --base-ms plus --per-row-ms per row (time.sleep), standing in
         for a GPU forward pass whose cost barely grows with the batch;
  gr00t  the tiny random-weight Gr00tPolicy on CPU (gr00t_server.test_checkpoint), when it can be imported.
Prints requests/s and p50/p99 latency per K, and the batching speed-up. Batching off and on are two servers that
take turns in slices of each point (--slices), so the speed-up is a ratio measured side by side. Target: at K=8 the
sleep policy serves >= 4x the requests/s with batching on than off, and at K=16 >= 85% of the ideal; the exit
status is 1 when a target printed FAIL, or when any reply failed or (sleep policy) was not the action the policy owes
that client's own request. (Context: a one-request-at-a-time server stays flat from 1 to 8
clients, vllm-omni #6567; vla-eval's batched server reported 47x on LIBERO.)

    python benchmarks/throughput.py                      # both policies, 3 s per point
    python benchmarks/throughput.py --policy sleep --duration 5 --clients 1,2,4,8,16
    python benchmarks/throughput.py --requests 50         # a fixed number of requests per client instead
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _args import non_negative_float, positive_float, positive_int, positive_ints  # noqa: E402
from _children import SLICE_S, BenchmarkError, ChildDied, check_children, run_benchmark, wait_at, wait_for  # noqa: E402
from gr00t_client import BasePolicy, PolicyClient, codec  # noqa: E402
from gr00t_server.serving.batching import DEFAULT_BATCH_TIMEOUT_MS  # noqa: E402


class SleepPolicy(BasePolicy):
    """Costs base_ms + per_row_ms * rows per call (sleep); returns one action row per observation row."""

    supports_batching = True

    def __init__(self, base_ms: float, per_row_ms: float) -> None:
        super().__init__(strict=False)
        self.base_ms = base_ms
        self.per_row_ms = per_row_ms

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        state = observation["state"]["joints"]
        rows = state.shape[0]
        time.sleep((self.base_ms + self.per_row_ms * rows) / 1000.0)
        return sleep_action(observation), {}

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {}


def sleep_action(observation: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """The action SleepPolicy owes `observation`: each row's own state repeated over the 16-step horizon."""
    return {"joints": np.repeat(observation["state"]["joints"], 16, axis=1)}


def is_expected(action: Dict[str, Any], expected: Dict[str, np.ndarray]) -> bool:
    """Whether a reply's `action` is exactly `expected` (same keys, shapes and values): a batching path that hands a
    client another row's action, or garbage, must count as an error, not as a served request."""
    return set(action) == set(expected) and all(np.array_equal(action[key], value) for key, value in expected.items())


def sleep_observation(seed: int) -> Dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "video": {"front": rng.integers(0, 256, size=(1, 1, 224, 224, 3), dtype=np.uint8)},
        "state": {"joints": rng.standard_normal((1, 1, 7)).astype(np.float32)},
        "language": {"task": [["pick up the cube"]]},
    }


def gr00t_available() -> Optional[str]:
    """None when the tiny Gr00tPolicy can be built here, else why not."""
    try:
        from gr00t_server.policies.gr00t_policy import Gr00tPolicy  # noqa: F401
        from gr00t_server.test_checkpoint import example_observation, make_test_checkpoint  # noqa: F401
    except Exception as exc:  # being written by others, or torch missing
        return f"{type(exc).__name__}: {exc}"
    return None


def build_policy(spec: Dict[str, Any]) -> BasePolicy:
    if spec["kind"] == "sleep":
        return SleepPolicy(spec["base_ms"], spec["per_row_ms"])
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    return Gr00tPolicy(spec["checkpoint"], spec["embodiment_tag"], device="cpu")


def serve(spec: Dict[str, Any], max_batch_size: int, batch_timeout_ms: float, ready: Any) -> None:
    """Server process: build the policy, bind a free port, report it, serve until killed."""
    import contextlib
    import io

    from gr00t_server.server import PolicyServer

    server = PolicyServer(build_policy(spec), port=0, max_batch_size=max_batch_size, batch_timeout_ms=batch_timeout_ms)
    server.start()
    ready.put(server.port)
    with contextlib.redirect_stdout(io.StringIO()):
        server.run()


@dataclass
class Point:
    """One measurement: K clients against one server configuration."""

    policy: str
    clients: int
    batching: bool
    requests: int
    seconds: float
    latencies_ms: np.ndarray
    mean_batch: float
    errors: int

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def _back_to_back(call: Callable[[], Any], more: Callable[[int], bool],
                  expected: Optional[Dict[str, np.ndarray]] = None) -> Tuple[List[float], int]:
    """Call `call` back to back while `more(calls made so far)`; (latencies ms of the calls that succeeded, failures).
    Failed calls count as calls: with --requests, a policy failing every call looped for ever. With `expected`, a
    call whose (action, info) reply has another action is a failure too (checked after its time is taken)."""
    latencies: List[float] = []
    errors = 0
    while more(len(latencies) + errors):
        started = time.perf_counter()
        try:
            reply = call()
        except Exception:
            errors += 1
            continue
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if expected is not None and not is_expected(reply[0], expected):
            errors += 1
            continue
        latencies.append(elapsed_ms)
    return latencies, errors


def _for(duration_s: float, requests: Optional[int]) -> Callable[[int], bool]:
    """`more` for _back_to_back: `requests` calls, or else calls until `duration_s` from now."""
    stop_at = time.perf_counter() + duration_s
    if requests is not None:
        return lambda made: made < requests
    return lambda made: time.perf_counter() < stop_at


BARRIER_TIMEOUT_S = 300.0  # a client that never warms up (its policy fails) breaks the wait instead of hanging it


def drive(
    port: int, clients: int, observations: List[Dict[str, Any]], duration_s: float, requests: Optional[int],
    on_warm: Callable[[], Any], server: Any = None, expected: Optional[List[Dict[str, np.ndarray]]] = None,
) -> Tuple[int, float, np.ndarray, int, Any]:
    """K threads send get_action back to back; returns (completed, seconds, latencies ms, errors, on_warm()). A
    `server` process that dies ends the point at once (ChildDied), not after the clients' timeout. `expected`: the
    action owed to each of `observations` (None: replies are not checked); a reply with another one is an error."""
    watched = watched_processes(server, [], "client threads")
    warm = threading.Barrier(clients + 1)
    barrier = threading.Barrier(clients + 1)
    latencies: List[List[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    failures: List[BaseException] = []
    stop = threading.Event()

    def one_client(index: int) -> None:
        observation = observations[index % len(observations)]
        owed = None if expected is None else expected[index % len(expected)]
        with PolicyClient(port=port, timeout_ms=120000) as client:
            try:
                client.get_action(observation)  # negotiate the wire and warm up
            except Exception as exc:
                failures.append(exc)
                warm.abort()  # the main thread's wait raises instead of waiting for ever
                return
            try:
                warm.wait(BARRIER_TIMEOUT_S)
                barrier.wait(BARRIER_TIMEOUT_S)
            except threading.BrokenBarrierError:  # another client's warm-up failed: the point is off
                return
            latencies[index], errors[index] = _back_to_back(
                lambda: client.get_action(observation),
                lambda made: not stop.is_set() and (requests is None or made < requests), owed,
            )

    threads = [threading.Thread(target=one_client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        wait_at(warm, "the warm-up of the client threads", watched, BARRIER_TIMEOUT_S)
    except BenchmarkError as exc:
        stop.set()
        barrier.abort()
        if isinstance(exc, ChildDied):
            raise
        why = f"{type(failures[0]).__name__}: {failures[0]}" if failures else "no client was ready in time"
        raise RuntimeError(f"a client's warm-up get_action failed (K={clients}): {why}") from None
    warmed = on_warm()  # e.g. server counters, taken once the warm-up requests are done
    barrier.wait(BARRIER_TIMEOUT_S)
    started = time.perf_counter()
    try:
        if requests is None:
            _sleep_watching(duration_s, watched, "the client threads")
            stop.set()
        _join_watching(threads, watched, "the client threads")
    except ChildDied:
        stop.set()  # a dead server's clients stop once their call times out; their threads are daemons
        raise
    # Requests still in flight when the clock stops are counted, so divide by the time the last one finished.
    seconds = time.perf_counter() - started
    flat = np.array([value for values in latencies for value in values], dtype=np.float64)
    return len(flat), seconds, flat, sum(errors), warmed


def _client_process(port: int, observation: Dict[str, Any], duration_s: float, requests: Optional[int], warm: Any,
                    start: Any, results: Any, expected: Optional[Dict[str, np.ndarray]] = None) -> None:
    """One client in its own process (as each simulator worker of an evaluation farm is): warm up, wait for the
    others, send get_action back to back, report (latencies ms, errors)."""
    with PolicyClient(port=port, timeout_ms=120000) as client:
        client.get_action(observation)
        warm.wait()
        start.wait()
        results.put(_back_to_back(lambda: client.get_action(observation), _for(duration_s, requests), expected))


RAW_REPLY_TIMEOUT_MS = 120000  # as the PolicyClients' timeout_ms here: a server that stopped answering ends the point


class RawGetAction:
    """A plain REQ socket that resends the same pre-encoded get_action frames and only checks that the reply is ok
    (and, given `expected`, that its action is that one): it costs the shared CPU almost nothing, so the server and
    its batching are what is measured."""

    def __init__(self, port: int, observation: Dict[str, Any], context: Any = None,
                 expected: Optional[Dict[str, np.ndarray]] = None) -> None:
        import zmq

        self._expected = expected
        self._frames = [bytes(frame) for frame in codec.encode_multipart({"endpoint": "get_action", "data": {"observation": observation}})]
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._port = port
        self._sock = self._connect()

    def _connect(self) -> Any:
        import zmq

        sock = self._context.socket(zmq.REQ)
        sock.setsockopt(zmq.RCVTIMEO, RAW_REPLY_TIMEOUT_MS)
        sock.connect(f"tcp://127.0.0.1:{self._port}")
        return sock

    @property
    def socket(self) -> Any:
        return self._sock

    def send(self) -> None:
        self._sock.send_multipart(self._frames)

    def receive(self) -> float:
        """Wait for the reply and check it; returns time.monotonic() of its arrival (before the check)."""
        import zmq

        try:
            reply = self._sock.recv_multipart()
        except zmq.Again:
            # Lazy Pirate: a REQ socket still waiting for its reply cannot send again, so it is replaced
            self._sock.close(linger=0)
            self._sock = self._connect()
            raise TimeoutError(f"no reply from the server on port {self._port} within {RAW_REPLY_TIMEOUT_MS} ms") from None
        arrived = time.monotonic()
        message = codec.decode_multipart(reply)
        if not message.get("ok"):
            raise RuntimeError("the server answered with an error")
        if self._expected is not None and not is_expected(message["result"][0], self._expected):
            raise RuntimeError("the server answered another action than the policy owes this request")
        return arrived

    def __call__(self) -> None:
        self.send()
        self.receive()

    def close(self) -> None:
        self._sock.close(linger=0)
        if self._own_context:
            self._context.term()


def _sleep_watching(seconds: float, watched: Dict[str, Any], what: str) -> None:
    """Sleep `seconds`, ended at once (ChildDied) by a watched process that dies."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check_children(watched, what)
        time.sleep(min(SLICE_S, max(0.0, deadline - time.monotonic())))


def _join_watching(threads: List[threading.Thread], watched: Dict[str, Any], what: str) -> None:
    """Join `threads`, ended at once (ChildDied) by a watched process that dies."""
    for thread in threads:
        while thread.is_alive():
            check_children(watched, what)
            thread.join(SLICE_S)


def _raw_socket_farm(port: int, observations: List[Dict[str, Any]], clients: int, duration_s: float,
                     requests: Optional[int], warm: Any, start: Any, results: Any,
                     expected: Optional[List[Dict[str, np.ndarray]]] = None) -> None:
    """K clients as K REQ sockets of ONE process (pre-encoded frames, as RawGetAction): each resends the moment its
    reply arrives. The K clients' turnaround then costs one process's wake-ups instead of K processes' competing for
    the cores, as when the clients run on machines of their own; the server is measured as in raw-processes."""
    import zmq

    context = zmq.Context()
    calls = [RawGetAction(port, observations[i % len(observations)], context,
                          None if expected is None else expected[i % len(expected)]) for i in range(clients)]
    for call in calls:
        call()
    warm.wait()
    start.wait()
    poller = zmq.Poller()
    by_socket = {}
    for call in calls:
        poller.register(call.socket, zmq.POLLIN)
        by_socket[call.socket] = call
    latencies: List[List[float]] = [[] for _ in calls]
    index = {call.socket: i for i, call in enumerate(calls)}
    sent_at = {}
    made = [0] * len(calls)  # calls answered, failed ones too (counting successes only looped on a failing policy)
    stop_at = time.perf_counter() + duration_s
    for call in calls:
        sent_at[call.socket] = time.perf_counter()
        call.send()
    errors, outstanding = 0, len(calls)
    while outstanding:
        ready = poller.poll(RAW_REPLY_TIMEOUT_MS)
        if not ready:
            raise TimeoutError(f"no reply from the server on port {port} within {RAW_REPLY_TIMEOUT_MS} ms "
                               f"({outstanding} requests waiting)")
        for sock, _event in ready:
            call, i = by_socket[sock], index[sock]
            try:
                call.receive()
                latencies[i].append((time.perf_counter() - sent_at[sock]) * 1000.0)
            except Exception:
                errors += 1
            made[i] += 1
            more = made[i] < requests if requests is not None else time.perf_counter() < stop_at
            if more:
                sent_at[sock] = time.perf_counter()
                call.send()
            else:
                outstanding -= 1
    for call in calls:
        call.close()
    context.term()
    results.put(([value for values in latencies for value in values], errors))


def drive_socket_farm(
    port: int, clients: int, observations: List[Dict[str, Any]], duration_s: float, requests: Optional[int],
    on_warm: Callable[[], Any], server: Any = None, expected: Optional[List[Dict[str, np.ndarray]]] = None,
) -> Tuple[int, float, np.ndarray, int, Any]:
    """As `drive_processes`, with all K clients as sockets of one process (_raw_socket_farm)."""
    ctx = mp.get_context("spawn")
    warm, start, results = ctx.Barrier(2), ctx.Barrier(2), ctx.Queue()
    proc = ctx.Process(target=_raw_socket_farm, args=(port, observations, clients, duration_s, requests, warm, start,
                                                      results, expected), daemon=True)
    proc.start()
    watched = watched_processes(server, [proc], "client farm")
    wait_at(warm, "the warm-up of the client farm", watched, 300)
    warmed = on_warm()
    wait_at(start, "the start of the client farm", watched, 60)
    started = time.perf_counter()
    latencies, errors = wait_for("a result from the client farm", results, watched, duration_s + 600)
    seconds = time.perf_counter() - started
    proc.join(timeout=10)
    flat = np.array(latencies, dtype=np.float64)
    return len(flat), seconds, flat, errors, warmed


def _raw_client_process(port: int, observation: Dict[str, Any], duration_s: float, requests: Optional[int], warm: Any,
                        start: Any, results: Any, expected: Optional[Dict[str, np.ndarray]] = None) -> None:
    """A client process of RawGetAction calls back to back."""
    call = RawGetAction(port, observation, expected=expected)
    call()
    warm.wait()
    start.wait()
    outcome = _back_to_back(call, _for(duration_s, requests))
    call.close()
    results.put(outcome)


def watched_processes(server: Any, clients: List[Any], kind: str) -> Dict[str, Any]:
    """The processes a point's waits depend on, the server first (its death is why its clients fail)."""
    watched = {} if server is None else {"server process": server}
    watched.update({f"{kind} {index}" if len(clients) > 1 else kind: proc for index, proc in enumerate(clients)})
    return watched


def drive_processes(
    port: int, clients: int, observations: List[Dict[str, Any]], duration_s: float, requests: Optional[int],
    on_warm: Callable[[], Any], target: Callable[..., None] = _client_process, server: Any = None,
    expected: Optional[List[Dict[str, np.ndarray]]] = None,
) -> Tuple[int, float, np.ndarray, int, Any]:
    """As `drive`, with each client a process of its own, so the clients share no interpreter lock."""
    ctx = mp.get_context("spawn")
    warm, start, results = ctx.Barrier(clients + 1), ctx.Barrier(clients + 1), ctx.Queue()
    procs = [ctx.Process(target=target, args=(port, observations[i % len(observations)], duration_s, requests,
                                                        warm, start, results,
                                                        None if expected is None else expected[i % len(expected)]),
                         daemon=True) for i in range(clients)]
    for proc in procs:
        proc.start()
    watched = watched_processes(server, procs, "client process")
    wait_at(warm, "the warm-up of the client processes", watched, 300)
    warmed = on_warm()
    wait_at(start, "the start of the client processes", watched, 60)
    started = time.perf_counter()
    collected = [wait_for("a result from a client process", results, watched, duration_s + 600) for _ in procs]
    seconds = time.perf_counter() - started
    for proc in procs:
        proc.join(timeout=10)
    flat = np.array([value for latencies, _ in collected for value in latencies], dtype=np.float64)
    return len(flat), seconds, flat, sum(errors for _, errors in collected), warmed


def _start_server(spec: Dict[str, Any], observations: List[Dict[str, Any]], args: argparse.Namespace,
                  batching: bool) -> Tuple[Any, int]:
    """A policy server process with batching on or off, warmed up; (process, port)."""
    ready: Any = mp.get_context("spawn").Queue()
    max_batch = args.max_batch_size if batching else 1
    process = mp.get_context("spawn").Process(target=serve, args=(spec, max_batch, args.batch_timeout_ms, ready), daemon=True)
    process.start()
    try:
        port = wait_for("a port from the server process", ready, {"server process": process}, 600)
        with PolicyClient(port=port, timeout_ms=600000) as probe:
            probe.get_action(observations[0])  # first call pays one-off costs (lazy init, allocator warm-up)
    except BaseException:
        process.terminate()
        raise
    return process, port


def _stop_server(process: Any, port: int) -> None:
    if not process.is_alive():
        return
    try:
        with PolicyClient(port=port, timeout_ms=5000) as probe:
            probe.kill_server()
    except Exception:  # already gone: terminate below
        pass
    process.join(timeout=10)
    if process.is_alive():
        process.terminate()


def requests_per_slice(requests: Optional[int], slices: int) -> List[Optional[int]]:
    """Each slice's requests per client: `requests` shared out exactly, a slice that would get none left out; None
    for every slice of a point measured for a duration."""
    if requests is None:
        return [None] * slices
    share, extra = divmod(requests, slices)
    return [share + (1 if index < extra else 0) for index in range(min(slices, requests))]


def measure(
    name: str, spec: Dict[str, Any], observations: List[Dict[str, Any]], args: argparse.Namespace, clients_list: List[int],
) -> List[Point]:
    """Batching off and on, side by side: two servers, and for each K the two take turns in `args.slices` slices of
    the point's duration (or requests), so that load drifting on a shared machine hits both alike (run one after
    the other, the same work measured 0.72x-1.50x "speed-up" at K=1)."""
    driver: Callable[..., Any] = drive
    if args.clients_as == "processes":
        driver = drive_processes
    elif args.clients_as == "raw-processes":
        driver = functools.partial(drive_processes, target=_raw_client_process)
    elif args.clients_as == "raw-sockets":
        driver = drive_socket_farm
    # the sleep policy's actions are known, so every reply is checked; the gr00t policy's are not (its noise)
    expected = [sleep_action(observation) for observation in observations] if spec["kind"] == "sleep" else None
    servers: Dict[bool, Tuple[Any, int]] = {}
    points: List[Point] = []
    try:
        for batching in (False, True):
            servers[batching] = _start_server(spec, observations, args, batching)
        duration = args.duration / args.slices
        for clients in clients_list:
            totals = {batching: [0, 0.0, [], 0, 0, 0] for batching in servers}  # completed, s, latencies, errors, calls, rows
            for requests in requests_per_slice(args.requests, args.slices):
                for batching, (process, port) in servers.items():
                    completed, seconds, latencies, errors, before = driver(
                        port, clients, observations, duration, requests, on_warm=lambda port=port: server_stats(port),
                        server=process, expected=expected,
                    )
                    after = server_stats(port)
                    total = totals[batching]
                    total[0] += completed
                    total[1] += seconds
                    total[2].append(latencies)
                    total[3] += errors
                    total[4] += after["policy_calls"] - before["policy_calls"]
                    total[5] += _rows(after) - _rows(before)
            for batching, (completed, seconds, latencies, errors, calls, rows) in totals.items():
                point = Point(name, clients, batching, completed, seconds, np.concatenate(latencies),
                              rows / calls if calls else 0.0, errors)
                points.append(point)
                print(_row(point), flush=True)
    finally:
        for process, port in servers.values():
            _stop_server(process, port)
    return points


def server_stats(port: int) -> Dict[str, Any]:
    with PolicyClient(port=port) as probe:
        return probe.get_server_info()["stats"]


def _rows(stats: Dict[str, Any]) -> int:
    return sum(int(size) * count for size, count in stats["batch_sizes"].items())


HEADER = f"{'policy':<16} {'K':>3} {'batching':>8} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'mean batch':>10} {'n':>6} {'errors':>6}"


def _row(point: Point) -> str:
    p50, p99 = (np.percentile(point.latencies_ms, [50, 99]) if len(point.latencies_ms) else (float("nan"), float("nan")))
    return (
        f"{point.policy:<16} {point.clients:>3} {'on' if point.batching else 'off':>8} {point.requests_per_s:>9.1f} "
        f"{p50:>9.1f} {p99:>9.1f} {point.mean_batch:>10.2f} {point.requests:>6} {point.errors:>6}"
    )


def ideal_requests_per_s(rows: int, base_ms: float, per_row_ms: float) -> Optional[float]:
    """req/s of back-to-back calls of `rows` rows each of the sleep policy; None for a policy that costs nothing."""
    call_s = (base_ms + per_row_ms * rows) / 1000.0
    return rows / call_s if call_s > 0 else None


def speedups(points: List[Point]) -> Dict[Tuple[str, int], float]:
    off = {(p.policy, p.clients): p.requests_per_s for p in points if not p.batching}
    return {
        (p.policy, p.clients): p.requests_per_s / off[(p.policy, p.clients)]
        for p in points
        if p.batching and off.get((p.policy, p.clients))
    }


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", choices=["sleep", "gr00t", "all"], default="all")
    parser.add_argument("--clients", type=positive_ints, default="1,2,4,8,16", help="comma-separated K values (sleep policy)")
    parser.add_argument("--gr00t-clients", type=positive_ints, default="1,4,8", help="comma-separated K values (tiny Gr00tPolicy on CPU)")
    parser.add_argument("--duration", type=positive_float, default=3.0, help="seconds per point (ignored with --requests)")
    parser.add_argument("--requests", type=positive_int, default=None, help="requests per client per point instead of a duration, shared out over the slices")
    parser.add_argument("--slices", type=positive_int, default=2,
                        help="batching off and on take turns in this many slices of each point (default 2)")
    parser.add_argument("--clients-as", choices=["threads", "processes", "raw-processes", "raw-sockets"], default="threads",
                        help="threads of this process (default); processes, one PolicyClient each, as simulator "
                             "workers are; raw-processes: plain REQ sockets resending pre-encoded frames, so that "
                             "the clients' own CPU hardly counts and the server is what is measured; raw-sockets: "
                             "the same K sockets in one process, so that K client processes do not compete with "
                             "the server for a small machine's cores (as clients on other machines would not)")
    parser.add_argument("--max-batch-size", type=positive_int, default=16, help="rows per policy call with batching on")
    parser.add_argument("--batch-timeout-ms", type=float, default=DEFAULT_BATCH_TIMEOUT_MS,
                        help=f"cap of the adaptive gather window (default {DEFAULT_BATCH_TIMEOUT_MS:g}, the server's)")
    parser.add_argument("--base-ms", type=non_negative_float, default=20.0, help="sleep policy: fixed cost per call")
    parser.add_argument("--per-row-ms", type=non_negative_float, default=1.0, help="sleep policy: cost per row")
    parser.add_argument("--target-k", type=int, default=8)
    parser.add_argument("--target-speedup", type=float, default=4.0)
    parser.add_argument("--target-ideal-fraction", type=float, default=0.85,
                        help="sleep policy, batching on, K=16: req/s at least this fraction of the ideal")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    points: List[Point] = []
    print(HEADER, flush=True)
    if args.policy in ("sleep", "all"):
        spec = {"kind": "sleep", "base_ms": args.base_ms, "per_row_ms": args.per_row_ms}
        name = f"sleep {args.base_ms:g}+{args.per_row_ms:g}/row"
        observations = [sleep_observation(seed) for seed in range(16)]
        points += measure(name, spec, observations, args, args.clients)
    if args.policy in ("gr00t", "all"):
        missing = gr00t_available()
        if missing is not None:
            print(f"note: skipping the tiny Gr00tPolicy ({missing})", flush=True)
        else:
            from gr00t_server.test_checkpoint import example_observation, make_test_checkpoint

            tag = "new_embodiment"
            with tempfile.TemporaryDirectory() as folder:
                checkpoint = make_test_checkpoint(folder, size="tiny")
                spec = {"kind": "gr00t", "checkpoint": str(checkpoint), "embodiment_tag": tag}
                observations = [example_observation(checkpoint, tag, batch_size=1, seed=seed) for seed in range(8)]
                points += measure("gr00t tiny cpu", spec, observations, args, args.gr00t_clients)

    print("\nbatching speed-up (req/s on / off):")
    ups = speedups(points)
    for (policy, clients), up in sorted(ups.items()):
        print(f"  {policy:<16} K={clients:<3} {up:5.2f}x")
    failed = False
    sleep_points = [p for p in points if p.policy.startswith("sleep")]
    if sleep_points:
        print("\nsleep policy vs ideal (every call a full batch of min(K, max batch) rows, back to back):")
        for point in sleep_points:
            rows = min(point.clients, args.max_batch_size) if point.batching else 1
            ideal = ideal_requests_per_s(rows, args.base_ms, args.per_row_ms)
            p99 = float(np.percentile(point.latencies_ms, 99)) if len(point.latencies_ms) else float("nan")
            verdict = ""
            if ideal is not None and point.batching and point.clients == 16:
                verdict = " PASS" if point.requests_per_s / ideal >= args.target_ideal_fraction else " FAIL"
                failed = failed or verdict == " FAIL"
            ideal_text = "-" if ideal is None else f"{ideal:.1f}"
            fraction_text = "-" if ideal is None else f"{point.requests_per_s / ideal:.1%}"
            print(f"  K={point.clients:<3} batching {'on ' if point.batching else 'off'} {point.requests_per_s:8.1f} / "
                  f"{ideal_text:>8} req/s = {fraction_text:>6} of ideal, p99 {p99:7.1f} ms{verdict}")
    target = next((up for (policy, clients), up in ups.items() if policy.startswith("sleep") and clients == args.target_k), None)
    if target is not None:
        verdict = "PASS" if target >= args.target_speedup else "FAIL"
        print(f"target: sleep policy at K={args.target_k} >= {args.target_speedup:g}x -> {target:.2f}x {verdict}")
        failed = failed or verdict == "FAIL"
    erred = [point for point in points if point.errors]
    if erred:  # a fast path that answers wrongly must fail, not win
        where = ", ".join(f"{p.policy} K={p.clients} batching {'on' if p.batching else 'off'}: {p.errors}" for p in erred)
        print(f"FAIL: {len(erred)} point(s) had failed or wrong replies ({where}); expected every reply to be the "
              "policy's action for its own request")
        failed = True
    return 1 if failed else 0  # `make bench` can tell a missed target


if __name__ == "__main__":
    sys.exit(run_benchmark(main))
