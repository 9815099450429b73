"""The N1.7 module tree has exactly the released checkpoint's keys and shapes; config.json round-trips."""

import json
from pathlib import Path

import pytest
import torch

from gr00t_server.model import (
    IGNORABLE_KEYS,
    Gr00tN1d7,
    Gr00tN1d7Config,
    released_config,
    tiny_config,
)

SHAPES_FILE = Path(__file__).parent / "data" / "n17_state_dict_shapes.json"
RELEASED_UNIQUE_PARAMS = 3_144_016_000  # model.md §8, tied lm_head not counted


@pytest.fixture(scope="module")
def released_meta_model():
    with torch.device("meta"):
        return Gr00tN1d7(released_config())


def test_released_architecture_has_exactly_the_reference_keys_and_shapes(released_meta_model):
    reference = {k: tuple(v) for k, v in json.loads(SHAPES_FILE.read_text())["keys"].items()}
    ours = {k: tuple(v.shape) for k, v in released_meta_model.state_dict().items()}
    assert sorted(set(ours) - set(reference) - IGNORABLE_KEYS) == []
    assert sorted(set(reference) - set(ours) - IGNORABLE_KEYS) == []
    mismatched = {k: (ours[k], reference[k]) for k in set(ours) & set(reference) if ours[k] != reference[k]}
    assert mismatched == {}


def test_released_architecture_has_the_published_parameter_count(released_meta_model):
    unique = {id(p): p.numel() for p in released_meta_model.parameters()}
    assert sum(unique.values()) == RELEASED_UNIQUE_PARAMS


def test_cross_attention_blocks_are_the_even_dit_blocks(released_meta_model):
    blocks = released_meta_model.action_head.model.transformer_blocks
    assert [block.attn1.to_k.in_features for block in blocks[:4]] == [2048, 1536, 2048, 1536]


def test_missing_config_keys_take_the_reference_code_defaults(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "Gr00tN1d7"}))
    config = Gr00tN1d7Config.from_json_file(tmp_path)
    assert config.select_layer == 12
    assert config.dit_config["num_layers"] == 16
    assert config.vl_self_attention_cfg is None
    assert (config.max_state_dim, config.max_action_dim, config.action_horizon) == (132, 132, 40)
    assert config.image_token_id == 151655


def test_unknown_and_legacy_keys_survive_a_save_and_reload(tmp_path):
    data = released_config().to_dict()
    data.update({"vlm_model_path": "old/path", "tune_llm": False, "transformers_version": "4.57.3"})
    config = Gr00tN1d7Config.from_dict(data)
    assert config.extras["vlm_model_path"] == "old/path"
    config.save(tmp_path)
    reloaded = Gr00tN1d7Config.from_json_file(tmp_path / "config.json")
    assert reloaded == config
    assert reloaded.to_dict()["tune_llm"] is False


def test_a_partial_diffusion_cfg_takes_the_dit_code_defaults_for_missing_keys():
    config = Gr00tN1d7Config(diffusion_model_cfg={"num_layers": 32, "cross_attention_dim": 2048})
    assert config.dit_config["num_layers"] == 32
    assert config.dit_config["attention_head_dim"] == 64  # DiT.__init__ default, not the dataclass default
    assert config.dit_config["positional_embeddings"] == "sinusoidal"
    assert "cross_attention_dim" not in config.dit_config


def test_unsupported_sinusoidal_positional_embeddings_fail_loudly():
    config = tiny_config()
    config.vl_self_attention_cfg = {**config.vl_self_attention_cfg, "positional_embeddings": "sinusoidal"}
    with pytest.raises(NotImplementedError, match="positional_embeddings"):
        Gr00tN1d7(config)


def test_known_backbone_name_uses_the_built_in_cosmos_reason2_architecture():
    backbone = released_config().qwen3_vl_config_dict()
    assert backbone["text_config"]["hidden_size"] == 2048
    assert backbone["text_config"]["num_hidden_layers"] == 16  # truncated to select_layer
    assert backbone["vision_config"]["depth"] == 24
    assert backbone["image_token_id"] == 151655


def test_unknown_backbone_name_without_embedded_config_is_rejected():
    with pytest.raises(ValueError, match="some/other-vlm"):
        Gr00tN1d7Config(model_name="some/other-vlm").qwen3_vl_config_dict()


def test_embedded_backbone_config_wins_and_takes_the_image_token_id():
    config = tiny_config(image_token_id=777)
    backbone = config.qwen3_vl_config_dict()
    assert backbone["text_config"]["hidden_size"] == 64
    assert backbone["image_token_id"] == 777


def test_select_layer_beyond_the_backbone_depth_is_rejected():
    with pytest.raises(ValueError, match="config field 'select_layer' is 40"):
        released_config(select_layer=40).qwen3_vl_config_dict()


def test_an_invalid_numeric_field_is_named():
    with pytest.raises(ValueError, match="num_inference_timesteps"):
        Gr00tN1d7Config(num_inference_timesteps=0)


def test_an_embedded_transformers_qwen3_vl_config_dict_is_accepted():
    from gr00t_server.model.backbone import build_qwen3_vl_config

    embedded = build_qwen3_vl_config(tiny_config()).to_dict()
    model = Gr00tN1d7(tiny_config(backbone_cfg=embedded))
    assert len(model.backbone.language_model.layers) == 2
