"""Qwen3-VL backbone truncated to `select_layer` decoder layers; returns the PRE-final-norm features."""

from __future__ import annotations

import threading
from typing import Any, Optional

import torch
from torch import nn
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from gr00t_server.model.config import Gr00tN1d7Config


# The last kept decoder layer's output, captured by a forward hook, per calling thread: an attribute of the module
# let two threads running one model read each other's features (an action for another observation). Kept outside
# the module, which deep copies (an export's dtype cast) must be able to copy.
_CAPTURED = threading.local()


def build_qwen3_vl_config(config: Gr00tN1d7Config, attn_implementation: str = "sdpa") -> Qwen3VLConfig:
    """Instantiate the transformers `Qwen3VLConfig` for `config`'s (truncated) backbone."""
    values = config.qwen3_vl_config_dict()
    values.pop("model_type", None)
    qwen_config = Qwen3VLConfig(**values)
    qwen_config._attn_implementation = attn_implementation
    qwen_config.text_config._attn_implementation = attn_implementation
    qwen_config.vision_config._attn_implementation = attn_implementation
    return qwen_config


class Qwen3Backbone(nn.Module):
    """Vision-language backbone: `model` is a `Qwen3VLForConditionalGeneration` (keys `backbone.model.*`).

    The feature is the raw output of the last kept decoder layer, captured with a forward hook; the
    final RMSNorm (kept only so checkpoints load strictly) is never applied to it (model.md §2.2).
    """

    def __init__(self, config: Gr00tN1d7Config, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.image_token_id = config.image_token_id
        self.model = Qwen3VLForConditionalGeneration(build_qwen3_vl_config(config, attn_implementation))
        self.language_model.layers[-1].register_forward_hook(self._capture_last_layer_output)

    @property
    def visual(self) -> nn.Module:
        """The Qwen3-VL vision tower (patch embed, blocks, deepstack mergers, merger)."""
        return self.model.model.visual

    @property
    def language_model(self) -> nn.Module:
        """The truncated Qwen3-VL text decoder (embed_tokens, layers, unused final norm)."""
        return self.model.model.language_model

    def _capture_last_layer_output(self, module: nn.Module, args: Any, output: Any) -> None:
        _CAPTURED.output = output[0] if isinstance(output, tuple) else output

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: Optional[torch.Tensor] = None,
        image_grid_thw: Optional[torch.Tensor] = None,
    ) -> dict[str, Any]:
        """The eager glue before the decoder: ViT, token embedding + image scatter, M-RoPE position ids.

        Returns `inputs_embeds [B,S,C]`, `position_ids [3,B,S]`, `visual_pos_masks [B,S]` (or None) and
        `deepstack_visual_embeds` (list of `[N_vis,C]`, or None).
        """
        qwen = self.model.model
        inputs_embeds = qwen.get_input_embeddings()(input_ids)
        visual_pos_masks = None
        deepstack_visual_embeds = None
        if pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("pixel_values were given without image_grid_thw")
            image_embeds, deepstack_visual_embeds = qwen.get_image_features(pixel_values, image_grid_thw)
            image_embeds = torch.cat(image_embeds, dim=0).to(inputs_embeds.device, inputs_embeds.dtype)
            visual_pos_masks = input_ids == self.image_token_id
            n_tokens = int(visual_pos_masks.sum())
            if n_tokens != image_embeds.shape[0]:
                raise ValueError(
                    f"input_ids hold {n_tokens} image tokens (id {self.image_token_id}) but the images give "
                    f"{image_embeds.shape[0]} embeddings (image_grid_thw {image_grid_thw.tolist()})"
                )
            scatter_mask = visual_pos_masks.unsqueeze(-1).expand_as(inputs_embeds)
            inputs_embeds = inputs_embeds.masked_scatter(scatter_mask, image_embeds)
        position_ids, _ = qwen.get_rope_index(input_ids, image_grid_thw, None, attention_mask=attention_mask)
        return {
            "inputs_embeds": inputs_embeds,
            "position_ids": position_ids,
            "visual_pos_masks": visual_pos_masks,
            "deepstack_visual_embeds": deepstack_visual_embeds,
        }

    def run_language_model(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        visual_pos_masks: Optional[torch.Tensor] = None,
        deepstack_visual_embeds: Optional[list[torch.Tensor]] = None,
    ) -> torch.Tensor:
        """The truncated decoder (deepstack added after the first layers); returns the PRE-norm output."""
        _CAPTURED.output = None
        try:
            self.language_model(
                input_ids=None,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                visual_pos_masks=visual_pos_masks,
                deepstack_visual_embeds=deepstack_visual_embeds,
                use_cache=False,
            )
            features: Optional[torch.Tensor] = _CAPTURED.output
        finally:
            _CAPTURED.output = None
        if features is None:
            raise RuntimeError("the last backbone decoder layer did not run; cannot read backbone features")
        return features

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the VLM on tokenised inputs (`input_ids`, `attention_mask`, `pixel_values`, `image_grid_thw`).

        Returns `backbone_features [B,S,C]` (pre-norm), `backbone_attention_mask [B,S]` bool and
        `image_mask [B,S]` bool (positions holding image embeddings).
        """
        input_ids = inputs["input_ids"]
        attention_mask = inputs["attention_mask"]
        pixel_values = inputs.get("pixel_values")
        embedded = self.embed_inputs(
            input_ids, attention_mask, pixel_values, inputs.get("image_grid_thw") if pixel_values is not None else None
        )
        features = self.run_language_model(attention_mask=attention_mask, **embedded)
        return {
            "backbone_features": features,
            "backbone_attention_mask": attention_mask == 1,
            "image_mask": input_ids == self.image_token_id,
        }
