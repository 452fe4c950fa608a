"""The diffusion prior of DALL-E 2 / unCLIP (Ramesh et al. 2022, sec. 2.1): a causal transformer
that denoises a CLIP image embedding given the caption's CLIP text encoding, and predicts the clean
embedding directly (x0 prediction, as the paper's "we train a decoder-only Transformer ... to
predict the unnoised z_i directly").

Tokens, in the layout of Karlo and diffusers' PriorTransformer (N = L + 4):
    [text token states t_0 .. t_{L-1}, text embedding z_t, time embedding, noised image embedding
     z_i^(t), the prior token]
each projected to the width D, plus a learned position per slot. Attention is causal (slot i sees
slots <= i), and padded text slots are hidden from every other slot. The prior token's last
state, normalised and projected, is the predicted clean image embedding.
Normalisation: the diffusion runs on image embeddings standardised per dimension by the dataset's
mean and std (buffers clip_mean, clip_std, set once from the training set): x0 = (z_i - mean) / std.
`normalise` and `unnormalise` convert; the network itself reads and writes normalised embeddings.

Module names are diffusers' (proj_in: the noised image embedding, embedding_proj: the text
embedding, encoder_hidden_states_proj: the token states, prd_embedding: the prior token,
proj_to_clip_embeddings: the output), so that a diffusers PriorTransformer's weights load as they
are (tests/family/test_unclip_prior.py checks the outputs agree).
Names: B batch, L text length, N = L + 4 slots, D width, E embedding width, D_text token width.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .embeddings import TimestepEmbedding, timestep_embedding

EXTRA_SLOTS = 4  # text embedding, time, noised image embedding, prior token


@dataclass(frozen=True)
class PriorConfig:
    embedding_dim: int = 128   # E: the CLIP's image and text embeddings (clip-small: 128)
    text_state_dim: int = 128  # D_text: the CLIP text tower's token states (clip-small: 128)
    text_length: int = 24      # L: token slots (clip-small pads captions to 24)
    width: int = 256           # D
    layers: int = 6
    heads: int = 4
    dropout: float = 0.0
    kind: str = "unclip-prior"

    def __post_init__(self):
        for name in ("embedding_dim", "text_state_dim", "text_length", "width", "layers", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def slots(self) -> int:
        """N = L + 4 tokens of the sequence."""
        return self.text_length + EXTRA_SLOTS

    def to_dict(self) -> dict:
        return asdict(self)


def prior_attention_mask(text_mask: torch.Tensor) -> torch.Tensor:
    """text_mask (B, L) bool, True: a real token -> (B, 1, N, N) bool, True: query i may attend to
    key j. Causal (j <= i), padded text keys hidden; each slot always sees itself, so that no row is
    empty (a padded slot's own state is never read by another slot, so this changes nothing else)."""
    B, L = text_mask.shape
    keys = torch.cat([text_mask, text_mask.new_ones(B, EXTRA_SLOTS)], dim=1)  # (B, N): the 4 extra slots are real
    N = L + EXTRA_SLOTS
    causal = torch.ones(N, N, dtype=torch.bool, device=text_mask.device).tril()  # (N, N): j <= i
    itself = torch.eye(N, dtype=torch.bool, device=text_mask.device)
    return (causal & (keys[:, None, :] | itself))[:, None]                   # (B, 1, N, N)


class SelfAttention(nn.Module):
    """Multi-head self-attention with biases and a boolean mask (diffusers' attn1 of a block)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.to_q, self.to_k, self.to_v = (nn.Linear(width, width) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(width, width), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = (f(x).view(B, N, self.heads, D // self.heads).transpose(1, 2)  # (B, heads, N, d)
                   for f in (self.to_q, self.to_k, self.to_v))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = out.transpose(1, 2).reshape(B, N, D)                              # (B, N, D)
        return self.to_out[1](self.to_out[0](out))


class GELUProjection(nn.Module):
    """Linear, then the exact GELU (diffusers' GELU module, the first half of its FeedForward)."""

    def __init__(self, width: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(width, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, width: int, dropout: float, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GELUProjection(width, mult * width), nn.Dropout(dropout),
                                  nn.Linear(mult * width, width)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)                                                        # ... -> (B, N, D)
        return x


class PriorBlock(nn.Module):
    """Pre-norm block: masked self-attention, feed-forward; residuals. (norm3: diffusers' name; its
    norm2 belongs to a cross-attention the prior does not have.)"""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn1 = SelfAttention(width, heads, dropout)
        self.norm3 = nn.LayerNorm(width)
        self.ff = FeedForward(width, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), mask)
        return x + self.ff(self.norm3(x))


class PriorTransformer(nn.Module):
    """(noised normalised image embedding, t, text token states, text mask, text embedding) ->
    the predicted clean normalised image embedding."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        c, D = config, config.width
        self.time_embedding = TimestepEmbedding(D, D)
        self.proj_in = nn.Linear(c.embedding_dim, D)                    # the noised image embedding
        self.embedding_proj = nn.Linear(c.embedding_dim, D)             # the text embedding
        self.encoder_hidden_states_proj = nn.Linear(c.text_state_dim, D)  # the text token states
        self.positional_embedding = nn.Parameter(0.02 * torch.randn(1, c.slots, D))
        self.prd_embedding = nn.Parameter(0.02 * torch.randn(1, 1, D))  # the prior token
        self.transformer_blocks = nn.ModuleList(PriorBlock(D, c.heads, c.dropout) for _ in range(c.layers))
        self.norm_out = nn.LayerNorm(D)
        self.proj_to_clip_embeddings = nn.Linear(D, c.embedding_dim)
        nn.init.zeros_(self.proj_to_clip_embeddings.weight)  # start by predicting the mean embedding (DiT's zero init)
        nn.init.zeros_(self.proj_to_clip_embeddings.bias)
        self.register_buffer("clip_mean", torch.zeros(1, c.embedding_dim))
        self.register_buffer("clip_std", torch.ones(1, c.embedding_dim))

    # ---- the dataset's statistics ------------------------------------------------------------
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The per-dimension mean and std (E,) of the training set's image embeddings."""
        E = self.config.embedding_dim
        if mean.shape[-1] != E or std.shape[-1] != E or mean.numel() != E or std.numel() != E:
            raise ValueError(f"statistics must be ({E},) each, got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("the embeddings' std must be finite and > 0 in every dimension (and the mean finite)")
        self.clip_mean.copy_(mean.reshape(1, E))
        self.clip_std.copy_(std.reshape(1, E))

    def normalise(self, embedding: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, E) -> the diffusion's data x0 = (z_i - mean) / std."""
        self._check_embedding(embedding, "image embeddings")
        return (embedding - self.clip_mean) / self.clip_std

    def unnormalise(self, x0: torch.Tensor) -> torch.Tensor:
        """The diffusion's data (B, E) -> image embeddings z_i = x0 std + mean."""
        self._check_embedding(x0, "normalised embeddings")
        return x0 * self.clip_std + self.clip_mean

    # ---- the network -------------------------------------------------------------------------
    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float, text_states: torch.Tensor,
                text_mask: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """x_t (B, E) noised normalised image embeddings, t a number or (B,), text_states
        (B, L, D_text), text_mask (B, L) bool (True: a real token), text_embedding (B, E) -> (B, E)."""
        self._check_inputs(x_t, text_states, text_mask, text_embedding)
        B = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(B)           # (B,)
        time = self.time_embedding(timestep_embedding(t, self.config.width).to(x_t.dtype))  # (B, D)
        h = torch.cat([
            self.encoder_hidden_states_proj(text_states),                          # (B, L, D)
            self.embedding_proj(text_embedding)[:, None],                          # (B, 1, D)
            time[:, None],                                                         # (B, 1, D)
            self.proj_in(x_t)[:, None],                                            # (B, 1, D)
            self.prd_embedding.expand(B, -1, -1),                                  # (B, 1, D)
        ], dim=1) + self.positional_embedding                                      # (B, N, D)
        mask = prior_attention_mask(text_mask.bool())                              # (B, 1, N, N)
        for block in self.transformer_blocks:
            h = block(h, mask)
        return self.proj_to_clip_embeddings(self.norm_out(h[:, -1]))               # (B, E): the prior token's

    def _check_embedding(self, embedding: torch.Tensor, what: str) -> None:
        E = self.config.embedding_dim
        if embedding.ndim != 2 or embedding.shape[1] != E:
            raise ValueError(f"the prior's {what} are (B, {E}); got {tuple(embedding.shape)}")

    def _check_inputs(self, x_t, text_states, text_mask, text_embedding) -> None:
        self._check_embedding(x_t, "noised image embeddings")
        c, B = self.config, x_t.shape[0]
        self._check_embedding(text_embedding, "text embeddings")
        if text_states.ndim != 3 or tuple(text_states.shape[1:]) != (c.text_length, c.text_state_dim):
            raise ValueError(f"text token states must be (B, {c.text_length}, {c.text_state_dim}) (pad or cut "
                             f"captions to {c.text_length} tokens); got {tuple(text_states.shape)}")
        if tuple(text_mask.shape) != (B, c.text_length):
            raise ValueError(f"the text mask must be (B, {c.text_length}) = ({B}, {c.text_length}); got "
                             f"{tuple(text_mask.shape)}")
        if text_states.shape[0] != B or text_embedding.shape[0] != B:
            raise ValueError(f"inputs disagree on the batch: {B} image embeddings, {text_states.shape[0]} token "
                             f"states, {text_embedding.shape[0]} text embeddings")
