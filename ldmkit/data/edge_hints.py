"""Edge-map hints: the Sobel edges of an image, the hint of an edge ControlNet.

Fashion-MNIST as (hint, image, caption) items: the hint is the Sobel gradient magnitude of the
garment (Sobel and Feldman 1968: the 3x3 derivative of a smoothed image), scaled to [0, 1] by
the image's largest value; the prompt is the class's, "a photo of a {class}". The obedience of
a generated garment is the IoU of its silhouette (the pixels brighter than the background) with
the silhouette of the image the edges came from.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .fashion_mnist import caption, load_fashion_mnist

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])  # d/dx; its transpose d/dy
SILHOUETTE = -0.75  # pixels in [-1, 1] above this are the garment, not the black background


def sobel_edges(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> (N, 1, H, W) in [0, 1]: the gradient magnitude of the channel
    mean (borders replicated), divided by each image's largest (an image with none stays 0)."""
    x = (images.float().mean(dim=1, keepdim=True) + 1) / 2                  # (N, 1, H, W) in [0, 1]
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")                            # (N, 1, H + 2, W + 2)
    kernels = torch.stack([SOBEL_X, SOBEL_X.T])[:, None]                    # (2, 1, 3, 3)
    gx, gy = F.conv2d(x, kernels).unbind(dim=1)                             # (N, H, W) each
    magnitude = (gx**2 + gy**2).sqrt()[:, None]                             # (N, 1, H, W)
    peak = magnitude.flatten(1).max(dim=1).values.clamp(min=1e-8).view(-1, 1, 1, 1)
    return magnitude / peak


def fashion_mnist_edges(split: str = "train", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(hints (N, 1, 32, 32) in [0, 1], images (N, 1, 32, 32) in [-1, 1], captions)."""
    images, labels = load_fashion_mnist(split, limit=limit)
    return sobel_edges(images), images, [caption(int(y)) for y in labels]


def silhouette(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool: the pixels of (N, C, H, W) images in [-1, 1] brighter than the background."""
    return images.float().mean(dim=1) > SILHOUETTE


def silhouette_iou(images: torch.Tensor, targets: torch.Tensor) -> float:
    """The mean IoU of generated garments' silhouettes with those of the images their hints came from."""
    a, b = silhouette(images), silhouette(targets)                          # (N, H, W) each
    inter, union = (a & b).flatten(1).sum(1).float(), (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).mean().item()
