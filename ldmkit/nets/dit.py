"""DiT: the denoiser as a transformer over latent patches (Peebles & Xie 2023, "Scalable Diffusion
Models with Transformers"), with the reference implementation's module names, so that its
checkpoints load by name.

    x (B, C, H, W) --patchify--> tokens (B, N, D) + fixed 2-D sin-cos positions
    c = t_embedder(t) + y_embedder(y)                      (B, D)
    N x DiTBlock(tokens, c): adaLN-Zero around attention and the MLP
    final_layer(tokens, c) --unpatchify--> (B, C_out, H, W)

adaLN-Zero (DiT sec. 3.2): each block regresses six vectors from c, (shift, scale, gate) for the
attention and for the MLP, x <- x + gate * f(LayerNorm(x) * (1 + scale) + shift), by a linear
layer initialised to zero, so every block starts as the identity.

Text conditioning as PixArt-alpha (Chen et al. 2023, sec. 2.3), where config.context_dim is set:
adaLN-single, one linear layer (t_block) regresses the six vectors from t for all blocks, and each
block adds its own learned offsets (scale_shift_table); a cross-attention layer between the
self-attention and the MLP reads the text encoder's states, projected to the width by y_embedder.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .dit_config import DiTConfig


def sincos_position_embedding(dim: int, side: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (1, side^2, dim): half the channels encode the row, half the
    column, each as [sin | cos] of the position at frequencies 1 / 10000^(k / (dim / 4))."""
    k = np.arange(dim // 4, dtype=np.float64) / (dim / 4.0)
    omega = 1.0 / 10000**k  # (dim/4,)
    rows, cols = np.meshgrid(np.arange(side, dtype=np.float64), np.arange(side, dtype=np.float64), indexing="ij")

    def encode(pos):
        angles = pos.reshape(-1)[:, None] * omega[None]  # (N, dim/4)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # (N, dim/2)

    # the reference's order: the grid's first coordinate is w (columns), then h (rows)
    return torch.from_numpy(np.concatenate([encode(cols), encode(rows)], axis=1)).float()[None]


def dit_timestep_embedding(t: torch.Tensor, dim: int, shift: int = 0, max_period: float = 10000.0) -> torch.Tensor:
    """[cos | sin] of t at frequencies exp(-ln(max_period) k / (dim/2 - shift)), (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, frequency_dim: int = 256, shift: int = 0):
        super().__init__()
        self.frequency_dim, self.shift = frequency_dim, shift
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(dit_timestep_embedding(t, self.frequency_dim, self.shift).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels, and the null class (index num_classes) that label dropout and guidance use;
    the dropout is the embedder's own, so every trainer gets it."""

    def __init__(self, num_classes: int, hidden: int, dropout: float):
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.training and self.dropout > 0:
            drop = torch.rand(labels.shape, generator=generator).to(labels.device) < self.dropout
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class SelfAttention(nn.Module):
    """timm's Attention as DiT uses it: one qkv projection, heads, one output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D / heads)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class CrossAttention(nn.Module):
    """PixArt's: queries from the tokens, keys and values from the text states (B, L, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """mask (B, L) bool, True = attend to that text position."""
        B, N, D = x.shape
        heads, L = self.heads, context.shape[1]
        q = self.q_linear(x).reshape(B, N, heads, D // heads).transpose(1, 2)
        k, v = self.kv_linear(context).reshape(B, L, 2, heads, D // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """adaLN-Zero around self-attention and the MLP; with `text`, PixArt's block: the modulation
    comes in shared (c = t_block(t), B x 6D) plus this block's scale_shift_table, and
    cross-attention on the text sits between the two."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, mlp_norm_eps: float, text: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=mlp_norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if text:
            self.cross_attn = CrossAttention(dim, heads)
            self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        text = hasattr(self, "cross_attn")
        modulation = (c.view(-1, 6, x.shape[-1]) + self.scale_shift_table[None]).unbind(1) if text else \
            self.adaLN_modulation(c).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        if text:
            x = x + self.cross_attn(x, context, context_mask)
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """The last adaLN and the projection to patches; with `text`, PixArt's: shift and scale are
    the timestep embedding plus a learned table, no regression."""

    def __init__(self, dim: int, patch: int, out_channels: int, text: bool = False):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        if text:
            self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """c: the conditioning vector (B, D) (with text, the timestep embedding alone)."""
        if hasattr(self, "scale_shift_table"):
            shift, scale = (self.scale_shift_table[None] + c[:, None]).unbind(1)
        else:
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    # what tools working on a backbone from outside ask of it (see UNet): FSDP units, LoRA targets
    shard_units = (DiTBlock,)
    layer_groups = {"attention": r"(^|\.)(attn\.(qkv|proj)|cross_attn\.(q_linear|kv_linear|proj))$",
                    "feed_forward": r"(^|\.)mlp\.(fc1|fc2)$"}

    def __init__(self, config: DiTConfig, gradient_checkpointing: bool = False):
        super().__init__()
        self.config = c = config
        self.gradient_checkpointing = gradient_checkpointing
        self.x_embedder = nn.Conv2d(c.in_channels, c.hidden_size, c.patch_size, stride=c.patch_size)  # patchify
        side = c.input_size // c.patch_size
        self.register_buffer("pos_embed", sincos_position_embedding(c.hidden_size, side), persistent=True)
        self.t_embedder = TimestepEmbedder(c.hidden_size, shift=c.time_freq_shift)
        text = c.context_dim is not None
        if text:  # PixArt: the text states projected to the width, and one shared adaLN regression
            self.y_embedder = Mlp(c.context_dim, c.hidden_size, c.hidden_size)
            self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(c.hidden_size, 6 * c.hidden_size))
        else:
            self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size, c.class_dropout) if c.num_classes else None
        self.blocks = nn.ModuleList([DiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio, c.mlp_norm_eps, text)
                                     for _ in range(c.depth)])
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.output_channels, text)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The reference's: Xavier-uniform linears, the patch conv as a linear, N(0, 0.02) for the
        label and timestep embeddings, and zeros for every adaLN regression and the output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.config.context_dim is not None:  # PixArt's: zero cross-attention outputs
            nn.init.normal_(self.y_embedder.fc1.weight, std=0.02)
            nn.init.normal_(self.y_embedder.fc2.weight, std=0.02)
            nn.init.normal_(self.t_block[1].weight, std=0.02)
            zeroed = [*(b.cross_attn.proj for b in self.blocks), self.final_layer.linear]
        else:
            if self.y_embedder is not None:
                nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
            zeroed = [*(b.adaLN_modulation[-1] for b in self.blocks), self.final_layer.adaLN_modulation[-1],
                      self.final_layer.linear]
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> tokens (B, N, D), with their positions."""
        tokens = self.x_embedder(x).flatten(2).transpose(1, 2)
        if tokens.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f"a {x.shape[-2]}x{x.shape[-1]} latent makes {tokens.shape[1]} patches, but this DiT's "
                             f"positions are for {self.config.input_size}x{self.config.input_size} "
                             f"({self.pos_embed.shape[1]} patches)")
        return tokens + self.pos_embed.to(tokens.dtype)

    def unpatchify(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, N, p * p * C) -> (B, C, H, W)."""
        p, c = self.config.patch_size, self.config.output_channels
        h, w = height // p, width // p
        x = tokens.reshape(tokens.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(tokens.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t, context=None, context_mask=None, class_labels=None,
                guidance=None) -> torch.Tensor:
        """x (B, C, H, W); t a number or (B,); class_labels (B,) in [0, num_classes] (the last is
        the null class), or with text, context (B, L, context_dim) and context_mask (B, L) (True =
        a token to attend to). Returns (B, C_out, H, W) (C_out = 2C with learn_sigma)."""
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must be (B, {c.in_channels}, H, W), got shape {tuple(x.shape)}")
        if x.shape[-2] % c.patch_size or x.shape[-1] % c.patch_size:
            raise ValueError(f"patch size {c.patch_size} does not divide the {x.shape[-2]}x{x.shape[-1]} latent")
        if guidance is not None:
            raise ValueError("this DiT takes no guidance input")
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(B)
        t_emb = self.t_embedder(t)
        if c.context_dim is not None:
            context = self._text_states(context, class_labels, B)
            cond, final_cond = self.t_block(t_emb), t_emb
        else:
            if context is not None:
                raise ValueError("this DiT takes no text context (config.context_dim is None)")
            cond = final_cond = t_emb + self._label_embedding(class_labels, B, x.device)
        tokens = self.patchify(x)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, cond, context, context_mask,
                                                           use_reentrant=False)
            else:
                tokens = block(tokens, cond, context, context_mask)
        return self.unpatchify(self.final_layer(tokens, final_cond), x.shape[-2], x.shape[-1])

    def _text_states(self, context, class_labels, batch: int) -> torch.Tensor:
        c = self.config
        if class_labels is not None:
            raise ValueError("this DiT is text-conditioned: give context (text states), not class_labels")
        if context is None or context.ndim != 3 or context.shape[-1] != c.context_dim:
            shape = None if context is None else tuple(context.shape)
            raise ValueError(f"this DiT is text-conditioned: context must be (B, L, {c.context_dim}), got {shape}")
        return self.y_embedder(context.expand(batch, -1, -1))

    def _label_embedding(self, class_labels, batch: int, device) -> torch.Tensor | float:
        c = self.config
        if self.y_embedder is None:
            if class_labels is not None:
                raise ValueError("class_labels were given but this DiT is unconditional (num_classes None)")
            return 0.0
        if class_labels is None:
            raise ValueError(f"this DiT is class-conditional: give class_labels in 0..{c.num_classes} "
                             f"({c.num_classes} is the null class)")
        labels = torch.as_tensor(class_labels, device=device).reshape(-1)
        if labels.min() < 0 or labels.max() > c.num_classes:
            bad = int(labels.max() if labels.max() > c.num_classes else labels.min())
            raise ValueError(f"class label {bad} is out of range 0..{c.num_classes}")
        return self.y_embedder(labels.expand(batch))
