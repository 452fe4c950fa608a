"""PSNR and SSIM of images in [-1, 1] (data range 2), per image.

SSIM as in Wang et al. 2004, eq. 13: an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
K2 = 0.03, averaged over the valid region and the channels; the same choices as
scikit-image's structural_similarity(gaussian_weights=True, use_sample_covariance=False).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """10 log10(range^2 / MSE) per image: (B,)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp(min=1e-12))


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()  # (C, 1, k, k)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image: (B,). Images must be at least window x window."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are smaller than the {window}x{window} SSIM window")
    x, y = x.double(), y.double()
    C = x.shape[1]
    w = _gaussian_window(window, sigma, C, x.device, x.dtype)
    blur = lambda t: F.conv2d(t, w, groups=C)  # noqa: E731  valid region only
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))  # eq. 13
    return s.flatten(1).mean(1).float()


def gradient_energy_ratio(x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared finite-difference gradient of the reconstruction over that of the original,
    per image: (B,). Blurry reconstructions score below 1; a measure of sharpness that needs no
    pretrained network (PSNR and SSIM reward the blur that averages over uncertain detail)."""

    def energy(t: torch.Tensor) -> torch.Tensor:
        t = t.double()
        dx, dy = t[..., :, 1:] - t[..., :, :-1], t[..., 1:, :] - t[..., :-1, :]
        return dx.pow(2).flatten(1).mean(1) + dy.pow(2).flatten(1).mean(1)

    return (energy(x_rec) / energy(x).clamp(min=1e-12)).float()
