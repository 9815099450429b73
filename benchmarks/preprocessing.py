"""Gr00tPolicy's preprocessing against its floors, as ratios measured side by side in one run.

Rows (each a median of interleaved rounds, so machine load hits both sides alike):
- image transform: our eval transform (resize -> crop -> resize, INTER_AREA) / the same three steps in cv2 directly;
- patchify: our batched patchify / transformers' fast Qwen2-VL image processor (the slow one where torchvision is
  missing; the row says which);
- preprocessing per row at B = 1, 4, 16 (tiny checkpoint, two cameras): it should fall with B;
- fraction of end-to-end get_action time spent outside the model at B = 1 (tiny checkpoint), from the policy's
  own stage timings, for 256x256 and 480x640 frames.

    python benchmarks/preprocessing.py                 # CPU, about a minute
    python benchmarks/preprocessing.py --device cuda   # model and patchify on the GPU
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _args import device_name, positive_int  # noqa: E402
from _children import run_benchmark  # noqa: E402
from gr00t_server.policies.gr00t_policy import Gr00tPolicy  # noqa: E402
from gr00t_server.processing.image import eval_image_transform  # noqa: E402
from gr00t_server.processing.vision_patches import patchify_batch  # noqa: E402
from gr00t_server.test_checkpoint import example_observation, make_test_checkpoint  # noqa: E402

TAG = "libero_sim"  # two cameras, like LIBERO
SIZES = ((256, 256), (480, 640))


def interleaved_medians(functions: Sequence[Callable[[], object]], rounds: int, untimed_first: bool = False) -> List[float]:
    """Median milliseconds of each function, timed in alternation (after one warm-up call each); with
    `untimed_first`, every timed call follows an untimed call of the same function."""
    for function in functions:
        function()
    samples: List[List[float]] = [[] for _ in functions]
    for _ in range(rounds):
        for index, function in enumerate(functions):
            if untimed_first:
                function()
            started = time.perf_counter()
            function()
            samples[index].append((time.perf_counter() - started) * 1000.0)
    return [statistics.median(s) for s in samples]


def cv2_eval_transform(image: np.ndarray, shortest_edge: int = 256, fraction: float = 0.95) -> np.ndarray:
    """The reference's albumentations eval transform with cv2 called directly: the floor for ours."""

    def smallest_max_size(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        scale = shortest_edge / min(h, w)
        new_h, new_w = int(round(h * scale)), int(round(w * scale))
        return img if (new_h, new_w) == (h, w) else cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)

    img = smallest_max_size(image)
    h, w = img.shape[:2]
    ch, cw = int(h * fraction), int(w * fraction)
    img = img[(h - ch) // 2 : (h - ch) // 2 + ch, (w - cw) // 2 : (w - cw) // 2 + cw]
    return smallest_max_size(img)


def hf_image_processor(device: str = "cpu") -> Tuple[str, Callable[[List[np.ndarray]], object]]:
    """transformers' Qwen2-VL image processor with the Cosmos settings: fast where torchvision is installed (on
    `device`, as ours runs), else the slow one (on the CPU)."""
    kwargs = dict(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                  min_pixels=65536, max_pixels=16777216)
    try:
        import torchvision  # noqa: F401
        from transformers.models.qwen2_vl.image_processing_qwen2_vl_fast import Qwen2VLImageProcessorFast

        processor = Qwen2VLImageProcessorFast(**kwargs)
        return f"fast on {device}", lambda images: processor(images=images, return_tensors="pt", device=device)
    except Exception:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

        processor = Qwen2VLImageProcessor(**kwargs)
        return "slow (torchvision missing)", lambda images: processor(images=images, return_tensors="np")


def row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--device", type=device_name, default="cpu", help="model (and patchify) device: cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--rounds", type=positive_int, default=15, help="interleaved rounds per measurement (default 15)")
    args = parser.parse_args(argv)
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        parser.exit(2, f"--device {args.device} needs a CUDA build of torch and a GPU; this machine has none (use --device cpu)\n")
    on_gpu = str(args.device).startswith("cuda")

    def synced(function: Callable[[], object]) -> Callable[[], object]:
        """On a GPU, the call's queued kernels finish inside its timing (nothing waited for them otherwise)."""
        if not on_gpu:
            return function

        def call() -> object:
            result = function()
            torch.cuda.synchronize()
            return result
        return call

    rng = np.random.default_rng(0)
    lines = ["| measurement | ours ms | baseline ms | ratio | target |", "|---|---|---|---|---|"]

    for size in SIZES:
        frame = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        ours, floor = interleaved_medians([lambda: eval_image_transform(frame, 256, 0.95), lambda: cv2_eval_transform(frame)],
                                          args.rounds * 4)
        lines.append(row([f"image transform {size[0]}x{size[1]} vs cv2", f"{ours:.3f}", f"{floor:.3f}", f"{ours / floor:.2f}x", "<= 1.2x"]))

    kind, hf = hf_image_processor(args.device)
    for size in ((256, 256), (256, 340)):
        frames = rng.integers(0, 256, (2,) + size + (3,), dtype=np.uint8)
        ours, theirs = interleaved_medians([synced(lambda: patchify_batch(frames, device=args.device)),
                                            synced(lambda: hf(list(frames)))], args.rounds * 2)
        lines.append(row([f"patchify 2 x {size[0]}x{size[1]} on {args.device} vs transformers {kind}", f"{ours:.3f}",
                          f"{theirs:.3f}", f"{ours / theirs:.2f}x", "<= 1x"]))

    with tempfile.TemporaryDirectory() as workdir:
        checkpoint = make_test_checkpoint(workdir, size="tiny", seed=0)
        policy = Gr00tPolicy(checkpoint, TAG, device=args.device)
        batches = (1, 4, 16)
        calls = []
        for batch in batches:  # timed in alternation, so the three batch sizes see the same machine load
            obs = example_observation(checkpoint, TAG, batch_size=batch, image_size=(256, 256))
            languages = ["pick up the bowl"] * batch
            calls.append(synced(functools.partial(policy.processor.process_batch, TAG, obs["video"], obs["state"],
                                                  languages, policy.preprocess_device)))
        # Each timed call follows an untimed one of the same size, as a server's calls come in runs of one batch size:
        # straight after a B=16 call, a B=1 call would pay for the caches and pages B=16 left behind.
        medians = interleaved_medians(calls, args.rounds, untimed_first=True)
        per_row: Dict[int, float] = {batch: ms / batch for batch, ms in zip(batches, medians)}
        base = per_row[1]
        for batch, ms in per_row.items():
            lines.append(row([f"preprocessing per row, B={batch}, 2 x 256x256", f"{ms:.3f}", f"{base:.3f} (B=1)",
                              f"{ms / base:.2f}x", "falls with B"]))
        for size, target in zip(SIZES, ("< 15%", "< 30%")):
            obs = example_observation(checkpoint, TAG, batch_size=1, image_size=size)
            fractions, totals = [], []
            for index in range(args.rounds + 1):
                started = time.perf_counter()
                policy.get_action(obs, {"seed": 0})
                total = (time.perf_counter() - started) * 1000.0
                if index:  # the first call warms up
                    fractions.append(1.0 - policy.last_timing["model_ms"] / total)
                    totals.append(total)
            lines.append(row([f"outside the model, B=1, 2 x {size[0]}x{size[1]} (tiny)", f"{statistics.median(totals):.2f} total",
                              "", f"{statistics.median(fractions) * 100:.1f}%", target]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run_benchmark(main))  # SIGTERM (as `timeout` sends) unwinds the temp folder too
