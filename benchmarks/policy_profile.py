"""Where one Gr00tPolicy.get_action spends its time: torch.profiler over the full-size N1.7 network (or the tiny one).

Prints the wall time per stage next to the GPU's busy time, the number of kernels launched, and the top operators
by host (CPU) time. When the GPU is busy for much less than the wall time and the host time is spread over
thousands of small launches, the call is bound by Python and kernel launches, not by the GPU: that is the
case torch.compile (CUDA graphs) and TensorRT address.

    python benchmarks/policy_profile.py --device cuda            # full size, bf16 (the default on a GPU)
    python benchmarks/policy_profile.py --size tiny --device cpu
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _args import device_name, positive_int  # noqa: E402
from _children import run_benchmark  # noqa: E402
from policy_latency import TAG, StageTimer, build_policy  # noqa: E402
from gr00t_server.model.modeling import resolve_dtype  # noqa: E402
from gr00t_server.test_checkpoint import example_observation, make_test_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available()
    parser.add_argument("--size", default="full" if gpu else "tiny", choices=["full", "tiny", "small"],
                        help="default: full on a GPU, tiny on a CPU (the full network is about 13 GB in fp32)")
    parser.add_argument("--device", type=device_name, default="cuda" if gpu else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda when there is a GPU)")
    parser.add_argument("--batch-size", type=positive_int, default=1)
    parser.add_argument("--rows", type=int, default=25, help="operators listed")
    args = parser.parse_args()
    if str(args.device).startswith("cuda") and not gpu:
        parser.exit(2, f"--device {args.device} needs a CUDA build of torch and a GPU; this machine has none (use --device cpu)\n")
    dtype = resolve_dtype(args.device, None)
    cuda = torch.device(args.device).type == "cuda"
    with tempfile.TemporaryDirectory(prefix="policy-profile-") as tmp:
        checkpoint = make_test_checkpoint(Path(tmp) / "checkpoint", size="tiny" if args.size == "full" else args.size)
        policy = build_policy(args.size, checkpoint, args.device, dtype)
        observation = example_observation(checkpoint, TAG, batch_size=args.batch_size)
        timer = StageTimer(policy)
        for _ in range(3):
            stages = timer.call(observation)
        timer.close()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            started = time.perf_counter()
            policy.get_action(observation, {"seed": 0})
            if cuda:
                torch.cuda.synchronize()
            wall_ms = (time.perf_counter() - started) * 1e3
    events = prof.key_averages()
    print(f"size={args.size} device={args.device} batch={args.batch_size} torch={torch.__version__}")
    print("stages (ms, unprofiled): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    print(f"profiled call: wall {wall_ms:.1f} ms")
    if cuda:
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy_ms = sum(e.device_time if hasattr(e, "device_time") else e.cuda_time for e in kernels) / 1e3
        launches = sum(1 for e in prof.events() if e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
        print(f"GPU busy {busy_ms:.1f} ms ({busy_ms / wall_ms:.0%} of wall), {len(kernels)} kernels, {launches} launches")
        for key in ("self_device_time_total", "self_cuda_time_total"):  # the name changed across torch releases
            try:
                print(events.table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
                break
            except (AttributeError, KeyError, ValueError):
                continue
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    sys.exit(run_benchmark(main))  # SIGTERM (as `timeout` sends) unwinds the temp folder too
