"""The training objective of DDPM / LDM, for eps, x0 or v targets.

LDM eq. 2: L = E_{x0, eps, t} || target - net(x_t, t) ||^2 with x_t from q(x_t | x0) and t
uniform over {0..T-1}. Options: min-SNR-gamma weighting (Hang et al. 2023) and offset noise
(a per-channel constant added to eps, Guttenberg 2023) for very dark or bright images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .gaussian import PREDICTIONS, q_sample, training_target
from .learned_variance import vlb_bits
from .schedule import Schedule


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar)."""
    return alpha_bar / (1 - alpha_bar)


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Per-sample weight giving the min-SNR-gamma loss, min(SNR, gamma), in each parametrisation:
    the eps loss equals the x0 loss times SNR and the v loss equals it times SNR + 1."""
    ratio = snr(alpha_bar)
    clipped = ratio.clamp(max=gamma)
    if prediction == "eps":
        return clipped / ratio
    if prediction == "v":
        return clipped / (ratio + 1)
    return clipped


def diffusion_loss(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    sched: Schedule,
    prediction: str = "eps",
    min_snr_gamma: float | None = None,
    offset_noise: float = 0.0,
    gen: torch.Generator | None = None,
    shard: tuple[int, int] = (0, 1),
    learn_sigma: bool = False,
) -> torch.Tensor:
    """Mean loss over the batch. model_fn(x_t, t) takes t as a (B,) long tensor and returns a
    tensor shaped like x_t; conditioning is bound into it by the caller. shard = (rank, world):
    x0 is rows rank*B .. (rank+1)*B of a global batch of world*B, and t and eps are drawn for
    the global batch and cut the same way, so data-parallel processes together draw exactly
    what one process would. learn_sigma: the network also outputs variance channels, trained by
    IDDPM's hybrid loss L_simple + L_vlb (learned_variance.py; eps prediction only)."""
    if learn_sigma and prediction != "eps":
        raise ValueError(f"a learned variance is trained with eps prediction (IDDPM's hybrid loss), not {prediction}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {PREDICTIONS}")
    B, (rank, world) = x0.shape[0], shard
    rows = slice(rank * B, (rank + 1) * B)
    device = gen.device if gen is not None else x0.device
    t = torch.randint(0, sched.num_timesteps, (world * B,), generator=gen, device=device)[rows].to(x0.device)
    eps = torch.randn((world * B, *x0.shape[1:]), generator=gen, device=device, dtype=x0.dtype)[rows].to(x0.device)
    if offset_noise:
        shift = torch.randn((world * B, x0.shape[1]) + (1,) * (x0.ndim - 2), generator=gen, device=device)
        eps = eps + offset_noise * shift[rows].to(x0)
    alpha_bar = sched.alpha_bar.to(x0.device)[t].to(x0.dtype).view(B, *([1] * (x0.ndim - 1)))
    x_t = q_sample(x0, alpha_bar, eps)
    target = training_target(x0, eps, alpha_bar, prediction)
    output = model_fn(x_t, t).float()
    if learn_sigma:
        output, v = output.split(x0.shape[1], dim=1)  # (eps, variance interpolation)
        vlb = vlb_bits(x0.float(), x_t.float(), t, output.detach(), v, sched)  # the mean held fixed
    per_sample = (output - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weight(alpha_bar.flatten().float(), min_snr_gamma, prediction)
    if learn_sigma:
        per_sample = per_sample + vlb
    return per_sample.mean()
