"""Gr00tPolicy latency per stage (preprocess, backbone, action head, decode, total) per model size and backend.

Backends: pytorch, torch-compile (the DiT forward compiled), onnxruntime and tensorrt (a full_pipeline ONNX export
of the very policy being measured, in the model dtype, ViT in fp32 as in the Isaac-GR00T N1.7 export; engines built from it).
Default: all four on CUDA, all but tensorrt on CPU. A backend that cannot run here gets a "skipped" row.

CPU: the tiny and small test checkpoints. --full: the full-size N1.7 network (3.1B parameters) with seeded random
weights in bf16 (fp32 on CPU) behind the tiny checkpoint's processing, built once per backend; each backend's row
sits beside the reference's published H100 row (the Isaac-GR00T N1.7 deployment README). Progress (export, engine build, compile) goes to
stderr; the markdown table goes to stdout.

    python benchmarks/policy_latency.py                        # tiny + small, batch 1 and 8, CPU backends
    python benchmarks/policy_latency.py --full --device cuda   # full size, all four backends (export+build: minutes)
    python benchmarks/policy_latency.py --full --workdir /tmp/bench  # keep exports and engines for the next run
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _args import device_name, non_negative_int, positive_int  # noqa: E402
from _children import BenchmarkError, run_benchmark  # noqa: E402
from gr00t_server.backends import BackendError, apply_inference_mode  # noqa: E402
from gr00t_server.backends.common import ENGINE_METADATA, EXPORT_METADATA, PRECISION_OF_DTYPE, TORCH_DTYPES  # noqa: E402
from gr00t_server.model.modeling import resolve_dtype  # noqa: E402
from gr00t_server.policies.gr00t_policy import Gr00tPolicy  # noqa: E402
from gr00t_server.test_checkpoint import example_observation, make_test_checkpoint  # noqa: E402

TAG = "new_embodiment"
BACKENDS = ("pytorch", "torch-compile", "onnxruntime", "tensorrt")
# torch.compile compiles at the first call per input shape and, on CUDA (max-autotune), records a CUDA graph
# at a later one; these calls must fall in the warmup, never in the timed iterations.
MIN_WARMUP = {"torch-compile": 3}
COLUMNS = ("model", "backend", "batch", "first call ms", "preprocess ms", "backbone ms", "action head ms",
           "decode ms", "total ms", "ms/row", "Hz")
# Published N1.7 timings on an H100 80GB HBM3 (the Isaac-GR00T N1.7 deployment README): GR00T-N1.7-LIBERO, batch 1, 4 denoising steps,
# 1 camera. (label, data processing ms, backbone ms, action head ms, end to end ms, Hz) per backend.
REFERENCE_H100_MS: Dict[str, Tuple[str, float, float, float, float, float]] = {
    "pytorch": ("PyTorch Eager", 6.2, 31.3, 48.2, 85.8, 11.7),
    "torch-compile": ("torch.compile", 6.2, 30.4, 12.0, 48.6, 20.6),
    "tensorrt": ("TensorRT (full)", 6.2, 8.8, 12.3, 27.9, 35.9),
}


def progress(message: str) -> None:
    """One progress line on stderr, flushed (exports, engine builds and compiles take minutes at full size)."""
    print(f"[policy_latency {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def table_row(cells: Sequence[object]) -> str:
    """A markdown row padded to the table's column count."""
    cells = [str(c) for c in cells] + [""] * (len(COLUMNS) - len(cells))
    return "| " + " | ".join(cells) + " |"


def reference_row(backend: str) -> Optional[str]:
    """The published H100 row for `backend` in this table's columns, or None (onnxruntime has none)."""
    if backend not in REFERENCE_H100_MS:
        return None
    label, data, backbone, head, e2e, hz = REFERENCE_H100_MS[backend]
    return table_row(["H100 published §7.4", label, 1, "", f"{data} (data proc)", backbone, head, "-", e2e, e2e, hz])


def default_backends(device: str) -> List[str]:
    """All four backends on CUDA; on CPU all but tensorrt."""
    if torch.device(device).type == "cuda":
        return list(BACKENDS)
    return [b for b in BACKENDS if b != "tensorrt"]


def unavailable(backend: str, device: str) -> Optional[str]:
    """Why `backend` cannot run on `device` here (not installed, no GPU), checked before any model is built."""
    torch_device = torch.device(device)
    if backend == "torch-compile" and not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if backend in ("onnxruntime", "tensorrt") and importlib.util.find_spec("onnx") is None:
        return "the ONNX export needs the onnx package: pip install 'gr00t-server[onnx]'"
    try:
        if backend == "onnxruntime":
            from gr00t_server.backends.onnxruntime_backend import providers_for

            providers_for(torch_device)
        elif backend == "tensorrt":
            if torch_device.type != "cuda":
                return f"TensorRT needs a CUDA device; this run is on {device}"
            from gr00t_server.backends.tensorrt_backend import import_tensorrt

            import_tensorrt()
    except BackendError as exc:
        return str(exc)
    return None


# ----- models -----


def full_size_config():
    """The released N1.7 architecture, with the special-token ids of the test tokenizer."""
    from gr00t_server.model.presets import TEST_TOKEN_IDS, released_config

    config = released_config(image_token_id=TEST_TOKEN_IDS["image_token_id"])
    backbone = dict(config.backbone_cfg or config.qwen3_vl_config_dict())
    backbone.update({k: v for k, v in TEST_TOKEN_IDS.items() if k != "image_token_id"})
    config.backbone_cfg = backbone
    return config


def full_size_policy(checkpoint: Path, device: str, dtype: torch.dtype, seed: int = 0) -> Gr00tPolicy:
    """A policy with the tiny checkpoint's processing and a full-size network with random weights from `seed`.

    The same seed gives the same weights, so one ONNX export serves every rebuilt policy (the backends check
    the weights fingerprint recorded at export).
    """
    from gr00t_server.model.modeling import Gr00tN1d7

    policy = Gr00tPolicy(model_path=checkpoint, embodiment_tag=TAG, device=device, dtype=dtype, strict=False)
    config = full_size_config()
    policy.model = None  # drop the tiny network before allocating the large one
    torch.manual_seed(seed)
    with torch.device(device):
        model = Gr00tN1d7(config)
    policy.model = model.to(dtype=dtype).eval()
    policy.model_config = config
    return policy


def build_policy(size: str, checkpoint: Path, device: str, dtype: torch.dtype) -> Gr00tPolicy:
    """A fresh policy for `size` ("tiny", "small" from their checkpoints, or "full")."""
    if size == "full":
        return full_size_policy(checkpoint, device, dtype)
    return Gr00tPolicy(model_path=checkpoint, embodiment_tag=TAG, device=device, dtype=dtype, strict=False)


def release_memory(device: str) -> None:
    """Free what the last policy left: compiled graphs (and their CUDA-graph pools), cycles, cached GPU blocks."""
    torch._dynamo.reset()
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def apply_backend(policy: Gr00tPolicy, backend: str, export_dir: Path, engine_dir: Path, image_size: Tuple[int, int],
                  max_batch_size: int) -> None:
    """Switch `policy` to `backend`; exports the policy (and builds engines) first unless the work dirs hold them."""
    if backend in ("pytorch", "torch-compile"):
        apply_inference_mode(policy, backend)
        return
    from gr00t_server.backends.export import clear_export_dir, export_policy

    if not (export_dir / EXPORT_METADATA).is_file():
        precision = PRECISION_OF_DTYPE[policy.model.dtype]
        progress(f"exporting full_pipeline ONNX ({precision}; ViT in fp32, the Isaac-GR00T N1.7 export) to {export_dir}")
        started = time.perf_counter()
        export_dir.mkdir(parents=True, exist_ok=True)
        clear_export_dir(export_dir)
        observation = example_observation(policy.checkpoint_dir, TAG, batch_size=1, image_size=image_size)
        metadata = export_policy(policy, observation, export_dir, mode="full_pipeline", precision=precision)
        files = ", ".join(info["file"] for info in metadata["submodules"].values())
        progress(f"exported in {time.perf_counter() - started:.0f} s: {files}")
    if backend == "onnxruntime":
        apply_inference_mode(policy, "onnxruntime", onnx_dir=export_dir)
        return
    if engine_max_batch(engine_dir) < max_batch_size:  # none built yet, or built for smaller batches by an earlier run
        from gr00t_server.backends.tensorrt_backend import build_engines

        progress(f"building TensorRT engines (max batch {max_batch_size}) in {engine_dir}; minutes at full size")
        started = time.perf_counter()
        build_engines(export_dir, engine_dir, max_batch_size=max_batch_size)
        progress(f"engines built in {time.perf_counter() - started:.0f} s")
    apply_inference_mode(policy, "tensorrt", engine_dir=engine_dir)


def engine_max_batch(engine_dir: Path) -> int:
    """The max batch the engines kept in `engine_dir` were built for (engine_metadata.json); 0 when there are none."""
    try:
        return int(json.loads((engine_dir / ENGINE_METADATA).read_text()).get("max_batch_size", 0))
    except (FileNotFoundError, ValueError, TypeError, AttributeError):
        return 0


# ----- timing -----


class StageTimer:
    """Times `policy.get_action` split into preprocess | backbone | action head | decode, via hooks on the model."""

    def __init__(self, policy: Gr00tPolicy) -> None:
        self.policy = policy
        self.marks: Dict[str, float] = {}
        model = policy.model
        original = model.get_action

        def timed_get_action(*args, **kwargs):
            self._mark("model_start")
            out = original(*args, **kwargs)
            self._mark("model_end")
            return out

        self._handles = [
            model.backbone.register_forward_pre_hook(lambda *_: self._mark("backbone_start")),
            model.backbone.register_forward_hook(lambda *_: self._mark("backbone_end")),
        ]
        model.get_action = timed_get_action  # an instance attribute shadows the method until close()

    def _mark(self, name: str) -> None:
        if self.policy.device.type == "cuda":
            torch.cuda.synchronize(self.policy.device)
        self.marks[name] = time.perf_counter()

    def close(self) -> None:
        """Remove the hooks and the wrapper."""
        for handle in self._handles:
            handle.remove()
        del self.policy.model.get_action

    def call(self, observation: Dict) -> Dict[str, float]:
        """One timed get_action; milliseconds per stage."""
        self.marks.clear()
        self._mark("start")
        self.policy.get_action(observation, {"seed": 0})
        self._mark("end")
        m = self.marks
        return {
            "preprocess": (m["model_start"] - m["start"]) * 1e3,
            "backbone": (m["backbone_end"] - m["backbone_start"]) * 1e3,
            "action_head": (m["model_end"] - m["backbone_end"]) * 1e3,
            "decode": (m["end"] - m["model_end"]) * 1e3,
            "total": (m["end"] - m["start"]) * 1e3,
        }


def measure(
    policy: Gr00tPolicy, observation: Dict, iterations: int, warmup: int
) -> Tuple[Optional[float], Dict[str, float]]:
    """(first warmup call in ms or None, median ms per stage over `iterations` after `warmup` calls)."""
    timer = StageTimer(policy)
    try:
        warm = [timer.call(observation)["total"] for _ in range(warmup)]
        rows = [timer.call(observation) for _ in range(max(1, iterations))]
    finally:
        timer.close()
    return (warm[0] if warm else None), {stage: float(np.median([r[stage] for r in rows])) for stage in rows[0]}


def measured_row(size: str, backend: str, batch: int, first_ms: Optional[float], stages: Dict[str, float]) -> str:
    """A table row from `measure`'s result."""
    total = stages["total"]
    return table_row([
        size, backend, batch, "-" if first_ms is None else f"{first_ms:.0f}", f"{stages['preprocess']:.1f}",
        f"{stages['backbone']:.1f}", f"{stages['action_head']:.1f}", f"{stages['decode']:.1f}", f"{total:.1f}",
        f"{total / batch:.1f}", f"{1000 / total:.1f}",
    ])


def _reason(exc: object) -> str:
    """First line of an error (or message), short enough for a table cell."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160].replace("|", "/")


def prepared_policy(size: str, backend: str, args: argparse.Namespace, checkpoint: Path, workdir: Path,
                    dtype: torch.dtype) -> Tuple[Optional[Gr00tPolicy], bool]:
    """(a fresh policy for `size` switched to `backend`, False), or (None, whether it failed) after printing a
    skipped/failed row."""
    reason = unavailable(backend, args.device)
    if reason:
        print(table_row([size, backend, "-", f"skipped: {_reason(reason)}"]), flush=True)
        return None, False
    # Exports and engines are named by what shapes them (engines rebuilt for a larger max batch), so a kept
    # --workdir never serves a stale one.
    shape = f"{'x'.join(map(str, args.image_size))}-{PRECISION_OF_DTYPE[dtype]}"
    export_dir, engine_dir = workdir / f"onnx-{size}-{shape}", workdir / f"engines-{size}-{shape}"
    try:
        progress(f"{size}/{backend}: building the policy")
        policy = build_policy(size, checkpoint, args.device, dtype)
        apply_backend(policy, backend, export_dir, engine_dir, tuple(args.image_size), max(args.batch_sizes))
        return policy, False
    except Exception as exc:  # a backend that cannot run here is reported, not fatal
        if not isinstance(exc, BackendError):
            traceback.print_exc()
        status = "skipped" if isinstance(exc, BackendError) else "failed"
        print(table_row([size, backend, "-", f"{status}: {_reason(exc)}"]), flush=True)
        return None, status == "failed"


def run_backend(size: str, backend: str, args: argparse.Namespace, checkpoint: Path, workdir: Path,
                dtype: torch.dtype) -> Tuple[int, int]:
    """Print one row per batch size for `backend`, then free its policy before the next one is built; (rows
    measured, rows failed)."""
    is_cuda = torch.device(args.device).type == "cuda"
    if is_cuda:
        torch.cuda.reset_peak_memory_stats()
    policy, failed = prepared_policy(size, backend, args, checkpoint, workdir, dtype)
    measured, failed_rows = 0, int(failed)
    warmup = max(args.warmup, MIN_WARMUP.get(backend, 0))
    compiling = "; torch.compile compiles in the first (minutes with max-autotune on CUDA)"
    for batch in args.batch_sizes if policy is not None else []:
        observation = example_observation(checkpoint, TAG, batch_size=batch, image_size=tuple(args.image_size))
        progress(f"{size}/{backend}: batch {batch}, {warmup} warmup + {args.iterations} timed calls"
                 f"{compiling if backend == 'torch-compile' else ''}")
        try:
            first_ms, stages = measure(policy, observation, args.iterations, warmup)
        except Exception as exc:  # e.g. a batch outside the engine profile; the other rows still count
            traceback.print_exc()
            print(table_row([size, backend, batch, f"failed: {_reason(exc)}"]), flush=True)
            failed_rows += 1
            continue
        if backend == "torch-compile" and first_ms is not None:
            progress(f"{size}/{backend}: batch {batch}: first call (compile) {first_ms / 1e3:.1f} s")
        print(measured_row(size, backend, batch, first_ms, stages), flush=True)
        measured += 1
    if is_cuda and policy is not None:
        peak = torch.cuda.max_memory_allocated() / 2**30
        progress(f"{size}/{backend}: peak GPU memory in torch's allocator {peak:.1f} GiB")
    del policy
    release_memory(args.device)
    return measured, failed_rows


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    parser.add_argument("--batch-sizes", nargs="+", type=positive_int, default=[1, 8])
    parser.add_argument("--backends", nargs="+", default=None, choices=BACKENDS,
                        help="default: all four on CUDA, all but tensorrt on CPU")
    parser.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda when there is a GPU)")
    parser.add_argument("--dtype", default=None, choices=sorted(TORCH_DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--iterations", type=positive_int, default=10)
    parser.add_argument("--warmup", type=non_negative_int, default=2,
                        help=f"untimed calls per batch size (at least {MIN_WARMUP['torch-compile']} for torch-compile)")
    parser.add_argument("--image-size", type=positive_int, nargs=2, default=[256, 256])
    parser.add_argument("--full", action="store_true",
                        help="full-size N1.7 network with random weights instead of --sizes (meant for a GPU)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep checkpoints, ONNX exports and engines here and reuse them (default: a temp dir)")
    args = parser.parse_args(argv)
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        parser.exit(2, f"--device {args.device} needs a CUDA build of torch and a GPU; this machine has none (use --device cpu)\n")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Print the table; BenchmarkError (exit status 1) when a row failed or none was measured."""
    args = parse_args(argv)
    backends = args.backends or default_backends(args.device)
    dtype = resolve_dtype(args.device, args.dtype)
    sizes = ["full"] if args.full else args.sizes
    device = torch.device(args.device)
    gpu = f" gpu={torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"device={args.device}{gpu} dtype={PRECISION_OF_DTYPE[dtype]} threads={torch.get_num_threads()} "
          f"torch={torch.__version__} image={args.image_size} backends={','.join(backends)}")
    print()
    print(table_row(COLUMNS))
    print(table_row(["---"] * len(COLUMNS)), flush=True)
    measured = failed = 0
    references = dict(REFERENCE_H100_MS)  # each printed once: beside its backend at full size, else at the end
    with tempfile.TemporaryDirectory(prefix="policy-latency-") as tmp:
        workdir = args.workdir or Path(tmp)
        for size in sizes:
            checkpoint = make_test_checkpoint(workdir / f"checkpoint-{'tiny' if size == 'full' else size}",
                                              size="tiny" if size == "full" else size)
            for backend in backends:
                backend_measured, backend_failed = run_backend(size, backend, args, checkpoint, workdir, dtype)
                measured, failed = measured + backend_measured, failed + backend_failed
                if size == "full" and references.pop(backend, None):
                    print(reference_row(backend), flush=True)
    for backend in references:
        print(reference_row(backend))
    print()
    print("Reference rows: the Isaac-GR00T N1.7 deployment README, GR00T-N1.7-LIBERO checkpoint on an H100 80GB HBM3, batch 1, 4 denoising "
          "steps, 1 camera; its data proc (all processing outside the network) sits in the preprocess column. Its "
          "torch.compile compiles only the DiT forward (max-autotune), as the torch-compile backend here does.")
    print("first call ms: the first warmup call, not in the medians (torch-compile compiles the DiT there). "
          "onnxruntime/tensorrt: full_pipeline export in the model dtype, ViT in fp32 (the Isaac-GR00T N1.7 export).")
    if args.full:
        print("full: the released N1.7 architecture (3.1B parameters) with seeded random weights behind the tiny "
              "checkpoint's processing and test tokenizer (its text tokens differ from a real checkpoint's).")
    else:
        print("The tiny/small test configs are not comparable with the H100 figures; use --full on a GPU.")
    sys.stdout.flush()
    if failed:
        raise BenchmarkError(f"{failed} row(s) failed (tracebacks above on stderr), {measured} measured; every row "
                             f"should be measured or skipped")
    if not measured:
        raise BenchmarkError("no row was measured: every backend was skipped; expected at least one measured row")
    return 0


if __name__ == "__main__":
    sys.exit(run_benchmark(main))
