"""Per-stage latency of a policy (data processing / backbone / action head / end to end), any backend.

The stages match the reference timing table (model.md §7.4), so a benchmark can add a backend column.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from gr00t_server.backends.common import model_of


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_policy(policy: Any, observation: dict[str, Any], iters: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per stage over `iters` calls of `policy.get_action(observation)` after `warmup`.

    Returns `data_processing_ms`, `backbone_ms`, `action_head_ms`, `e2e_ms` and `hz` (1000 / e2e).
    """
    model = model_of(policy)
    device = model.device
    samples: dict[str, list[float]] = {"backbone": [], "model": [], "e2e": []}
    marks: dict[str, float] = {}

    def before_backbone(module: torch.nn.Module, args: Any) -> None:
        _synchronize(device)
        marks["backbone"] = time.perf_counter()

    def after_backbone(module: torch.nn.Module, args: Any, output: Any) -> None:
        _synchronize(device)
        samples["backbone"].append(time.perf_counter() - marks["backbone"])

    original_get_action = model.get_action

    def timed_get_action(*args: Any, **kwargs: Any) -> Any:
        _synchronize(device)
        start = time.perf_counter()
        result = original_get_action(*args, **kwargs)
        _synchronize(device)
        samples["model"].append(time.perf_counter() - start)
        return result

    handles = [model.backbone.register_forward_pre_hook(before_backbone), model.backbone.register_forward_hook(after_backbone)]
    model.get_action = timed_get_action  # instance attribute shadows the method while timing
    try:
        for step in range(warmup + iters):
            if step == warmup:
                for values in samples.values():
                    values.clear()
            start = time.perf_counter()
            policy.get_action(observation, {"seed": step})
            _synchronize(device)
            samples["e2e"].append(time.perf_counter() - start)
    finally:
        del model.get_action
        for handle in handles:
            handle.remove()
    median: Callable[[list[float]], float] = lambda values: 1000.0 * statistics.median(values) if values else float("nan")
    backbone, model_ms, e2e = median(samples["backbone"]), median(samples["model"]), median(samples["e2e"])
    return {
        "data_processing_ms": e2e - model_ms,
        "backbone_ms": backbone,
        "action_head_ms": model_ms - backbone,
        "e2e_ms": e2e,
        "hz": 1000.0 / e2e if e2e > 0 else float("nan"),
    }


def warm_up(policy: Any, batch_sizes: tuple[int, ...] = (1,), seed: int = 0) -> dict[int, float]:
    """Run one sample observation per batch size through `policy.get_action`; seconds per batch size.

    Serving calls this before it binds: torch.compile compiles here rather than on a robot's first request,
    and engines or exports that do not fit the model fail at start-up with their own error.
    """
    from gr00t_server.backends.export import sample_observation

    model = model_of(policy)
    seconds = {}
    for batch_size in batch_sizes:
        observation = sample_observation(policy, batch_size=batch_size, seed=seed)
        start = time.perf_counter()
        action = policy.get_action(observation, {"seed": seed})
        _synchronize(model.device)
        seconds[batch_size] = time.perf_counter() - start
        _check_finite_sample(action, batch_size)
    return seconds


def _check_finite_sample(result: Any, batch_size: int) -> None:
    """ValueError naming the action key when the sample action holds NaN or inf: such a model would fail every request."""
    action = result[0] if isinstance(result, (tuple, list)) and result else result
    for key, value in (action.items() if isinstance(action, dict) else ()):
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise ValueError(
                f"the sample action at batch {batch_size} has non-finite values (NaN or inf) in action key '{key}'; "
                "the checkpoint's weights or statistics hold NaN or inf, so every request would fail"
            )
