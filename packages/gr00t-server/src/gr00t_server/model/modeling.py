"""`Gr00tN1d7`: the full GR00T N1.7 network (Qwen3-VL backbone + flow-matching action head)."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn

from gr00t_server.model.action_head import DEFAULT_RTC_RAMP_RATE, Gr00tN1d7ActionHead
from gr00t_server.model.backbone import Qwen3Backbone
from gr00t_server.model.config import Gr00tN1d7Config

BACKBONE_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
REQUIRED_INPUT_KEYS = ("input_ids", "attention_mask", "state", "embodiment_id")

_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_dtype(device: Union[str, torch.device], dtype: Union[str, torch.dtype, None] = None) -> torch.dtype:
    """Model dtype: an explicit name or torch float32/bfloat16/float16 wins; None/"auto" means bfloat16 on CUDA and
    float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPE_NAMES.values():  # int8 was blamed on the checkpoint, float8 failed at the first call
            return dtype
    elif dtype is None or dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    elif isinstance(dtype, str) and dtype.lower() in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.lower()]
    accepted = sorted({str(value) for value in _DTYPE_NAMES.values()})
    raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPE_NAMES)}, 'auto' or one of {accepted}")


class Gr00tN1d7(nn.Module):
    """GR00T N1.7 policy network; attribute names are the checkpoint's state_dict keys.

    Inference-only: it starts in eval mode so the configs' dropout never applies by accident.
    """

    def __init__(self, config: Gr00tN1d7Config, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.backbone = Qwen3Backbone(config, attn_implementation=attn_implementation)
        self.action_head = Gr00tN1d7ActionHead(config)
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the model's parameters (whichever remain after a backend swapped sub-modules out)."""
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters (whichever remain after a backend swapped sub-modules out)."""
        return next(self.parameters()).device

    def prepare_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Move tensors to the model device; floating tensors are also cast to the model dtype."""
        missing = [key for key in REQUIRED_INPUT_KEYS if key not in inputs]
        if missing:
            raise KeyError(f"model inputs are missing {missing}; got {sorted(inputs)}")
        prepared = {}
        for key, value in inputs.items():
            if not isinstance(value, torch.Tensor):
                prepared[key] = value
            elif value.is_floating_point():
                prepared[key] = value.to(device=self.device, dtype=self.dtype)
            else:
                prepared[key] = value.to(device=self.device)
        return prepared

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        **rtc: Any,
    ) -> dict[str, torch.Tensor]:
        """Same as `get_action`."""
        return self.get_action(inputs, noise=noise, generator=generator, **rtc)

    @torch.no_grad()
    def get_action(
        self,
        inputs: dict[str, torch.Tensor],
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
        """Predict an action chunk `action_pred [B, action_horizon, max_action_dim]` from collated inputs.

        `inputs`: `input_ids [B,S]`, `attention_mask [B,S]`, `pixel_values [N_patches, C*T*P*P]`,
        `image_grid_thw [N_img,3]`, `state [B,T_state,max_state_dim]`, `embodiment_id [B]`.
        `noise` is the initial Euler state when given; otherwise it is drawn with `generator`.
        `previous` and the `action_horizon`/`rtc_*` arguments turn on real-time chunking (model.md §2.7; see
        `Gr00tN1d7ActionHead.get_action`): `previous [B, action_horizon_model, max_action_dim]` is normalized.
        `num_steps`: Euler steps (default the config's `num_inference_timesteps`).
        Also returns `backbone_features` (after VLLN + VL self-attention) and `state_features`.
        """
        prepared = self.prepare_inputs(inputs)
        backbone_outputs = self.backbone({k: prepared[k] for k in BACKBONE_INPUT_KEYS if k in prepared})
        return self.action_head.get_action(
            backbone_outputs,
            state=prepared["state"],
            embodiment_id=prepared["embodiment_id"],
            noise=noise,
            generator=generator,
            previous=previous,
            action_horizon=action_horizon,
            rtc_overlap_steps=rtc_overlap_steps,
            rtc_frozen_steps=rtc_frozen_steps,
            rtc_ramp_rate=rtc_ramp_rate,
            num_steps=num_steps,
        )
