"""The settings of a tiny-decoder distillation run (`ldmkit distill-tiny-decoder`), and the TAESD
architecture it trains for a first stage of factor f."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..autoencoders.tiny import TinyAutoencoderConfig


@dataclass(frozen=True)
class TinyDecoderTrainConfig:
    model: str = "fashion-mnist"  # the teacher: a shipped model, a model folder or an autoencoder folder
    dataset: str | None = None  # its training images (None: the teacher's data set)
    width: int = 32  # channels of the decoder's latent-resolution stages (the full-resolution one: width // 2)
    blocks: int = 2  # TAESD Blocks per decoder stage (the full-resolution one: 1)
    encoder_width: int = 32  # channels of the encoder's strided stages (the first: encoder_width // 2)
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    lr_schedule: str = "cosine"
    grad_clip: float | None = 1.0
    l1_weight: float = 0.1  # loss = MSE + l1_weight * L1 against the teacher's decode
    encoder_weight: float = 1.0  # the tiny encoder's MSE to the teacher's scaled latents, learnt alongside
    # Rows of a batch decoded from noised latents z0 + sigma * eps, sigma ~ U(0, noise_max) in units of
    # the unit-variance latents: a sampler's x0 estimates and final latents lie off the encoder's outputs.
    noisy_fraction: float = 0.5
    noise_max: float = 0.5
    data_limit: int | None = 16384  # training images (None: the whole data set)
    eval_images: int = 500  # held-out images for the PSNR against the teacher
    speed_images: int = 64  # the batch the decode speeds are timed on ...
    speed_seconds: float = 3.0  # ... for this long each
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 20

    def __post_init__(self):
        if min(self.width, self.blocks, self.encoder_width, self.steps, self.batch_size) < 1:
            raise ValueError("width, blocks, encoder_width, steps and batch_size must be >= 1")
        if self.width < 2 or self.encoder_width < 2:
            raise ValueError("width and encoder_width must be >= 2 (their halves are the outer stages' widths)")
        if not 0 <= self.noisy_fraction <= 1 or self.noise_max < 0:
            raise ValueError(f"noisy_fraction must be in [0, 1] and noise_max >= 0, got {self.noisy_fraction}, "
                             f"{self.noise_max}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        for name in ("log_every", "checkpoint_every", "keep_checkpoints", "eval_images", "speed_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def tiny_architecture(config: TinyDecoderTrainConfig, factor: int, image_channels: int,
                      latent_channels: int) -> TinyAutoencoderConfig:
    """TAESD's layout sized for 32x32 images: one 2x stage per factor of two in f (f=4: two
    upsamplings), Blocks at the latent resolutions, one narrow Block at full resolution (the
    costliest place per channel). Latents are the teacher's at its diffusion scale, so scaling 1."""
    ups = round(math.log2(factor))
    if factor < 1 or 2**ups != factor:
        raise ValueError(f"a tiny decoder needs a power-of-two downsampling factor, got f = {factor}")
    w, e = config.width, config.encoder_width
    return TinyAutoencoderConfig(
        in_channels=image_channels, out_channels=image_channels, latent_channels=latent_channels,
        encoder_block_out_channels=(e // 2,) + (e,) * ups, num_encoder_blocks=(1,) * (ups + 1),
        decoder_block_out_channels=(w,) * ups + (w // 2,), num_decoder_blocks=(config.blocks,) * ups + (1,),
    )


TINY_DECODER_PRESETS: dict[str, TinyDecoderTrainConfig] = {
    # ~0.3-0.5 s/step on one busy core (batch 32): 2,000 steps in 10-15 minutes
    "default": TinyDecoderTrainConfig(),
    # for tests: narrow, a few images, a few steps
    "tiny": TinyDecoderTrainConfig(width=8, blocks=1, encoder_width=8, steps=40, batch_size=8, lr=3e-3,
                                   warmup_steps=2, data_limit=8, eval_images=8, speed_images=4, speed_seconds=0.05,
                                   log_every=1,
                                   checkpoint_every=10, noisy_fraction=0.25, noise_max=0.2),
}
