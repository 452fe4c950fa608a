"""A tiny autoencoder with the TAESD architecture (madebyollin's Tiny AutoEncoder for Stable
Diffusion): plain 3x3 convs and ReLUs, no normalisation, no attention, about a million
parameters per half. Each half is distilled from a large VAE, so its latents are that VAE's and
its decoder can stand in for the large one: a cheap decode for live previews, or a fast one.

    encoder   conv, Blocks; per later stage a stride-2 conv (no bias) and Blocks; conv to latent
    decoder   tanh(z / 3) * 3 (a soft clamp), conv, ReLU; per stage Blocks, then nearest
              upsampling and a conv (no bias), or after the last stage a conv to the image
    Block     conv-ReLU-conv-ReLU-conv plus a skip (a 1x1 conv when the width changes), ReLU

TinyEncoder and TinyDecoder work in TAESD's own convention (images in [0, 1]), so each computes
exactly what the original repository's nn.Sequential does. TinyAutoencoder.encode / decode use
diffusers' AutoencoderTiny convention instead: images in [-1, 1] in, and decoded images in about
[-1, 1] out (not clamped). The latents are the large VAE's latents at the scale its diffusion
model uses (for SD that is already z * 0.18215, hence scaling_factor 1.0); scaling_factor and
shift_factor, as in diffusers, take them to that scale for other families.

Module and attribute names (encoder.layers.N, Block.conv / skip / fuse) are diffusers' own, so a
diffusers folder loads without renaming (ldmkit.io.taesd_files).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# The decoder's input clamp, tanh(z / CLAMP) * CLAMP: fixed in TAESD (original and diffusers) and
# not read from the config; latent_magnitude, also 3, is the separate 8-bit storage range.
CLAMP = 3.0


@dataclass(frozen=True)
class TinyAutoencoderConfig:
    """diffusers' AutoencoderTiny defaults (SD's TAESD), with its field names."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    encoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64)
    decoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64)
    num_encoder_blocks: tuple[int, ...] = (1, 3, 3, 3)   # Blocks per encoder stage
    num_decoder_blocks: tuple[int, ...] = (3, 3, 3, 1)   # Blocks per decoder stage
    upsampling_scaling_factor: int = 2
    latent_magnitude: float = 3.0    # scale_latents maps [-magnitude, magnitude] to [0, 1] ...
    latent_shift: float = 0.5        # ... centred here
    scaling_factor: float = 1.0      # to_latent: (z - shift_factor) * scaling_factor
    shift_factor: float = 0.0

    def __post_init__(self):
        if len(self.encoder_block_out_channels) != len(self.num_encoder_blocks):
            raise ValueError(f"encoder_block_out_channels {self.encoder_block_out_channels} and num_encoder_blocks "
                             f"{self.num_encoder_blocks} must have one entry per stage")
        if len(self.decoder_block_out_channels) != len(self.num_decoder_blocks):
            raise ValueError(f"decoder_block_out_channels {self.decoder_block_out_channels} and num_decoder_blocks "
                             f"{self.num_decoder_blocks} must have one entry per stage")
        if not self.num_encoder_blocks or not self.num_decoder_blocks:
            raise ValueError("the encoder and the decoder need at least one stage each")
        widths = (self.in_channels, self.out_channels, self.latent_channels, *self.encoder_block_out_channels,
                  *self.decoder_block_out_channels, self.upsampling_scaling_factor)
        if min(widths) < 1 or min(*self.num_encoder_blocks, *self.num_decoder_blocks) < 0:
            raise ValueError(f"channel counts and the upsampling factor must be positive, block counts >= 0: {self}")

    @property
    def downsampling_factor(self) -> int:
        """Image size over latent size: each encoder stage after the first halves it."""
        return 2 ** (len(self.num_encoder_blocks) - 1)

    @property
    def upsampling_factor(self) -> int:
        """Decoded size over latent size: each decoder stage but the last upsamples."""
        return self.upsampling_scaling_factor ** (len(self.num_decoder_blocks) - 1)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


class TinyBlock(nn.Module):
    """conv-ReLU-conv-ReLU-conv plus a skip, then ReLU. The names conv / skip / fuse are those of
    both weight layouts."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(conv3x3(in_channels, out_channels), nn.ReLU(),
                                  conv3x3(out_channels, out_channels), nn.ReLU(),
                                  conv3x3(out_channels, out_channels))
        same_width = in_channels == out_channels
        self.skip = nn.Identity() if same_width else nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class TinyEncoder(nn.Module):
    """Image in [0, 1] (B, in_channels, H, W) -> latent (B, latent_channels, H/f, W/f)."""

    def __init__(self, config: TinyAutoencoderConfig):
        super().__init__()
        layers: list[nn.Module] = []
        width = config.in_channels
        stages = zip(config.encoder_block_out_channels, config.num_encoder_blocks)
        for stage, (channels, blocks) in enumerate(stages):
            # Stage 0 keeps the resolution; each later one halves it with a strided conv.
            layers.append(conv3x3(width, channels) if stage == 0 else conv3x3(width, channels, stride=2, bias=False))
            layers += [TinyBlock(channels, channels) for _ in range(blocks)]
            width = channels
        layers.append(conv3x3(width, config.latent_channels))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TinyDecoder(nn.Module):
    """Latent (B, latent_channels, h, w) -> image in about [0, 1] (B, out_channels, f h, f w)."""

    def __init__(self, config: TinyAutoencoderConfig):
        super().__init__()
        widths = config.decoder_block_out_channels
        layers: list[nn.Module] = [conv3x3(config.latent_channels, widths[0]), nn.ReLU()]
        for stage, (channels, blocks) in enumerate(zip(widths, config.num_decoder_blocks)):
            layers += [TinyBlock(channels, channels) for _ in range(blocks)]
            if stage + 1 < len(widths):
                layers += [nn.Upsample(scale_factor=config.upsampling_scaling_factor, mode="nearest"),
                           conv3x3(channels, widths[stage + 1], bias=False)]
            else:
                layers.append(conv3x3(channels, config.out_channels))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # The soft clamp keeps out-of-range latents (a diffusion sample mid-way) from blowing up.
        return self.layers(torch.tanh(z / CLAMP) * CLAMP)


class TinyAutoencoder(nn.Module):
    """TAESD: encode images in [-1, 1] to latents, decode latents to images in about [-1, 1]."""

    def __init__(self, config: TinyAutoencoderConfig | None = None):
        super().__init__()
        self.config = config or TinyAutoencoderConfig()
        self.encoder = TinyEncoder(self.config)
        self.decoder = TinyDecoder(self.config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> latents (B, c, H/f, W/f)."""
        self._check(x, self.config.in_channels, "image")
        return self.encoder(x.add(1).div(2))  # TAESD's networks see images in [0, 1]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, c, h, w) -> images (B, C, f h, f w) in about [-1, 1], not clamped (as diffusers)."""
        self._check(z, self.config.latent_channels, "latent")
        return self.decoder(z).mul(2).sub(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct x through latents stored in 8 bits, as diffusers' AutoencoderTiny.forward
        does (TAESD's latents are meant to fit an 8-bit image)."""
        return self.decode(self.quantize_latents(self.encode(x)))

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> [0, 1]: the range of an 8-bit image."""
        return z.div(2 * self.config.latent_magnitude).add(self.config.latent_shift).clamp(0, 1)

    def unscale_latents(self, u: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> latents: the inverse of scale_latents inside its range."""
        return u.sub(self.config.latent_shift).mul(2 * self.config.latent_magnitude)

    def quantize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Latents rounded to the 256 levels of scale_latents."""
        return self.unscale_latents(self.scale_latents(z).mul(255).round().div(255))

    def to_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the diffusion model's latents, (z - shift_factor) * scaling_factor."""
        return (self.encode(x) - self.config.shift_factor) * self.config.scaling_factor

    def from_latent(self, z0: torch.Tensor) -> torch.Tensor:
        """The diffusion model's latents -> images in about [-1, 1]: undoes to_latent's scaling."""
        return self.decode(z0 / self.config.scaling_factor + self.config.shift_factor)

    @staticmethod
    def _check(x: torch.Tensor, channels: int, what: str) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"expected a batch of {what}s of shape (B, {channels}, H, W), got {tuple(x.shape)}")
