"""Gr00tPolicy latency per stage (preprocess, backbone, action head, decode, total) per checkpoint size and backend.

CPU: the tiny and small test checkpoints. With --full on a CUDA machine: the full-size N1.7 config with random
weights in bf16, beside the reference's published H100 figures. Prints a markdown table.

    python benchmarks/policy_latency.py                      # tiny + small, batch 1 and 8, pytorch (+ onnxruntime)
    python benchmarks/policy_latency.py --full --device cuda  # full-size random weights (GPU)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

from gr00t_server.policies.gr00t_policy import Gr00tPolicy
from gr00t_server.test_checkpoint import example_observation, make_test_checkpoint

TAG = "new_embodiment"
# Published end-to-end latencies of the reference on an H100 (model.md §7.4), ms.
REFERENCE_H100_MS = {"pytorch": 85.8, "torch-compile": 48.6, "tensorrt": 27.9}


class StageTimer:
    """Wall time of the backbone and action head inside one model call, via forward hooks."""

    def __init__(self, policy: Gr00tPolicy) -> None:
        self.device = policy.device
        self.marks: Dict[str, float] = {}
        model = policy.model
        model.backbone.register_forward_pre_hook(lambda *_: self._mark("backbone_start"))
        model.backbone.register_forward_hook(lambda *_: self._mark("backbone_end"))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _mark(self, name: str) -> None:
        self._sync()
        self.marks[name] = time.perf_counter()


def _time_call(policy: Gr00tPolicy, timer: StageTimer, observation: Dict, options: Dict) -> Dict[str, float]:
    """One get_action split into stages: preprocess | backbone | action head | decode."""
    original = policy.model.get_action
    stamps: Dict[str, float] = {}

    def timed_get_action(*args, **kwargs):
        timer._sync()
        stamps["model_start"] = time.perf_counter()
        out = original(*args, **kwargs)
        timer._sync()
        stamps["model_end"] = time.perf_counter()
        return out

    policy.model.get_action = timed_get_action
    try:
        start = time.perf_counter()
        policy.get_action(observation, options)
        end = time.perf_counter()
    finally:
        policy.model.get_action = original
    marks = timer.marks
    return {
        "preprocess": (stamps["model_start"] - start) * 1e3,
        "backbone": (marks["backbone_end"] - marks["backbone_start"]) * 1e3,
        "action_head": (stamps["model_end"] - marks["backbone_end"]) * 1e3,
        "decode": (end - stamps["model_end"]) * 1e3,
        "total": (end - start) * 1e3,
    }


def measure(policy: Gr00tPolicy, batch_size: int, iterations: int, warmup: int, image_size) -> Dict[str, float]:
    observation = example_observation(policy.checkpoint_dir, TAG, batch_size=batch_size, image_size=image_size)
    timer = StageTimer(policy)
    for _ in range(warmup):
        _time_call(policy, timer, observation, {"seed": 0})
    rows: List[Dict[str, float]] = [_time_call(policy, timer, observation, {"seed": 0}) for _ in range(iterations)]
    return {stage: statistics.median(r[stage] for r in rows) for stage in rows[0]}


def full_size_policy(policy: Gr00tPolicy, device: str) -> Gr00tPolicy:
    """Swap a full-size N1.7 network with random bf16 weights into a policy (processing from the tiny checkpoint)."""
    from gr00t_server.model.modeling import Gr00tN1d7
    from gr00t_server.model.presets import TEST_TOKEN_IDS, released_config

    config = released_config(image_token_id=TEST_TOKEN_IDS["image_token_id"])
    backbone = dict(config.backbone_cfg or config.qwen3_vl_config_dict())
    backbone.update({k: v for k, v in TEST_TOKEN_IDS.items() if k != "image_token_id"})
    config.backbone_cfg = backbone
    with torch.device(device):
        model = Gr00tN1d7(config)
    policy.model = model.to(dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32).eval()
    policy.model_config = config
    return policy


def _backends(args: argparse.Namespace, checkpoint: Path, workdir: Path) -> Dict[str, Callable[[], Gr00tPolicy]]:
    def pytorch() -> Gr00tPolicy:
        return Gr00tPolicy(model_path=checkpoint, embodiment_tag=TAG, device=args.device, dtype=args.dtype, strict=False)

    makers: Dict[str, Callable[[], Gr00tPolicy]] = {"pytorch": pytorch}
    if "onnxruntime" in args.backends:
        def onnxruntime() -> Gr00tPolicy:
            from gr00t_server.backends import apply_inference_mode
            from gr00t_server.backends.export import export_checkpoint

            onnx_dir = workdir / f"onnx-{checkpoint.name}"
            if not onnx_dir.exists():
                export_checkpoint(checkpoint, onnx_dir, mode="full_pipeline", precision="fp32", embodiment_tag=TAG,
                                  device=args.device)
            policy = pytorch()
            apply_inference_mode(policy, "onnxruntime", onnx_dir=onnx_dir)
            return policy

        makers["onnxruntime"] = onnxruntime
    if "torch-compile" in args.backends:
        def compiled() -> Gr00tPolicy:
            from gr00t_server.backends import apply_inference_mode

            policy = pytorch()
            apply_inference_mode(policy, "torch-compile")
            return policy

        makers["torch-compile"] = compiled
    return makers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--backends", nargs="+", default=["pytorch", "onnxruntime"],
                        choices=["pytorch", "onnxruntime", "torch-compile"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image-size", type=int, nargs=2, default=[256, 256])
    parser.add_argument("--full", action="store_true", help="full-size N1.7 config with random weights (needs a GPU)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} image={args.image_size}")
    print()
    print("| checkpoint | backend | batch | preprocess ms | backbone ms | action head ms | decode ms | total ms | ms/row |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sizes = ["full"] if args.full else args.sizes
        for size in sizes:
            checkpoint = workdir / size
            make_test_checkpoint(checkpoint, size="tiny" if size == "full" else size)
            makers = _backends(args, checkpoint, workdir)
            if size == "full":
                makers = {"pytorch": lambda: full_size_policy(makers["pytorch"](), args.device)}
            for backend, make_policy in makers.items():
                try:
                    policy = make_policy()
                except Exception as exc:  # a backend that cannot run here is reported, not fatal
                    print(f"| {size} | {backend} | - | skipped: {str(exc).splitlines()[0][:80]} | | | | | |")
                    continue
                for batch in args.batch_sizes:
                    stages = measure(policy, batch, args.iterations, args.warmup, tuple(args.image_size))
                    print(
                        f"| {size} | {backend} | {batch} | {stages['preprocess']:.1f} | {stages['backbone']:.1f} | "
                        f"{stages['action_head']:.1f} | {stages['decode']:.1f} | {stages['total']:.1f} | "
                        f"{stages['total'] / batch:.1f} |"
                    )
                del policy
    print()
    print("Reference (published, H100, full-size N1.7, batch 1, end to end): "
          + ", ".join(f"{k} {v} ms" for k, v in REFERENCE_H100_MS.items()))
    if args.device == "cpu":
        print("CPU numbers are for the tiny/small test configs and are not comparable with the H100 figures.")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
