"""One call from a network to samples: bind conditioning, add guidance, pick a sampler."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .consistency import consistency_timesteps
from .denoiser import as_denoiser
from .guidance import classifier_free_guidance
from .learned_variance import split_variance
from .samplers import get_sampler
from .schedule import SPACINGS, Schedule, make_timesteps


@dataclass(frozen=True)
class SamplingConfig:
    """How a model's own scheduler places the sampling timesteps; recorded with the model, so
    that a Stable Diffusion checkpoint samples exactly as its reference pipeline does.
    ldmkit's models use trailing spacing (Lin et al. 2024). spacing=None means each sampler's
    default in diffusers (DDIM: leading; Euler, Heun, DPM-Solver: linspace), which is what a
    diffusers pipeline does with SD v1/v2's scheduler configs, as they name no spacing."""

    spacing: str | None = "trailing"
    offset: int = 0
    ddim_final_alpha_one: bool = True  # DDIM's last step lands on clean data (else on t = 0)
    # Euler-type samplers start from sigma_max * noise in sigma space (k-diffusion's convention,
    # and diffusers' for linspace / trailing spacing) rather than sqrt(1 + sigma_max^2) * noise
    sigma_max_start: bool = False
    # consistency models (lcm, tcd) sample on the grid they were distilled on: this many points
    original_inference_steps: int = 50

    def __post_init__(self):
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise ValueError(f"unknown timestep spacing {self.spacing!r}; choose one of {SPACINGS} or None")


_DIFFUSERS_DEFAULT_SPACING = {"ddim": "leading", "ddpm": "leading"}  # every other sampler: linspace


def sampler_timesteps(sched: Schedule, sampler: str, steps: int,
                      config: SamplingConfig = SamplingConfig()) -> torch.Tensor:
    """The (steps + 1,) timesteps `sampler` takes under `config`, placed as diffusers' matching
    scheduler places them. Its rules differ by scheduler: DPM-Solver divides T into steps + 1
    parts and drops the smallest; Euler-type linspace timesteps are not rounded; only DDIM may
    land on t = 0 instead of -1 (set_alpha_to_one=False)."""
    T = sched.num_timesteps
    if sampler in ("lcm", "tcd"):  # diffusers' LCMScheduler / TCDScheduler rule, whatever the spacing
        ts = consistency_timesteps(T, steps, config.original_inference_steps)
        return torch.tensor([*ts, -1 if sampler == "lcm" else 0], dtype=torch.float64)
    spacing = config.spacing or _DIFFUSERS_DEFAULT_SPACING.get(sampler, "linspace")
    final = -1 if sampler != "ddim" or config.ddim_final_alpha_one else 0
    if sampler.startswith("dpmpp") and spacing in ("leading", "linspace"):
        ts = make_timesteps(sched, steps + 1, spacing, config.offset if spacing == "leading" else 0)
        return torch.cat([ts[:-2], ts.new_tensor([final])])
    if sampler in ("euler", "euler_a", "heun") and spacing == "linspace":
        ts = torch.linspace(0, T - 1, steps, dtype=torch.float32).double().flip(0)  # diffusers: float32, unrounded
        return torch.cat([ts, ts.new_tensor([final])])
    return make_timesteps(sched, steps, spacing, config.offset if spacing == "leading" else 0, final=final)


def start_scale(sched: Schedule, sampler: str, timesteps: torch.Tensor, config: SamplingConfig) -> float:
    """The factor on N(0, I) noise that gives the sampler's starting sample under `config`:
    sigma / sqrt(1 + sigma^2) at the first timestep under `sigma_max_start`, else 1."""
    spacing = config.spacing or _DIFFUSERS_DEFAULT_SPACING.get(sampler, "linspace")
    if config.sigma_max_start and sampler in ("euler", "euler_a", "heun") and spacing != "leading":
        sigma = sched.sigma_at(float(timesteps[0]), clamp=True)
        return sigma / (1 + sigma**2) ** 0.5
    return 1.0


def sample(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sched: Schedule,
    sampler: str = "dpmpp_2m",
    steps: int = 20,
    spacing: str = "trailing",
    prediction: str = "eps",
    cond: Mapping[str, torch.Tensor | None] | None = None,
    uncond: Mapping[str, torch.Tensor | None] | None = None,
    guidance: float = 1.0,
    guidance_rescale: float = 0.0,
    gen: torch.Generator | None = None,
    progress: bool = False,
    timesteps: torch.Tensor | None = None,
    denoiser_wrapper: Callable[[Callable], Callable] | None = None,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    learn_sigma: bool = False,
    **sampler_options,
) -> torch.Tensor:
    """Run `sampler` for `steps` steps from x (noise at the first timestep) to clean data.

    model(x_t, t, **cond) returns the network's `prediction` (eps, x0 or v). With guidance != 1
    and `uncond` given, classifier-free guidance combines the two in one batched call.
    Trailing spacing starts at t = T - 1, where x ~ N(0, I) is right (Lin et al. 2024).
    `timesteps`, if given, replaces `steps` and `spacing` (see `sampler_timesteps`).
    `denoiser_wrapper`, if given, wraps the denoiser (x_t, t) -> x0_hat, e.g. to keep the known
    part of an image fixed while inpainting.
    `callback(i, x_i, x0_hat)`, if given, runs after each step (previews, cancelling).
    `learn_sigma`: the model's output has twice x's channels, its prediction and then a learned
    variance v (IDDPM, DiT). Guidance combines the prediction only, v is the conditional
    branch's; "ddpm" samples with the learned variance (unless `variance` is given among the
    sampler options), every other sampler uses the prediction only.
    """
    get_sampler(sampler)  # a clear error for a bad name before any work
    cond = dict(cond or {})
    channels = x.shape[1] if learn_sigma else None  # the prediction's; v follows
    if uncond is not None and guidance != 1.0:
        model_fn = classifier_free_guidance(model, cond, uncond, guidance, guidance_rescale, channels)
    else:
        model_fn = lambda x_t, t: model(x_t, t, **cond)  # noqa: E731
    if learn_sigma:
        model_fn, variance_fn = split_variance(model_fn, channels)
        if sampler == "ddpm":
            sampler_options.setdefault("variance", variance_fn)
    denoise = as_denoiser(model_fn, sched, prediction)
    if denoiser_wrapper is not None:
        denoise = denoiser_wrapper(denoise)
    if timesteps is None:
        timesteps = make_timesteps(sched, steps, spacing)
    bar = tqdm(total=len(timesteps) - 1, desc=sampler, disable=not progress, leave=False)

    def after_step(i, x_i, x0):
        bar.update(1)
        if callback is not None:
            callback(i, x_i, x0)

    try:
        return get_sampler(sampler)(denoise, x, sched, timesteps, gen=gen, callback=after_step, **sampler_options)
    finally:
        bar.close()
