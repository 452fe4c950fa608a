"""The pixel-space first stage: the identity where an autoencoder would be, so that a pixel-space
diffusion model (GLIDE, Nichol et al. 2022; ADM) trains, samples, saves and loads through the same
code as a latent one. f = 1, z = s * x with s = config.scaling_factor (1 by default), no weights.

It answers what callers ask of a first stage (config.in_channels / z_channels /
downsampling_factor, encode, decode, to_latent, from_latent, forward) with the image itself.
"""

from __future__ import annotations

import torch
from torch import nn

from ldmkit.autoencoders.autoencoder import Autoencoder, AutoencoderOutput, EncoderOutput
from ldmkit.autoencoders.config import AutoencoderConfig


class PixelSpace(nn.Module):
    """x -> x: images (B, C, H, W) in [-1, 1] are the "latents" stage 2 sees."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        if config.kind != "pixel":
            raise ValueError(f"PixelSpace is the 'pixel' first stage, got a config of kind {config.kind!r}")
        self.config = config
        # No weights, but callers read a first stage's dtype and device from its first parameter,
        # and a model folder keeps one tensor group per part: an empty parameter serves both.
        self.dtype_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        return EncoderOutput(self.checked(x, "image"))

    def decode(self, z: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        return self.checked(z, "latent")

    def forward(self, x: torch.Tensor, gen: torch.Generator | None = None, sample_posterior: bool = True,
                eps: torch.Tensor | None = None) -> AutoencoderOutput:
        return AutoencoderOutput(self.encode(x).h, x)

    def to_latent(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return self.config.scaling_factor * self.encode(x).h

    def from_latent(self, z0: torch.Tensor) -> torch.Tensor:
        return self.decode(z0 / self.config.scaling_factor)

    def checked(self, x: torch.Tensor, what: str) -> torch.Tensor:
        channels = self.config.in_channels
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"expected a pixel-space {what} batch of shape (B, {channels}, H, W), "
                             f"got {tuple(x.shape)}")
        return x


def pixel_space(channels: int) -> PixelSpace:
    """The identity first stage of `channels`-channel images (its config says so: one level, c = C)."""
    return PixelSpace(AutoencoderConfig(kind="pixel", in_channels=channels, latent_channels=channels,
                                        channel_mult=(1,)))


def make_first_stage(config: AutoencoderConfig) -> Autoencoder | PixelSpace:
    """The first stage a config describes, freshly initialised: an autoencoder, or the identity."""
    return PixelSpace(config) if config.kind == "pixel" else Autoencoder(config)
