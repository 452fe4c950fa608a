"""A classifier of noisy latents, p_phi(y | x_t, t), for classifier guidance (Dhariwal & Nichol 2021).

It is the UNet's down half, as ADM's classifier is: conv_in, the time embedding, the down path and
the middle block (the same `encoder_blocks` / `run_encoder` the UNet and the ControlNet use), then
a head: GroupNorm, SiLU, the mean over H and W, and a Linear to the class logits (ADM pools with
attention; the mean is enough for 8x8 latents). Trained on q(x_t | x_0) at every t, so its
gradient grad_x_t log p(y | x_t) is meaningful along the whole sampling path.
Names: B batch, C channels, H W latent size, K classes, E time-embedding width.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ldmkit.nets.config import UNetConfig
from ldmkit.nets.embeddings import TimestepEmbedding
from ldmkit.nets.unet import check_inputs, embed_time, encoder_blocks, run_encoder


@dataclass(frozen=True)
class NoisyClassifierConfig:
    encoder: UNetConfig  # the down half's layout; no cross-attention, no class embedding
    num_classes: int = 10
    kind: str = "noisy-classifier"

    def __post_init__(self):
        if self.encoder.context_dim is not None or self.encoder.num_classes is not None:
            raise ValueError("a noisy classifier's encoder reads x_t and t only: set encoder.context_dim and "
                             "encoder.num_classes to None")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be a whole number >= 2, got {self.num_classes!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class NoisyClassifier(nn.Module):
    """(x_t (B, C, H, W), t) -> logits (B, K); log_softmax gives log p(y | x_t)."""

    def __init__(self, config: NoisyClassifierConfig, gradient_checkpointing: bool = False):
        super().__init__()
        self.config = config
        c = config.encoder
        self.gradient_checkpointing = gradient_checkpointing  # run_encoder reads it
        self.time_embedding = TimestepEmbedding(c.base_channels, c.time_dim)
        self.class_embedding = None  # embed_time reads it: no class input here
        self.conv_in = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)
        self.down_blocks, self.mid_block, widths = encoder_blocks(c)
        self.norm_out = nn.GroupNorm(c.norm_groups, widths[-1], eps=1e-5)
        self.head = nn.Linear(widths[-1], config.num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = check_inputs(self.config.encoder, x, t, None, None, None)             # (B,)
        emb = embed_time(self, t, x.dtype)                                       # (B, E)
        h, _ = run_encoder(self, self.conv_in(x), emb, None, None)               # (B, C_mid, H/f, W/f)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))                            # (B, C_mid)
        return self.head(h)                                                      # (B, K)
