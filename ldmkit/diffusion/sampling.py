"""One call from a network to samples: bind conditioning, add guidance, pick a sampler."""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from tqdm.auto import tqdm

from .denoiser import as_denoiser
from .guidance import classifier_free_guidance
from .samplers import get_sampler
from .schedule import Schedule, make_timesteps


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
    **sampler_options,
) -> torch.Tensor:
    """Run `sampler` for `steps` steps from x (noise at the first timestep) to clean data.

    model(x_t, t, **cond) returns the network's `prediction` (eps, x0 or v). With guidance != 1
    and `uncond` given, classifier-free guidance combines the two in one batched call.
    Trailing spacing starts at t = T - 1, where x ~ N(0, I) is right (Lin et al. 2024).
    """
    get_sampler(sampler)  # a clear error for a bad name before any work
    cond = dict(cond or {})
    if uncond is not None and guidance != 1.0:
        model_fn = classifier_free_guidance(model, cond, uncond, guidance, guidance_rescale)
    else:
        model_fn = lambda x_t, t: model(x_t, t, **cond)  # noqa: E731
    denoise = as_denoiser(model_fn, sched, prediction)
    timesteps = make_timesteps(sched, steps, spacing)
    bar = tqdm(total=steps, desc=sampler, disable=not progress, leave=False)
    callback = lambda i, x_i, x0: bar.update(1)  # noqa: E731
    try:
        return get_sampler(sampler)(denoise, x, sched, timesteps, gen=gen, callback=callback, **sampler_options)
    finally:
        bar.close()
