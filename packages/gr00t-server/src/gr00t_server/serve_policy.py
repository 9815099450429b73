"""The policy `gr00t-server serve` serves, built from its flags: a Gr00tPolicy of --model-path (backend, warm-up) or
a ReplayPolicy of --dataset-path (modality config, execution horizon)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional, Tuple

from gr00t_client.cli_flags import home_expanded_path

from .cli_errors import CliError

logger = logging.getLogger(__name__)


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _replay_policy(args: argparse.Namespace, tag: Any) -> Tuple[Any, Optional[str]]:
    """The ReplayPolicy of --dataset-path and the tag of its --modality-config-path .py file (else None); `tag` None:
    the one tag that file registers."""
    from . import modality_configs as configs
    from .extras import require_lerobot_dataset
    from .policies.replay import ReplayPolicy, default_execution_horizon

    cache = {}
    if args.replay_cache_mb is not None:  # before the dataset is read
        if not math.isfinite(args.replay_cache_mb) or not 0 < args.replay_cache_mb <= MAX_REPLAY_CACHE_MB:
            raise CliError(f"--replay-cache-mb must be in (0, {MAX_REPLAY_CACHE_MB}] MiB, got {args.replay_cache_mb}")
        cache["max_cached_bytes"] = max(1, int(args.replay_cache_mb * 2**20))
    # 100000000 built a delta list for minutes, unrefused
    if args.action_horizon is not None and not 1 <= args.action_horizon <= MAX_ACTION_HORIZON:
        raise CliError(f"--action-horizon must be a whole number of steps from 1 to {MAX_ACTION_HORIZON}, got "
                       f"{args.action_horizon}")
    dataset_path = Path(args.dataset_path)
    if not dataset_path.is_dir():
        raise CliError(f"--dataset-path {dataset_path} is not a directory")
    from .policies.dataset_changes import DatasetChanges

    dataset_class = require_lerobot_dataset()  # first: the change check lists the files with gr00t-eval's reader too
    # Its files' signatures before it is read: a re-recording while the modality config loads (a .py file runs user
    # code) is refused by the replay, not served under the lengths and seeds read here
    changes = DatasetChanges(Path(home_expanded_path(dataset_path)))
    dataset = dataset_class(dataset_path)
    file_tag = None
    if args.modality_config_path:
        file_tag, modality = configs.load_modality_config_and_tag(args.modality_config_path, tag)
        _check_file_action_horizon(modality, args)
        print(f"  Modality config: from {args.modality_config_path} (action horizon "
              f"{len(modality['action'].delta_indices)})")
    elif tag.value in configs.MODALITY_CONFIGS and _fits_dataset(configs.MODALITY_CONFIGS[tag.value], dataset):
        modality = _with_action_horizon(configs.MODALITY_CONFIGS[tag.value], args.action_horizon)
        print(f"  Modality config: the built-in config of {tag.value} (the dataset has its keys), action horizon "
              f"{len(modality['action'].delta_indices)}" + (" (--action-horizon)" if args.action_horizon is not None else ""))
    else:
        action_horizon = args.action_horizon or DEFAULT_ACTION_HORIZON
        modality = configs.derive_from_dataset(dataset, action_horizon=action_horizon)
        print(f"  Modality config: derived from {dataset_path}/meta/modality.json (action horizon {action_horizon})")
    chunk = default_execution_horizon(modality["action"])
    horizon = chunk if args.execution_horizon is None else args.execution_horizon
    if not 1 <= horizon <= chunk:  # ReplayPolicy's own refusal named `execution_horizon`, not the flag
        raise CliError(f"--execution-horizon must be a whole number of steps from 1 to {chunk} (each action chunk "
                       f"holds {chunk} actions), got {horizon}")
    return ReplayPolicy(dataset, modality, execution_horizon=horizon, strict=args.strict, max_rows=args.max_rows,
                        max_sessions=args.max_sessions, dataset_changes=changes, **cache), file_tag


MAX_REPLAY_CACHE_MB = 2**20  # a TiB: more is a typo, not a cache

MAX_ACTION_HORIZON = 4096  # replay's derived chunk length: N1.7 checkpoints act 16-40 steps at a time
DEFAULT_ACTION_HORIZON = 16  # a derived config's, when --action-horizon is not given


def _with_action_horizon(modality: Any, action_horizon: Optional[int]) -> Any:
    """A built-in config with its action steps 0..action_horizon-1 (as a derived config has them); as it is for None."""
    if action_horizon is None:
        return modality
    return {**modality, "action": dataclasses.replace(modality["action"], delta_indices=list(range(action_horizon)))}


def _check_file_action_horizon(modality: Any, args: argparse.Namespace) -> None:
    """CliError when --action-horizon asks for other action steps than the --modality-config-path file sets."""
    steps = modality["action"].delta_indices
    if args.action_horizon is not None and steps != list(range(args.action_horizon)):
        raise CliError(f"--action-horizon {args.action_horizon}: {args.modality_config_path} sets the action "
                       f"delta_indices ({len(steps)} steps: {steps[:8]}{' ...' if len(steps) > 8 else ''}); leave the "
                       "flag out to serve the file's, or change them there")


def _fits_dataset(modality: Any, dataset: Any) -> bool:
    """A built-in config is used only when the dataset has every key it names."""
    wanted = {
        "video": set(dataset.video_keys),
        "state": set(dataset.state_keys),
        "action": set(dataset.action_keys),
    }
    return all(set(modality[m].modality_keys) <= keys for m, keys in wanted.items() if m in modality)


def resolve_serve_dtype(args: argparse.Namespace) -> str:
    """The dtype --model-path loads in, as the start-up block prints it. Without --dtype, an export's recorded
    precision (set in args.dtype, as verify loads it: the device's default loaded the 3B checkpoint only to refuse an
    fp16 export), else the device's default."""
    if args.dtype is not None:
        return args.dtype
    if args.inference_mode in ("onnxruntime", "tensorrt"):
        from .backends import BackendError, export_precision

        try:
            precision = export_precision(args.inference_mode, onnx_dir=args.onnx_dir, engine_dir=args.engine_dir)
        except BackendError:
            precision = None  # check_backend_before_load says what is wrong with the folder, before the load
        if precision in ("bf16", "fp16", "fp32"):
            args.dtype = precision
            flag = "--onnx-dir" if args.inference_mode == "onnxruntime" else "--engine-dir"
            logger.info("--dtype not given: the model loads in %s, the precision of the export in %s %s", precision,
                        flag, args.onnx_dir if args.inference_mode == "onnxruntime" else args.engine_dir)
            return f"{precision} (the precision of the export in {flag})"
    return f"{'bf16' if str(args.device).startswith('cuda') else 'fp32'} (the default on {args.device})"


def _model_policy(args: argparse.Namespace, tag: Any, tag_given: bool = True) -> Any:
    model_path = args.model_path
    if os.path.isabs(model_path) and not os.path.exists(model_path):
        raise CliError(f"--model-path {model_path} does not exist")
    if args.inference_mode != "pytorch":  # before the checkpoint loads, which can take minutes
        from .backends import check_backend_before_load

        check_backend_before_load(args.inference_mode, onnx_dir=args.onnx_dir, engine_dir=args.engine_dir,
                                  device=args.device, max_language_tokens=args.max_language_tokens, dtype=args.dtype)
    from .cpu_threads import fit_torch_threads
    from .policies.gr00t_policy import Gr00tPolicy

    fit_torch_threads()  # before the load: a container's CPU quota throttles a pool sized by the node's cores
    try:
        policy = Gr00tPolicy(
            model_path=model_path, embodiment_tag=tag, device=args.device, strict=args.strict, dtype=args.dtype,
            clip_outliers=args.clip_outliers, preprocess_device=args.preprocess_device,
            # a call of --max-batch-size merged rows is held to the same vision-token budget as one request
            max_rows=max(args.max_rows, args.max_batch_size), max_image_pixels=args.max_image_pixels,
            max_denoising_steps=args.max_denoising_steps, allow_empty_instruction=args.allow_empty_instruction,
        )
    except ValueError as exc:
        if "is not supported by this checkpoint" not in str(exc):
            raise
        # The reference's several-line text, on one line so that the checkpoint's tags are not lost.
        default = "" if tag_given else (f"--embodiment-tag was not given, so the default {str(tag)!r} was used: ")
        raise CliError(default + " ".join(" ".join(line.split()) for line in str(exc).splitlines() if line.strip())) from exc
    if args.inference_mode != "pytorch":
        from .backends import apply_inference_mode

        apply_inference_mode(policy, args.inference_mode, onnx_dir=args.onnx_dir, engine_dir=args.engine_dir)
    if args.warmup:
        _warm_up(policy, args)
    return policy


def _warm_up(policy: Any, args: argparse.Namespace) -> None:
    """One sample get_action at batch 1 (and at --max-batch-size when batching) before the port opens."""
    from .backends.bench import warm_up

    sizes = (1,) if args.max_batch_size <= 1 else (1, args.max_batch_size)
    if args.inference_mode == "torch-compile":
        print("  Warm-up: compiling the DiT with torch.compile (can take minutes)...", flush=True)
    try:
        seconds = warm_up(policy, sizes)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(
            f"warm-up failed: the {args.inference_mode} policy could not answer a sample observation "
            f"({type(exc).__name__}: {reason}); --no-warmup skips this check"
        ) from exc
    print("  Warm-up: " + ", ".join(f"batch {size} in {s:.2f} s" for size, s in seconds.items()), flush=True)
