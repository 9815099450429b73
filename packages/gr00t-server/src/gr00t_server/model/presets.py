"""Ready-made configs: the released N1.7 architecture, and tiny/small ones for tests and benchmarks."""

from __future__ import annotations

from typing import Any

from gr00t_server.model.backbone_config import COSMOS_REASON2_2B_CONFIG
from gr00t_server.model.config import Gr00tN1d7Config

# Test tokenizers use their own vocabulary; these ids are the defaults of the tiny/small configs.
TEST_VOCAB_SIZE = 1024
TEST_TOKEN_IDS = {"image_token_id": 1000, "video_token_id": 1001, "vision_start_token_id": 1002, "vision_end_token_id": 1003}


def released_config(**overrides: Any) -> Gr00tN1d7Config:
    """The architecture of the released N1.7 checkpoints (select_layer 16, DiT 32 layers, 4-layer VL SA)."""
    values: dict[str, Any] = {
        "select_layer": 16,
        "diffusion_model_cfg": {
            "positional_embeddings": None, "num_layers": 32, "num_attention_heads": 32, "attention_head_dim": 48,
            "norm_type": "ada_norm", "dropout": 0.2, "final_dropout": True, "output_dim": 1024,
            "interleave_self_attention": True,
        },
        "vl_self_attention_cfg": {
            "positional_embeddings": None, "num_layers": 4, "num_attention_heads": 32, "attention_head_dim": 64,
            "dropout": 0.2, "final_dropout": True,
        },
    }
    values.update(overrides)
    return Gr00tN1d7Config(**values)


def _backbone_cfg(
    *,
    vocab_size: int,
    token_ids: dict[str, int],
    text_hidden: int,
    text_layers: int,
    text_heads: int,
    text_kv_heads: int,
    head_dim: int,
    mrope_section: list[int],
    vision_hidden: int,
    vision_depth: int,
    vision_heads: int,
    deepstack_indexes: list[int],
) -> dict[str, Any]:
    base = COSMOS_REASON2_2B_CONFIG
    return {
        **{k: v for k, v in base.items() if k not in ("text_config", "vision_config")},
        **token_ids,
        "text_config": {
            **base["text_config"],
            "vocab_size": vocab_size,
            "hidden_size": text_hidden,
            "intermediate_size": 2 * text_hidden,
            "num_hidden_layers": text_layers,
            "num_attention_heads": text_heads,
            "num_key_value_heads": text_kv_heads,
            "head_dim": head_dim,
            "max_position_embeddings": 4096,
            "rope_scaling": {"rope_type": "default", "mrope_interleaved": True, "mrope_section": mrope_section},
            "bos_token_id": None,
            "eos_token_id": None,
        },
        "vision_config": {
            **base["vision_config"],
            "depth": vision_depth,
            "hidden_size": vision_hidden,
            "intermediate_size": 2 * vision_hidden,
            "num_heads": vision_heads,
            "out_hidden_size": text_hidden,
            "num_position_embeddings": 256,  # 16x16 grid; interpolated for other image sizes
            "deepstack_visual_indexes": deepstack_indexes,
        },
    }


def _head_values(
    *, backbone_dim: int, dit_layers: int, dit_heads: int, dit_head_dim: int, hidden_size: int,
    vl_layers: int, vl_heads: int,
) -> dict[str, Any]:
    return {
        "backbone_embedding_dim": backbone_dim,
        "hidden_size": hidden_size,
        "input_embedding_dim": dit_heads * dit_head_dim,
        "diffusion_model_cfg": {
            "positional_embeddings": None, "num_layers": dit_layers, "num_attention_heads": dit_heads,
            "attention_head_dim": dit_head_dim, "norm_type": "ada_norm", "dropout": 0.2, "final_dropout": True,
            "output_dim": hidden_size, "interleave_self_attention": True,
        },
        "vl_self_attention_cfg": {
            "positional_embeddings": None, "num_layers": vl_layers, "num_attention_heads": vl_heads,
            "attention_head_dim": backbone_dim // vl_heads, "dropout": 0.2, "final_dropout": True,
        },
    }


def tiny_config(
    vocab_size: int = TEST_VOCAB_SIZE,
    image_token_id: int = TEST_TOKEN_IDS["image_token_id"],
    video_token_id: int = TEST_TOKEN_IDS["video_token_id"],
    vision_start_token_id: int = TEST_TOKEN_IDS["vision_start_token_id"],
    vision_end_token_id: int = TEST_TOKEN_IDS["vision_end_token_id"],
    **overrides: Any,
) -> Gr00tN1d7Config:
    """A ~1.7M-parameter model (hidden 64, 2 kept LLM layers, 2 ViT blocks, 4 DiT layers) for unit tests.

    Patch 16 / temporal 2 / merge 2 like the real model; state/action width 132, horizon 40, 32 embodiments.
    """
    token_ids = {
        "image_token_id": image_token_id, "video_token_id": video_token_id,
        "vision_start_token_id": vision_start_token_id, "vision_end_token_id": vision_end_token_id,
    }
    values: dict[str, Any] = {
        "select_layer": 2,
        "backbone_cfg": _backbone_cfg(
            vocab_size=vocab_size, token_ids=token_ids, text_hidden=64, text_layers=3, text_heads=4,
            text_kv_heads=2, head_dim=16, mrope_section=[4, 2, 2], vision_hidden=32, vision_depth=2,
            vision_heads=2, deepstack_indexes=[0],
        ),
        "image_token_id": image_token_id,
        **_head_values(backbone_dim=64, dit_layers=4, dit_heads=4, dit_head_dim=16, hidden_size=32, vl_layers=1, vl_heads=4),
    }
    values.update(overrides)
    return Gr00tN1d7Config(**values)


def small_config(
    vocab_size: int = TEST_VOCAB_SIZE,
    image_token_id: int = TEST_TOKEN_IDS["image_token_id"],
    video_token_id: int = TEST_TOKEN_IDS["video_token_id"],
    vision_start_token_id: int = TEST_TOKEN_IDS["vision_start_token_id"],
    vision_end_token_id: int = TEST_TOKEN_IDS["vision_end_token_id"],
    **overrides: Any,
) -> Gr00tN1d7Config:
    """A ~28M-parameter model (hidden 256, 4 kept LLM layers, 4 ViT blocks, 8 DiT layers) for benchmarks."""
    token_ids = {
        "image_token_id": image_token_id, "video_token_id": video_token_id,
        "vision_start_token_id": vision_start_token_id, "vision_end_token_id": vision_end_token_id,
    }
    values: dict[str, Any] = {
        "select_layer": 4,
        "backbone_cfg": _backbone_cfg(
            vocab_size=vocab_size, token_ids=token_ids, text_hidden=256, text_layers=6, text_heads=4,
            text_kv_heads=2, head_dim=64, mrope_section=[12, 10, 10], vision_hidden=128, vision_depth=4,
            vision_heads=4, deepstack_indexes=[0, 1, 2],
        ),
        "image_token_id": image_token_id,
        **_head_values(backbone_dim=256, dit_layers=8, dit_heads=8, dit_head_dim=32, hidden_size=256, vl_layers=2, vl_heads=4),
    }
    values.update(overrides)
    return Gr00tN1d7Config(**values)


# Name -> factory, for command lines (`make-test-checkpoint --preset tiny`) and benchmarks.
PRESETS = {"tiny": tiny_config, "small": small_config, "released": released_config}
