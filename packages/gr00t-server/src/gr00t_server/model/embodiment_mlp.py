"""Embodiment-conditioned layers: per-embodiment weights `W[E, in, out]` selected by `embodiment_id`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CategorySpecificLinear(nn.Module):
    """`y = x @ W[e] + b[e]` with `W [E, in, out]` (NOT the nn.Linear `[out, in]` layout)."""

    def __init__(self, num_categories: int, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(num_categories, input_dim, output_dim))
        self.b = nn.Parameter(torch.empty(num_categories, output_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small normal weights and zero biases (a no-op for parameters on the meta device)."""
        nn.init.normal_(self.W, std=0.02)
        nn.init.zeros_(self.b)

    def forward(self, x: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
        """x `[B, T, in]`, embodiment_id `[B]` int -> `[B, T, out]`."""
        return torch.bmm(x, self.W[embodiment_id]) + self.b[embodiment_id].unsqueeze(1)


class CategorySpecificMLP(nn.Module):
    """Two category-specific linears with a ReLU between (state encoder, action decoder)."""

    def __init__(self, num_categories: int, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.layer1 = CategorySpecificLinear(num_categories, input_dim, hidden_dim)
        self.layer2 = CategorySpecificLinear(num_categories, hidden_dim, output_dim)

    def forward(self, x: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
        """x `[B, T, input_dim]` -> `[B, T, output_dim]`."""
        return self.layer2(F.relu(self.layer1(x, embodiment_id)), embodiment_id)


def action_timestep_encoding(timesteps: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """`[sin(t f), cos(t f)]` with `f_k = exp(-k ln(1e4) / half)`, in float32 (sin first; divisor `half`)."""
    half = embedding_dim // 2
    # float32 log(1e4)/half, rounded the way the reference computes it
    log_step = torch.log(torch.tensor(10000.0, device=timesteps.device)) / half
    exponent = -torch.arange(half, dtype=torch.float32, device=timesteps.device) * log_step
    angles = timesteps.to(torch.float32).unsqueeze(-1) * exponent.exp()
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class MultiEmbodimentActionEncoder(nn.Module):
    """Noisy action chunk + integer timestep -> action tokens: `W3(swish(W2([W1(a), sinusoid(t)])))`."""

    def __init__(self, action_dim: int, hidden_size: int, num_embodiments: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.W1 = CategorySpecificLinear(num_embodiments, action_dim, hidden_size)
        self.W2 = CategorySpecificLinear(num_embodiments, 2 * hidden_size, hidden_size)
        self.W3 = CategorySpecificLinear(num_embodiments, hidden_size, hidden_size)

    def forward(self, actions: torch.Tensor, timesteps: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
        """actions `[B, A, D]`, timesteps `[B]` int, embodiment_id `[B]` -> `[B, A, hidden_size]`."""
        if timesteps.dim() != 1 or timesteps.shape[0] != actions.shape[0]:
            raise ValueError(f"timesteps must have shape ({actions.shape[0]},), got {tuple(timesteps.shape)}")
        action_embedding = self.W1(actions, embodiment_id)
        per_token_t = timesteps.unsqueeze(1).expand(-1, actions.shape[1])
        time_embedding = action_timestep_encoding(per_token_t, self.hidden_size).to(action_embedding.dtype)
        x = self.W2(torch.cat([action_embedding, time_embedding], dim=-1), embodiment_id)
        # swish as the reference writes it, x * sigmoid(x): two roundings in bf16, where F.silu fuses them into one
        return self.W3(x * torch.sigmoid(x), embodiment_id)
