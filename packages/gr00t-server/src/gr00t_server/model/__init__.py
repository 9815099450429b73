"""GR00T N1.7 network: config, modules, checkpoint IO and test-size presets."""

from gr00t_server.model.action_head import Gr00tN1d7ActionHead
from gr00t_server.model.backbone import Qwen3Backbone
from gr00t_server.model.backbone_config import COSMOS_REASON2_2B_CONFIG, KNOWN_BACKBONE_NAMES
from gr00t_server.model.checkpoint import (
    IGNORABLE_KEYS,
    CheckpointError,
    CheckpointKeyError,
    load_model,
    resolve_checkpoint_dir,
    save_model,
)
from gr00t_server.model.config import Gr00tN1d7Config
from gr00t_server.model.dit import AlternateVLDiT, SelfAttentionTransformer
from gr00t_server.model.embodiment_mlp import CategorySpecificLinear, CategorySpecificMLP, MultiEmbodimentActionEncoder
from gr00t_server.model.modeling import Gr00tN1d7, resolve_dtype
from gr00t_server.model.presets import PRESETS, TEST_TOKEN_IDS, TEST_VOCAB_SIZE, released_config, small_config, tiny_config

__all__ = [
    "AlternateVLDiT",
    "COSMOS_REASON2_2B_CONFIG",
    "CategorySpecificLinear",
    "CategorySpecificMLP",
    "CheckpointError",
    "CheckpointKeyError",
    "Gr00tN1d7",
    "Gr00tN1d7ActionHead",
    "Gr00tN1d7Config",
    "IGNORABLE_KEYS",
    "KNOWN_BACKBONE_NAMES",
    "MultiEmbodimentActionEncoder",
    "PRESETS",
    "Qwen3Backbone",
    "SelfAttentionTransformer",
    "TEST_TOKEN_IDS",
    "TEST_VOCAB_SIZE",
    "load_model",
    "released_config",
    "resolve_checkpoint_dir",
    "resolve_dtype",
    "save_model",
    "small_config",
    "tiny_config",
]
