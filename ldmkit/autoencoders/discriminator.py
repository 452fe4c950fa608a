"""PatchGAN discriminator (Isola et al. 2017, pix2pix; as taming's NLayerDiscriminator, used by
VQGAN and LDM's first stages).

Each output logit judges one overlapping patch of the input (70x70 pixels for n_layers = 3) as
real or reconstructed, so the adversarial loss pushes local texture and sharpness, which pixel
losses blur. Layout: conv 4x4 stride 2 + LeakyReLU(0.2); n_layers - 1 more stride-2 blocks and
one stride-1 block of conv + norm + LeakyReLU, width doubling up to 8x; a final 1-channel conv.
The layers sit in one Sequential `main` with taming's indices, so its weights load as they are.
"""

import math

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    # BatchNorm as in taming/LDM. It mixes the samples of a batch, so real and fake batches
    # are normalised separately; GroupNorm does not, and behaves the same at batch size 1.
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, base_channels: int = 64, n_layers: int = 3,
                 norm: str = "batch"):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        layers = [nn.Conv2d(in_channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1                  # the last block keeps the size
            # no bias: the norm's shift makes it moot (an inert parameter that Adam would
            # only move by the noise in its ~0 gradient)
            layers += [nn.Conv2d(base_channels * prev, base_channels * mult, 4, stride, 1, bias=False),
                       _norm(norm, base_channels * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(base_channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """x (B, C, H, W) -> logits (B, 1, H', W'), one per patch; with return_features, also the
        activations after each LeakyReLU (for feature matching)."""
        features = []
        for layer in self.main:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                features.append(x)                             # (B, C_i, H_i, W_i)
        return (x, features) if return_features else x


def _init_weights(m: nn.Module) -> None:
    """DCGAN init (Radford et al. 2016), as pix2pix: conv ~ N(0, 0.02), norm scale ~ N(1, 0.02)."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
