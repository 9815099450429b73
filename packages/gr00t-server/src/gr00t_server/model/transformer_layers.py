"""Attention, feed-forward and normalisation layers shared by the DiT and the VL self-attention.

Attribute names follow diffusers (`to_q`, `to_out.0`, `ff.net.0.proj`, `ff.net.2`) because those are
the checkpoint keys; the math is that of diffusers' `Attention`/`FeedForward` used by upstream GR00T.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

_GELU_APPROXIMATION = {"gelu": "none", "gelu-approximate": "tanh"}


class Attention(nn.Module):
    """Multi-head (cross-)attention with biased q/k/v/out projections and SDPA (scale 1/sqrt(head_dim))."""

    def __init__(
        self,
        query_dim: int,
        num_heads: int,
        head_dim: int,
        cross_attention_dim: Optional[int] = None,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner_dim = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.is_cross_attention = cross_attention_dim is not None
        kv_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(kv_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(kv_dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim, bias=True), nn.Dropout(dropout)])

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """hidden `[B,T,D]`, context `[B,S,C]` (self-attention when None), mask `[B,S]` bool (True = attend)."""
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = self._split_heads(self.to_q(hidden_states))
        key = self._split_heads(self.to_k(context))
        value = self._split_heads(self.to_v(context))
        mask = None
        if attention_mask is not None:
            mask = attention_mask.to(torch.bool)[:, None, None, :]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=1.0 / math.sqrt(self.head_dim))
        out = out.transpose(1, 2).reshape(hidden_states.shape[0], hidden_states.shape[1], -1).to(query.dtype)
        return self.to_out[1](self.to_out[0](out))


class GELUProjection(nn.Module):
    """`gelu(proj(x))`; tanh-approximate for activation_fn "gelu-approximate"."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "tanh") -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project then apply GELU."""
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    """`net.2(dropout(gelu(net.0.proj(x))))` with inner width `mult * dim`."""

    def __init__(
        self,
        dim: int,
        mult: int = 4,
        dropout: float = 0.0,
        activation_fn: str = "gelu-approximate",
        final_dropout: bool = False,
    ) -> None:
        super().__init__()
        if activation_fn not in _GELU_APPROXIMATION:
            raise ValueError(f"unsupported activation_fn {activation_fn!r}; expected one of {list(_GELU_APPROXIMATION)}")
        inner_dim = dim * mult
        layers: list[nn.Module] = [
            GELUProjection(dim, inner_dim, approximate=_GELU_APPROXIMATION[activation_fn]),
            nn.Dropout(dropout),
            nn.Linear(inner_dim, dim),
        ]
        if final_dropout:
            layers.append(nn.Dropout(dropout))
        self.net = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP."""
        for layer in self.net:
            x = layer(x)
        return x


class AdaLayerNorm(nn.Module):
    """Timestep-modulated LayerNorm: `LN(x) * (1 + scale) + shift`, chunk order (scale, shift)."""

    def __init__(self, dim: int, elementwise_affine: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x `[B,T,D]`, temb `[B,D]`."""
        scale, shift = self.linear(F.silu(temb)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]
