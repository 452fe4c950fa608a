"""A small class-conditional GAN: a DCGAN generator (Radford et al. 2016) and the project's
PatchGAN discriminator (the adversary of VQGAN's first stages) with a projection head for the
class (Miyato & Koyama 2018).

Generator: [z, e(y)] -> linear -> 4x4 features -> (ConvTranspose 4x4 stride 2, BatchNorm, ReLU)
per doubling of the size, the width halving each time -> the last one to `channels` -> tanh,
images in [-1, 1] like the data. Discriminator: D(x, y) = the PatchGAN's logit of each patch
plus <V_y, phi(x)>, phi(x) its last feature map, mean-pooled; one verdict per patch, each also
asking whether the image fits its class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..autoencoders.discriminator import PatchDiscriminator

CONDITIONINGS = ("class", "none")


@dataclass(frozen=True)
class GANConfig:
    z_dim: int = 128
    base_channels: int = 64  # the generator's width at half size; it doubles per halving, down to 4x4
    image_size: int = 32  # 4 * 2^n pixels
    channels: int = 1
    num_classes: int = 10
    conditioning: str = "class"  # class | none
    d_base_channels: int = 64  # the PatchGAN's width (VQGAN's 64)
    d_layers: int = 3  # its stride-2 blocks less one (n_layers); 3 judges 2x2 patches of a 32x32 image
    d_norm: str = "batch"  # batch (as VQGAN's) | group

    def __post_init__(self):
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of 2 and >= 8 (4x4 doubled n times), got {self.image_size}")
        for name in ("z_dim", "base_channels", "channels", "num_classes", "d_base_channels", "d_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_norm not in ("batch", "group"):
            raise ValueError(f"d_norm must be 'batch' or 'group', got {self.d_norm!r}")

    @property
    def upsamplings(self) -> int:
        """The doublings from 4x4 to image_size."""
        return int(math.log2(self.image_size // 4))


class Generator(nn.Module):
    """(z (B, z_dim), class labels (B,)) -> images (B, channels, image_size, image_size) in [-1, 1]."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = c = config
        # The class joins z as a learned embedding, concatenated (conditional GANs, Mirza &
        # Osindero 2014): through the first linear layer it is a learned class-dependent offset
        # of the 4x4 features, which every later layer builds on. Conditional BatchNorm (BigGAN)
        # puts it into every layer, worth its per-class gains for 1000 classes, not for 10; and
        # an embedding (rather than a one-hot) is where a text encoder's vector would go instead.
        self.class_embedding = nn.Embedding(c.num_classes, c.z_dim) if c.conditioning == "class" else None
        inputs = c.z_dim * (2 if self.class_embedding is not None else 1)
        width = c.base_channels * 2 ** (c.upsamplings - 1)  # at 4x4
        # no biases before a BatchNorm: its shift makes them moot
        self.project = nn.Linear(inputs, width * 4 * 4, bias=False)
        self.project_norm = nn.BatchNorm2d(width)
        blocks = []
        for _ in range(c.upsamplings - 1):
            # kernel 4, stride 2: every output pixel gets the same number of taps, so no
            # checkerboard (Odena et al. 2016)
            blocks += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2),
                       nn.ReLU(True)]
            width //= 2
        blocks += [nn.ConvTranspose2d(width, c.channels, 4, 2, 1), nn.Tanh()]  # DCGAN: no norm on the output
        self.blocks = nn.Sequential(*blocks)
        self.apply(_dcgan_init)  # the class embedding keeps torch's N(0, 1): z's scale, not drowned out

    def forward(self, z: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this generator is class-conditional: give class_labels")
            z = torch.cat([z, self.class_embedding(class_labels).to(z.dtype)], dim=1)  # (B, 2 z_dim)
        h = self.project(z).view(len(z), -1, 4, 4)
        h = torch.relu(self.project_norm(h))  # (B, width, 4, 4)
        return self.blocks(h)

    @torch.no_grad()
    def refresh_batch_statistics(self, classes: Sequence[int] | None = None, batches: int = 16,
                                 batch_size: int = 64, seed: int = 0) -> Generator:
        """Recompute BatchNorm's running statistics as the average over `batches` batches of fresh
        samples, z ~ N(0, I) and classes drawn uniformly from `classes` (those trained on; None:
        all), from `seed` (BigGAN's "standing statistics", Brock et al. 2019). Eval mode uses them;
        those tracked in training belong to earlier weights and, averaged into an EMA of the
        weights, to none at all."""
        choices = torch.tensor(range(self.config.num_classes) if classes is None else list(classes))
        norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches
        was_training, like = self.training, next(self.parameters())
        self.train()
        gen = torch.Generator().manual_seed(seed)
        for _ in range(batches):
            z = torch.randn((batch_size, self.config.z_dim), generator=gen).to(like.device, like.dtype)
            labels = choices[torch.randint(len(choices), (batch_size,), generator=gen)].to(like.device)
            self(z, labels if self.class_embedding is not None else None)
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        return self.train(was_training)


class ProjectionDiscriminator(nn.Module):
    """(images (B, C, H, W), class labels (B,)) -> logits (B, 1, H', W'), one per patch.

    D(x, y)_patch = psi(x)_patch + <V_y, phi(x)> (Miyato & Koyama 2018, eq. 3): psi the PatchGAN's
    own logits, phi(x) its last activations mean-pooled over positions (the mean rather than the
    paper's sum, so the term's scale does not depend on the image size), V a learned vector per
    class. The class term is the same for every patch of an image."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.patches = PatchDiscriminator(config.channels, config.d_base_channels, config.d_layers, config.d_norm)
        width = config.d_base_channels * min(2**config.d_layers, 8)  # that of its last activations
        self.class_embedding = None
        if config.conditioning == "class":
            self.class_embedding = nn.Embedding(config.num_classes, width)
            nn.init.xavier_uniform_(self.class_embedding.weight)  # as the paper's code (Glorot)

    def forward(self, x: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        logits, features = self.patches(x, return_features=True)
        if self.class_embedding is None:
            return logits
        if class_labels is None:
            raise ValueError("this discriminator is class-conditional: give class_labels")
        pooled = features[-1].mean(dim=(2, 3))  # phi(x): (B, width)
        projection = (self.class_embedding(class_labels).to(pooled.dtype) * pooled).sum(dim=1)  # (B,)
        return logits + projection.view(-1, 1, 1, 1)


def _dcgan_init(m: nn.Module) -> None:
    """DCGAN's init (Radford et al. 2016), as the PatchGAN's: weights ~ N(0, 0.02), norm scales ~ N(1, 0.02)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
