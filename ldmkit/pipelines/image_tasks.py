"""Image-to-image, inpainting and outpainting on any ldmkit Pipeline (ldmkit-trained or SD).

img2img (SDEdit, Meng et al. 2022): encode the image, noise its latent to the timestep that
`strength` reaches, z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps, and run the sampler from there.

Inpainting, two ways:
- any text-to-image UNet: at every step the denoiser's estimate x0_hat is replaced by the
  known latent outside the mask, x0 = m * x0_hat + (1 - m) * z_0, so every sampler keeps the
  known part on the noised trajectory of the real image and only the masked part is invented;
- a 9-channel inpainting UNet (SD inpainting): the mask and the masked image's latent are
  joined to z_t as extra input channels, as it was trained.
Either way the pixels outside the mask are returned exactly as given: the decoded image is
composited with the input at the end (a decoder never reproduces them bit for bit).
`resample=r` (RePaint, Lugmayr et al. 2022, jump length 1): after each step from t to s, noise
the sample back to t with q(x_t | x_s) and take the step again, r times, so that the invented
part and the known part agree better; each step is then taken on its own, so multistep
samplers (DPM-Solver++ 2M) run at first order.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ..diffusion import noise_like, q_sample, sampler_timesteps, start_scale
from ..diffusion.consistency import consistency_timesteps
from ..utils.images import to_pil
from . import core
from .controlnet import prepare_control
from .inputs import as_pil, image_tensor, mask_tensor


def _multiple(pipe) -> int:
    return pipe.autoencoder.config.downsampling_factor * pipe.net.config.downsampling_factor


def _encode(pipe, x: torch.Tensor) -> torch.Tensor:
    ae = pipe.autoencoder
    return ae.to_latent(x.to(pipe.device, next(ae.parameters()).dtype)).float()


def inpainting_inputs(autoencoder, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What a 9-channel inpainting UNet takes beside z_t (SD's order): the mask at the latent's
    size (nearest), then the latent of the image with the masked pixels set to 0 (mid-grey).
    x: (B, C, H, W) in [-1, 1]; mask: (B, 1, H, W), 1 = repaint. The trainer uses it too."""
    masked = autoencoder.to_latent((x * (1 - mask)).to(next(autoencoder.parameters()).dtype))
    small_mask = F.interpolate(mask, size=masked.shape[-2:]).to(masked)
    return torch.cat([small_mask, masked], dim=1)


def partial_timesteps(pipe, sampler: str, steps: int, strength: float) -> torch.Tensor:
    """The last int(steps * strength) steps of the model's `steps`-step schedule (as diffusers'
    image-to-image pipelines take them); for a consistency sampler, diffusers' LCM rule."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1] (1 = start from pure noise), got {strength}")
    if sampler in ("lcm", "tcd"):  # all `steps` steps, on the first `strength` of the distillation grid
        ts = consistency_timesteps(pipe.schedule.num_timesteps, steps, pipe.config.sampling.original_inference_steps,
                                   strength)
        return torch.tensor([*ts, -1 if sampler == "lcm" else 0], dtype=torch.float64)
    taken = min(int(steps * strength), steps)
    if taken < 1:
        raise ValueError(f"strength {strength} of {steps} steps leaves no step to take: raise strength or steps")
    return sampler_timesteps(pipe.schedule, sampler, steps, pipe.config.sampling)[steps - taken:]


def _settings(pipe, prompt, num_images, steps, sampler, guidance, output):
    steps, sampler, guidance = core.resolve_settings(pipe, steps, sampler, guidance)
    core.check_generation_model(pipe)
    core.check_settings([prompt], num_images, steps, sampler, guidance, output)
    return steps, sampler, guidance


@torch.no_grad()
def img2img(pipe, image, prompt: str = "", strength: float = 0.6, negative_prompt: str = "", num_images: int = 1,
            steps: int | None = None, sampler: str | None = None, guidance: float | None = None, seed: int = 0,
            output: str = "pil", progress: bool = False, guidance_rescale: float = 0.0,
            hook: core.StepHook | None = None, control_image=None, control_scale=1.0, control_guess_mode=False,
            control_start=0.0, control_end=1.0, image_embeds: torch.Tensor | None = None):
    """`num_images` variations of `image` towards `prompt`; strength in (0, 1]: how much of the
    sampling path to run (1: the image only fixes the size). hook and control_*: as in
    txt2img.generate (the fractions are of the steps this run takes). image_embeds: an unCLIP
    decoder's condition instead of a prompt, one CLIP image embedding (E,) or (1, E) for every
    image, or one each (num_images, E)."""
    steps, sampler, guidance = _settings(pipe, prompt, num_images, steps, sampler, guidance, output)
    x, _ = image_tensor(image, pipe.autoencoder.config.in_channels, _multiple(pipe))
    timesteps = partial_timesteps(pipe, sampler, steps, strength)
    z0 = _encode(pipe, x).expand(num_images, -1, -1, -1)
    gens = core.generators(seed, num_images)
    z_t = q_sample(z0, pipe.schedule.alpha_bar_at(float(timesteps[0])), noise_like(z0, gens))
    control = prepare_control(pipe, control_image, control_scale, control_guess_mode, control_start, control_end,
                              tuple(x.shape[-2:]))
    conditions = core.per_image_conditions(pipe, prompt, image_embeds, negative_prompt, num_images)
    inputs = core.network_inputs(pipe, conditions, negative_prompt, guidance, control=control)
    z = core.run_sampler(pipe, z_t, inputs, sampler, steps, guidance, guidance_rescale, gens, progress,
                         timesteps=timesteps, hook=hook, control=control)
    return core.finish(pipe, z, output)


@torch.no_grad()
def inpaint(pipe, image, mask, prompt: str = "", negative_prompt: str = "", strength: float = 1.0,
            num_images: int = 1, steps: int | None = None, sampler: str | None = None,
            guidance: float | None = None, seed: int = 0, output: str = "pil", progress: bool = False,
            resample: int = 0, guidance_rescale: float = 0.0, hook: core.StepHook | None = None,
            control_image=None, control_scale=1.0, control_guess_mode=False, control_start=0.0, control_end=1.0,
            image_embeds: torch.Tensor | None = None):
    """Repaint the white part of `mask` (same size as `image`) to fit `prompt`; pixels outside
    the mask come back exactly as given. resample: RePaint's extra passes per step (0: off).
    hook: as in txt2img.generate (with resample, after each pass's step); control_*: as there
    (a ControlNet reads z_t, or z_t with the mask channels if made for a 9-channel UNet).
    image_embeds: an unCLIP decoder's condition, as img2img takes it."""
    if not isinstance(resample, int) or resample < 0:
        raise ValueError(f"resample must be a whole number >= 0 (extra passes per step), got {resample!r}")
    steps, sampler, guidance = core.resolve_settings(pipe, steps, sampler, guidance)
    nine_channel = pipe.config.task == "inpainting"
    if not nine_channel:
        core.check_generation_model(pipe)
        core.check_settings([prompt], num_images, steps, sampler, guidance, output)
    x, pil = image_tensor(image, pipe.autoencoder.config.in_channels, _multiple(pipe))
    m = mask_tensor(mask, tuple(x.shape[-2:]))
    timesteps = partial_timesteps(pipe, sampler, steps, strength)
    z0 = _encode(pipe, x).expand(num_images, -1, -1, -1)
    gens = core.generators(seed, num_images)
    noise = noise_like(z0, gens)
    if strength == 1:  # pure noise, as from text: nothing of the masked content leaks in
        z_t = noise * start_scale(pipe.schedule, sampler, timesteps, pipe.config.sampling)
    else:
        z_t = q_sample(z0, pipe.schedule.alpha_bar_at(float(timesteps[0])), noise)
    if nine_channel:  # SD inpainting: z_t, the mask, the masked image's latent
        concat = inpainting_inputs(pipe.autoencoder, x.to(pipe.device), m.to(pipe.device))
        extra, wrapper = {"concat": concat.float().expand(num_images, -1, -1, -1)}, None
    else:  # any UNet: keep x0 = z_0 outside the (latent) mask at every step
        extra = None
        # a latent pixel touched by the mask is repainted
        keep = 1 - (F.interpolate(m, size=z0.shape[-2:], mode="area") > 0).to(z0)

        def wrapper(denoise):
            return lambda x_t, t: keep * z0 + (1 - keep) * denoise(x_t, t)

    control = prepare_control(pipe, control_image, control_scale, control_guess_mode, control_start, control_end,
                              tuple(x.shape[-2:]))
    control = None if control is None else control.at_timesteps(timesteps)  # RePaint's passes: of the whole run
    conditions = core.per_image_conditions(pipe, prompt, image_embeds, negative_prompt, num_images)
    inputs = core.network_inputs(pipe, conditions, negative_prompt, guidance, extra,  # once, for every step
                                 control=control)
    run = lambda z, ts: core.run_sampler(pipe, z, inputs, sampler, steps, guidance, guidance_rescale, gens,
                                         progress and not resample, timesteps=ts, denoiser_wrapper=wrapper, hook=hook,
                                         control=control)
    z = run(z_t, timesteps) if not resample else _resampled(pipe, run, z_t, timesteps, resample, gens)
    if output == "latent":
        return z
    generated = core.decode(pipe, z)
    if output == "tensor":
        m_dev = m.to(generated)
        return m_dev * generated + (1 - m_dev) * x.to(generated)
    mask_image = Image.fromarray((m[0, 0].numpy() * 255).astype(np.uint8))
    return [Image.composite(to_pil(g), pil, mask_image) for g in generated]


def _resampled(pipe, run, z: torch.Tensor, timesteps: torch.Tensor, passes: int, gens) -> torch.Tensor:
    """RePaint: each step t -> s taken 1 + passes times, noising back from s to t in between."""
    for t, s in zip(timesteps[:-1], timesteps[1:]):
        pair = torch.stack([t, s])
        for extra_pass in range(passes + 1):
            z_s = run(z, pair)
            if extra_pass < passes:  # q(x_t | x_s): the forward process from s to t
                ratio = pipe.schedule.alpha_bar_at(float(t)) / pipe.schedule.alpha_bar_at(float(s))
                z = ratio**0.5 * z_s + (1 - ratio) ** 0.5 * noise_like(z_s, gens)
        z = z_s
    return z


def outpaint(pipe, image, prompt: str = "", left: int = 0, right: int = 0, top: int = 0, bottom: int = 0, **options):
    """Extend the canvas by the given pixels on each side and inpaint the new area. The new
    area starts as the image's edge pixels stretched outwards (a neutral context for the encoder)."""
    pil = as_pil(image).convert("L" if pipe.autoencoder.config.in_channels == 1 else "RGB")
    if min(left, right, top, bottom) < 0 or left + right + top + bottom == 0:
        raise ValueError(f"give how far to extend each side (>= 0, at least one > 0), got left={left} "
                         f"right={right} top={top} bottom={bottom}")
    array = np.asarray(pil)
    pad = ((top, bottom), (left, right)) + (((0, 0),) if array.ndim == 3 else ())
    canvas = Image.fromarray(np.pad(array, pad, mode="edge"))
    mask = np.full(array.shape[:2], 0, np.uint8)
    mask = np.pad(mask, ((top, bottom), (left, right)), constant_values=255)
    return inpaint(pipe, canvas, Image.fromarray(mask), prompt, **options)

