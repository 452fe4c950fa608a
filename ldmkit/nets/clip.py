"""A small CLIP (Radford et al. 2021): an image tower and a text tower into one embedding space,
trained contrastively (ldmkit.train.clip); ldmkit.model.clip wraps it for use.

- image tower: a ViT (Dosovitskiy et al. 2021): patches of the image as tokens, a class token,
  learned positions, pre-norm transformer blocks; the class token's last state, projected.
- text tower, one of (config.text):
  "transformer": a small transformer trained from scratch on MiniLM's WordPiece token ids (token
  and position embeddings, pre-norm blocks, padding masked out); the first token's ([CLS]) last
  state, projected;
  "minilm": the frozen MiniLM's token states (given as the input), mean-pooled over the real
  tokens (sentence-transformers' pooling), then a trainable two-layer MLP.
Both towers return unnormalised embeddings; CLIP compares them L2-normalised.
Loss (CLIP's Figure 3): logits = exp(logit_scale) I T^T, cross-entropy along the rows and the
columns, averaged; exp(logit_scale) starts at 1 / 0.07 and is capped at 100.
Names: B batch, N tokens, D width, L text length, E embedding width, S image size, p patch size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from ldmkit.nets.attention import Attention, FeedForward

TEXT_TOWERS = ("transformer", "minilm")


@dataclass(frozen=True)
class CLIPConfig:
    image_size: int = 32
    image_channels: int = 3  # grey images are repeated to 3 channels (ldmkit.model.clip)
    patch_size: int = 4
    image_width: int = 128
    image_layers: int = 4
    image_heads: int = 4
    text: str = "transformer"  # transformer (trained on MiniLM's tokens) | minilm (frozen MiniLM + an MLP)
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_length: int = 24  # tokens, [CLS] and [SEP] included
    vocab_size: int = 30522  # MiniLM's WordPiece vocabulary
    minilm_width: int = 384  # the frozen MiniLM's state width ("minilm")
    embed_dim: int = 128
    init_temperature: float = 0.07  # exp(logit_scale) starts at 1 / this
    max_logit_scale: float = 100.0  # and never exceeds this
    kind: str = "clip-small"

    def __post_init__(self):
        if self.text not in TEXT_TOWERS:
            raise ValueError(f"unknown text tower {self.text!r}; choose one of {TEXT_TOWERS}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads in ((self.image_width, self.image_heads), (self.text_width, self.text_heads)):
            if width % heads:
                raise ValueError(f"width {width} is not divisible by its {heads} heads")
        if not (self.init_temperature > 0 and 1 / self.init_temperature <= self.max_logit_scale):
            raise ValueError(f"init_temperature must be > 0 and 1 / it at most max_logit_scale "
                             f"({self.max_logit_scale}), got {self.init_temperature}")

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """Pre-norm transformer block: self-attention (padding masked out), feed-forward; residuals."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, width // heads)
        self.norm2 = nn.LayerNorm(width)
        self.ff = FeedForward(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)                             # (B, N, D)
        return x + self.ff(self.norm2(x))


class ImageTower(nn.Module):
    """pixels (B, C, S, S) in [-1, 1] -> (B, E)."""

    def __init__(self, c: CLIPConfig):
        super().__init__()
        self.config = c
        width, tokens = c.image_width, (c.image_size // c.patch_size) ** 2
        self.patch = nn.Conv2d(c.image_channels, width, c.patch_size, stride=c.patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        self.positions = nn.Parameter(0.02 * torch.randn(1, tokens + 1, width))
        self.norm_in = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(Block(width, c.image_heads) for _ in range(c.image_layers))
        self.norm_out = nn.LayerNorm(width)
        self.proj = nn.Linear(width, c.embed_dim, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        c = self.config
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (c.image_channels, c.image_size, c.image_size):
            raise ValueError(f"the image tower takes (B, {c.image_channels}, {c.image_size}, {c.image_size}) "
                             f"pixels, got {tuple(pixels.shape)}")
        h = rearrange(self.patch(pixels), "b d h w -> b (h w) d")                # (B, N, D), N = (S/p)^2
        h = torch.cat([self.class_token.expand(len(h), -1, -1), h], dim=1)        # (B, 1 + N, D)
        h = self.norm_in(h + self.positions)
        for block in self.blocks:
            h = block(h)
        return self.proj(self.norm_out(h[:, 0]))                                   # (B, E)


class TextTransformer(nn.Module):
    """token ids (B, L), mask (B, L) bool (True: a real token) -> (B, E)."""

    def __init__(self, c: CLIPConfig):
        super().__init__()
        self.tokens = nn.Embedding(c.vocab_size, c.text_width)
        self.positions = nn.Parameter(0.01 * torch.randn(1, c.text_length, c.text_width))
        self.blocks = nn.ModuleList(Block(c.text_width, c.text_heads) for _ in range(c.text_layers))
        self.norm_out = nn.LayerNorm(c.text_width)
        self.proj = nn.Linear(c.text_width, c.embed_dim, bias=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.token_states(ids, mask)[:, 0])                       # (B, E), [CLS]'s state

    def token_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Every token's last state, normalised (B, L, D): what an unCLIP prior reads besides the
        embedding (CLIP's last_hidden_state)."""
        h = self.tokens(ids) + self.positions[:, : ids.shape[1]]                  # (B, L, D)
        for block in self.blocks:
            h = block(h, mask)
        return self.norm_out(h)


class MiniLMProjection(nn.Module):
    """The frozen MiniLM's states (B, L, 384), mask (B, L) -> (B, E): masked mean, then an MLP."""

    def __init__(self, c: CLIPConfig):
        super().__init__()
        self.norm = nn.LayerNorm(c.minilm_width)
        self.mlp = nn.Sequential(nn.Linear(c.minilm_width, c.text_width), nn.GELU(),
                                 nn.Linear(c.text_width, c.embed_dim))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(states.dtype)[..., None]                                 # (B, L, 1)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1)           # (B, 384)
        return self.mlp(self.norm(pooled))                                         # (B, E)


class SmallCLIP(nn.Module):
    """The two towers and the learned temperature; embeddings come back L2-normalised."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.image_tower = ImageTower(config)
        self.text_tower = TextTransformer(config) if config.text == "transformer" else MiniLMProjection(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tower(pixels), dim=-1)                      # (B, E)

    def encode_text(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens: ids (B, L) for the "transformer" tower, MiniLM's states (B, L, 384) for "minilm"."""
        return F.normalize(self.text_tower(tokens, mask), dim=-1)                 # (B, E)

    def clamp_logit_scale_(self) -> None:
        """Keep exp(logit_scale) <= max_logit_scale (CLIP clips the parameter after every step)."""
        with torch.no_grad():
            self.logit_scale.clamp_(max=math.log(self.config.max_logit_scale))


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                     max_logit_scale: float = 100.0) -> torch.Tensor:
    """Symmetric InfoNCE over B matching pairs (row i of each is one pair; the captions must be
    distinct, or a pair's duplicate counts as a negative): L2-normalised embeddings (B, E)."""
    scale = logit_scale.exp().clamp(max=max_logit_scale)
    logits = scale * image_emb @ text_emb.T                                        # (B, B): image i, text j
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
