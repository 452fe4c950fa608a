"""Learned reverse-process variances (Nichol & Dhariwal 2021, "Improved DDPM", sec. 3.1), as DiT
trains them: the network's second C channels v in [-1, 1] interpolate the log-variance between
the two bounds DDPM names, log Sigma = f log beta_t + (1 - f) log beta_tilde_t with f = (v + 1)/2,
and the variational bound L_vlb trains them while the simple loss trains the mean (the mean is
held fixed inside L_vlb: IDDPM's stop-gradient, eq. 16: L_hybrid = L_simple + L_vlb).

Sampling with it (IDDPM sec. 4, DiT's sampler): ancestral DDPM whose step t -> s takes the
variance exp(log Sigma) of eq. 15 written with that step's own beta and beta_tilde, so that
strided (respaced) timesteps work as well as all T (`step_log_variance`); `split_variance` lets
one network evaluation give both the denoiser's mean channels and the sampler's v.
"""

from __future__ import annotations

import math

import torch

from .denoiser import ModelFn
from .gaussian import q_posterior, x0_from_eps
from .schedule import Schedule


def posterior_log_variance(sched: Schedule, t: torch.Tensor) -> torch.Tensor:
    """log beta_tilde_t, with t = 0 (where beta_tilde is 0) given beta_tilde_1, as IDDPM clips it."""
    ab = sched.alpha_bar.double()
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    beta_tilde = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    beta_tilde = torch.cat([beta_tilde[1:2], beta_tilde[1:]])
    return beta_tilde.log().to(t.device)[t].float()


def interpolate_log_variance(v: torch.Tensor, min_log, max_log) -> torch.Tensor:
    """log Sigma = f log beta + (1 - f) log beta_tilde, f = (v + 1)/2 (eq. 15): v = -1 gives
    beta_tilde (`min_log`), v = +1 beta (`max_log`)."""
    fraction = (v + 1) / 2
    return fraction * max_log + (1 - fraction) * min_log


def learned_log_variance(v: torch.Tensor, sched: Schedule, t: torch.Tensor) -> torch.Tensor:
    """log Sigma_theta(x_t, t) from the network's variance channels v (B, C, ...)."""
    shape = (-1,) + (1,) * (v.ndim - 1)
    min_log = posterior_log_variance(sched, t).view(shape)
    max_log = sched.betas.double().log().to(t.device)[t].float().view(shape)
    return interpolate_log_variance(v, min_log, max_log)


def step_log_variance(v: torch.Tensor, alpha_bar_t: float, alpha_bar_s: float) -> torch.Tensor:
    """log Sigma of a reverse step t -> s, s < t not necessarily t - 1: eq. 15 with the step's own
    beta = 1 - alpha_bar_t / alpha_bar_s and beta_tilde = beta (1 - alpha_bar_s) / (1 - alpha_bar_t),
    those of IDDPM's respaced chain (sec. 4) and of diffusers' DDPMScheduler "learned_range" with
    its prev_t. beta_tilde = 0 (s = -1, landing on clean data) is clamped to 1e-20 as diffusers
    does; DDPM adds no noise there anyway."""
    beta = 1 - alpha_bar_t / alpha_bar_s
    beta_tilde = max(beta * (1 - alpha_bar_s) / (1 - alpha_bar_t), 1e-20)  # DDPM eq. 7
    return interpolate_log_variance(v, math.log(beta_tilde), math.log(beta))


def split_variance(model_fn: ModelFn, channels: int) -> tuple[ModelFn, ModelFn]:
    """(mean_fn, variance_fn) from a network whose output (B, 2C, ...) is its prediction (eps)
    and then its variance channels v, C = `channels`: mean_fn(x_t, t) returns the first C
    channels, variance_fn(x_t, t) the last C. One evaluation serves both: variance_fn returns
    the v of mean_fn's last call when that was at the same x_t (the same tensor) and t, as in a
    DDPM step, and evaluates the network again otherwise."""
    last: list = [None, None, None]  # x_t, t, v of mean_fn's last call

    def mean_fn(x_t: torch.Tensor, t: float) -> torch.Tensor:
        out = model_fn(x_t, t)  # (B, 2C, ...)
        last[:] = x_t, t, out[:, channels:]
        return out[:, :channels]  # (B, C, ...)

    def variance_fn(x_t: torch.Tensor, t: float) -> torch.Tensor:
        if last[0] is x_t and last[1] == t:
            return last[2]
        return model_fn(x_t, t)[:, channels:]

    return mean_fn, variance_fn


def normal_kl(mean1, log_var1, mean2, log_var2) -> torch.Tensor:
    """KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)), elementwise, in nats."""
    return 0.5 * (-1.0 + log_var2 - log_var1 + torch.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * torch.exp(-log_var2))


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) by the tanh approximation IDDPM uses (|error| < 1e-3)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) of values x in [-1, 1] on a grid of 255 bins under N(mean, e^(2 log_scale)),
    elementwise, the edge bins open (DDPM's decoder L_0)."""
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _standard_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_minus = _standard_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_minus = (1.0 - cdf_minus).clamp(min=1e-12).log()
    cdf_delta = cdf_plus - cdf_minus
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_minus, cdf_delta.clamp(min=1e-12).log()))


def vlb_bits(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, v: torch.Tensor,
             sched: Schedule) -> torch.Tensor:
    """L_vlb per sample in bits per dimension: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for t > 0,
    the decoder's -log p(x0 | x1) at t = 0. p's mean comes from `eps` (pass it detached for
    IDDPM's stop-gradient), its variance from v."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    ab = sched.alpha_bar.to(x0.device).float()
    ab_t = ab[t].view(shape)
    ab_prev = torch.where(t > 0, ab[(t - 1).clamp(min=0)], torch.ones_like(ab[t])).view(shape)
    true_mean, _ = q_posterior(x0, x_t, ab_t, ab_prev)
    true_log_var = posterior_log_variance(sched, t).view(shape)
    model_mean, _ = q_posterior(x0_from_eps(x_t, eps, ab_t), x_t, ab_t, ab_prev)
    model_log_var = learned_log_variance(v, sched, t)
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).flatten(1).mean(1) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var).flatten(1).mean(1) / math.log(2.0)
    return torch.where(t == 0, nll, kl)
