"""Super-resolution with a latent upscaler (LDM sec. 4.4; SD's x4 upscaler).

The low-resolution image y (in [-1, 1]) is noised to `noise_level` of its own schedule,
y_n = sqrt(a_n) y + sqrt(1 - a_n) eps (noise augmentation: the model was trained on noised
inputs, and more noise lets it invent more detail); y_n is joined to z_t as input channels at
the latent's size, n is the UNet's class label, and the decoder (f = 4) gives the image at
f times the input's size.
"""

from __future__ import annotations

import torch

from ..diffusion import make_schedule, noise_like, q_sample
from . import core
from .inputs import image_tensor


@torch.no_grad()
def upscale(pipe, image, prompt: str = "", negative_prompt: str = "", noise_level: int | None = None,
            num_images: int = 1, steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
            seed: int = 0, latents: torch.Tensor | None = None, output: str = "pil", progress: bool = False,
            guidance_rescale: float = 0.0, hook: core.StepHook | None = None):
    """`image` at the autoencoder's factor times its size. Image k draws, from generator
    seed + k, first the low-resolution noise and then z_T (diffusers' order). hook: as in
    txt2img.generate."""
    lowres = pipe.config.lowres
    if lowres is None:
        raise ValueError(f"{pipe.name} is not an upscaler (no low-resolution input): use generate, img2img or inpaint")
    noise_level = lowres.noise_level if noise_level is None else noise_level
    if not isinstance(noise_level, int) or not 0 <= noise_level <= lowres.max_noise_level:
        raise ValueError(f"noise_level must be a whole number in [0, {lowres.max_noise_level}], got {noise_level!r}")
    steps, sampler, guidance = core.resolve_settings(pipe, steps, sampler, guidance)
    y, _ = image_tensor(image, lowres.channels, pipe.net.config.downsampling_factor)
    shape = (num_images, pipe.autoencoder.config.z_channels, *y.shape[-2:])
    if latents is not None and tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape} for this image, got {tuple(latents.shape)}")
    gens = core.generators(seed, num_images)
    y = y.to(pipe.device).expand(num_images, -1, -1, -1)
    alpha_bar = float(make_schedule(lowres.schedule).alpha_bar[noise_level])
    y_noisy = q_sample(y, alpha_bar, noise_like(y, gens))
    z_T = (
        noise_like(torch.empty(shape, device=pipe.device), gens) if latents is None
        else latents.to(pipe.device).float()
    )
    extra = {"concat": y_noisy, "class_labels": torch.full((num_images,), noise_level, device=pipe.device)}
    inputs = core.network_inputs(pipe, [prompt] * num_images, negative_prompt, guidance, extra)
    z = core.run_sampler(pipe, z_T, inputs, sampler, steps, guidance, guidance_rescale, gens, progress, hook=hook)
    return core.finish(pipe, z, output)
