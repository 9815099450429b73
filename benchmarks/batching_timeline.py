"""Where a batched round's time goes: K clients against the batching server with the sleep policy of
throughput.py, the server's round timeline in medians (ms).

A round runs from the moment one batch's replies are sent to the moment the next batch's replies are sent:
the clients turn around (first and last request back; meanwhile the server's socket thread receives and parses
their requests, its busy time shown: the rest of that span is the clients' own, and on a machine they share
with the server, its cores'), the server dispatches, merges, calls the policy,
splits and encodes, hands the replies to its socket thread and sends them. Everything but the policy call is
overhead against throughput.py's ideal (full batches back to back). The server process is instrumented by
wrapping its methods. Each client is a process that resends pre-encoded frames (throughput.py's raw clients)
and stamps when its reply arrived and when it sent again, so the clients' turnaround splits into delivery
(the server begins sending -> the client has its reply: ZeroMQ and the OS waking the process) and the client's
own work. Rounds are counted from the start of the timed period to the first client's stop: the clients' warm-up
calls before it and the last rounds after it, which fewer clients are left to fill, are left out. With
--clients-as threads the clients are throughput.py's default instead (PolicyClient threads of one process, sharing
its interpreter lock): the server stages are the same, the clients' own stamps are not taken.

    python benchmarks/batching_timeline.py                       # 16 client processes, 8 s
    python benchmarks/batching_timeline.py --clients 8 --duration 4
    python benchmarks/batching_timeline.py --clients-as threads  # as throughput.py measures its targets
"""

from __future__ import annotations

import argparse
import bisect
import functools
import multiprocessing as mp
import statistics
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import throughput as T
from _args import non_negative_float, positive_float, positive_int
from _children import run_benchmark, wait_at, wait_for


def _serve_instrumented(spec: Dict[str, Any], max_batch: int, timeout_ms: float, ready: Any, requests: Any,
                        results: Any) -> None:
    """throughput.serve with the round timeline recorded; on a message in `requests`, put (rounds, times replies
    were sent) in `results`."""
    from gr00t_server.serving import execution, loop

    rounds: List[Dict[str, float]] = []
    sent: List[float] = []  # when the socket thread began sending replies (a round's or a lone request's)
    receiving = [0.0]  # the socket thread's time in receive bursts since the last round's replies went out

    def wrap(cls: Any, name: str, record: Any) -> None:
        original = getattr(cls, name)

        @functools.wraps(original)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            return record(self, lambda: original(self, *args, **kwargs), args)

        setattr(cls, name, wrapper)

    def on_dispatch(self: Any, call: Any, _args: Any) -> Any:
        pending = list(self.pending)
        result = call()
        if pending and not self.pending:  # this turn dispatched the round
            rounds.append({"rows": len(pending), "first": pending[0].received_at, "last": pending[-1].received_at,
                           "dispatch": time.monotonic(), "receiving": receiving[0]})
        return result

    def on_burst(self: Any, call: Any, _args: Any) -> Any:
        began = time.monotonic()
        try:
            return call()
        finally:
            receiving[0] += time.monotonic() - began

    def timed(start: str, end: str, batch_only: bool) -> Any:
        def record(_self: Any, call: Any, args: Any) -> Any:
            began = time.monotonic()
            result = call()
            if rounds and not (batch_only and args and len(args[0]) < 2):
                rounds[-1].update({start: began, end: time.monotonic()})
            return result
        return record

    def on_send(self: Any, call: Any, _args: Any) -> Any:
        waiting = len(self._server._worker.outbox)
        began = time.monotonic()
        result = call()
        if waiting:
            sent.append(began)  # a fast client can have its reply before the last one is sent
        if waiting > 1 and rounds:
            rounds[-1].update(send_start=began, send_end=time.monotonic())
            receiving[0] = 0.0
        return result

    wrap(loop.RequestLoop, "dispatch_pending", on_dispatch)
    wrap(execution.JobRunner, "execute", timed("exec_start", "exec_end", batch_only=True))
    wrap(T.SleepPolicy, "_get_action", timed("policy_start", "policy_end", batch_only=False))
    wrap(loop.RequestLoop, "send_replies", on_send)
    wrap(loop.RequestLoop, "_receive_burst", on_burst)

    def answer() -> None:
        requests.get()
        results.put((list(rounds), list(sent)))

    threading.Thread(target=answer, daemon=True).start()
    T.serve(spec, max_batch, timeout_ms, ready)


STAGES = [
    ("clients: replies sent -> first request back", lambda r, p: r["first"] - p["send_end"]),
    ("clients: replies sent -> last request back", lambda r, p: r["last"] - p["send_end"]),
    # The server's share of the turnaround: the rest is the clients (and, on a small machine, the cores they share)
    ("  of which the socket thread receives and parses", lambda r, p: r["receiving"]),
    ("server: last request -> dispatched", lambda r, p: r["dispatch"] - r["last"]),
    ("server: dispatched -> worker starts", lambda r, p: r["exec_start"] - r["dispatch"]),
    ("server: merge (worker start -> policy)", lambda r, p: r["policy_start"] - r["exec_start"]),
    ("policy call", lambda r, p: r["policy_end"] - r["policy_start"]),
    ("server: split + encode replies", lambda r, p: r["exec_end"] - r["policy_end"]),
    ("server: worker done -> socket thread sends", lambda r, p: r["send_start"] - r["exec_end"]),
    ("server: send the replies", lambda r, p: r["send_end"] - r["send_start"]),
    ("round (replies sent -> next replies sent)", lambda r, p: r["send_end"] - p["send_end"]),
]


def summarize(rounds: List[Dict[str, float]], clients: int) -> Dict[str, Optional[float]]:
    """Median ms of each stage over consecutive full rounds (a round and the one before it both complete)."""
    keys = ("first", "last", "dispatch", "receiving", "exec_start", "exec_end", "policy_start", "policy_end", "send_start", "send_end")
    pairs = [(r, p) for p, r in zip(rounds, rounds[1:])
             if r["rows"] == clients and all(k in r for k in keys) and "send_end" in p]
    return {name: (statistics.median(f(r, p) for r, p in pairs) * 1000.0 if pairs else None) for name, f in STAGES}


def _stamping_client(port: int, observation: Dict[str, Any], duration_s: float, warm: Any, start: Any, results: Any) -> None:
    """A client process of throughput.RawGetAction calls that reports its (reply arrived, next request sent) stamps and
    when it stopped sending (time.monotonic(), the clock of the server's stamps)."""
    client = T.RawGetAction(port, observation)
    client()
    warm.wait()
    start.wait()
    stamps = []
    stop_at = time.perf_counter() + duration_s
    client.send()
    while True:
        arrived = client.receive()
        if time.perf_counter() >= stop_at:
            break
        client.send()
        stamps.append((arrived, time.monotonic()))
    client.close()
    results.put((stamps, arrived))


def split_rounds(rounds: List[Dict[str, float]], started: float, first_stop: float) -> Tuple[List[Dict[str, float]], ...]:
    """(warm-up, timed, draining) rounds: dispatched before the start barrier (the clients' untimed first calls), from
    it until the first client stopped sending, and after (the other clients' last requests, fewer than K)."""
    warm_up = [r for r in rounds if r["dispatch"] < started]
    timed = [r for r in rounds if started <= r["dispatch"] < first_stop]
    draining = [r for r in rounds if r["dispatch"] >= first_stop]
    return warm_up, timed, draining


def _quantiles(values: List[float]) -> str:
    if len(values) < 10:
        return "-"
    deciles = statistics.quantiles(values, n=10)
    return f"p10 {deciles[0]:6.2f}  p50 {deciles[4]:6.2f}  p90 {deciles[8]:6.2f}"


def client_side(stamps: List[List[tuple]], sent: List[float]) -> Dict[str, str]:
    """Delivery (the server began sending -> a client has its reply) and client work (reply -> next request sent),
    in ms."""
    sent = sorted(sent)
    delivery: List[float] = []
    work: List[float] = []
    for arrived, resent in (pair for client in stamps for pair in client):
        index = bisect.bisect_right(sent, arrived) - 1
        if index >= 0:
            delivery.append((arrived - sent[index]) * 1000.0)
        work.append((resent - arrived) * 1000.0)
    return {"delivery: sending began -> a client has its reply": _quantiles(delivery),
            "client: reply -> next request sent": _quantiles(work)}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=positive_int, default=16)
    parser.add_argument("--duration", type=positive_float, default=8.0, help="seconds of back-to-back requests")
    parser.add_argument("--base-ms", type=non_negative_float, default=20.0)
    parser.add_argument("--per-row-ms", type=non_negative_float, default=1.0)
    parser.add_argument("--batch-timeout-ms", type=float, default=T.DEFAULT_BATCH_TIMEOUT_MS)
    parser.add_argument("--clients-as", choices=["processes", "threads"], default="processes",
                        help="processes that resend pre-encoded frames and stamp their turnaround (default), or "
                             "PolicyClient threads of this process, as throughput.py's default (no client stamps)")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    ready, requests, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    spec = {"kind": "sleep", "base_ms": args.base_ms, "per_row_ms": args.per_row_ms}
    server = ctx.Process(target=_serve_instrumented, args=(spec, args.clients, args.batch_timeout_ms, ready, requests, results),
                         daemon=True)
    server.start()
    try:
        port = wait_for("a port from the server process", ready, {"server process": server}, 300)
        if args.clients_as == "threads":
            observations = [T.sleep_observation(i) for i in range(args.clients)]
            # on_warm runs after the warm-up calls, just before the start barrier: rounds from then on are timed
            completed, seconds, _latencies, _errors, timed_from = T.drive(
                port, args.clients, observations, args.duration, None, on_warm=time.monotonic, server=server)
            first_stop, stamps = timed_from + args.duration, []  # the threads all stop together, at the duration
            requests.put("rounds")
            rounds, sent = wait_for("the rounds from the server process", results, {"server process": server}, 60)
            report(args, rounds, sent, stamps, completed, seconds, timed_from, first_stop)
            return
        warm, start, stamped = ctx.Barrier(args.clients + 1), ctx.Barrier(args.clients + 1), ctx.Queue()
        clients = [ctx.Process(target=_stamping_client, args=(port, T.sleep_observation(i), args.duration, warm, start, stamped),
                               daemon=True) for i in range(args.clients)]
        for client in clients:
            client.start()
        watched = T.watched_processes(server, clients, "client process")
        wait_at(warm, "the warm-up of the client processes", watched, 300)
        wait_at(start, "the start of the client processes", watched, 60)
        started = time.perf_counter()
        timed_from = time.monotonic()  # the server process stamps rounds with this system-wide clock
        reports = [wait_for("a report from a client process", stamped, watched, args.duration + 120) for _ in clients]
        seconds = time.perf_counter() - started
        for client in clients:
            client.join(10)
        requests.put("rounds")
        rounds, sent = wait_for("the rounds from the server process", results, {"server process": server}, 60)
    finally:
        server.terminate()
        server.join(10)
    stamps = [client_stamps for client_stamps, _stopped in reports]
    report(args, rounds, sent, stamps, sum(len(client) for client in stamps), seconds, timed_from,
           min(stopped for _stamps, stopped in reports))


def report(args: argparse.Namespace, rounds: List[Dict[str, float]], sent: List[float], stamps: List[List[tuple]],
           completed: int, seconds: float, timed_from: float, first_stop: float) -> None:
    """Print the run's req/s, its full rounds, the median stages of a round and the clients' per-request times."""
    warm_up, timed, draining = split_rounds(rounds, timed_from, first_stop)
    ideal = T.ideal_requests_per_s(args.clients, args.base_ms, args.per_row_ms)
    of_ideal = "-" if ideal is None else f"{completed / seconds / ideal:.1%}"
    full = sum(1 for r in timed if r["rows"] == args.clients)
    print(f"{args.clients} client {args.clients_as}, sleep {args.base_ms:g}+{args.per_row_ms:g}/row: "
          f"{completed / seconds:.1f} req/s = {of_ideal} of ideal; {full} of {len(timed)} rounds full "
          f"(left out: {len(warm_up)} warm-up rounds before the start, {len(draining)} after the first client stopped)")
    print("median ms per round:")
    for name, value in summarize(timed, args.clients).items():
        print(f"  {name:50s} {'-' if value is None else f'{value:7.2f}'}")
    print("per request, ms:")
    for name, value in client_side(stamps, sent).items():
        print(f"  {name:50s} {value}")


if __name__ == "__main__":
    sys.exit(run_benchmark(main))
