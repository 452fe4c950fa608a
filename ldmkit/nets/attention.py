"""The LDM's conditioning path: a transformer over the pixels of a feature map (LDM sec. 3.3).

Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V, with Q = W_Q phi(z_t) from the image tokens and,
for cross-attention, K = W_K tau(y), V = W_V tau(y) from the conditioning tokens tau(y) (LDM eq. 3).
GLIDE's variant (Nichol et al. 2022, sec. 2.3; text_attention="added_kv") has no cross-attention
layer: self-attention's keys and values are [W'_K tau(y) ; W_K phi(z_t)] and [W'_V tau(y) ; W_V phi(z_t)],
so each image token weighs text and image tokens in one softmax.
Names: N = H*W image tokens of width D (= C), L context tokens of width D_ctx.
"""

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    """Multi-head attention; self-attention when context is None, else cross-attention."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D); context (B, L, D_ctx) or None; mask (B, L) bool, True = attend to it."""
        context = x if context is None else context
        return self.attend(self.to_q(x), self.to_k(context), self.to_v(context), mask)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(Q K^T / sqrt(d)) V over heads, then the output projection. q (B, N, inner);
        k, v (B, L, inner); mask (B, L) bool, True = attend to it."""
        split = "b n (h d) -> b h n d"
        q = rearrange(q, split, h=self.heads)                                  # (B, heads, N, d)
        k = rearrange(k, split, h=self.heads)                                  # (B, heads, L, d)
        v = rearrange(v, split, h=self.heads)                                  # (B, heads, L, d)
        if mask is not None:
            mask = mask[:, None, None, :]                                      # (B, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)          # (B, heads, N, d)
        out = rearrange(out, "b h n d -> b n (h d)")                           # (B, N, D)
        return self.to_out[1](self.to_out[0](out))


class AddedKVAttention(Attention):
    """Self-attention whose keys and values also hold the context's, from their own projections
    add_k_proj / add_v_proj (GLIDE; diffusers' AttnAddedKVProcessor): image queries attend over
    [context ; image] in one softmax. Masked context tokens get no weight; image tokens always count."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, dropout: float = 0.0):
        super().__init__(dim, heads, head_dim, dropout=dropout)
        self.add_k_proj = nn.Linear(context_dim, heads * head_dim)
        self.add_v_proj = nn.Linear(context_dim, heads * head_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D); context (B, L, D_ctx); mask (B, L) bool over the context, True = attend to it."""
        if context is None:
            raise ValueError("added-KV attention needs a context (B, L, D_ctx) to join to the image's keys")
        k = torch.cat([self.add_k_proj(context), self.to_k(x)], dim=1)         # (B, L + N, inner)
        v = torch.cat([self.add_v_proj(context), self.to_v(x)], dim=1)         # (B, L + N, inner)
        if mask is not None:
            image_kept = mask.new_ones(x.shape[:2])                            # (B, N)
            mask = torch.cat([mask, image_kept], dim=1)                        # (B, L + N)
        return self.attend(self.to_q(x), k, v, mask)


class GEGLU(nn.Module):
    """GELU-gated linear unit (Shazeer 2020): x W_a * GELU(x W_b), both halves from one Linear."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)                            # 2 x (B, N, 4D)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, mult * dim), nn.Dropout(dropout),
                                  nn.Linear(mult * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)                                                       # ... -> (B, N, D)
        return x


class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention to the context, feed-forward; residuals.
    text_attention="added_kv": the context joins self-attention's keys and values instead (GLIDE),
    and there is no cross-attention layer."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None,
                 dropout: float = 0.0, text_attention: str = "cross"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.added_kv = text_attention == "added_kv" and context_dim is not None
        if self.added_kv:
            self.attn1 = AddedKVAttention(dim, heads, head_dim, context_dim, dropout=dropout)
        else:
            self.attn1 = Attention(dim, heads, head_dim, dropout=dropout)
        self.has_cross = context_dim is not None and not self.added_kv
        if self.has_cross:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads, head_dim, context_dim, dropout=dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.added_kv:
            x = x + self.attn1(self.norm1(x), context, context_mask)
        else:
            x = x + self.attn1(self.norm1(x))
        if self.has_cross:
            x = x + self.attn2(self.norm2(x), context, context_mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm, project in, pixels to tokens, transformer blocks, back to a map; residual."""

    def __init__(self, channels: int, heads: int, depth: int, context_dim: int | None,
                 norm_groups: int, use_linear_projection: bool = False, dropout: float = 0.0,
                 text_attention: str = "cross"):
        super().__init__()
        self.use_linear = use_linear_projection
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        # SD v1 projects with 1x1 convs on the map, SD v2 with Linears on the tokens: same maths.
        proj = nn.Linear if use_linear_projection else (lambda i, o: nn.Conv2d(i, o, 1))
        self.proj_in = proj(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(channels, heads, channels // heads, context_dim, dropout, text_attention)
            for _ in range(depth))
        self.proj_out = proj(channels, channels)
        # Start as the identity map, as the LDM code does (zero_module): stabler from scratch.
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        _, _, height, width = x.shape
        h = self.norm(x)
        if not self.use_linear:
            h = self.proj_in(h)
        h = rearrange(h, "b c h w -> b (h w) c")                               # (B, N, C), N = H*W
        if self.use_linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context, context_mask)
        if self.use_linear:
            h = self.proj_out(h)
        h = rearrange(h, "b (h w) c -> b c h w", h=height, w=width)            # (B, C, H, W)
        if not self.use_linear:
            h = self.proj_out(h)
        return x + h
