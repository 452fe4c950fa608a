"""DALL-E in miniature (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation"): one causal
transformer over the sequence [text tokens, image codes], the codes those of a VQ autoencoder.

Sequence: s = (t_0 .. t_{L-1}, c_0 .. c_{N-1}), L text tokens (padded or truncated to L), N = h*w
codes of the image, read row by row. Position i predicts s_{i+1}: positions 0..L-2 predict text
(logits over the text vocabulary), positions L-1..L+N-2 predict codes (logits over the codebook),
so the last text position predicts the first code and no text position ever scores a code, nor an
image position a word. The last code is never an input.
Padding: a dedicated learned padding embedding for each of the L text positions (DALL-E, sec. 2.2)
rather than masked padding: every sequence then has exactly L text positions, only the causal
mask is needed (the KV cache stays a plain prefix), and the last text position, which predicts
c_0, always sits in the same place. Text id 0 is the padding token ([PAD]); padded targets are
left out of the text loss.
Positions: text 1-D (one learned vector per slot); codes 2-D (a row vector plus a column vector).
Loss (sec. 2.2): the cross-entropy of the text predictions and of the image predictions, each a
mean over its own tokens, weighted 1/8 and 7/8.
Names: B batch, L text length, N = h*w codes, D width, V text vocabulary, K codebook size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .attention import FeedForward

PAD_ID = 0  # the text vocabulary's padding token
TEXT_WEIGHT, IMAGE_WEIGHT = 1 / 8, 7 / 8  # DALL-E's loss weights (sec. 2.2)


@dataclass(frozen=True)
class DalleConfig:
    text_vocab_size: int = 64    # V: [PAD] and the WordPiece pieces of the training captions
    text_length: int = 12        # L: captions are padded or truncated to this many tokens
    codebook_size: int = 512     # K: the VQ autoencoder's codes (fmnist-vq-f4: 512)
    grid: tuple[int, int] = (8, 8)  # (h, w) codes per image (fmnist-vq-f4 at 32x32: f = 4, 8x8)
    width: int = 256             # D
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0         # on attention weights and residual branches
    kind: str = "dalle"

    def __post_init__(self):
        object.__setattr__(self, "grid", tuple(self.grid))
        for name in ("text_vocab_size", "text_length", "codebook_size", "width", "layers", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if len(self.grid) != 2 or any(not isinstance(g, int) or g < 1 for g in self.grid):
            raise ValueError(f"grid must be two positive ints (rows, columns), got {self.grid}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def image_tokens(self) -> int:
        """N = h * w codes per image."""
        return self.grid[0] * self.grid[1]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DalleLogits:
    text: torch.Tensor   # (B, L-1, V): positions 0..L-2, predicting t_1..t_{L-1}
    image: torch.Tensor  # (B, n, K): positions L-1.., predicting c_0..c_{n-1}


class LayerCache:
    """One layer's keys and values of the positions seen so far (B, heads, T, d)."""

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position i sees positions <= i; with a cache, the new
    positions also see every cached one (incremental decoding)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.to_qkv = nn.Linear(width, 3 * width, bias=False)
        self.to_out = nn.Linear(width, width)
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.to_qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, T, d)
        if cache is not None:
            if cache.keys is not None:
                k, v = torch.cat([cache.keys, k], dim=2), torch.cat([cache.values, v], dim=2)
            cache.keys, cache.values = k, v
        S = k.shape[2]                                                          # positions attended to
        p = self.dropout if self.training else 0.0
        if S == T:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:  # T new positions after S - T cached ones: new query j sees keys <= S - T + j
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = out.transpose(1, 2).reshape(B, T, D)                              # (B, T, D)
        return self.out_dropout(self.to_out(out))


class Block(nn.Module):
    """Pre-norm decoder block: causal self-attention, feed-forward; residuals."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.ff = FeedForward(width, dropout=dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cache)
        return x + self.ff(self.norm2(x))


class DalleTransformer(nn.Module):
    """forward(text (B, L), codes (B, n) or (B, h, w)) -> DalleLogits; see the module docstring."""

    def __init__(self, config: DalleConfig):
        super().__init__()
        c = self.config = config
        D, (h, w) = c.width, c.grid
        self.text_tokens = nn.Embedding(c.text_vocab_size, D)
        self.text_positions = nn.Parameter(torch.zeros(c.text_length, D))
        self.text_padding = nn.Parameter(torch.zeros(c.text_length, D))  # one [PAD] embedding per slot
        self.image_tokens = nn.Embedding(c.codebook_size, D)
        self.image_rows = nn.Parameter(torch.zeros(h, D))
        self.image_columns = nn.Parameter(torch.zeros(w, D))
        self.blocks = nn.ModuleList(Block(D, c.heads, c.dropout) for _ in range(c.layers))
        self.norm = nn.LayerNorm(D)
        self.text_head = nn.Linear(D, c.text_vocab_size)
        self.image_head = nn.Linear(D, c.codebook_size)
        self.apply(_init_weights)
        for p in (self.text_positions, self.text_padding, self.image_rows, self.image_columns):
            nn.init.normal_(p, std=0.02)

    # ---- the sequence ------------------------------------------------------------------------
    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """Text ids (B, L) -> (B, L, D): token + slot embedding, or the slot's [PAD] embedding."""
        L = self.config.text_length
        if text.ndim != 2 or text.shape[1] != L:
            raise ValueError(f"text must be token ids (B, {L}), got {tuple(text.shape)}")
        tokens = self.text_tokens(text) + self.text_positions                   # (B, L, D)
        return torch.where((text == PAD_ID)[..., None], self.text_padding.to(tokens.dtype), tokens)

    def embed_codes(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Codes (B, n) at flat grid positions start..start+n-1 -> (B, n, D): code + row + column."""
        w = self.config.grid[1]
        where = torch.arange(start, start + codes.shape[1], device=codes.device)  # (n,)
        return self.image_tokens(codes) + self.image_rows[where // w] + self.image_columns[where % w]

    def run(self, h: torch.Tensor, caches: Sequence[LayerCache] | None = None) -> torch.Tensor:
        """The decoder over embedded positions (B, T, D) -> final states (B, T, D)."""
        for i, block in enumerate(self.blocks):
            h = block(h, None if caches is None else caches[i])
        return self.norm(h)

    def forward(self, text: torch.Tensor, codes: torch.Tensor) -> DalleLogits:
        """text (B, L) ids; codes (B, n) or (B, h, w) ids, 0 <= n <= N. Returns text logits for
        t_1..t_{L-1} and image logits for c_0..c_{min(n, N-1)}: all of them when n = N."""
        N, L = self.config.image_tokens, self.config.text_length
        codes = codes.flatten(1)
        if codes.shape[1] > N:
            raise ValueError(f"an image has {N} codes ({self.config.grid}), got {codes.shape[1]}")
        inputs = codes[:, : N - 1]                                              # c_{N-1} predicts nothing
        h = torch.cat([self.embed_text(text), self.embed_codes(inputs)], dim=1)  # (B, L + n', D)
        states = self.run(h)
        return DalleLogits(self.text_head(states[:, : L - 1]), self.image_head(states[:, L - 1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.text_tokens.weight.dtype


def _init_weights(module: nn.Module) -> None:
    """GPT-2's: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


# ---- the loss ----------------------------------------------------------------------------------
@dataclass
class DalleLoss:
    loss: torch.Tensor        # TEXT_WEIGHT * text + IMAGE_WEIGHT * image
    text: torch.Tensor        # mean cross-entropy over the non-padding text targets (0 if none)
    image: torch.Tensor       # mean cross-entropy over the codes


def dalle_loss(logits: DalleLogits, text: torch.Tensor, codes: torch.Tensor,
               text_weight: float = TEXT_WEIGHT, image_weight: float = IMAGE_WEIGHT) -> DalleLoss:
    """DALL-E's loss: each kind's cross-entropy is a mean over that kind's tokens (padding
    targets left out), then weighted 1/8 (text) and 7/8 (image)."""
    targets = text[:, 1:]                                                       # (B, L-1)
    real = targets != PAD_ID
    text_ce = F.cross_entropy(logits.text.flatten(0, 1).float(), targets.flatten(), reduction="none")
    text_loss = (text_ce * real.flatten()).sum() / real.sum().clamp_min(1)
    image_loss = F.cross_entropy(logits.image.flatten(0, 1).float(), codes.flatten())
    return DalleLoss(text_weight * text_loss + image_weight * image_loss, text_loss, image_loss)


# ---- sampling ----------------------------------------------------------------------------------
def check_sampling(codebook_size: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Clear errors for settings no draw can use."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or not 1 <= top_k <= codebook_size):
        raise ValueError(f"top_k must be a whole number in [1, {codebook_size}] (the codebook's size), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def filtered_probabilities(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                           top_p: float | None = None) -> torch.Tensor:
    """softmax(logits / temperature) (B, K), with top-k (the k most likely codes) and then top-p
    (the nucleus: the fewest most likely codes whose mass reaches p; Holtzman et al. 2020)
    zeroing the rest; not renormalised (draw_codes scales by the total)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)                 # (B, K)
    if top_k is not None and top_k < probs.shape[-1]:
        kth = probs.topk(int(top_k), dim=-1).values[:, -1:]                     # (B, 1)
        probs = probs * (probs >= kth)
    if top_p is not None and top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        total = sorted_probs.sum(-1, keepdim=True)
        before = sorted_probs.cumsum(-1) - sorted_probs                          # mass of the likelier codes
        keep = before < top_p * total                                           # the first always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
    return probs


def draw_codes(probs: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One code per row of probs (B, K), row b by inverse CDF with one uniform from generators[b]:
    a row's draw depends on its generator alone, never on the batch around it. -> (B,) long."""
    u = torch.cat([torch.rand(1, generator=g, device=g.device) for g in generators]).to(probs.device)
    cdf = probs.cumsum(-1)                                                      # (B, K)
    # right=True: the first code whose cdf exceeds u * total, so codes of zero mass are never hit
    picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return picked.clamp_max(probs.shape[-1] - 1)


@torch.no_grad()
def sample_codes(model: DalleTransformer, text_tokens: torch.Tensor, generators: Sequence[torch.Generator],
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Autoregressive codes (B, h, w) for text ids (B, L), one generator per image, with a KV
    cache: the text is run once, then each new code is one position attending to the cache."""
    c = model.config
    check_sampling(c.codebook_size, temperature, top_k, top_p)
    if len(generators) != len(text_tokens):
        raise ValueError(f"need one generator per image: {len(text_tokens)} texts, {len(generators)} generators")
    was_training = model.training
    model.eval()
    caches = [LayerCache() for _ in model.blocks]
    states = model.run(model.embed_text(text_tokens), caches)                   # (B, L, D)
    codes = []
    for j in range(c.image_tokens):
        logits = model.image_head(states[:, -1])                                # (B, K): predicts c_j
        code = draw_codes(filtered_probabilities(logits, temperature, top_k, top_p), generators)
        codes.append(code)
        if j + 1 < c.image_tokens:
            states = model.run(model.embed_codes(code[:, None], start=j), caches)  # (B, 1, D)
    model.train(was_training)
    return torch.stack(codes, dim=1).view(-1, *c.grid)
