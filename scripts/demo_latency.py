"""Per-call get_action latency against a running policy server, with a real Meta-World observation (make demo).

Usage: python scripts/demo_latency.py --port PORT [--task reach-v3] [--calls 20] [--image-size 64]
Prints one line: client round trip and the server's own policy time (p50 / p90 / max, ms).
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Dict, List

import numpy as np

from gr00t_client import PolicyClient


def batched(observation: Dict[str, Any]) -> Dict[str, Any]:
    """One env's flat observation as a batch of one with one time step, as the rollout sends it."""
    out: Dict[str, Any] = {}
    for key, value in observation.items():
        out[key] = (value,) if isinstance(value, str) else np.asarray(value)[None, None]
    return out


def percentiles(values: List[float]) -> str:
    p50, p90 = np.percentile(values, [50, 90])
    return f"p50 {p50:.1f} / p90 {p90:.1f} / max {max(values):.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--task", default="reach-v3", help="Meta-World task that makes the observation")
    parser.add_argument("--calls", type=int, default=20, help="timed get_action calls (after one untimed)")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()

    from gr00t_eval.rollout.adapters.metaworld import MetaWorldEnv

    env = MetaWorldEnv(args.task, image_size=args.image_size)
    try:
        observation = batched(env.reset(seed=0)[0])
    finally:
        env.close()
    round_trips: List[float] = []
    policy_ms: List[float] = []
    with PolicyClient(host=args.host, port=args.port, timeout_ms=60000, return_server_timing=True) as client:
        client.get_action(observation)  # untimed: first-call costs (negotiation, allocator warm-up)
        for _ in range(args.calls):
            started = time.perf_counter()
            _, info = client.get_action(observation)
            round_trips.append((time.perf_counter() - started) * 1000.0)
            policy_ms.append(float(info.get("server_timing", {}).get("policy_ms", float("nan"))))
    print(f"get_action latency over {args.calls} calls: round trip {percentiles(round_trips)}; "
          f"server policy {percentiles(policy_ms)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
