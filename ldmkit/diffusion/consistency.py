"""Few-step sampling from consistency models: LCM (Luo et al. 2023, "Latent Consistency Models")
and TCD (Zheng et al. 2024, "Trajectory Consistency Distillation"), over the same denoiser
contract as every other sampler (denoise(x_t, t) -> x0_hat).

A consistency model f(x_t, t) maps any point of a probability-flow trajectory to its origin.
LCM parameterises it with the boundary condition f(x, 0) = x built in (LCM eq. 3, after Song et
al. 2023):  f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat(x_t, t).
Multistep consistency sampling (LCM Algorithm 1): denoise, re-noise to the next timestep with
fresh noise, denoise again.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .denoiser import Denoiser
from .gaussian import eps_from_x0
from .schedule import Schedule
from .steps import Callback, noise_like, step_pairs

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0  # LCM's k: c_skip falls to ~0 within a few timesteps of t = 0


def boundary_scalings(t: float, sigma_data: float = SIGMA_DATA,
                      timestep_scaling: float = TIMESTEP_SCALING) -> tuple[float, float]:
    """(c_skip, c_out) at t: c_skip = s^2 / ((k t)^2 + s^2), c_out = k t / sqrt((k t)^2 + s^2),
    so that c_skip(0) = 1 and c_out(0) = 0: f(x, 0) = x."""
    scaled = timestep_scaling * t
    return sigma_data**2 / (scaled**2 + sigma_data**2), scaled / (scaled**2 + sigma_data**2) ** 0.5


def consistency_timesteps(num_train_timesteps: int, steps: int, original_steps: int = 50,
                          strength: float = 1.0) -> list[int]:
    """The timesteps LCM samples at (diffusers' LCMScheduler rule): the distillation's skipping
    schedule of `original_steps` points, t_k = k * (T / original_steps) - 1, cut to the first
    `strength` of it (image-to-image), then `steps` of them at evenly spaced indices from the top.
    T = 1000, 4 steps: 999, 759, 499, 259."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    if steps > original_steps:
        raise ValueError(f"{steps} steps: a consistency model samples at most original_inference_steps = "
                         f"{original_steps} steps (the points of the schedule it was distilled on)")
    skip = num_train_timesteps // original_steps
    origin = np.arange(1, int(original_steps * strength) + 1) * skip - 1
    if len(origin) < steps:
        raise ValueError(f"strength {strength} leaves {len(origin)} of the {original_steps} distillation "
                         f"timesteps, fewer than the {steps} steps asked: raise strength or lower steps")
    origin = origin[::-1]
    indices = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
    return [int(t) for t in origin[indices]]


@torch.no_grad()
def sample_lcm(denoise: Denoiser, x, sched: Schedule, timesteps, gen=None, callback: Callback = None,
               sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING):
    """LCM multistep sampling. timesteps: (N + 1,), the last -1 (each step's consistency output is
    the answer of the last step; the landing value is not used otherwise)."""
    for i, (t, s) in enumerate(step_pairs(timesteps)):
        c_skip, c_out = boundary_scalings(t, sigma_data, timestep_scaling)
        x0 = c_skip * x + c_out * denoise(x, t)
        if i < len(timesteps) - 2:  # re-noise to the next timestep: x_s ~ q(x_s | x0)
            a_s = sched.alpha_bar_at(s)
            x = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * noise_like(x, gen)
        else:
            x = x0
        if callback is not None:
            callback(i, x, x0)
    return x


@torch.no_grad()
def sample_tcd(denoise: Denoiser, x, sched: Schedule, timesteps, gen=None, gamma: float = 0.3,
               callback: Callback = None):
    """TCD's strategic stochastic sampling (Zheng et al. 2024, eq. 9): from x_t, the DDIM jump
    to s' = floor((1 - gamma) s) below the next timestep s, then forward noise back up to s.
    gamma = 0 is deterministic (DDIM-like); gamma = 1 is LCM's full re-noising. timesteps:
    (N + 1,), the last 0 (as diffusers' TCDScheduler lands)."""
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    for i, (t, s) in enumerate(step_pairs(timesteps)):
        x0 = denoise(x, t)
        eps = eps_from_x0(x, x0, sched.alpha_bar_at(t))
        s_prime = math.floor((1 - gamma) * s)
        a_sp = sched.alpha_bar_at(s_prime)
        x_sp = math.sqrt(a_sp) * x0 + math.sqrt(1 - a_sp) * eps  # the jump along the trajectory
        if gamma > 0 and i < len(timesteps) - 2:
            ratio = sched.alpha_bar_at(s) / a_sp
            x = math.sqrt(ratio) * x_sp + math.sqrt(1 - ratio) * noise_like(x, gen)
        else:
            x = x_sp
        if callback is not None:
            callback(i, x, x0)
    return x
