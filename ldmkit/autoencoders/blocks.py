"""The layers of the LDM first-stage encoder and decoder (Esser et al. 2021's VQGAN layout).

Residual blocks without a time embedding, resampling by 2, and one single-head self-attention
over all pixels in the middle. GroupNorm uses eps = 1e-6 as in LDM and diffusers' VAE; the
names of every parameter equal diffusers' so its state dicts load with no key mapping.
"""

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from ldmkit.nets.inplace import silu_of_temporary


class ResnetBlock(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))); a 1x1 conv_shortcut when the width changes."""

    def __init__(self, c_in: int, c_out: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=1e-6)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(silu_of_temporary(self.norm1(x)))                               # (B, C_out, H, W)
        h = self.conv2(self.dropout(silu_of_temporary(self.norm2(h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)      # (B, C_out, H, W)
        return h.add_(skip)  # in place: h is conv2's output, which backward does not need


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel right and bottom only (LDM, diffusers' VAE):
    an even H maps to exactly H/2 with the window starting at the top-left pixel."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 1, 0, 1))                                             # (B, C, H+1, W+1)
        return self.conv(x)                                                    # (B, C, H/2, W/2)


class MidAttention(nn.Module):
    """x + W_out softmax(Q K^T / sqrt(C)) V over the N = H*W pixels, one head of width C,
    with Q, K, V linear maps of GroupNorm(x)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # diffusers' key: to_out.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        h = rearrange(self.group_norm(x), "b c h w -> b (h w) c")              # (B, N, C)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)                     # 3 x (B, N, C)
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])  # (B, 1, N, C)
        h = self.to_out[0](h[:, 0])                                            # (B, N, C)
        return x + rearrange(h, "b (h w) c -> b c h w", h=H, w=W)              # (B, C, H, W)
