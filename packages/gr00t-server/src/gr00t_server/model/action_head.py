"""Flow-matching action head of GR00T N1.7: encoders, AlternateVLDiT, decoder and Euler sampling."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Optional

import torch
from torch import nn

from gr00t_server.model.config import Gr00tN1d7Config
from gr00t_server.model.dit import AlternateVLDiT, SelfAttentionTransformer
from gr00t_server.model.embodiment_mlp import CategorySpecificMLP, MultiEmbodimentActionEncoder


DEFAULT_RTC_RAMP_RATE = 6.0


def _check_int(name: str, value: object, low: int, high: int, bounds: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an int in {bounds}, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be in {bounds} = [{low}, {high}], got {value}")


def check_rtc_arguments(
    model_horizon: int, action_horizon: int, overlap_steps: int, frozen_steps: int, ramp_rate: float
) -> None:
    """Raise ValueError unless 1 <= action_horizon <= model_horizon, 0 <= frozen <= overlap <= action_horizon,
    and ramp_rate is finite and > 0."""
    _check_int("action_horizon", action_horizon, 1, model_horizon, "[1, model action_horizon]")
    _check_int("rtc_overlap_steps", overlap_steps, 0, action_horizon, "[0, action_horizon]")
    _check_int("rtc_frozen_steps", frozen_steps, 0, overlap_steps, "[0, rtc_overlap_steps]")
    if isinstance(ramp_rate, bool) or not isinstance(ramp_rate, Real) or not (0 < ramp_rate < math.inf):
        raise ValueError(f"rtc_ramp_rate must be a finite number > 0, got {ramp_rate!r}")


def rtc_velocity_strength(
    horizon: int, overlap_steps: int, frozen_steps: int, ramp_rate: float, device: Optional[torch.device] = None
) -> torch.Tensor:
    """Per-row velocity scale `[horizon]` (float32) of real-time chunking, as in the reference (model.md §2.7).

    Rows [0, frozen) get 0, rows [frozen, overlap) an exponential ramp 1 - exp(-rate * t) normalized to end
    at 1 with both end points dropped, and the rest 1.
    """
    strength = torch.ones(horizon, dtype=torch.float32, device=device)
    strength[:frozen_steps] = 0.0
    ramp_steps = overlap_steps - frozen_steps
    t = torch.linspace(0.0, 1.0, ramp_steps + 2, dtype=torch.float64, device=device)  # on the device: no host copy
    # -expm1 in float64: 1 - exp(-rate * t) in float32 was 0 for every t at a rate <= ~1e-8, which froze the ramp
    # rows. The ramp tends to t as the rate goes to 0; below 1e-16 it is t to float64's precision (and expm1 of a
    # subnormal rate * t would not be).
    ramp = t if ramp_rate < 1e-16 else torch.expm1(-ramp_rate * t) / math.expm1(-ramp_rate)
    strength[frozen_steps:overlap_steps] = ramp[1:-1].to(torch.float32)
    return strength


class Gr00tN1d7ActionHead(nn.Module):
    """Maps backbone features, proprioceptive state and embodiment id to an action chunk.

    Sub-modules (`vlln`, `vl_self_attention`, `state_encoder`, `action_encoder`, `model` (the DiT),
    `action_decoder`, `position_embedding`) are the units a later ONNX export splits (model.md §7.1).
    """

    def __init__(self, config: Gr00tN1d7Config) -> None:
        super().__init__()
        dit_cfg = config.dit_config
        self.action_horizon = config.action_horizon
        self.action_dim = config.max_action_dim
        self.state_dim = config.max_state_dim * config.state_history_length
        self.num_inference_timesteps = config.num_inference_timesteps
        self.num_timestep_buckets = config.num_timestep_buckets
        self.add_pos_embed = config.add_pos_embed
        dit_width = int(dit_cfg["num_attention_heads"]) * int(dit_cfg["attention_head_dim"])
        if dit_width != config.input_embedding_dim:
            raise ValueError(
                f"DiT heads*head_dim = {dit_width} must equal input_embedding_dim {config.input_embedding_dim}"
            )
        if int(dit_cfg["output_dim"]) != config.hidden_size:
            raise ValueError(f"diffusion_model_cfg.output_dim {dit_cfg['output_dim']} must equal hidden_size {config.hidden_size}")
        if config.add_pos_embed and config.action_horizon > config.max_seq_len:
            raise ValueError(f"action_horizon {config.action_horizon} exceeds max_seq_len {config.max_seq_len}")

        self.model = AlternateVLDiT(
            dit_cfg,
            cross_attention_dim=config.backbone_embedding_dim,
            use_alternate_vl_dit=config.use_alternate_vl_dit,
            attend_text_every_n_blocks=config.attend_text_every_n_blocks,
        )
        E = config.max_num_embodiments
        self.state_encoder = CategorySpecificMLP(E, self.state_dim, config.hidden_size, config.input_embedding_dim)
        self.action_encoder = MultiEmbodimentActionEncoder(config.max_action_dim, config.input_embedding_dim, E)
        self.action_decoder = CategorySpecificMLP(E, config.hidden_size, config.hidden_size, config.max_action_dim)
        self.vlln: nn.Module = nn.LayerNorm(config.backbone_embedding_dim) if config.use_vlln else nn.Identity()
        vl_cfg = config.vl_self_attention_config
        self.vl_self_attention: nn.Module = (
            SelfAttentionTransformer(vl_cfg, config.backbone_embedding_dim) if vl_cfg else nn.Identity()
        )
        if config.add_pos_embed:
            self.position_embedding = nn.Embedding(config.max_seq_len, config.input_embedding_dim)
            nn.init.normal_(self.position_embedding.weight, mean=0.0, std=0.02)

    def process_backbone_features(
        self, backbone_features: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """VLLN then VL self-attention: `[B,S,C]` -> `[B,S,C]`.

        The self-attention has no padding mask (model.md §2.4), so in a batch whose prompts have different token
        counts (padded to the longest; `attention_mask [B,S]`, 1 = real token) the reference lets a row's tokens
        attend to the padding added for another row's longer prompt: a row's action then depends on the rows it
        was batched with. Here each group of rows with the same number of real tokens runs the self-attention on
        those tokens alone, as each row would alone (no positional embeddings: only which tokens take part
        matters). Padding positions keep their VLLN output; the DiT never attends to them. A batch without
        padding runs as one call, as upstream.
        """
        features = self.vlln(backbone_features)
        if attention_mask is None or features.shape[0] == 1 or isinstance(self.vl_self_attention, nn.Identity):
            return self.vl_self_attention(features)
        real = attention_mask.to(torch.bool)
        lengths = real.sum(dim=1).tolist()
        if min(lengths) == features.shape[1]:
            return self.vl_self_attention(features)
        out = features.clone()
        positions = torch.arange(features.shape[1], device=features.device)
        for length in sorted(set(lengths) - {0}):
            rows = torch.tensor([i for i, n in enumerate(lengths) if n == length], device=features.device)
            # the real tokens' positions of each row, in order (left or right padding alike)
            index = positions.expand(len(rows), -1)[real[rows]].reshape(len(rows), length)
            picked = features[rows[:, None], index]
            out[rows[:, None], index] = self.vl_self_attention(picked).to(out.dtype)
        return out

    def encode_state(self, state: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
        """state `[B, T_state, max_state_dim]` -> one state token `[B, 1, input_embedding_dim]`."""
        flat = state.reshape(state.shape[0], 1, -1)
        if flat.shape[-1] != self.state_dim:
            raise ValueError(
                f"state of shape {tuple(state.shape)} flattens to {flat.shape[-1]} values per sample; "
                f"expected max_state_dim*state_history_length = {self.state_dim}"
            )
        return self.state_encoder(flat, embodiment_id)

    def timestep_for_step(self, step: int, num_steps: Optional[int] = None) -> int:
        """Integer timestep of Euler step `step` of `num_steps` (default num_inference_timesteps):
        `int(step / N * num_timestep_buckets)` (0, 250, 500, 750)."""
        total = self.num_inference_timesteps if num_steps is None else num_steps
        return int(step / float(total) * self.num_timestep_buckets)

    def predict_velocity(
        self,
        actions: torch.Tensor,
        timesteps: torch.Tensor,
        state_features: torch.Tensor,
        vl_embeds: torch.Tensor,
        embodiment_id: torch.Tensor,
        image_mask: torch.Tensor,
        backbone_attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """One velocity evaluation: encode actions, add positions, run the DiT, decode the last A tokens."""
        action_features = self.action_encoder(actions, timesteps, embodiment_id)
        if self.add_pos_embed:
            positions = torch.arange(action_features.shape[1], device=action_features.device)
            action_features = action_features + self.position_embedding(positions).unsqueeze(0)
        sa_embs = torch.cat([state_features, action_features], dim=1)
        model_output = self.model(sa_embs, vl_embeds, timesteps, image_mask, backbone_attention_mask)
        return self.action_decoder(model_output, embodiment_id)[:, -self.action_horizon :]

    def sample_noise(
        self,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Initial noise `[B, action_horizon, max_action_dim]` drawn from `generator` (global RNG when None)."""
        shape = (batch_size, self.action_horizon, self.action_dim)
        draw_device = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)

    @torch.no_grad()
    def get_action(
        self,
        backbone_outputs: dict[str, torch.Tensor],
        state: torch.Tensor,
        embodiment_id: torch.Tensor,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        *,
        previous: Optional[torch.Tensor] = None,
        action_horizon: Optional[int] = None,
        rtc_overlap_steps: int = 0,
        rtc_frozen_steps: int = 0,
        rtc_ramp_rate: float = DEFAULT_RTC_RAMP_RATE,
        num_steps: Optional[int] = None,
    ) -> dict[str, torch.Tensor]:
        """Euler-integrate the flow from noise (t=0) to actions (t=1) in `num_steps` steps (default the config's
        `num_inference_timesteps`; at most `num_timestep_buckets`).

        Real-time chunking (RTC) when `previous [B, action_horizon_model, max_action_dim]` (a normalized,
        padded earlier chunk) is given: rows [0, overlap) start from `previous[:, T_in-overlap:T_in]` with
        `T_in = action_horizon` (default: the model's), and each row's velocity is scaled by
        `rtc_velocity_strength` (frozen rows never move). Without it (or with overlap 0) nothing changes.
        """
        image_mask = backbone_outputs["image_mask"]
        backbone_attention_mask = backbone_outputs["backbone_attention_mask"]
        vl_embeds = self.process_backbone_features(backbone_outputs["backbone_features"], backbone_attention_mask)
        batch_size, device, dtype = vl_embeds.shape[0], vl_embeds.device, vl_embeds.dtype
        state_features = self.encode_state(state, embodiment_id)
        if noise is None:
            actions = self.sample_noise(batch_size, device, dtype, generator)
        else:
            expected = (batch_size, self.action_horizon, self.action_dim)
            if tuple(noise.shape) != expected:
                raise ValueError(f"noise must have shape {expected}, got {tuple(noise.shape)}")
            actions = noise.to(device=device, dtype=dtype)
        actions, vel_strength = self._apply_rtc(
            actions, previous, action_horizon, rtc_overlap_steps, rtc_frozen_steps, rtc_ramp_rate
        )
        steps = self.num_inference_timesteps if num_steps is None else int(num_steps)
        if not 1 <= steps <= self.num_timestep_buckets:
            raise ValueError(f"num_steps must be an int in [1, {self.num_timestep_buckets}], got {num_steps!r}")
        dt = 1.0 / steps
        for step in range(steps):
            timesteps = torch.full((batch_size,), self.timestep_for_step(step, steps), device=device, dtype=torch.long)
            velocity = self.predict_velocity(
                actions, timesteps, state_features, vl_embeds, embodiment_id, image_mask, backbone_attention_mask
            )
            if vel_strength is None:
                actions = actions + dt * velocity
            else:
                actions = actions + dt * velocity * vel_strength
        return {"action_pred": actions, "backbone_features": vl_embeds, "state_features": state_features}

    def _apply_rtc(
        self,
        actions: torch.Tensor,
        previous: Optional[torch.Tensor],
        action_horizon: Optional[int],
        overlap_steps: int,
        frozen_steps: int,
        ramp_rate: float,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Inpaint the initial Euler state from `previous`; (actions, None) when RTC does not apply."""
        horizon = self.action_horizon if action_horizon is None else action_horizon
        check_rtc_arguments(self.action_horizon, horizon, overlap_steps, frozen_steps, ramp_rate)
        horizon, overlap_steps, frozen_steps = int(horizon), int(overlap_steps), int(frozen_steps)
        if previous is None:
            if overlap_steps or action_horizon is not None:
                raise ValueError("rtc_overlap_steps/action_horizon need `previous`, the earlier action chunk")
            return actions, None
        expected = tuple(actions.shape)
        if tuple(previous.shape) != expected:
            raise ValueError(
                f"previous must have shape {expected} (B, action_horizon, max_action_dim), got {tuple(previous.shape)}"
            )
        if not torch.isfinite(previous).all():
            raise ValueError("previous contains NaN or infinite values")
        if overlap_steps == 0:  # nothing to inpaint: keep the plain Euler update bit for bit
            return actions, None
        actions = actions.clone()  # never write into the caller's noise tensor
        actions[:, :overlap_steps] = previous[:, horizon - overlap_steps : horizon].to(actions.device, actions.dtype)
        strength = rtc_velocity_strength(
            self.action_horizon, overlap_steps, frozen_steps, float(ramp_rate), actions.device
        )
        return actions, strength.to(actions.dtype)[None, :, None]
