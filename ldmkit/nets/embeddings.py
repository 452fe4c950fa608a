"""Timestep embedding: sinusoids of t (Transformer positional encoding, as in DDPM) and an MLP.

Names: t timestep (float allowed: Karras sigmas map to fractional t), D embedding width.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


def timestep_embedding(t: torch.Tensor | float, dim: int,
                       max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t w_k) | sin(t w_k)] with w_k = max_period**(-k / (dim/2)), k = 0 .. dim/2 - 1.

    t: a number, 0-d or (B,) tensor. Returns (B, dim) float32 (B = 1 for a scalar t).
    Equals diffusers' Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0), as SD uses.
    """
    t = torch.as_tensor(t).reshape(-1).float()                                 # (B,)
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)               # (D/2,)
    freqs = torch.exp(-math.log(max_period) * k / half)                        # (D/2,)
    angles = t[:, None] * freqs[None, :]                                       # (B, D/2)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)            # (B, 2*(D/2))
    if dim % 2:
        emb = F.pad(emb, (0, 1))                                               # (B, D), odd D
    return emb


class TimestepEmbedding(nn.Module):
    """Two-layer MLP from the sinusoids to the width every ResBlock reads (DDPM's temb). With
    cond_dim, a condition (LCM's guidance-scale embedding) is projected and added to the
    sinusoids first (diffusers' `cond_proj`)."""

    def __init__(self, in_dim: int, dim: int, cond_dim: int | None = None):
        super().__init__()
        self.cond_proj = nn.Linear(cond_dim, in_dim, bias=False) if cond_dim is not None else None
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, emb: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            emb = emb + self.cond_proj(condition)                              # (B, in_dim)
        return self.linear_2(self.act(self.linear_1(emb)))                     # (B, D)


def guidance_embedding(scale: torch.Tensor, dim: int) -> torch.Tensor:
    """The sinusoidal embedding of a guidance scale, (B,) -> (B, dim), as LCM's UNet takes it
    (its `time_cond_proj_dim` input): sin | cos of 1000 w at geometric frequencies, w = scale - 1
    (the w of LCM's guided teacher (1 + w) eps_c - w eps_u)."""
    w = (scale.float() - 1) * 1000.0
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=scale.device)
    frequencies = torch.exp(-math.log(10000.0) * k / (half - 1))  # note half - 1, where timesteps use half
    angles = w[:, None] * frequencies[None]
    embedding = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(embedding, (0, 1)) if dim % 2 else embedding

