"""The configuration of a DiT (Peebles & Xie 2023): a transformer over latent patches."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 4
    out_channels: int = 4  # with learn_sigma the network outputs 2 x this (eps and the variance interpolation)
    input_size: int = 8  # latent side the position embedding is built for
    patch_size: int = 2  # in {1, 2, 4, 8}; tokens = (input_size / patch_size)^2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int | None = None  # None: unconditional; else labels 0..n-1 and n, the null class
    # label dropout in training, owned by the embedder (the reference's 0.1). ldmkit's trainer drops
    # labels itself, seeded by the step (exact resume), so the DiTs it trains keep 0 here.
    class_dropout: float = 0.0
    learn_sigma: bool = False
    # text conditioning, PixArt-alpha style: the text encoder's state width (None: class or none)
    context_dim: int | None = None
    # where the two references differ numerically (the loaders set them): the timestep frequencies
    # exp(-ln(10^4) k / (half - shift)) (DiT: shift 0; diffusers: 1), and the eps of the LayerNorm
    # before each MLP (DiT 1e-6, diffusers 1e-5)
    time_freq_shift: int = 0
    mlp_norm_eps: float = 1e-6
    kind: str = "dit"

    def __post_init__(self):
        if self.patch_size not in (1, 2, 4, 8):
            raise ValueError(f"patch_size must be 1, 2, 4 or 8, got {self.patch_size}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} does not split into {self.num_heads} heads")
        if self.context_dim is not None and self.num_classes is not None:
            raise ValueError("a DiT is conditioned on text (context_dim) or on classes (num_classes), not both")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of 4 (2-D sin-cos positions)")

    @property
    def downsampling_factor(self) -> int:
        """H and W must be multiples of this: the patch size."""
        return self.patch_size

    @property
    def num_labels(self) -> int | None:
        """Class-label embeddings: the classes and the null class."""
        return None if self.num_classes is None else self.num_classes + 1

    @property
    def output_channels(self) -> int:
        return 2 * self.out_channels if self.learn_sigma else self.out_channels

    def to_dict(self) -> dict:
        return asdict(self)


def _preset(hidden: int, depth: int, heads: int, patch: int, **kw) -> DiTConfig:
    return DiTConfig(hidden_size=hidden, depth=depth, num_heads=heads, patch_size=patch, **kw)


# The paper's sizes (Table 1) at patch 2 / 4 / 8, for 32 x 32 latents (256 px, f = 8), and CPU ones
DIT_PRESETS: dict[str, DiTConfig] = {
    f"{name}/{p}": _preset(hidden, depth, heads, p, input_size=32, num_classes=1000, learn_sigma=True,
                           class_dropout=0.1)
    for name, (hidden, depth, heads) in {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16),
                                        "XL": (1152, 28, 16)}.items()
    for p in (2, 4, 8)
} | {
    # class-conditional ones trained here take diffusers' numerics, so they export exactly
    "tiny": DiTConfig(hidden_size=64, depth=2, num_heads=4, input_size=8, patch_size=2, num_classes=10,
                      time_freq_shift=1, mlp_norm_eps=1e-5),
    "cpu-s": DiTConfig(hidden_size=192, depth=8, num_heads=6, input_size=8, patch_size=1, num_classes=10,
                       time_freq_shift=1, mlp_norm_eps=1e-5),
    # text-conditioned (PixArt style) on MiniLM's 384-d states: tiny for tests, and shapes-dit's
    "tiny-text": DiTConfig(hidden_size=64, depth=2, num_heads=4, input_size=8, patch_size=2, context_dim=384),
    "cpu-text": DiTConfig(hidden_size=256, depth=5, num_heads=4, input_size=8, patch_size=2, context_dim=384),
}
