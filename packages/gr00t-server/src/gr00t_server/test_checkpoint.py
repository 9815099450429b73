"""A random-weight GR00T N1.7 checkpoint in the released layout, for tests, demos and benchmarks.

Files: config.json, model.safetensors, processor_config.json, statistics.json, embodiment_id.json,
tokenizer.json, tokenizer_config.json, vocab.json, merges.txt, added_tokens.json, special_tokens_map.json,
chat_template.jinja, preprocessor_config.json.
`Gr00tPolicy` loads it through the same code path as a user's checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np

from gr00t_client.embodiment import EMBODIMENT_TAG_TO_PROJECTOR_INDEX
from gr00t_client.modality import ActionConfig, ModalityConfig

logger = logging.getLogger(__name__)

# (key, dim) per group; action configs as (rep, type, format, state_key).
_LIBERO_STATE = [("x", 1), ("y", 1), ("z", 1), ("roll", 1), ("pitch", 1), ("yaw", 1), ("gripper", 2)]
_LIBERO_ACTION = [("x", 1), ("y", 1), ("z", 1), ("roll", 1), ("pitch", 1), ("yaw", 1), ("gripper", 1)]

_SPECS: Dict[str, Dict[str, Any]] = {
    "libero_sim": {
        "video": ["image", "wrist_image"],
        "state": _LIBERO_STATE,
        "action": _LIBERO_ACTION,
        "action_configs": [("ABSOLUTE", "NON_EEF", "DEFAULT", None)] * len(_LIBERO_ACTION),
        "horizon": 16,
        "language": "annotation.human.action.task_description",
    },
    "new_embodiment": {
        "video": ["front"],
        "state": [("eef_9d", 9), ("gripper", 1), ("joints", 7)],
        "action": [("eef_9d", 9), ("gripper", 1), ("joints", 7)],
        "action_configs": [
            ("RELATIVE", "EEF", "XYZ_ROT6D", "eef_9d"),
            ("ABSOLUTE", "NON_EEF", "DEFAULT", None),
            ("RELATIVE", "NON_EEF", "DEFAULT", "joints"),
        ],
        "horizon": 16,
        "language": "annotation.human.task_description",
        "mean_std_state": ["joints"],
    },
}
_GENERIC_SPEC: Dict[str, Any] = {
    "video": ["image"],
    "state": [("state", 8)],
    "action": [("action", 7)],
    "action_configs": [("ABSOLUTE", "NON_EEF", "DEFAULT", None)],
    "horizon": 8,
    "language": "annotation.human.task_description",
}


def _spec(tag: str) -> Dict[str, Any]:
    return _SPECS.get(tag, _GENERIC_SPEC)


def modality_configs_for(tag: str) -> Dict[str, ModalityConfig]:
    """The modality configs a test checkpoint writes for `tag` (LIBERO-like, new_embodiment, or generic)."""
    spec = _spec(tag)
    return {
        "video": ModalityConfig(delta_indices=[0], modality_keys=list(spec["video"])),
        "state": ModalityConfig(
            delta_indices=[0],
            modality_keys=[k for k, _ in spec["state"]],
            mean_std_embedding_keys=spec.get("mean_std_state"),
        ),
        "action": ModalityConfig(
            delta_indices=list(range(spec["horizon"])),
            modality_keys=[k for k, _ in spec["action"]],
            action_configs=[ActionConfig(rep=r, type=t, format=f, state_key=s) for r, t, f, s in spec["action_configs"]],
        ),
        "language": ModalityConfig(delta_indices=[0], modality_keys=[spec["language"]]),
    }


def _key_stats(rng: np.random.Generator, shape: Tuple[int, ...], spread: float = 1.0) -> Dict[str, List]:
    center = rng.uniform(-0.5, 0.5, size=shape)
    half = rng.uniform(0.2, 1.0, size=shape) * spread
    lo, hi = center - half, center + half
    return {
        "min": lo.tolist(),
        "max": hi.tolist(),
        "mean": center.tolist(),
        "std": (half / 2.0).tolist(),
        "q01": (lo + 0.05 * half).tolist(),
        "q99": (hi - 0.05 * half).tolist(),
    }


def statistics_for(tag: str, seed: int = 0) -> Dict[str, Any]:
    """Synthetic statistics.json entry: per-dim state/action stats, per-step [T][D] relative stats."""
    spec = _spec(tag)
    rng = np.random.default_rng(seed)
    out: Dict[str, Any] = {
        "state": {k: _key_stats(rng, (d,)) for k, d in spec["state"]},
        "action": {k: _key_stats(rng, (d,)) for k, d in spec["action"]},
    }
    relative = {
        key: _key_stats(rng, (spec["horizon"], dim), spread=0.1)
        for (key, dim), (rep, *_rest) in zip(spec["action"], spec["action_configs"])
        if rep == "RELATIVE"
    }
    if relative:
        out["relative_action"] = relative
    return out


def _embodiment_ids(tags: Sequence[str]) -> Dict[str, int]:
    ids: Dict[str, int] = {}
    used = set(EMBODIMENT_TAG_TO_PROJECTOR_INDEX.values())
    free = (i for i in range(32) if i not in used)
    for tag in tags:
        ids[tag] = EMBODIMENT_TAG_TO_PROJECTOR_INDEX[tag] if tag in EMBODIMENT_TAG_TO_PROJECTOR_INDEX else next(free)
    return ids


def processor_kwargs_for(tags: Sequence[str], model_name: str, max_state_dim: int, max_action_dim: int, max_action_horizon: int) -> Dict[str, Any]:
    """processor_kwargs with the released checkpoints' values (model.md §1.4) and the tags' modality configs."""
    return {
        "modality_configs": {tag: {m: c.to_json_dict() for m, c in modality_configs_for(tag).items()} for tag in tags},
        "image_crop_size": [230, 230],
        "image_target_size": [256, 256],
        "use_albumentations": True,
        "random_rotation_angle": None,
        "color_jitter_params": None,
        "shortest_image_edge": 256,
        "crop_fraction": 0.95,
        "letter_box_transform": False,
        "model_name": model_name,
        "model_type": "qwen",
        "formalize_language": True,
        "max_state_dim": max_state_dim,
        "max_action_dim": max_action_dim,
        "max_action_horizon": max_action_horizon,
        "strict_action_padding_mask": False,
        "use_percentiles": True,
        "use_mean_std": False,
        "clip_outliers": True,
        "apply_sincos_state_encoding": False,
        "use_relative_action": True,
        "exclude_state": False,
        "state_dropout_prob": 0.0,
    }


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def make_test_checkpoint(
    out_dir: Union[str, Path],
    size: str = "tiny",
    embodiment_tags: Sequence[str] = ("new_embodiment", "libero_sim"),
    seed: int = 0,
) -> Path:
    """Write a random-weight checkpoint (`size` "tiny" or "small") for `embodiment_tags`; return its folder."""
    import torch

    from gr00t_server.model.checkpoint import save_model
    from gr00t_server.model.modeling import Gr00tN1d7
    from gr00t_server.model.presets import small_config, tiny_config
    from gr00t_server.processing.test_assets import DEFAULT_SPECIAL_TOKEN_IDS, build_test_tokenizer
    from gr00t_server.processing.vision_patches import VisionPatchConfig

    presets = {"tiny": tiny_config, "small": small_config}
    if size not in presets:
        raise ValueError(f"unknown test checkpoint size {size!r}; expected one of {sorted(presets)}")
    tags = [str(getattr(t, "value", t)) for t in embodiment_tags]
    if not tags:
        raise ValueError("make_test_checkpoint needs at least one embodiment tag")
    config = presets[size]()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    model = Gr00tN1d7(config)
    save_model(model, out)

    backbone = config.backbone_cfg or {}
    special_ids = dict(DEFAULT_SPECIAL_TOKEN_IDS)
    special_ids.update(
        {
            "<|image_pad|>": config.image_token_id,
            "<|video_pad|>": backbone.get("video_token_id", special_ids["<|video_pad|>"]),
            "<|vision_start|>": backbone.get("vision_start_token_id", special_ids["<|vision_start|>"]),
            "<|vision_end|>": backbone.get("vision_end_token_id", special_ids["<|vision_end|>"]),
        }
    )
    build_test_tokenizer(out, special_token_ids=special_ids)
    _write_json(out / "preprocessor_config.json", VisionPatchConfig().to_dict())
    kwargs = processor_kwargs_for(tags, config.model_name, config.max_state_dim, config.max_action_dim, config.action_horizon)
    _write_json(out / "processor_config.json", {"processor_class": "Gr00tN1d7Processor", "processor_kwargs": kwargs})
    _write_json(out / "statistics.json", {tag: statistics_for(tag, seed + i) for i, tag in enumerate(tags)})
    _write_json(out / "embodiment_id.json", _embodiment_ids(tags))
    logger.info("wrote %s test checkpoint for %s to %s", size, tags, out)
    return out


def example_observation(
    checkpoint_dir: Union[str, Path], embodiment_tag: str, batch_size: int = 1, seed: int = 0, image_size: Tuple[int, int] = (256, 256)
) -> Dict[str, Any]:
    """A random nested observation {video, state, language} matching a checkpoint's configs and statistics."""
    from gr00t_server.processing.config import load_processor_config, load_statistics

    configs: Mapping[str, ModalityConfig] = load_processor_config(checkpoint_dir).modality_configs[embodiment_tag]
    stats = load_statistics(checkpoint_dir)[embodiment_tag]["state"]
    rng = np.random.default_rng(seed)
    h, w = image_size
    video_t, state_t = configs["video"].horizon, configs["state"].horizon
    return {
        "video": {
            k: rng.integers(0, 256, size=(batch_size, video_t, h, w, 3), dtype=np.uint8) for k in configs["video"].modality_keys
        },
        "state": {
            k: rng.uniform(stats[k]["min"], stats[k]["max"], size=(batch_size, state_t, len(stats[k]["min"]))).astype(np.float32)
            for k in configs["state"].modality_keys
        },
        "language": {k: [["Pick up the bowl."] for _ in range(batch_size)] for k in configs["language"].modality_keys},
    }
