"""The one call shape every sampler uses: `denoise(x_t, t) -> x0_hat`.

A sampler never sees a network, a prediction type or conditioning: it gets a function of the
noisy sample x_t (in the variance-preserving scale of DDPM) and a timestep t (a float; Karras
timesteps are fractional) that returns the clean-data estimate. x0 is the quantity that is
finite at every t, zero terminal SNR included (eps is not: x0 = (x_t - eps) / 0 there), and the
one the modern solvers are written in (Karras et al. 2022 D(x; sigma), DPM-Solver++).
Networks predicting eps, x0 or v are wrapped once here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .gaussian import prediction_to_x0
from .schedule import Schedule

ModelFn = Callable[[torch.Tensor, float], torch.Tensor]  # (x_t, t) -> network output
Denoiser = Callable[[torch.Tensor, float], torch.Tensor]  # (x_t, t) -> x0_hat


def as_denoiser(model_fn: ModelFn, sched: Schedule, prediction: str = "eps") -> Denoiser:
    """Wrap a network (conditioning already bound, guidance already applied) predicting
    `prediction` into the denoiser contract."""

    def denoise(x_t: torch.Tensor, t: float) -> torch.Tensor:
        output = model_fn(x_t, t)
        return prediction_to_x0(output, x_t, sched.alpha_bar_at(t), prediction)

    return denoise


def clip_x0(denoise: Denoiser, limit: float = 1.0) -> Denoiser:
    """Clamp the x0 estimate to [-limit, limit] (DDPM's `clip_sample`, for pixel-space data)."""

    def clipped(x_t: torch.Tensor, t: float) -> torch.Tensor:
        return denoise(x_t, t).clamp(-limit, limit)

    return clipped
