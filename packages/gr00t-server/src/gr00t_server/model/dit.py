"""Diffusion transformer of the action head (AlternateVLDiT) and the VL self-attention transformer."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from gr00t_server.model.transformer_layers import AdaLayerNorm, Attention, FeedForward

TIMESTEP_PROJECTION_DIM = 256


def dit_timestep_projection(timesteps: torch.Tensor, dim: int = TIMESTEP_PROJECTION_DIM) -> torch.Tensor:
    """diffusers `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=1)`: `[cos, sin]`, divisor half-1."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / (half - 1)
    angles = timesteps.to(torch.float32)[:, None] * exponent.exp()[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedding(nn.Module):
    """`linear_2(silu(linear_1(x)))`."""

    def __init__(self, in_channels: int, embedding_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, embedding_dim)
        self.linear_2 = nn.Linear(embedding_dim, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed the sinusoidal projection."""
        return self.linear_2(F.silu(self.linear_1(x)))


class TimestepEncoder(nn.Module):
    """Integer timestep `[B]` -> conditioning vector `temb [B, D]`."""

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_PROJECTION_DIM, embedding_dim)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Project in float32, cast to the parameter dtype, embed."""
        projection = dit_timestep_projection(timesteps).to(self.timestep_embedder.linear_1.weight.dtype)
        return self.timestep_embedder(projection)


class DiTBlock(nn.Module):
    """AdaLN block: `x += attn1(norm1(x, temb), context)`; `x += ff(norm3(x))` (no modulation on FF)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, cross_attention_dim: Optional[int], cfg: dict[str, Any]) -> None:
        super().__init__()
        self.norm1 = AdaLayerNorm(dim)  # upstream never forwards the norm kwargs to the AdaLN
        self.attn1 = Attention(
            dim, num_heads, head_dim, cross_attention_dim=cross_attention_dim,
            bias=cfg["attention_bias"], dropout=cfg["dropout"],
        )
        self.norm3 = nn.LayerNorm(dim, eps=cfg["norm_eps"], elementwise_affine=cfg["norm_elementwise_affine"])
        self.ff = FeedForward(dim, dropout=cfg["dropout"], activation_fn=cfg["activation_fn"], final_dropout=cfg["final_dropout"])

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Self-attention when `encoder_hidden_states` is None, else masked cross-attention."""
        attn_input = self.norm1(hidden_states, temb)
        hidden_states = hidden_states + self.attn1(attn_input, encoder_hidden_states, encoder_attention_mask)
        return hidden_states + self.ff(self.norm3(hidden_states))


class AlternateVLDiT(nn.Module):
    """DiT over `[state, action]` tokens; even blocks cross-attend to VL tokens, odd blocks self-attend.

    With `use_alternate_vl_dit`, cross blocks alternate between non-image (idx % 2n == 0) and image
    tokens; otherwise they attend to all VL tokens (plain upstream `DiT`), here with padding masked out: upstream
    attends to it too, so a padded row's action would depend on the other rows of its batch (model.md §2.5).
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        cross_attention_dim: int,
        use_alternate_vl_dit: bool = True,
        attend_text_every_n_blocks: int = 2,
    ) -> None:
        super().__init__()
        if cfg.get("norm_type", "ada_norm") != "ada_norm":
            raise ValueError(f"diffusion_model_cfg.norm_type must be 'ada_norm', got {cfg['norm_type']!r}")
        if cfg.get("positional_embeddings") is not None:
            raise NotImplementedError(
                f"diffusion_model_cfg.positional_embeddings={cfg['positional_embeddings']!r} is not supported"
            )
        num_heads, head_dim = int(cfg["num_attention_heads"]), int(cfg["attention_head_dim"])
        self.inner_dim = num_heads * head_dim
        self.interleave_self_attention = bool(cfg["interleave_self_attention"])
        if use_alternate_vl_dit and not self.interleave_self_attention:
            raise ValueError("use_alternate_vl_dit requires diffusion_model_cfg.interleave_self_attention=true")
        self.use_alternate_vl_dit = use_alternate_vl_dit
        self.attend_text_every_n_blocks = attend_text_every_n_blocks
        self.timestep_encoder = TimestepEncoder(self.inner_dim)
        self.transformer_blocks = nn.ModuleList(
            DiTBlock(
                self.inner_dim, num_heads, head_dim,
                cross_attention_dim if self.is_cross_attention_block(idx) else None, cfg,
            )
            for idx in range(int(cfg["num_layers"]))
        )
        self.norm_out = nn.LayerNorm(self.inner_dim, eps=1e-6, elementwise_affine=False)
        self.proj_out_1 = nn.Linear(self.inner_dim, 2 * self.inner_dim)
        self.proj_out_2 = nn.Linear(self.inner_dim, int(cfg["output_dim"]))

    def is_cross_attention_block(self, idx: int) -> bool:
        """Even blocks cross-attend when self-attention is interleaved; all do otherwise."""
        return idx % 2 == 0 or not self.interleave_self_attention

    def _cross_attention_mask(
        self, idx: int, image_mask: Optional[torch.Tensor], backbone_attention_mask: Optional[torch.Tensor]
    ) -> Optional[torch.Tensor]:
        if not self.use_alternate_vl_dit:
            return backbone_attention_mask  # None when not given: every token (identical when none is padding)
        if image_mask is None or backbone_attention_mask is None:
            raise ValueError("AlternateVLDiT needs image_mask and backbone_attention_mask")
        if idx % (2 * self.attend_text_every_n_blocks) == 0:
            return ~image_mask & backbone_attention_mask
        return image_mask & backbone_attention_mask

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        image_mask: Optional[torch.Tensor] = None,
        backbone_attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """sa_embs `[B,T,D]`, vl_embs `[B,S,C]`, timestep `[B]` int, masks `[B,S]` bool -> `[B,T,output_dim]`."""
        temb = self.timestep_encoder(timestep)
        if image_mask is not None:
            image_mask = image_mask.to(torch.bool)
        if backbone_attention_mask is not None:
            backbone_attention_mask = backbone_attention_mask.to(torch.bool)
        masks: dict[bool, Optional[torch.Tensor]] = {}  # two distinct cross masks: built once, not per block
        for idx, block in enumerate(self.transformer_blocks):
            if self.is_cross_attention_block(idx):
                text_block = idx % (2 * self.attend_text_every_n_blocks) == 0
                if text_block not in masks:
                    masks[text_block] = self._cross_attention_mask(idx, image_mask, backbone_attention_mask)
                hidden_states = block(hidden_states, temb, encoder_hidden_states, masks[text_block])
            else:
                hidden_states = block(hidden_states, temb)
        shift, scale = self.proj_out_1(F.silu(temb)).chunk(2, dim=1)  # (shift, scale) here, unlike blocks
        hidden_states = self.norm_out(hidden_states) * (1 + scale[:, None]) + shift[:, None]
        return self.proj_out_2(hidden_states)


class SelfAttentionBlock(nn.Module):
    """Pre-LN transformer block with affine LayerNorms: `x += attn1(norm1(x))`; `x += ff(norm3(x))`."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, num_heads, head_dim, bias=cfg["attention_bias"], dropout=cfg["dropout"])
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim, dropout=cfg["dropout"], activation_fn=cfg["activation_fn"], final_dropout=cfg["final_dropout"])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Unmasked self-attention then feed-forward."""
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states))
        return hidden_states + self.ff(self.norm3(hidden_states))


class SelfAttentionTransformer(nn.Module):
    """Stack of unmasked self-attention blocks applied to the VL features (`vl_self_attention`)."""

    def __init__(self, cfg: dict[str, Any], dim: int) -> None:
        super().__init__()
        if cfg.get("positional_embeddings") is not None:
            raise NotImplementedError(
                f"vl_self_attention_cfg.positional_embeddings={cfg['positional_embeddings']!r} is not supported"
            )
        num_heads, head_dim = int(cfg["num_attention_heads"]), int(cfg["attention_head_dim"])
        if num_heads * head_dim != dim:
            raise ValueError(
                f"vl_self_attention_cfg heads*head_dim = {num_heads}*{head_dim} must equal backbone_embedding_dim {dim}"
            )
        self.transformer_blocks = nn.ModuleList(
            SelfAttentionBlock(dim, num_heads, head_dim, cfg) for _ in range(int(cfg["num_layers"]))
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`[B,S,C]` -> `[B,S,C]`."""
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states)
        return hidden_states
