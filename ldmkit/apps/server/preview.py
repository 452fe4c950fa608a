"""A cheap live preview of the sampler's clean-latent estimate x0: decoded by the model's distilled
tiny decoder when it has one (ldmkit.pipelines.tiny_decoder), else projected to RGB by one linear
map per first stage (latent channels + 1 -> colour), instead of a full decoder pass.

The map is fitted once, by least squares, to what the encoder makes of flat colours and
gradients: at those the decoder is close to linear, and a flat patch's latent is its colour.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from ...pipelines.tiny_decoder import find_tiny_decoder, tiny_decode
from ...utils.images import to_pil


def previewer(pipe) -> Callable[[torch.Tensor, int], Image.Image]:
    """preview(x0, zoom): the first image of x0 at full resolution, enlarged `zoom` times; by the
    model's tiny decoder if it has one, else by the fitted linear map."""
    if find_tiny_decoder(pipe.autoencoder, pipe.meta) is not None:
        tiny = pipe.tiny_decoder()
        return lambda x0, zoom: _enlarged(to_pil(tiny_decode(tiny, x0[:1].float())[0].cpu()), zoom)
    weights = fit_latent_to_rgb(pipe.autoencoder, pipe.autoencoder.config.in_channels)
    f = pipe.autoencoder.config.downsampling_factor
    return lambda x0, zoom: preview_image(x0, weights, f * zoom)  # the map works at latent resolution


def _enlarged(image: Image.Image, zoom: int) -> Image.Image:
    return image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)


@torch.no_grad()
def fit_latent_to_rgb(autoencoder, channels: int, generator_seed: int = 0) -> torch.Tensor:
    """(c + 1, channels) weights W: image ~ [z, 1] @ W at latent resolution."""
    f = autoencoder.config.downsampling_factor
    g = torch.Generator().manual_seed(generator_seed)
    size = 4 * f
    colours = torch.rand(24, channels, 1, 1, generator=g) * 2 - 1
    ramp = torch.linspace(-1, 1, size).view(1, 1, 1, size)
    images = torch.cat([colours.expand(-1, -1, size, size),  # flat colours
                        (colours * ramp).expand(-1, -1, size, size),  # horizontal gradients
                        (colours * ramp.transpose(2, 3)).expand(-1, -1, size, size)])  # vertical
    param = next(autoencoder.parameters())
    z = autoencoder.to_latent(images.to(param.device, param.dtype)).float().cpu()  # scaled latents
    target = F.avg_pool2d(images, f)
    zs = torch.cat([z, torch.ones_like(z[:, :1])], 1).permute(0, 2, 3, 1).reshape(-1, z.shape[1] + 1)
    return torch.linalg.lstsq(zs, target.permute(0, 2, 3, 1).reshape(-1, channels)).solution


def preview_image(x0: torch.Tensor, weights: torch.Tensor, scale: int) -> Image.Image:
    """The first image of a (B, c, h, w) latent batch as RGB (or gray), enlarged `scale` times."""
    z = x0[0].float().cpu()
    zs = torch.cat([z, torch.ones_like(z[:1])]).permute(1, 2, 0)  # (h, w, c + 1)
    rgb = (zs @ weights).permute(2, 0, 1).clamp(-1, 1)
    image = to_pil(rgb)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)
