"""The composition core every task is built from: settings, conditioning, the network's inputs,
sampling with a per-step hook, decoding. Functions of a Pipeline (ldmkit.pipelines.pipeline).

Generation (LDM sec. 3.3): encode the prompts, draw z_T ~ N(0, I) in latent space, run a sampler
with classifier-free guidance, decode x = D(z_0 / s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from ..autoencoders.tiling import tiled_decode
from ..diffusion import SAMPLERS, clip_x0, sample, sampler_timesteps, start_scale
from ..model.class_labels import checked_class_labels
from ..nets.deepcache import DeepCache
from ..utils.images import to_pil
from .controlnet import WEIGHT as CONTROL_WEIGHT
from .controlnet import Control, control_weights
from .tiny_decoder import tiny_decode

OUTPUTS = ("pil", "tensor", "latent")


@dataclass(frozen=True)
class Step:
    """What a step hook sees after each sampler step: latents (B, c, h, w) in float32."""

    index: int  # 0-based; the last is total - 1
    total: int
    x_t: torch.Tensor  # the sample after this step
    x0: torch.Tensor  # the denoiser's estimate of the clean latents at this step


StepHook = Callable[[Step], None]


class Cancelled(Exception):
    """Raised by a step hook to stop a run: nothing is decoded, returned or written."""


def resolve_settings(pipe, steps=None, sampler=None, guidance=None) -> tuple[int, str, float]:
    """(steps, sampler, guidance), the model's defaults where None."""
    d = pipe.defaults
    return (d.steps if steps is None else steps, d.sampler if sampler is None else sampler,
            d.guidance if guidance is None else guidance)


def check_settings(prompts: Sequence[str | torch.Tensor], num_images: int, steps, sampler: str, guidance,
                   output: str) -> None:
    """Clear errors for settings no task can run with. prompts: strings, or an image-embedding
    model's embeddings (conditions)."""
    if not prompts or not all(isinstance(p, str | torch.Tensor) for p in prompts):
        raise ValueError("prompt must be a string or a non-empty list of strings")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps}")
    if guidance < 0:
        raise ValueError(f"guidance must be >= 0 (1 = no guidance, 0 = unconditional), got {guidance}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")


def check_generation_model(pipe) -> None:
    """Refuse, with the right task's name, a model whose network needs more than z_t."""
    if pipe.config.task == "upscaling":
        raise ValueError(f"{pipe.name} is an upscaler: it needs a low-resolution image, use upscale(image)")
    if pipe.config.task == "inpainting":
        raise ValueError(
            f"this model's UNet takes {pipe.net.config.in_channels} input channels, the latents have "
            f"{pipe.autoencoder.config.z_channels}: it is an inpainting model (latents + mask + masked "
            "image), which text-to-image generate() cannot drive"
        )


def class_prompts(pipe, class_labels: Sequence[int], prompts: Sequence[str]) -> list[str]:
    """The class names of a class-conditional model's labels (prompts stay empty beside them)."""
    if pipe.config.conditioning != "class":
        raise ValueError(f"class_labels need a class-conditional model; {pipe.name} is conditioned on "
                         f"{pipe.config.conditioning!r}: give a prompt instead")
    if any(prompts) and list(prompts) != [""]:
        raise ValueError("give class_labels or a prompt, not both")
    labels = checked_class_labels(class_labels, pipe.class_names, pipe.name)
    return [pipe.class_names[k] for k in labels]


def conditions(pipe, prompts: Sequence[str], image_embeds: torch.Tensor | None,
               negative_prompt: str = "") -> list[str | torch.Tensor]:
    """What each image (or each prompt's images) is conditioned on: the prompts, or for a model
    conditioned on CLIP image embeddings (an unCLIP decoder) the rows (E,) of image_embeds (N, E),
    which the conditioner takes in the prompts' places ("" standing for the null, zero, embedding)."""
    kind = pipe.config.conditioning
    if kind != "image-embedding":
        if image_embeds is not None:
            raise ValueError(f"image_embeds condition an unCLIP decoder (a model conditioned on CLIP image "
                             f"embeddings); {pipe.name} is conditioned on {kind!r}: give a prompt instead")
        return list(prompts)
    width, clip = pipe.config.embedding_dim, pipe.config.embedding_clip
    if any(prompts) or negative_prompt:
        raise ValueError(f"{pipe.name} is conditioned on {clip}'s {width}-d image embeddings, not on text: give "
                         "image_embeds= and no prompt or negative prompt (an unCLIP folder, with a prior, takes "
                         "prompts)")
    if image_embeds is None:
        raise ValueError(f"{pipe.name} is conditioned on {clip}'s image embeddings: give image_embeds= (N, {width}), "
                         "e.g. CLIP.encode_image of images, or an unCLIP prior's samples (an unCLIP folder, "
                         "`ldmkit make-unclip`, pairs it with a prior that takes prompts)")
    embeds = torch.as_tensor(image_embeds)
    embeds = embeds[None] if embeds.ndim == 1 else embeds                             # (N, E)
    if embeds.ndim != 2 or embeds.shape[1] != width or not len(embeds):
        raise ValueError(f"image_embeds must be (N, {width}): {clip}'s image embeddings, one per row; "
                         f"got shape {tuple(embeds.shape)}")
    return list(embeds.float())


def per_image_conditions(pipe, prompt: str, image_embeds: torch.Tensor | None, negative_prompt: str,
                         num_images: int) -> list[str | torch.Tensor]:
    """The condition of each of num_images images of one input image (image-to-image tasks): the
    prompt, or one image embedding for all, or one each."""
    found = conditions(pipe, [prompt], image_embeds, negative_prompt)
    if len(found) not in (1, num_images):
        raise ValueError(f"give one image embedding, or one per image ({num_images}), got {len(found)}")
    return found * num_images if len(found) == 1 else found


@contextlib.contextmanager
def timestep_spacing(pipe, spacing: str | None) -> Iterator[None]:
    """Sample with another timestep spacing (e.g. "karras") inside the block; None: the model's."""
    if spacing is None:
        yield
        return
    saved = pipe.config
    pipe.config = replace(saved, sampling=replace(saved.sampling, spacing=spacing))  # validated there
    try:
        yield
    finally:
        pipe.config = saved


def generators(seed: int, count: int) -> list[torch.Generator]:
    """One generator per image, seeded seed, seed + 1, ...: image k's noise depends on its seed only."""
    return [torch.Generator().manual_seed(seed + k) for k in range(count)]


def latent_shape(pipe, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """(c, h, w) of the latents of a height x width image (default: the model's size)."""
    f = pipe.autoencoder.config.downsampling_factor
    multiple = f * pipe.net.config.downsampling_factor
    height = pipe.config.image_size if height is None else height
    width = pipe.config.image_size if width is None else width
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < multiple or value % multiple:
            raise ValueError(f"{name} must be a positive multiple of {multiple} pixels for this model "
                             f"(autoencoder factor {f} x UNet factor {multiple // f}), got {value!r}")
    return (pipe.autoencoder.config.z_channels, height // f, width // f)


def initial_latents(pipe, count: int, seed: int = 0, shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """z_T for images seed, seed + 1, ...: (count, c, h, w) float32 on the CPU."""
    shape = shape or latent_shape(pipe)
    return torch.cat([torch.randn((1, *shape), generator=g) for g in generators(seed, count)])


def folds_guidance(pipe) -> bool:
    """A network that takes the guidance scale as an input (an LCM, distilled from its guided
    teacher): one pass a step, no unconditional branch, no negative prompt."""
    return getattr(pipe.net.config, "guidance_embed_dim", None) is not None


@torch.no_grad()
def network_inputs(pipe, prompts: Sequence[str], negative_prompt: str, guidance: float, extra: dict | None = None,
                   control: Control | None = None):
    """(cond, uncond) for the sampler: the prompts' and, under guidance, the negative prompt's
    conditioning; `extra` (e.g. concat=...) goes to the network under both. A network that
    folds guidance in gets the scale as an input instead of an unconditional branch. `control`
    (pipelines.controlnet): which half each ControlNet steers, as a per-sample weight."""
    cond = pipe.encode_prompts(prompts)
    weights = lambda conditional: control_weights(control, len(prompts), conditional, pipe.device)
    if folds_guidance(pipe):
        scale = torch.full((len(prompts),), float(guidance), device=pipe.device)
        return {**cond, **(extra or {}), **weights(True), "guidance": scale}, None
    uncond = pipe.encode_prompts([negative_prompt] * len(prompts)) if cond and guidance != 1 else None
    cond = {**cond, **(extra or {}), **weights(True)}
    return cond, None if uncond is None else {**uncond, **(extra or {}), **weights(False)}


def custom_timesteps(pipe, sampler: str, timesteps: Sequence[int]) -> torch.Tensor:
    """Timesteps a caller chose (e.g. an LCM's [999, 499]) with the sampler's landing point added."""
    ts = list(timesteps)
    last = pipe.schedule.num_timesteps - 1
    if not ts or any(int(t) != t or not 0 <= t <= last for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly descending whole numbers in [0, {last}], got {ts}")
    final = 0 if sampler == "tcd" or (sampler == "ddim" and not pipe.config.sampling.ddim_final_alpha_one) else -1
    return torch.tensor([*ts, final], dtype=torch.float64)


def learns_variance(pipe) -> bool:
    """A network that also outputs a learned variance (a DiT's second C channels, IDDPM)."""
    return bool(getattr(pipe.net.config, "learn_sigma", False))


def call_net(pipe, x: torch.Tensor, t, concat: torch.Tensor | None = None, keep_variance: bool = False,
             control: Control | None = None, net=None, **cond) -> torch.Tensor:
    """The network in its own dtype, its output back in the sampler's float32. `concat`:
    channels joined to x_t (an inpainting model's mask and masked latent, an upscaler's image).
    A learned variance (a DiT's second C channels) is dropped unless `keep_variance` (DDPM uses it).
    `control`: ControlNets whose residuals the UNet adds (pipelines.controlnet). `net`: what runs
    in pipe.net's place (a DeepCache of it, for one run)."""
    x_in = x if concat is None else torch.cat([x, concat.to(x.dtype)], dim=1)
    weight = cond.pop(CONTROL_WEIGHT, None)
    if control is not None:
        residuals = control.residuals(x.to(pipe.dtype), x_in.to(pipe.dtype), t, weight, cond)
        if residuals is not None:
            cond["control"] = residuals
    out = (net or pipe.net)(x_in.to(pipe.dtype), t, **cond).to(x.dtype)
    if learns_variance(pipe) and not keep_variance:  # the variance channels: only DDPM uses them
        out = out[:, : pipe.net.config.out_channels]
    return out


@torch.no_grad()
def run_sampler(pipe, z: torch.Tensor, inputs, sampler: str, steps: int, guidance: float,
                guidance_rescale: float = 0.0, gens=None, progress: bool = False, timesteps=None,
                denoiser_wrapper=None, hook: StepHook | None = None, control: Control | None = None) -> torch.Tensor:
    """Sample from z (pure noise) over the model's `steps` timesteps, or from a partly noised
    latent over `timesteps` (image-to-image). inputs: (cond, uncond) from network_inputs (given
    the same `control`, the ControlNets steering this run, placed on its timesteps here).
    hook(Step) runs after every step; it may raise Cancelled. A network with a learned variance
    samples "ddpm" with it (IDDPM, DiT's sampler); every other sampler uses its mean only.
    A pixel-space model's x0 estimate is clipped to the images' range (pixel_x0_clip)."""
    cond, uncond = inputs
    denoiser_wrapper = pixel_x0_clip(pipe, denoiser_wrapper)
    if folds_guidance(pipe):
        guidance = 1.0  # already an input of the network (network_inputs)
    if timesteps is None:
        timesteps = sampler_timesteps(pipe.schedule, sampler, steps, pipe.config.sampling)
        z = z * start_scale(pipe.schedule, sampler, timesteps, pipe.config.sampling)
    total = len(timesteps) - 1
    callback = None if hook is None else (lambda i, x_i, x0: hook(Step(i, total, x_i, x0)))
    learned = learns_variance(pipe) and sampler == "ddpm"
    if control is not None:
        control = control.at_timesteps(timesteps)
    cached = deep_cache(pipe)  # a fresh cache for this run's latents, or None
    net = lambda x, t, **c: call_net(pipe, x, t, keep_variance=learned, control=control, net=cached, **c)
    return sample(
        net, z, pipe.schedule, sampler=sampler, prediction=pipe.config.prediction, cond=cond, uncond=uncond,
        guidance=guidance, guidance_rescale=guidance_rescale, gen=gens, progress=progress, timesteps=timesteps,
        denoiser_wrapper=denoiser_wrapper, callback=callback, learn_sigma=learned,
    )


def pixel_x0_clip(pipe, denoiser_wrapper=None):
    """For a pixel-space model (GLIDE), the denoiser wrapper that also clamps x0_hat to the
    images' range, [-s, s] with s the identity first stage's scale, as DDPM, ADM and GLIDE sample
    (`clip_denoised`, diffusers' `clip_sample`). Without it the eps estimate at the first
    timesteps, divided by sqrt(alpha_bar) (about 0.006 at t = 999 on the linear schedule, less
    on the cosine one), throws x0_hat far outside the data, and the samples come out as
    saturated speckle. A latent model's x0 has no such bound: its wrapper is returned as it is."""
    if getattr(pipe.autoencoder.config, "kind", None) != "pixel":
        return denoiser_wrapper
    limit, inner = pipe.autoencoder.config.scaling_factor, denoiser_wrapper or (lambda denoise: denoise)
    return lambda denoise: clip_x0(inner(denoise), limit)


def deep_cache(pipe) -> DeepCache | None:
    """pipe.net under DeepCache (ldmkit.nets.deepcache) when pipe.deepcache_interval is set."""
    interval = getattr(pipe, "deepcache_interval", None)
    return None if interval is None else DeepCache(pipe.net, interval)


@torch.no_grad()
def decode(pipe, z0: torch.Tensor, batch_size: int = 256, tile: int | None = None) -> torch.Tensor:
    """Images in [-1, 1] from final latents; `tile` (latent pixels) decodes in overlapping tiles.
    With pipe.tiny_decoder_on, the distilled tiny decoder decodes instead (it needs no tiles)."""
    if getattr(pipe, "tiny_decoder_on", False):
        return tiny_decode(pipe.tiny_decoder(), z0, batch_size)
    ae_dtype = next(pipe.autoencoder.parameters()).dtype
    if tile is not None:
        decoder = lambda z: tiled_decode(pipe.autoencoder, z, tile=tile, overlap=max(1, tile // 4))
    else:
        decoder = pipe.autoencoder.from_latent
    return torch.cat([decoder(z.to(ae_dtype)).float().clamp(-1, 1) for z in z0.split(batch_size)])


def finish(pipe, z0: torch.Tensor, output: str, vae_tile: int | None = None):
    """Final latents as asked: "latent" as they are, "tensor" decoded, "pil" as images."""
    if output == "latent":
        return z0
    images = decode(pipe, z0, tile=vae_tile)
    return images if output == "tensor" else [to_pil(x) for x in images]
