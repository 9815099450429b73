"""Per-call get_action latency against a running policy server, with a real Meta-World observation (make demo).

Usage: python scripts/demo_latency.py --port PORT [--task reach-v3] [--calls 20] [--image-size 64]
                                      [--timeout-ms 60000]
Prints one line: client round trip and the server's own policy time (p50 / p90 / max, ms). Ctrl-C or SIGTERM, or a
server that does not answer, end it with one line on stderr (exit 130, 1).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from gr00t_client import PolicyClient, PolicyServerError
from gr00t_client.cli_signals import raise_interrupt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _args import port_number, positive_int  # noqa: E402


def batched(observation: Dict[str, Any]) -> Dict[str, Any]:
    """One env's flat observation as a batch of one with one time step, as the rollout sends it."""
    out: Dict[str, Any] = {}
    for key, value in observation.items():
        out[key] = (value,) if isinstance(value, str) else np.asarray(value)[None, None]
    return out


def percentiles(values: List[float]) -> str:
    p50, p90 = np.percentile(values, [50, 90])
    return f"p50 {p50:.1f} / p90 {p90:.1f} / max {max(values):.1f} ms"


def first_observation(task: str, image_size: int) -> Dict[str, Any]:
    """The Meta-World task's first observation after reset(seed=0), batched; the env is closed however it ends."""
    from gr00t_eval.rollout.adapters.metaworld import MetaWorldEnv

    env = None
    try:
        env = MetaWorldEnv(task, image_size=image_size)
        return batched(env.reset(seed=0)[0])
    finally:
        if env is not None:
            env.close()


def measure(args: argparse.Namespace) -> str:
    """The latency line: one untimed get_action, then args.calls timed ones."""
    observation = first_observation(args.task, args.image_size)
    round_trips: List[float] = []
    policy_ms: List[float] = []
    with PolicyClient(host=args.host, port=args.port, timeout_ms=args.timeout_ms, return_server_timing=True) as client:
        client.get_action(observation)  # untimed: first-call costs (negotiation, allocator warm-up)
        for _ in range(args.calls):
            started = time.perf_counter()
            _, info = client.get_action(observation)
            round_trips.append((time.perf_counter() - started) * 1000.0)
            policy_ms.append(float(info.get("server_timing", {}).get("policy_ms", float("nan"))))
    return (f"get_action latency over {args.calls} calls: round trip {percentiles(round_trips)}; "
            f"server policy {percentiles(policy_ms)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_number, required=True)
    parser.add_argument("--task", default="reach-v3", help="Meta-World task that makes the observation")
    parser.add_argument("--calls", type=positive_int, default=20, help="timed get_action calls (after one untimed)")
    parser.add_argument("--image-size", type=positive_int, default=64)
    parser.add_argument("--timeout-ms", type=positive_int, default=60000, help="how long to wait for each reply")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, raise_interrupt)  # make demo stops its steps with SIGTERM
    try:
        print(measure(args))
    except KeyboardInterrupt:
        print("demo_latency: interrupted", file=sys.stderr)
        return 130
    except (TimeoutError, ConnectionError, PolicyServerError) as error:
        print(f"demo_latency: error: get_action from the policy server at {args.host}:{args.port} failed: "
              f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
