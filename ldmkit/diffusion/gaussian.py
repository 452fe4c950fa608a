"""The Gaussian forward process of DDPM and the three things a network may predict.

Legend (Ho et al. 2020; Salimans & Ho 2022): x0 clean data, eps ~ N(0, I) the noise,
alpha_bar = alpha_bar_t, x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps, and the velocity
v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0. `alpha_bar` may be a float or a tensor that
broadcasts against x (one value per sample: shape (B, 1, 1, 1)).
"""

from __future__ import annotations

import torch

Scalar = float | torch.Tensor
PREDICTIONS = ("eps", "x0", "v")


def q_sample(x0: torch.Tensor, alpha_bar: Scalar, eps: torch.Tensor) -> torch.Tensor:
    """Sample q(x_t | x_0) in closed form, DDPM eq. 4."""
    return alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * eps


def q_posterior(
    x0: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: Scalar, alpha_bar_s: Scalar
) -> tuple[torch.Tensor, Scalar]:
    """Mean and variance of q(x_s | x_t, x_0) for s < t, DDPM eqs. 6-7 with the step from s to t
    (alpha = alpha_bar_t / alpha_bar_s, beta = 1 - alpha; s = t - 1 gives the paper's form)."""
    alpha = alpha_bar_t / alpha_bar_s
    beta = 1 - alpha
    mean = (
        alpha_bar_s**0.5 * beta / (1 - alpha_bar_t) * x0
        + alpha**0.5 * (1 - alpha_bar_s) / (1 - alpha_bar_t) * x_t
    )  # eq. 7, mu_tilde
    variance = (1 - alpha_bar_s) / (1 - alpha_bar_t) * beta  # eq. 7, beta_tilde
    return mean, variance


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: Scalar) -> torch.Tensor:
    return (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5  # eq. 4 solved for x0


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: Scalar) -> torch.Tensor:
    return (x_t - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5  # eq. 4 solved for eps


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: Scalar) -> torch.Tensor:
    return alpha_bar**0.5 * eps - (1 - alpha_bar) ** 0.5 * x0  # Salimans & Ho, sec. 4


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: Scalar) -> torch.Tensor:
    return alpha_bar**0.5 * x_t - (1 - alpha_bar) ** 0.5 * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: Scalar) -> torch.Tensor:
    return (1 - alpha_bar) ** 0.5 * x_t + alpha_bar**0.5 * v


def prediction_to_x0(
    output: torch.Tensor, x_t: torch.Tensor, alpha_bar: Scalar, prediction: str
) -> torch.Tensor:
    """The clean-data estimate implied by a network's eps, x0 or v output."""
    if prediction == "eps":
        return x0_from_eps(x_t, output, alpha_bar)
    if prediction == "v":
        return x0_from_v(x_t, output, alpha_bar)
    if prediction == "x0":
        return output
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of {PREDICTIONS}")


def training_target(
    x0: torch.Tensor, eps: torch.Tensor, alpha_bar: Scalar, prediction: str
) -> torch.Tensor:
    """What a network with the given prediction type is trained to output."""
    if prediction == "eps":
        return eps
    if prediction == "v":
        return v_from_x0_eps(x0, eps, alpha_bar)
    if prediction == "x0":
        return x0
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of {PREDICTIONS}")
