"""UNetConfig: the denoiser's hyper-parameters as one typed, frozen value, and named presets.

A level is one resolution of the U: level 0 works at the input size, level i at 1/2**i of it.
Attention is chosen by level, not by resolution, so a config means the same net at any size.
"""

from dataclasses import asdict, dataclass

TEXT_ATTENTIONS = ("cross", "added_kv")


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    base_channels: int = 320                    # conv_in width; level i has base * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2                     # ResBlocks per level going down (+1 going up)
    attn_levels: tuple[int, ...] = (0, 1, 2)    # levels, not resolutions
    mid_attention: bool = True                  # a SpatialTransformer between the middle ResBlocks
    num_heads: int | None = 8                   # fixed head count (SD v1) ...
    head_dim: int | None = None                 # ... or fixed head width (SD v2); set exactly one
    transformer_depth: int = 1                  # TransformerBlocks per SpatialTransformer
    context_dim: int | None = 768               # None: no text attention
    # How image tokens see the context: "cross", a cross-attention layer after self-attention
    # (LDM); "added_kv", the context's own key/value projections joined to self-attention's (GLIDE)
    text_attention: str = "cross"
    use_linear_projection: bool = False         # proj_in/out: Linear (SD v2) or 1x1 conv (SD v1)
    num_classes: int | None = None              # None: no class embedding
    guidance_embed_dim: int | None = None       # LCM: the guidance scale as an input (diffusers' time_cond_proj_dim)
    pooled_dim: int | None = None               # a pooled condition (B, pooled_dim) projected into the time
                                                # embedding (GLIDE: the text's last token); None: none
    pooled_tokens: int = 0                      # the pooled condition also projected into this many context
                                                # tokens appended to the context (DALL-E 2's decoder: 4)
    norm_groups: int = 32
    dropout: float = 0.0
    kind: str = "unet"                          # the tag of this backbone in a model's config

    def __post_init__(self):
        # JSON gives lists; keep the value hashable and comparable.
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attn_levels", tuple(self.attn_levels))
        _validate(self)

    @property
    def time_dim(self) -> int:
        """Width of the time (and class) embedding, 4x the base width as in DDPM."""
        return 4 * self.base_channels

    @property
    def num_labels(self) -> int | None:
        """Class-label embeddings, the null class included (here num_classes counts it)."""
        return self.num_classes

    @property
    def downsampling_factor(self) -> int:
        """H and W must be multiples of this: the deepest level is 1/2**(levels-1) of the input."""
        return 2 ** (len(self.channel_mult) - 1)

    def level_channels(self, level: int) -> int:
        return self.base_channels * self.channel_mult[level]

    def heads(self, channels: int) -> int:
        """Attention heads of a SpatialTransformer of this width."""
        return self.num_heads if self.num_heads is not None else channels // self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)


def _validate(c: UNetConfig) -> None:
    def positive(name, value):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")

    for name in ("in_channels", "out_channels", "base_channels", "num_res_blocks",
                 "transformer_depth", "norm_groups"):
        positive(name, getattr(c, name))
    for name in ("num_heads", "head_dim", "context_dim", "num_classes", "pooled_dim"):
        if getattr(c, name) is not None:
            positive(name, getattr(c, name))
    if not c.channel_mult:
        raise ValueError("channel_mult must name at least one level, got ()")
    for m in c.channel_mult:
        positive("each channel_mult entry", m)
    if c.text_attention not in TEXT_ATTENTIONS:
        raise ValueError(f"text_attention must be one of {TEXT_ATTENTIONS}, got {c.text_attention!r}")
    if isinstance(c.pooled_tokens, bool) or not isinstance(c.pooled_tokens, int) or c.pooled_tokens < 0:
        raise ValueError(f"pooled_tokens must be a whole number >= 0, got {c.pooled_tokens!r}")
    if c.pooled_tokens and (c.pooled_dim is None or c.context_dim is None):
        raise ValueError(f"pooled_tokens projects the pooled condition into context tokens: it needs pooled_dim "
                         f"(the condition's width) and context_dim (the tokens'), got pooled_dim={c.pooled_dim}, "
                         f"context_dim={c.context_dim}")
    if c.text_attention == "added_kv" and c.context_dim is None:
        raise ValueError("text_attention 'added_kv' joins the context's keys and values to self-attention: "
                         "it needs a context_dim")
    if not 0.0 <= c.dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {c.dropout}")

    widths = [c.base_channels] + [c.level_channels(i) for i in range(len(c.channel_mult))]
    for w in widths:
        if w % c.norm_groups:
            raise ValueError(f"channel count {w} is not divisible by norm_groups {c.norm_groups}; "
                             f"widths in this UNet: {sorted(set(widths))}")

    levels = range(len(c.channel_mult))
    bad = [lv for lv in c.attn_levels if lv not in levels]
    if bad or len(set(c.attn_levels)) != len(c.attn_levels):
        raise ValueError(f"attn_levels {c.attn_levels} must be distinct levels in "
                         f"0..{len(c.channel_mult) - 1} (one per channel_mult entry)")

    if (c.num_heads is None) == (c.head_dim is None):
        raise ValueError(f"set exactly one of num_heads and head_dim, got num_heads={c.num_heads}, "
                         f"head_dim={c.head_dim}")
    attn_widths = [c.level_channels(lv) for lv in c.attn_levels]
    if c.mid_attention:
        attn_widths.append(c.level_channels(len(c.channel_mult) - 1))
    split = c.num_heads if c.num_heads is not None else c.head_dim
    for w in attn_widths:
        if w % split:
            what = "num_heads" if c.num_heads is not None else "head_dim"
            raise ValueError(f"attention width {w} is not divisible by {what} {split}")


UNET_PRESETS: dict[str, UNetConfig] = {
    # CPU test sizes: ~1M parameters, attention only at the 1/2 level.
    "tiny": UNetConfig(base_channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(1,),
                       num_heads=4, context_dim=32, norm_groups=8),
    "tiny-uncond": UNetConfig(base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                              attn_levels=(1,), num_heads=4, context_dim=None, norm_groups=8),
    # CPU-trainable: 32x32 (or 8x8) latents, MiniLM's 384-d token states as context.
    "small": UNetConfig(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                        attn_levels=(1, 2), num_heads=None, head_dim=32, context_dim=384),
    # The shipped models (8x8x4 latents): 4.2M parameters, 16.7 MB (training speed: docs/stage2.md).
    "compact": UNetConfig(base_channels=48, channel_mult=(1, 2, 2), num_res_blocks=1,
                          attn_levels=(1, 2), num_heads=None, head_dim=24, context_dim=384,
                          norm_groups=16),
    # Stable Diffusion v1.x (CompVis / runwayml): 859,520,964 parameters.
    "sd1": UNetConfig(),
    # Stable Diffusion v2.x: 64-wide heads, OpenCLIP-H context, linear projections; 865,910,724.
    "sd2": UNetConfig(num_heads=None, head_dim=64, context_dim=1024, use_linear_projection=True),
}
