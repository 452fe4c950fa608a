"""Super-resolution with a latent upscaler (LDM sec. 4.4; SD's x4 upscaler) or a pixel-space
upsampler (GLIDE's second stage).

The low-resolution image y (in [-1, 1]) is noised to `noise_level` of its own schedule,
y_n = sqrt(a_n) y + sqrt(1 - a_n) eps (noise augmentation: the model was trained on noised
inputs, and more noise lets it invent more detail); y_n is joined to z_t as input channels at
the latent's size, n is the UNet's class label, and the decoder (f = 4) gives the image at
f times the input's size. A pixel-space upsampler (f = 1, lowres.upscale_factor k) first enlarges
y k times (bilinear, as GLIDE and ADM do), since its "latents" are the output image itself.
A text cascade (GLIDE) is two models: `cascade` generates with the base and upsamples its images,
in batches, each as `upscale` would alone.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ..diffusion import make_schedule, noise_like, q_sample
from ..utils.images import to_pil
from . import core
from .inputs import image_tensor


@torch.no_grad()
def upscale(pipe, image, prompt: str = "", negative_prompt: str = "", noise_level: int | None = None,
            num_images: int = 1, steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
            seed: int = 0, latents: torch.Tensor | None = None, output: str = "pil", progress: bool = False,
            guidance_rescale: float = 0.0, hook: core.StepHook | None = None):
    """`image` at the model's upscale factor times its size (a latent upscaler's: the autoencoder's
    factor). Image k draws, from generator seed + k, first the low-resolution noise and then z_T
    (diffusers' order). hook: as in txt2img.generate."""
    y = lowres_input(pipe, image)
    seeds = [seed + k for k in range(num_images)]
    z = upscale_latents(pipe, y.expand(num_images, -1, -1, -1), [prompt] * num_images, seeds, negative_prompt,
                        noise_level, steps, sampler, guidance, latents, progress, guidance_rescale, hook)
    return core.finish(pipe, z, output)


def lowres_input(pipe, image) -> torch.Tensor:
    """(1, C, h, w) in [-1, 1]: the image, its sides made multiples the network can take."""
    if pipe.config.lowres is None:
        raise ValueError(f"{pipe.name} is not an upscaler (no low-resolution input): use generate, img2img or inpaint")
    enlarge = pipe.config.lowres.enlargement(pipe.autoencoder.config.downsampling_factor)
    net_multiple = pipe.net.config.downsampling_factor
    y, _ = image_tensor(image, pipe.config.lowres.channels, net_multiple // math.gcd(net_multiple, enlarge))
    return y


def upscale_latents(pipe, y: torch.Tensor, prompts: list[str], seeds: list[int], negative_prompt: str = "",
                    noise_level: int | None = None, steps: int | None = None, sampler: str | None = None,
                    guidance: float | None = None, latents: torch.Tensor | None = None, progress: bool = False,
                    guidance_rescale: float = 0.0, hook: core.StepHook | None = None,
                    batch_size: int = 64) -> torch.Tensor:
    """Final latents for a batch of low-resolution images y (B, C, h, w) in [-1, 1], row i under
    prompts[i] and drawing from generator seeds[i] (so a row is the same alone or in a batch),
    batch_size rows through the sampler at a time."""
    lowres = pipe.config.lowres
    noise_level = lowres.noise_level if noise_level is None else noise_level
    if not isinstance(noise_level, int) or not 0 <= noise_level <= lowres.max_noise_level:
        raise ValueError(f"noise_level must be a whole number in [0, {lowres.max_noise_level}], got {noise_level!r}")
    steps, sampler, guidance = core.resolve_settings(pipe, steps, sampler, guidance)
    y = enlarged(y, lowres.enlargement(pipe.autoencoder.config.downsampling_factor))  # (B, C, h, w): the latent's size
    shape = (len(y), pipe.autoencoder.config.z_channels, *y.shape[-2:])
    if latents is not None and tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape} for this image, got {tuple(latents.shape)}")
    alpha_bar = float(make_schedule(lowres.schedule).alpha_bar[noise_level])
    results = []
    for start in range(0, len(y), batch_size):
        rows = slice(start, start + batch_size)
        gens = [torch.Generator().manual_seed(s) for s in seeds[rows]]
        y_rows = y[rows].to(pipe.device)
        y_noisy = q_sample(y_rows, alpha_bar, noise_like(y_rows, gens))
        z_T = (
            noise_like(torch.empty((len(gens), *shape[1:]), device=pipe.device), gens) if latents is None
            else latents[rows].to(pipe.device).float()
        )
        extra = {"concat": y_noisy, "class_labels": torch.full((len(gens),), noise_level, device=pipe.device)}
        inputs = core.network_inputs(pipe, prompts[rows], negative_prompt, guidance, extra)
        results.append(core.run_sampler(pipe, z_T, inputs, sampler, steps, guidance, guidance_rescale, gens,
                                        progress, hook=hook))
    return torch.cat(results)


def enlarged(y: torch.Tensor, factor: int) -> torch.Tensor:
    """A pixel-space upsampler's low-resolution input at its output's size: bilinear, factor times
    each side (GLIDE / ADM's super-resolution models); factor 1 returns y as it is."""
    if factor == 1:
        return y
    return F.interpolate(y, scale_factor=factor, mode="bilinear", align_corners=False)  # (B, C, k h, k w)


@torch.no_grad()
def cascade(base, upsampler, prompt: str | list[str], negative_prompt: str = "", num_images: int = 1, seed: int = 0,
            steps: int | None = None, guidance: float | None = None, upsampler_steps: int | None = None,
            upsampler_guidance: float | None = None, noise_level: int | None = None, output: str = "pil",
            sampler: str | None = None, upsampler_sampler: str | None = None):
    """A text cascade (GLIDE, Imagen): the base model's images of each prompt, each then upscaled by
    `upsampler` under the same prompt. Image k of a prompt takes seed + k in both stages.
    Settings left None are each model's defaults. output: "pil" (a list) or "tensor" ((N, C, H, W)
    in [-1, 1])."""
    if output not in ("pil", "tensor"):
        raise ValueError(f"output must be 'pil' or 'tensor', got {output!r}")
    if upsampler.config.lowres is None:
        raise ValueError(f"{upsampler.name} is not an upscaler: a cascade's second model upscales the base's images")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    small = base.generate(prompts, negative_prompt=negative_prompt, num_images=num_images, seed=seed, steps=steps,
                          guidance=guidance, sampler=sampler, output="tensor").cpu()  # (P * n, C, h, w), prompt-major
    y = torch.cat([lowres_input(upsampler, image) for image in small])
    z = upscale_latents(upsampler, y, [prompts[i // num_images] for i in range(len(y))],
                        [seed + i % num_images for i in range(len(y))], negative_prompt, noise_level,
                        upsampler_steps, upsampler_sampler, upsampler_guidance)  # all images in batches
    images = core.decode(upsampler, z).float().cpu()                          # (P * n, C, k h, k w)
    return images if output == "tensor" else [to_pil(x) for x in images]
