"""AutoencoderConfig: the first stage's hyper-parameters as one typed, frozen value, and presets.

One config describes the three first stages of LDM (Rombach et al. 2022, sec. 3.1): a plain
autoencoder ("ae"), a KL-regularised VAE ("kl") and a vector-quantised VAE ("vq"). The encoder
halves the size once per level after the first, so the downsampling factor is
f = 2**(len(channel_mult) - 1): an image (B, C_in, H, W) becomes a latent (B, c, H/f, W/f).
A fourth kind, "pixel", is no network: the identity first stage of a pixel-space diffusion model
(GLIDE, ADM), f = 1 and z = x; of its fields only in_channels and scaling_factor mean anything.
"""

import math
from dataclasses import asdict, dataclass

KINDS = ("ae", "kl", "vq", "pixel")


@dataclass(frozen=True)
class AutoencoderConfig:
    kind: str = "kl"                            # "ae" | "kl" | "vq" | "pixel" (the identity)
    in_channels: int = 3
    out_channels: int | None = None             # None: same as in_channels
    base_channels: int = 128                    # conv_in width; level i has base * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2                     # ResnetBlocks per level in E (+1 in D)
    latent_channels: int = 4                    # c: channels E emits (2c for kl: mean, logvar)
    mid_attention: bool = True                  # self-attention between the two middle ResnetBlocks
    norm_groups: int = 32
    # vq only
    codebook_size: int = 8192                   # K codes (LDM's VQ-f4 uses 8192)
    codebook_dim: int | None = None             # D of a code; None: latent_channels
    beta: float = 0.25                          # commitment weight (van den Oord et al., eq. 3)
    ema: bool = False                           # EMA codebook updates (ibid., appendix A.1)
    ema_decay: float = 0.99                     # gamma; also the decay of the usage average
    restart_dead_codes: bool = False            # re-seed rarely used codes from the batch
    dead_code_threshold: float = 1.0            # dead: EMA of vectors won per batch below this
    # stage 2 sees z0 = scaling_factor * z (LDM sec. 4.3.2: 1 / std of the latents; SD v1: 0.18215)
    scaling_factor: float = 1.0

    def __post_init__(self):
        # JSON gives lists; keep the value hashable and comparable.
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", self.in_channels)
        if self.codebook_dim is None:
            object.__setattr__(self, "codebook_dim", self.latent_channels)
        _validate(self)

    @property
    def downsampling_factor(self) -> int:
        """f: H and W must be multiples of it; the latent is 1/f of the image each side."""
        return 1 if self.kind == "pixel" else 2 ** (len(self.channel_mult) - 1)

    @property
    def double_z(self) -> bool:
        """The KL encoder emits 2c channels: the posterior's mean and log-variance."""
        return self.kind == "kl"

    @property
    def z_channels(self) -> int:
        """Channels of the latent that the decoder and stage 2 see: D for vq, the image's for pixel, else c."""
        if self.kind == "pixel":
            return self.in_channels
        return self.codebook_dim if self.kind == "vq" else self.latent_channels

    def level_channels(self, level: int) -> int:
        return self.base_channels * self.channel_mult[level]

    def to_dict(self) -> dict:
        return asdict(self)


def _validate(c: AutoencoderConfig) -> None:
    def positive(name, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")

    if c.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {c.kind!r}")
    for name in ("in_channels", "out_channels", "base_channels", "num_res_blocks",
                 "latent_channels", "norm_groups", "codebook_size", "codebook_dim"):
        positive(name, getattr(c, name))
    if c.kind == "pixel" and c.out_channels != c.in_channels:
        raise ValueError(f"the pixel first stage is the identity: out_channels ({c.out_channels}) must equal "
                         f"in_channels ({c.in_channels})")
    if not c.channel_mult:
        raise ValueError("channel_mult must name at least one level, got ()")
    for m in c.channel_mult:
        positive("each channel_mult entry", m)

    widths = sorted({c.base_channels} | {c.level_channels(i) for i in range(len(c.channel_mult))})
    for w in widths:
        if w % c.norm_groups:
            raise ValueError(f"channel count {w} is not divisible by norm_groups {c.norm_groups}; "
                             f"widths in this autoencoder: {widths}")

    if not (isinstance(c.scaling_factor, (int, float)) and math.isfinite(c.scaling_factor)
            and c.scaling_factor > 0):
        raise ValueError(f"scaling_factor must be a finite number > 0, got {c.scaling_factor!r}")
    if not c.beta >= 0:
        raise ValueError(f"beta (commitment weight) must be >= 0, got {c.beta!r}")
    if not 0.0 <= c.ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), got {c.ema_decay!r}")
    if not c.dead_code_threshold > 0:
        raise ValueError(f"dead_code_threshold must be > 0, got {c.dead_code_threshold!r}")


AE_PRESETS: dict[str, AutoencoderConfig] = {
    # Tests: f = 2, 167,959 parameters.
    "tiny": AutoencoderConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                              norm_groups=8),
    # Fashion-MNIST 28x28 -> 4x7x7 latents (f = 4), 953,413 parameters: trainable on 2 CPU cores.
    "fmnist-f4": AutoencoderConfig(in_channels=1, base_channels=32, channel_mult=(1, 2, 2),
                                   num_res_blocks=1, norm_groups=8),
    # Without restarts, taming's tiny initial codes leave ~3 of 512 in use after 200 steps here.
    "fmnist-vq-f4": AutoencoderConfig(kind="vq", in_channels=1, base_channels=32,
                                      channel_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8,
                                      codebook_size=512, restart_dead_codes=True),
    # Stable Diffusion v1/v2 VAE (diffusers AutoencoderKL, kl-f8): 83,653,863 parameters.
    "sd-vae": AutoencoderConfig(scaling_factor=0.18215),
}
