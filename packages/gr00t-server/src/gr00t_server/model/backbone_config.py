"""Qwen3-VL backbone configuration: a built-in Cosmos-Reason2-2B copy, or one embedded in config.json.

Released checkpoints name the backbone only by hub id (`model_name`); we never download it, so the
architecture values of Cosmos-Reason2-2B (= Qwen3-VL-2B-Instruct) live here (model.md §2.2).
"""

from __future__ import annotations

import copy
from typing import Any, Optional

# Model names whose architecture equals the built-in copy below.
KNOWN_BACKBONE_NAMES: tuple[str, ...] = (
    "nvidia/Cosmos-Reason2-2B",
    "Qwen/Qwen3-VL-2B-Instruct",
    "Qwen/Qwen3-VL-2B-Thinking",
)

# Upstream builds the backbone only for model names containing one of these ("Unsupported model name" otherwise).
BACKBONE_FAMILIES: tuple[str, ...] = ("nvidia/Cosmos-Reason2", "Qwen/Qwen3-VL")

COSMOS_REASON2_2B_CONFIG: dict[str, Any] = {
    "model_type": "qwen3_vl",
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "qwen3_vl_text",
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 262144,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "rope_theta": 5000000.0,
        "rope_scaling": {"rope_type": "default", "mrope_interleaved": True, "mrope_section": [24, 20, 20]},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "tie_word_embeddings": True,
    },
    "vision_config": {
        "model_type": "qwen3_vl",
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "out_hidden_size": 2048,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [5, 11, 17],
        "initializer_range": 0.02,
    },
}


def is_backbone_family(model_name: object) -> bool:
    """True for a Cosmos-Reason2 or Qwen3-VL hub id (or a path naming one), as upstream's backbone selection."""
    return isinstance(model_name, str) and any(f.lower() in model_name.lower() for f in BACKBONE_FAMILIES)


def resolve_qwen3_vl_config(
    model_name: str,
    backbone_cfg: Optional[dict[str, Any]],
    select_layer: int,
    image_token_id: int,
    backbone_embedding_dim: int,
) -> dict[str, Any]:
    """Return the Qwen3-VL config dict to build, truncated to `select_layer` decoder layers.

    `backbone_cfg` (embedded in config.json) wins; otherwise `model_name` must be a known id.
    `image_token_id` overrides the backbone's own, so the GR00T config is the single source.
    """
    if backbone_cfg:
        resolved = copy.deepcopy(backbone_cfg)
    elif any(name.lower() in (model_name or "").lower() for name in KNOWN_BACKBONE_NAMES):
        resolved = copy.deepcopy(COSMOS_REASON2_2B_CONFIG)
    else:
        raise ValueError(
            f"Unknown backbone model_name {model_name!r} and no embedded 'backbone_cfg' in config.json; "
            f"built-in architectures exist for {list(KNOWN_BACKBONE_NAMES)}"
        )
    for section in ("text_config", "vision_config"):
        if not isinstance(resolved.get(section), dict):
            raise ValueError(f"backbone config needs a '{section}' dict, got {type(resolved.get(section)).__name__}")
    text = resolved["text_config"]
    available = int(text.get("num_hidden_layers", 0))
    if not 1 <= select_layer <= available:
        raise ValueError(f"config field 'select_layer' is {select_layer}; expected an int in [1, {available}] (the "
                         "backbone's num_hidden_layers)")
    if int(text["hidden_size"]) != backbone_embedding_dim:
        raise ValueError(
            f"backbone_embedding_dim={backbone_embedding_dim} must equal the backbone text hidden_size "
            f"{text['hidden_size']}"
        )
    text["num_hidden_layers"] = select_layer
    resolved["image_token_id"] = image_token_id
    # lm_head is never used; keep it tied so it costs no memory and need not be in checkpoints.
    resolved["tie_word_embeddings"] = True
    text["tie_word_embeddings"] = True
    return resolved
