"""Samplers: small pure functions of a denoiser.

Every sampler has the same call: `sample_x(denoise, x, sched, timesteps, gen=None, ..., callback=None)`
- denoise(x_t, t) -> x0_hat (see denoiser.py); guidance, if any, is already inside it;
- x: the sample at timesteps[0], in the variance-preserving scale (pure noise N(0, I) for
  text-to-image, q(x_t | x_0) for image-to-image);
- timesteps: (N + 1,) descending, from `make_timesteps`; the last is where the sampler lands
  (-1: clean data). N model evaluations (Heun: 2N - 1);
- gen: the torch.Generator for every random draw, so a seed gives the same result each time;
- callback(i, x, x0_hat), if given, after each step (progress bars, trajectories).
It returns the sample at timesteps[-1] in the same scale as x.

Legend: a_t = alpha_bar_t, sigma = sqrt((1 - a_t) / a_t) (VE noise level); in sigma space the
sample is x / sqrt(a_t) = x0 + sigma eps (Karras et al. 2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .consistency import sample_lcm, sample_tcd
from .denoiser import Denoiser
from .gaussian import eps_from_x0
from .learned_variance import step_log_variance
from .schedule import Schedule
from .steps import Callback, noise_like, step_pairs


@torch.no_grad()
def sample_ddpm(denoise: Denoiser, x, sched: Schedule, timesteps, gen=None,
                variance: str | Callable[[torch.Tensor, float], torch.Tensor] = "small",
                callback: Callback = None):
    """Ancestral sampling from the posterior q(x_s | x_t, x0_hat), Ho et al. 2020 (Algorithm 2).
    variance: "small" = beta_tilde (eq. 7), "large" = beta (sec. 3.2), or a learned variance:
    a function v(x_t, t) -> the network's variance channels in [-1, 1], called after
    denoise(x_t, t) (learned_variance.split_variance), giving IDDPM's eq. 15 for each step."""
    learned = callable(variance)
    if not learned and variance not in ("small", "large"):
        raise ValueError(f"DDPM variance must be 'small' or 'large' (or a learned v(x_t, t)), got {variance!r}")
    for i, (t, s) in enumerate(step_pairs(timesteps)):
        a_t, a_s = sched.alpha_bar_at(t), sched.alpha_bar_at(s)
        alpha, beta = a_t / a_s, 1 - a_t / a_s  # the step from s to t
        x0 = denoise(x, t)
        mean = a_s**0.5 * beta / (1 - a_t) * x0 + alpha**0.5 * (1 - a_s) / (1 - a_t) * x  # eq. 7
        if s < 0:
            x = mean
        elif learned:
            log_var = step_log_variance(variance(x, t), a_t, a_s)  # IDDPM eq. 15, (B, C, H, W)
            x = mean + (0.5 * log_var).exp() * noise_like(x, gen)
        else:
            var = beta * (1 - a_s) / (1 - a_t) if variance == "small" else beta
            x = mean + var**0.5 * noise_like(x, gen)
        if callback:
            callback(i, x, x0)
    return x


@torch.no_grad()
def sample_ddim(denoise: Denoiser, x, sched: Schedule, timesteps, gen=None, eta=0.0, callback: Callback = None):
    """DDIM, Song et al. 2021. eta=0 is deterministic; eta=1 over every step is ancestral DDPM."""
    for i, (t, s) in enumerate(step_pairs(timesteps)):
        a_t, a_s = sched.alpha_bar_at(t), sched.alpha_bar_at(s)
        x0 = denoise(x, t)
        eps = eps_from_x0(x, x0, a_t)  # eq. 9 solved for eps
        sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)) ** 0.5  # eq. 16
        x = a_s**0.5 * x0 + max(1 - a_s - sigma**2, 0.0) ** 0.5 * eps  # eq. 12
        if eta > 0:
            x = x + sigma * noise_like(x, gen)
        if callback:
            callback(i, x, x0)
    return x


def _sigmas(sched: Schedule, timesteps) -> list[float]:
    return [sched.sigma_at(t, clamp=True) for t in timesteps]


def _to_sigma_space(x, sigma):
    return x * (1 + sigma**2) ** 0.5  # x_t / sqrt(a_t)


def _to_vp(x, sigma):
    return x / (1 + sigma**2) ** 0.5


@torch.no_grad()
def sample_euler(denoise: Denoiser, x, sched: Schedule, timesteps, gen=None, callback: Callback = None):
    """Euler steps of the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma,
    Karras et al. 2022 eq. 3 / Algorithm 1 without the Heun correction."""
    pairs, sigmas = step_pairs(timesteps), _sigmas(sched, timesteps)
    x = _to_sigma_space(x, sigmas[0])
    for i, (t, _) in enumerate(pairs):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(_to_vp(x, sigma), t)
        d = (x - x0) / sigma  # dx/dsigma
        x = x + d * (sigma_next - sigma)
        if callback:
            callback(i, _to_vp(x, sigma_next), x0)
    return _to_vp(x, sigmas[-1])


@torch.no_grad()
def sample_euler_ancestral(denoise: Denoiser, x, sched: Schedule, timesteps, gen=None, eta=1.0,
                           callback: Callback = None):
    """Euler down to sigma_down, then fresh noise of std sigma_up, so that
    sigma_down^2 + sigma_up^2 = sigma_next^2 (the ancestral split of k-diffusion)."""
    pairs, sigmas = step_pairs(timesteps), _sigmas(sched, timesteps)
    x = _to_sigma_space(x, sigmas[0])
    for i, (t, _) in enumerate(pairs):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        sigma_up = min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        x0 = denoise(_to_vp(x, sigma), t)
        d = (x - x0) / sigma
        x = x + d * (sigma_down - sigma) + sigma_up * noise_like(x, gen)
        if callback:
            callback(i, _to_vp(x, sigma_next), x0)
    return _to_vp(x, sigmas[-1])


@torch.no_grad()
def sample_heun(denoise: Denoiser, x, sched: Schedule, timesteps, gen=None, callback: Callback = None):
    """Heun's second-order method, Karras et al. 2022 Algorithm 1 (S_churn = 0): an Euler step,
    then the average of the slopes at both ends; the last step to sigma = 0 stays Euler."""
    pairs, sigmas = step_pairs(timesteps), _sigmas(sched, timesteps)
    x = _to_sigma_space(x, sigmas[0])
    for i, (t, s) in enumerate(pairs):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(_to_vp(x, sigma), t)
        d = (x - x0) / sigma  # Algorithm 1, line 7
        x_euler = x + d * (sigma_next - sigma)  # line 8
        if sigma_next == 0:
            x = x_euler
        else:
            x0_next = denoise(_to_vp(x_euler, sigma_next), s)
            d_next = (x_euler - x0_next) / sigma_next  # line 10
            x = x + (d + d_next) / 2 * (sigma_next - sigma)  # line 11
        if callback:
            callback(i, _to_vp(x, sigma_next), x0)
    return _to_vp(x, sigmas[-1])


def _alpha_sigma_lambda(sigma: float) -> tuple[float, float, float]:
    """VP coefficients of x_t = alpha x0 + sigma_vp eps and the half-log-SNR lambda = log(alpha/sigma_vp)."""
    alpha = 1 / (1 + sigma**2) ** 0.5
    sigma_vp = sigma * alpha
    return alpha, sigma_vp, (-math.log(sigma) if sigma > 0 else math.inf)


@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoiser, x, sched: Schedule, timesteps, gen=None, callback: Callback = None):
    """DPM-Solver++(2M), Lu et al. 2022, Algorithm 2: the exponential integrator in lambda with
    the data prediction, second order from the previous step's x0 (first order on the first
    step and on the last, to sigma = 0)."""
    return _dpmpp_2m(denoise, x, sched, timesteps, gen, sde=False, callback=callback)


@torch.no_grad()
def sample_dpmpp_2m_sde(denoise: Denoiser, x, sched: Schedule, timesteps, gen=None, callback: Callback = None):
    """SDE-DPM-Solver++(2M), Lu et al. 2022 (v2, sec. 5 / appendix): the same data-prediction
    multistep, with the SDE's injected noise and e^{-h} decay of the current sample."""
    return _dpmpp_2m(denoise, x, sched, timesteps, gen, sde=True, callback=callback)


def _dpmpp_2m(denoise, x, sched, timesteps, gen, sde, callback):
    pairs, sigmas = step_pairs(timesteps), _sigmas(sched, timesteps)
    x0_prev, h_prev = None, None
    for i, (t, _) in enumerate(pairs):
        alpha_s, sigma_s, lambda_s = _alpha_sigma_lambda(sigmas[i])
        alpha_t, sigma_t, lambda_t = _alpha_sigma_lambda(sigmas[i + 1])
        x0 = denoise(x, t)
        noise = noise_like(x, gen) if sde else None  # drawn every step: same draws as diffusers
        if sigmas[i + 1] == 0:
            x = x0  # the exact last step: every update below reduces to x0 as sigma_t -> 0
        else:
            h = lambda_t - lambda_s
            if x0_prev is None:
                d = x0  # first order: DPM-Solver++(1) = DDIM
            else:
                r = h_prev / h
                d = x0 + (x0 - x0_prev) / (2 * r)  # eq. 17 with the midpoint correction
            if sde:
                x = (
                    sigma_t / sigma_s * math.exp(-h) * x
                    + alpha_t * (1 - math.exp(-2 * h)) * d
                    + sigma_t * (1 - math.exp(-2 * h)) ** 0.5 * noise
                )
            else:
                x = sigma_t / sigma_s * x - alpha_t * math.expm1(-h) * d
            h_prev = h
        x0_prev = x0
        if callback:
            callback(i, x, x0)
    return x


SAMPLERS: dict[str, Callable] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_a": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "lcm": sample_lcm,  # consistency.py: few-step sampling of consistency models
    "tcd": sample_tcd,
}


def get_sampler(name: str) -> Callable:
    """The sampler registered under `name`."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}") from None
