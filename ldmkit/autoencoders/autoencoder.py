"""The first stage of LDM: an autoencoder x -> z -> x~ with one of three latent regularisers.

  ae: z = E(x), no regulariser.
  kl: q(z|x) = N(mu, sigma^2) from E(x); a small KL(q || N(0, I)) keeps z near unit scale.
  vq: z = the nearest codebook vectors to E(x); LDM puts the quantiser inside the decoder, so
      `decode` quantises whatever latent it is given (a diffusion sample lands between codes).
quant_conv / post_quant_conv are 1x1 convs around the latent, as in LDM and diffusers.
Stage 2 works on z0 = s * z with s = config.scaling_factor (LDM sec. 4.3.2): `to_latent` and
`from_latent` apply and undo it. Names: B batch, C channels, H W image size, f downsampling
factor, c channels of z (config.z_channels).
"""

from dataclasses import dataclass

import torch
from torch import nn

from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.autoencoders.encoder_decoder import Decoder, Encoder
from ldmkit.autoencoders.kl import DiagonalGaussian
from ldmkit.autoencoders.vq import VectorQuantizer, VQOutput


@dataclass
class EncoderOutput:
    h: torch.Tensor                              # (B, c', H/f, W/f) after quant_conv: z (ae),
                                                 # mean|logvar (kl, 2c), z_e before quantising (vq)
    posterior: DiagonalGaussian | None = None    # kl only


@dataclass
class AutoencoderOutput:
    reconstruction: torch.Tensor                 # (B, C_out, H, W)
    z: torch.Tensor                              # (B, c, H/f, W/f): the unscaled latent decoded
    posterior: DiagonalGaussian | None = None    # kl only
    kl: torch.Tensor | None = None               # (B,) KL(q(z|x) || N(0, I)) per sample, kl only
    vq: VQOutput | None = None                   # vq only: losses, codes, perplexity, usage


class Autoencoder(nn.Module):
    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        if config.kind == "pixel":
            raise ValueError("the 'pixel' first stage is the identity, not an autoencoder: build it with "
                             "ldmkit.autoencoders.make_first_stage (PixelSpace)")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        c, moments = config.latent_channels, 2 * config.latent_channels
        if config.kind == "kl":
            self.quant_conv = nn.Conv2d(moments, moments, 1)
            self.post_quant_conv = nn.Conv2d(c, c, 1)
        elif config.kind == "vq":
            self.quant_conv = nn.Conv2d(c, config.codebook_dim, 1)
            self.quantizer = VectorQuantizer.from_config(config)
            self.post_quant_conv = nn.Conv2d(config.codebook_dim, c, 1)
        else:
            self.quant_conv = nn.Conv2d(c, c, 1)
            self.post_quant_conv = nn.Conv2d(c, c, 1)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output conv weight, where the adaptive GAN weight compares gradients."""
        return self.decoder.conv_out.weight

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        """x (B, C_in, H, W), H and W multiples of f -> the encoder's output; see EncoderOutput."""
        self._check(x, self.config.in_channels, self.config.downsampling_factor, "image")
        h = self.quant_conv(self.encoder(x))                                   # (B, c', H/f, W/f)
        posterior = DiagonalGaussian.from_moments(h) if self.config.kind == "kl" else None
        return EncoderOutput(h, posterior)

    def decode(self, z: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Unscaled latent z (B, c, h, w) -> image (B, C_out, f h, f w). A vq model snaps z to
        its nearest codes first unless quantize=False."""
        self._check(z, self.config.z_channels, 1, "latent")
        if self.config.kind == "vq" and quantize:
            z = self.quantizer.quantize(z)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, gen: torch.Generator | None = None,
                sample_posterior: bool = True, eps: torch.Tensor | None = None) -> AutoencoderOutput:
        """Reconstruct x and return the regulariser's terms. kl: z is a posterior sample (the
        mean if sample_posterior=False), with noise eps if given, else drawn from gen; vq: z is
        quantised and, in training mode, the codebook's EMA, usage and dead codes are updated."""
        enc = self.encode(x)
        posterior, kl, vq = enc.posterior, None, None
        if posterior is not None:
            z = posterior.sample(gen, eps) if sample_posterior else posterior.mode()  # (B, c, H/f, W/f)
            kl = posterior.kl()                                                # (B,)
        elif self.config.kind == "vq":
            vq = self.quantizer(enc.h)
            z = vq.z_q                                                         # (B, D, H/f, W/f)
        else:
            z = enc.h
        reconstruction = self.decoder(self.post_quant_conv(z))                 # (B, C_out, H, W)
        return AutoencoderOutput(reconstruction, z, posterior, kl, vq)

    def to_latent(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Image (B, C_in, H, W) -> scaled latent z0 = s * z (B, c, H/f, W/f) for stage 2.
        kl: the posterior mean, or a sample when a generator is given; vq: quantised."""
        enc = self.encode(x)
        if enc.posterior is not None:
            z = enc.posterior.mode() if gen is None else enc.posterior.sample(gen)
        elif self.config.kind == "vq":
            z = self.quantizer.quantize(enc.h)
        else:
            z = enc.h
        return self.config.scaling_factor * z

    def from_latent(self, z0: torch.Tensor) -> torch.Tensor:
        """Scaled latent z0 (B, c, h, w) -> image (B, C_out, f h, f w): decode(z0 / s)."""
        return self.decode(z0 / self.config.scaling_factor)

    @staticmethod
    def _check(x: torch.Tensor, channels: int, multiple: int, what: str) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            article = "an" if what[0] in "aeiou" else "a"
            raise ValueError(f"expected {article} {what} batch of shape (B, {channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(f"{what} size {tuple(x.shape[-2:])} is not divisible by the "
                             f"downsampling factor f = {multiple}; H and W must be multiples of "
                             f"{multiple}")
