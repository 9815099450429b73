"""`Gr00tN1d7Config`: every field of a GR00T N1.7 `config.json`, with the reference code defaults."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from gr00t_server.checkpoint_json import read_checkpoint_json
from gr00t_server.model.backbone_config import BACKBONE_FAMILIES, is_backbone_family, resolve_qwen3_vl_config

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"

# Keyword defaults of upstream `DiT.__init__`: a config.json `diffusion_model_cfg` replaces the whole
# dataclass default, so keys it leaves out take these values (as `DiT(**cfg)` does upstream).
DIT_CODE_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 8,
    "attention_head_dim": 64,
    "output_dim": 26,
    "num_layers": 12,
    "dropout": 0.1,
    "attention_bias": True,
    "activation_fn": "gelu-approximate",
    "norm_type": "ada_norm",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-5,
    "final_dropout": True,
    "positional_embeddings": "sinusoidal",
    "interleave_self_attention": False,
}

# Keyword defaults of upstream `SelfAttentionTransformer.__init__`, same reasoning.
VL_SELF_ATTENTION_CODE_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 8,
    "attention_head_dim": 64,
    "num_layers": 12,
    "dropout": 0.1,
    "attention_bias": True,
    "activation_fn": "gelu-approximate",
    "final_dropout": True,
    "positional_embeddings": "sinusoidal",
}


# `DiT.__init__` / `SelfAttentionTransformer.__init__` take exactly these keywords upstream (`DiT(**cfg)` raises on
# any other), so a key outside them is a typo whose value would otherwise be dropped for the default.
# Keys starting with "_" are diffusers config metadata, ignored upstream and here.
DIT_CONFIG_KEYS = frozenset({
    "num_attention_heads", "attention_head_dim", "output_dim", "num_layers", "dropout", "attention_bias",
    "activation_fn", "num_embeds_ada_norm", "upcast_attention", "norm_type", "norm_elementwise_affine", "norm_eps",
    "max_num_positional_embeddings", "compute_dtype", "final_dropout", "positional_embeddings",
    "interleave_self_attention", "cross_attention_dim",
})
VL_SELF_ATTENTION_CONFIG_KEYS = frozenset({
    "num_attention_heads", "attention_head_dim", "output_dim", "num_layers", "dropout", "attention_bias",
    "activation_fn", "num_embeds_ada_norm", "upcast_attention", "max_num_positional_embeddings", "compute_dtype",
    "final_dropout", "positional_embeddings", "interleave_self_attention",
})
# activation_fn values the DiT and VL self-attention feed-forwards build (transformer_layers.FeedForward).
ACTIVATION_FUNCTIONS = ("gelu", "gelu-approximate")
_SUB_CONFIG_SIZES = ("num_attention_heads", "attention_head_dim", "output_dim", "num_layers")
_SUB_CONFIG_FLAGS = ("attention_bias", "final_dropout", "interleave_self_attention", "norm_elementwise_affine",
                     "upcast_attention")

# model_type values of GR00T N1.7 configs: the registered name and the old internal class name (model.md §1.3).
MODEL_TYPES = ("Gr00tN1d7", "GrootN1d7")
# Legacy and Hugging Face bookkeeping keys a real config.json may carry; never taken for typos.
_TOLERATED_EXTRA_KEYS = frozenset({"vlm_model_path", "vlm_backend", "dit_latent_dim", "transformers_version",
                                   "torch_dtype", "dtype"})


def _check_sub_config(name: str, cfg: dict[str, Any], valid_keys: frozenset[str]) -> None:
    """Refuse keys `DiT`/`SelfAttentionTransformer` do not take, and sizes, flags or rates of the wrong kind."""
    unknown = sorted(k for k in cfg if k not in valid_keys and not str(k).startswith("_"))
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), sorted(valid_keys), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"config field '{name}' has unknown key {unknown[0]!r}{hint}; expected keys of "
                         f"{sorted(valid_keys)}")
    for key in _SUB_CONFIG_SIZES:
        value = cfg.get(key)
        if key in cfg and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"config field '{name}.{key}' is {json.dumps(value)}; expected an int >= 1")
    for key in _SUB_CONFIG_FLAGS:
        if key in cfg and not isinstance(cfg[key], bool):
            raise ValueError(f"config field '{name}.{key}' is {json.dumps(cfg[key])}; expected true or false")
    if "activation_fn" in cfg and cfg["activation_fn"] not in ACTIVATION_FUNCTIONS:
        raise ValueError(f"config field '{name}.activation_fn' is {json.dumps(cfg['activation_fn'])}; expected one of "
                         f"{list(ACTIVATION_FUNCTIONS)}")
    value = cfg.get("dropout")
    if "dropout" in cfg and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
        raise ValueError(f"config field '{name}.dropout' is {json.dumps(value)}; expected a number in [0, 1]")
    value = cfg.get("norm_eps")
    if "norm_eps" in cfg and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1):
        raise ValueError(f"config field '{name}.norm_eps' is {json.dumps(value)}; expected a number in (0, 1)")


def _check_top_level_typos(data: dict[str, Any], extras: dict[str, Any]) -> None:
    """An extra key that is a near miss of an upstream field the file lacks is a typo, not a harmless extra: the
    field would silently take its code default (released configs write every field)."""
    upstream = {f.name for f in dataclasses.fields(Gr00tN1d7Config)} - {"extras", "image_token_id", "backbone_cfg"}
    absent = sorted(upstream - set(data))
    for key in sorted(extras):
        if key in _TOLERATED_EXTRA_KEYS or key.startswith("_"):
            continue
        close = difflib.get_close_matches(key, absent, n=1, cutoff=0.85)
        if close:
            raise ValueError(f"config has unknown key {key!r} (did you mean {close[0]!r}?); {close[0]!r} would "
                             f"silently take its default {json.dumps(getattr(Gr00tN1d7Config(), close[0]))}")


# Sizes in backbone_cfg's text/vision configs that must be positive ints (a string "64" fails deep inside torch).
_BACKBONE_INT_FIELDS = frozenset({
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "vocab_size", "depth", "num_heads", "patch_size", "temporal_patch_size", "spatial_merge_size", "out_hidden_size",
    "in_channels", "num_position_embeddings", "max_position_embeddings",
})
# Floats of backbone_cfg's text config (a string "5e6" fails deep inside torch, at warm-up or later).
_BACKBONE_POSITIVE_FLOAT_FIELDS = ("rope_theta", "rms_norm_eps")


def _check_backbone_cfg(backbone_cfg: Optional[dict[str, Any]]) -> None:
    """Refuse backbone_cfg sizes, floats, activation names and ViT block indexes that would fail at warm-up, or
    (an out-of-range deepstack index matches no ViT block) silently drop features while the weights still load."""
    for section in ("text_config", "vision_config"):
        sub = (backbone_cfg or {}).get(section)
        sub = sub if isinstance(sub, dict) else {}
        for key, value in sub.items():
            if key in _BACKBONE_INT_FIELDS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"config field 'backbone_cfg.{section}.{key}' must be an int >= 1, got {value!r}")
        for key in _BACKBONE_POSITIVE_FLOAT_FIELDS if section == "text_config" else ():
            value = sub.get(key)
            if key in sub and (isinstance(value, bool) or not isinstance(value, (int, float))
                               or not math.isfinite(value) or value <= 0):
                raise ValueError(f"config field 'backbone_cfg.{section}.{key}' must be a finite number > 0, "
                                 f"got {value!r}")
        if "hidden_act" in sub:
            from transformers.activations import ACT2FN  # torch is loaded by then: the config is read to build

            names = sorted(ACT2FN.keys())
            value = sub["hidden_act"]
            if not isinstance(value, str) or value not in names:
                close = difflib.get_close_matches(str(value), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"config field 'backbone_cfg.{section}.hidden_act' is {json.dumps(value)}{hint}; "
                                 f"expected an activation of transformers' ACT2FN: {names}")
        if section == "vision_config" and "deepstack_visual_indexes" in sub:
            _check_deepstack_indexes(sub)
        if sub:
            _check_backbone_typos(section, sub)
    if isinstance((backbone_cfg or {}).get("text_config"), dict):
        _check_text_heads(backbone_cfg["text_config"])
    if isinstance((backbone_cfg or {}).get("vision_config"), dict):
        _check_vision_heads(backbone_cfg["vision_config"])


def _check_backbone_typos(section: str, sub: dict[str, Any]) -> None:
    """A key of text_config/vision_config that is a near miss of a Qwen3-VL config field the section lacks is a typo
    (as at the top level): transformers keeps it as an attribute nobody reads, and the field takes its code default."""
    import inspect

    from transformers import PretrainedConfig
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig, Qwen3VLVisionConfig

    def parameters(cls: type) -> dict[str, Any]:  # the config's fields and defaults, off its __init__, unbuilt
        return {name: parameter.default for name, parameter in inspect.signature(cls.__init__).parameters.items()
                if name != "self" and parameter.kind is not parameter.VAR_KEYWORD}

    fields = parameters(Qwen3VLTextConfig if section == "text_config" else Qwen3VLVisionConfig)
    tolerated = {*fields, *parameters(PretrainedConfig), *_TOLERATED_EXTRA_KEYS, "model_type"}
    absent = sorted(set(fields) - set(sub))
    for key in sorted(str(k) for k in sub):
        if key in tolerated or key.startswith("_"):
            continue
        close = difflib.get_close_matches(key, absent, n=1, cutoff=0.85)
        if close:
            raise ValueError(f"config field 'backbone_cfg.{section}' has unknown key {key!r} (did you mean "
                             f"{close[0]!r}?); {close[0]!r} would silently take the Qwen3-VL default "
                             f"{json.dumps(fields[close[0]])}")


def _check_text_heads(text: dict[str, Any]) -> None:
    """Attention heads that group evenly onto the KV heads, and a rope_scaling whose M-RoPE sections split the
    head_dim/2 rotary frequencies (transformers reads rope_scaling as a dict and fails inside on anything else)."""
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig

    defaults = Qwen3VLTextConfig()
    heads = text.get("num_attention_heads", defaults.num_attention_heads)
    kv_heads = text.get("num_key_value_heads", defaults.num_key_value_heads) or heads  # null: as many as heads
    if heads % kv_heads:
        raise ValueError(f"config field 'backbone_cfg.text_config.num_attention_heads' is {heads}; expected a "
                         f"multiple of num_key_value_heads ({kv_heads})")
    rope_scaling = text.get("rope_scaling")
    if not isinstance(rope_scaling, dict):  # null or absent too: transformers' M-RoPE reads it as a dict
        given = json.dumps(rope_scaling) if "rope_scaling" in text else "absent"
        raise ValueError(f"config field 'backbone_cfg.text_config.rope_scaling' is {given}; expected an object "
                         "such as {\"rope_type\": \"default\", \"mrope_interleaved\": true, \"mrope_section\": "
                         "[24, 20, 20]} (Qwen3-VL's M-RoPE needs one)")
    if "mrope_section" in rope_scaling:
        _check_mrope_section(rope_scaling["mrope_section"], text.get("head_dim", defaults.head_dim))


def _check_mrope_section(section: Any, head_dim: int) -> None:
    """The temporal/height/width frequency counts of M-RoPE: three ints that sum to head_dim/2."""
    name = "backbone_cfg.text_config.rope_scaling.mrope_section"
    whole = isinstance(section, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in section)
    if not whole or len(section) != 3 or sum(section) * 2 != head_dim:
        raise ValueError(f"config field '{name}' is {json.dumps(section)}; expected three ints >= 0 that sum to "
                         f"head_dim/2 = {head_dim / 2:g} (text_config.head_dim is {head_dim})")


def _check_vision_heads(vision: dict[str, Any]) -> None:
    """ViT heads that split hidden_size evenly (torch's reshape of the fused qkv fails on every request otherwise)."""
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig

    defaults = Qwen3VLVisionConfig()
    hidden_size = vision.get("hidden_size", defaults.hidden_size)
    heads = vision.get("num_heads", defaults.num_heads)
    if hidden_size % heads:
        raise ValueError(f"config field 'backbone_cfg.vision_config.num_heads' is {heads}; expected a divisor of "
                         f"vision_config.hidden_size ({hidden_size})")


def _check_deepstack_indexes(vision: dict[str, Any]) -> None:
    """Each deepstack index must name one ViT block, once: transformers takes a feature only from a block whose
    index is in the list, so an index outside [0, depth-1] (or twice) silently drops a merger's feature."""
    name = "backbone_cfg.vision_config.deepstack_visual_indexes"
    indexes = vision["deepstack_visual_indexes"]
    if not isinstance(indexes, list):
        raise ValueError(f"config field '{name}' is {json.dumps(indexes)}; expected a list of ViT block indexes")
    if "depth" in vision:
        depth, source = vision["depth"], "vision_config.depth"
    else:
        from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig

        depth, source = Qwen3VLVisionConfig().depth, "the Qwen3-VL default depth"
    for index in indexes:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < depth:
            raise ValueError(f"config field '{name}' holds {json.dumps(index)}; expected ViT block indexes in "
                             f"[0, {depth - 1}] ({source} is {depth})")
    if len(set(indexes)) != len(indexes):
        raise ValueError(f"config field '{name}' is {json.dumps(indexes)}; expected each ViT block index once")


@dataclass
class Gr00tN1d7Config:
    """Configuration of a GR00T N1.7 model as read from `config.json`.

    Unknown and legacy keys are kept in `extras` and written back by `to_dict`.
    """

    model_type: str = "Gr00tN1d7"
    architectures: list[str] = field(default_factory=lambda: ["Gr00tN1d7"])
    model_dtype: str = "bfloat16"
    model_name: str = "nvidia/Cosmos-Reason2-2B"
    backbone_model_type: str = "qwen"
    model_revision: Optional[str] = None
    backbone_embedding_dim: int = 2048
    select_layer: int = 12
    reproject_vision: bool = False
    use_flash_attention: bool = True
    image_crop_size: Optional[list[int]] = field(default_factory=lambda: [230, 230])
    image_target_size: Optional[list[int]] = field(default_factory=lambda: [256, 256])
    shortest_image_edge: Optional[int] = None
    crop_fraction: Optional[float] = None
    formalize_language: bool = True
    apply_sincos_state_encoding: bool = False
    use_percentiles: bool = True
    use_relative_action: bool = False
    max_state_dim: int = 132
    max_action_dim: int = 132
    action_horizon: int = 40
    strict_action_padding_mask: bool = False
    hidden_size: int = 1024
    input_embedding_dim: int = 1536
    state_history_length: int = 1
    add_pos_embed: bool = True
    attn_dropout: float = 0.2
    use_vlln: bool = True
    max_seq_len: int = 1024
    use_alternate_vl_dit: bool = True
    attend_text_every_n_blocks: int = 2
    diffusion_model_cfg: dict[str, Any] = field(
        default_factory=lambda: {
            "positional_embeddings": None, "num_layers": 16, "num_attention_heads": 32, "attention_head_dim": 48,
            "norm_type": "ada_norm", "dropout": 0.2, "final_dropout": True, "output_dim": 1024,
            "interleave_self_attention": True,
        }
    )
    # Not an upstream dataclass field; present in released config.json files. None -> Identity.
    vl_self_attention_cfg: Optional[dict[str, Any]] = None
    num_inference_timesteps: int = 4
    noise_beta_alpha: float = 1.5
    noise_beta_beta: float = 1.0
    noise_s: float = 0.999
    num_timestep_buckets: int = 1000
    state_dropout_prob: float = 0.8
    exclude_state: bool = False
    use_mean_std: bool = False
    max_num_embodiments: int = 32
    # Our additions: the id whose positions hold image embeddings, and an embedded Qwen3-VL config
    # (`Qwen3VLConfig.to_dict()` layout) used instead of the built-in copy for `model_name`.
    image_token_id: int = 151655
    backbone_cfg: Optional[dict[str, Any]] = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"config field 'model_type' is {json.dumps(self.model_type)}; expected \"Gr00tN1d7\" "
                             "(this is not a GR00T N1.7 config)")
        if not is_backbone_family(self.model_name):
            raise ValueError(f"config field 'model_name' is {json.dumps(self.model_name)}; expected a backbone id "
                             f"containing one of {list(BACKBONE_FAMILIES)}, e.g. \"nvidia/Cosmos-Reason2-2B\"")
        for name in (
            "select_layer", "max_state_dim", "max_action_dim", "action_horizon", "hidden_size",
            "input_embedding_dim", "backbone_embedding_dim", "state_history_length", "num_inference_timesteps",
            "num_timestep_buckets", "max_num_embodiments", "max_seq_len", "attend_text_every_n_blocks",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config field {name!r} must be a positive integer, got {value!r}")
        # Flags that choose the architecture: a string "false" is truthy and would build the other variant.
        for name in ("add_pos_embed", "use_vlln", "use_alternate_vl_dit", "strict_action_padding_mask"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"config field {name!r} is {json.dumps(value)}; expected true or false")
        for name in ("diffusion_model_cfg", "vl_self_attention_cfg", "backbone_cfg"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"config field {name!r} must be a dict or null, got {type(value).__name__}")
        _check_sub_config("diffusion_model_cfg", self.diffusion_model_cfg, DIT_CONFIG_KEYS)
        if self.vl_self_attention_cfg:
            checked = dict(self.vl_self_attention_cfg)
            layers = checked.get("num_layers")
            if layers == 0 and not isinstance(layers, bool):  # no block (an Identity), as upstream reads it
                del checked["num_layers"]
            _check_sub_config("vl_self_attention_cfg", checked, VL_SELF_ATTENTION_CONFIG_KEYS)
        if isinstance(self.image_token_id, bool) or not isinstance(self.image_token_id, int) or self.image_token_id < 0:
            raise ValueError(f"config field 'image_token_id' must be an int >= 0, got {self.image_token_id!r}")
        # Each denoising step is a full DiT pass; more steps than timestep buckets cannot differ, and a huge count
        # would hang start-up in warm-up.
        if self.num_inference_timesteps > self.num_timestep_buckets:
            raise ValueError(f"config field 'num_inference_timesteps' is {self.num_inference_timesteps}; expected at most "
                             f"num_timestep_buckets ({self.num_timestep_buckets})")
        _check_backbone_cfg(self.backbone_cfg)

    # ----- construction / serialisation -----

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Gr00tN1d7Config":
        """Build a config from a `config.json` dict; unknown keys go to `extras`."""
        if not isinstance(data, dict):
            raise ValueError(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extras"}
        kwargs = {k: copy.deepcopy(v) for k, v in data.items() if k in known}
        extras = {k: copy.deepcopy(v) for k, v in data.items() if k not in known and k != "extras"}
        if kwargs.get("diffusion_model_cfg") is None:
            kwargs.pop("diffusion_model_cfg", None)
        _check_top_level_typos(data, extras)
        if extras:
            logger.debug("config.json keys kept as extras: %s", sorted(extras))
        config = cls(**kwargs, extras=extras)
        config._check_backbone(select_layer_given="select_layer" in data)
        config._check_action_head(given=frozenset(data))
        return config

    def _check_action_head(self, given: frozenset) -> None:
        """The sizes the action head must agree on, checked here so that the error names config.json and the fields
        (and which values the file left to a default), not a bare product raised while building the network."""
        def field(name: str) -> str:
            value = getattr(self, name)
            return f"{name} {value}" + ("" if name in given else " (absent, the code default)")

        def heads(section: str, cfg: Optional[dict[str, Any]], defaults: dict[str, Any], other: str) -> str:
            names = ("num_attention_heads", "attention_head_dim")
            values = [int((cfg or {}).get(name, defaults.get(name))) for name in names]
            absent = [name for name in names if name not in (cfg or {})]
            one = len(absent) == 1
            note = (f" ({' and '.join(absent)} {'is' if one else 'are'} absent from {section}, so the upstream code "
                    f"default{'' if one else 's'} {' and '.join(str(defaults[name]) for name in absent)} "
                    f"appl{'ies' if one else 'y'}; set {'it' if one else 'them'})") if absent else ""
            return (f"config field '{section}': num_attention_heads * attention_head_dim = {values[0]} * {values[1]} = "
                    f"{values[0] * values[1]} must equal {field(other)}{note}")

        dit = self.dit_config
        if int(dit["num_attention_heads"]) * int(dit["attention_head_dim"]) != self.input_embedding_dim:
            raise ValueError(heads("diffusion_model_cfg", self.diffusion_model_cfg, DIT_CODE_DEFAULTS,
                                   "input_embedding_dim"))
        if int(dit["output_dim"]) != self.hidden_size:
            default = "" if "output_dim" in (self.diffusion_model_cfg or {}) else " (absent, the upstream code default)"
            raise ValueError(f"config field 'diffusion_model_cfg.output_dim' is {dit['output_dim']}{default}; expected "
                             f"{field('hidden_size')}")
        if self.add_pos_embed and self.action_horizon > self.max_seq_len:
            raise ValueError(f"config field 'action_horizon': {field('action_horizon')} exceeds "
                             f"{field('max_seq_len')}, the position embeddings of the action steps (add_pos_embed "
                             "is true)")
        vl = self.vl_self_attention_config
        if vl and int(vl["num_attention_heads"]) * int(vl["attention_head_dim"]) != self.backbone_embedding_dim:
            raise ValueError(heads("vl_self_attention_cfg", self.vl_self_attention_cfg, VL_SELF_ATTENTION_CODE_DEFAULTS,
                                   "backbone_embedding_dim"))

    def _check_backbone(self, select_layer_given: bool) -> None:
        """Resolve the backbone config now, so that an error is raised where from_json_file names the file."""
        try:
            self.qwen3_vl_config_dict()
        except ValueError as exc:
            defaulted = not select_layer_given and "select_layer" in str(exc)
            note = (f" (the config has no select_layer, so the code default {self.select_layer} applies, as in the "
                    "reference; set select_layer)") if defaulted else ""
            raise ValueError(f"{exc}{note}") from None

    @classmethod
    def from_json_file(cls, path: Union[str, Path]) -> "Gr00tN1d7Config":
        """Read `config.json` (or a directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"GR00T config file not found: {path}")
        data = read_checkpoint_json(path)
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as exc:  # TypeError: an unexpected field type reaching the dataclass
            raise ValueError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """All fields plus extras, in the flat `config.json` layout."""
        out = copy.deepcopy(self.extras)
        for f in dataclasses.fields(self):
            if f.name != "extras":
                out[f.name] = copy.deepcopy(getattr(self, f.name))
        return out

    def to_json_string(self) -> str:
        """`to_dict` as indented, key-sorted JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, directory: Union[str, Path]) -> Path:
        """Write `config.json` into `directory` (created if needed) and return its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        path.write_text(self.to_json_string())
        return path

    # ----- resolved sub-configs -----

    @property
    def dit_config(self) -> dict[str, Any]:
        """`diffusion_model_cfg` merged over the DiT code defaults."""
        merged = dict(DIT_CODE_DEFAULTS)
        merged.update(self.diffusion_model_cfg or {})
        merged.pop("cross_attention_dim", None)  # passed separately as backbone_embedding_dim
        return merged

    @property
    def vl_self_attention_config(self) -> Optional[dict[str, Any]]:
        """`vl_self_attention_cfg` merged over its code defaults, or None when the block is an Identity: as upstream,
        when the config is absent or its num_layers is 0 or absent (a defaulted 12-layer block was built, and the
        checkpoint's missing weights refused, where the reference loads the checkpoint with an Identity)."""
        cfg = self.vl_self_attention_cfg
        if not cfg or cfg.get("num_layers", 0) == 0:  # a non-number was refused in __post_init__'s check
            return None
        merged = dict(VL_SELF_ATTENTION_CODE_DEFAULTS)
        merged.update(self.vl_self_attention_cfg)
        return merged

    def qwen3_vl_config_dict(self) -> dict[str, Any]:
        """The Qwen3-VL backbone config (embedded or built-in), truncated to `select_layer` layers."""
        return resolve_qwen3_vl_config(
            model_name=self.model_name,
            backbone_cfg=self.backbone_cfg,
            select_layer=self.select_layer,
            image_token_id=self.image_token_id,
            backbone_embedding_dim=self.backbone_embedding_dim,
        )
