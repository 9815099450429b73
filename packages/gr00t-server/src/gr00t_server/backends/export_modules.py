"""Export-friendly forms of the backbone: the Qwen3-VL vision tower and the truncated text decoder.

Both reuse the model's own weights (no copies of the math in the checkpoint layout); they only replace
the parts ONNX cannot express well: data-dependent per-image splitting (`cu_seqlens`) and the HF mask
and cache machinery (model.md §7.1).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class VisionForExport(nn.Module):
    """Qwen3-VL vision tower for a fixed image grid, batched over images: `[n_img, P, 1536]` in.

    Attention in the HF tower is restricted to tokens of one image, so running the images as a batch
    dimension is the same computation; the position embedding and 2-D rotary tables of the captured
    grid are precomputed buffers. Outputs `image_embeds [n_img, P/4, C]` and
    `deepstack_features [k, n_img, P/4, C]`.
    """

    def __init__(self, visual: nn.Module, grid_thw: torch.Tensor) -> None:
        super().__init__()
        grid = grid_thw.reshape(1, 3).to(device=visual.pos_embed.weight.device, dtype=torch.long)
        self.visual = visual
        self.patches_per_image = int(grid.prod())
        self.out_width = int(visual.merger.linear_fc2.out_features)
        with torch.no_grad():
            self.register_buffer("pos_embeds", visual.fast_pos_embed_interpolate(grid), persistent=False)
            rotary = visual.rot_pos_emb(grid)
            emb = torch.cat((rotary, rotary), dim=-1).float()
        self.register_buffer("rotary_cos", emb.cos(), persistent=False)
        self.register_buffer("rotary_sin", emb.sin(), persistent=False)

    def _block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        attn = block.attn
        images, patches, width = x.shape
        qkv = attn.qkv(block.norm1(x)).reshape(images, patches, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        # Rotary in float32 like apply_rotary_pos_emb_vision.
        query = (query.float() * self.rotary_cos + _rotate_half(query.float()) * self.rotary_sin).to(value.dtype)
        key = (key.float() * self.rotary_cos + _rotate_half(key.float()) * self.rotary_sin).to(value.dtype)
        out = F.scaled_dot_product_attention(query, key, value, scale=attn.scaling)
        x = x + attn.proj(out.transpose(1, 2).reshape(images, patches, width))
        return x + block.mlp(block.norm2(x))

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values `[n_img, P, 1536]` -> (image_embeds, deepstack_features)."""
        images = pixel_values.shape[0]
        visual = self.visual
        x = visual.patch_embed(pixel_values.reshape(-1, pixel_values.shape[-1]))
        x = x.reshape(images, self.patches_per_image, -1) + self.pos_embeds.to(x.dtype)
        deepstack = []
        for index, block in enumerate(visual.blocks):
            x = self._block(block, x)
            if index in visual.deepstack_visual_indexes:
                merger = visual.deepstack_merger_list[visual.deepstack_visual_indexes.index(index)]
                deepstack.append(merger(x).reshape(images, self.patches_per_image // 4, self.out_width))
        image_embeds = visual.merger(x).reshape(images, self.patches_per_image // 4, self.out_width)
        return image_embeds, torch.stack(deepstack, dim=0)


def additive_causal_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B,S]` 0/1 padding mask -> (`[B,1,S,S]` additive causal+padding mask, `[B,1,S,1]` row-has-keys).

    Fully masked rows (left padding) get a zero attention output, as torch SDPA gives transformers;
    the row mask applies that after the softmax, which stays finite because the row is opened first.
    """
    length = attention_mask.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]
    row_has_keys = allowed.any(dim=-1, keepdim=True)
    allowed = allowed | ~row_has_keys
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min), row_has_keys.to(dtype)


def _repeat_kv_heads(states: torch.Tensor, heads: int) -> torch.Tensor:
    """`[B, kv, S, D]` -> `[B, heads, S, D]`, each kv head repeated heads/kv times in place (grouped-query attention).

    expand + reshape, not repeat_interleave: traced on CUDA, repeat_interleave's index tensor stays on the CPU
    (torch 2.11: "index is on cpu, different from other tensors on cuda:0").
    """
    batch, kv_heads, length, dim = states.shape
    groups = heads // kv_heads
    return states[:, :, None].expand(batch, kv_heads, groups, length, dim).reshape(batch, heads, length, dim)


class LLMForExport(nn.Module):
    """The truncated Qwen3-VL text decoder from `inputs_embeds` to the PRE-norm last-layer output.

    Decoder layers run on the checkpoint's own sub-modules with an explicit mask (no HF cache or mask
    machinery); deepstack features are added at visual positions after the first k layers, and the
    final norm is never applied (model.md §0.2 pitfall 1).
    """

    def __init__(self, language_model: nn.Module, num_deepstack: int) -> None:
        super().__init__()
        self.language_model = language_model
        self.num_deepstack = num_deepstack

    @staticmethod
    def _attention(
        attn: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        mask: torch.Tensor, row_has_keys: torch.Tensor,
    ) -> torch.Tensor:
        batch, length, _ = hidden.shape
        shape = (batch, length, -1, attn.head_dim)
        query = attn.q_norm(attn.q_proj(hidden).view(shape)).transpose(1, 2)
        key = attn.k_norm(attn.k_proj(hidden).view(shape)).transpose(1, 2)
        value = attn.v_proj(hidden).view(shape).transpose(1, 2)
        query = query * cos + _rotate_half(query) * sin
        key = key * cos + _rotate_half(key) * sin
        key, value = _repeat_kv_heads(key, query.shape[1]), _repeat_kv_heads(value, query.shape[1])
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=attn.scaling) * row_has_keys
        return attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        visual_pos_masks: torch.Tensor,
        *deepstack: torch.Tensor,
    ) -> torch.Tensor:
        """inputs_embeds `[B,S,C]`, attention_mask `[B,S]`, position_ids `[3,B,S]`, visual_pos_masks `[B,S]`."""
        lm = self.language_model
        mask, row_has_keys = additive_causal_mask(attention_mask, inputs_embeds.dtype)
        cos, sin = lm.rotary_emb(inputs_embeds, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        hidden = inputs_embeds
        # Row k of a deepstack tensor belongs to the k-th visual position (row-major over [B,S]); a
        # cumsum gather avoids NonZero/masked_scatter, which TensorRT handles poorly.
        visual = visual_pos_masks.bool()
        rows = (visual.reshape(-1).long().cumsum(0) - 1).clamp(min=0)
        weight = visual.unsqueeze(-1).to(hidden.dtype)
        for index, layer in enumerate(lm.layers):
            hidden = hidden + self._attention(layer.self_attn, layer.input_layernorm(hidden), cos, sin, mask, row_has_keys)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
            if index < len(deepstack):
                features = deepstack[index].to(hidden.dtype).index_select(0, rows).reshape(hidden.shape)
                hidden = hidden + features * weight
        return hidden


@contextlib.contextmanager
def sdpa_without_explicit_scale() -> Iterator[None]:
    """Trace SDPA calls without their `scale=` keyword (folded into the query instead).

    The TorchScript exporter of torch 2.13 fails on `scale=` with bf16 inputs ("ScalarType ComplexDouble");
    the model passes scale = 1/sqrt(head_dim), the default, so the factor is usually exactly 1.
    """
    original = F.scaled_dot_product_attention

    def without_scale(
        query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, scale: Optional[float] = None, **kwargs: Any
    ) -> torch.Tensor:
        if scale is not None:
            factor = scale * math.sqrt(query.shape[-1])
            if abs(factor - 1.0) > 1e-6:
                query = query * factor
        return original(query, key, value, *args, **kwargs)

    F.scaled_dot_product_attention = without_scale
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
