"""Text (or class, or nothing) to images: the task the LDM paper's sec. 3.3 describes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ..diffusion import start_scale
from . import core
from . import guidance as steering
from .controlnet import prepare_control


@torch.no_grad()
def generate(
    pipe,
    prompt: str | Sequence[str] = "",
    negative_prompt: str = "",
    num_images: int = 1,
    steps: int | None = None,
    sampler: str | None = None,
    guidance: float | None = None,
    seed: int = 0,
    latents: torch.Tensor | None = None,
    output: str = "pil",
    guidance_rescale: float = 0.0,
    batch_size: int = 64,
    progress: bool = False,
    height: int | None = None,
    width: int | None = None,
    vae_tile: int | None = None,
    hook: core.StepHook | None = None,
    timesteps: Sequence[int] | None = None,
    class_labels: Sequence[int] | None = None,
    control_image=None,
    control_scale: float | Sequence = 1.0,
    control_guess_mode: bool = False,
    control_start: float | Sequence[float] = 0.0,
    control_end: float | Sequence[float] = 1.0,
    classifier=None,
    classifier_scale: float = 1.0,
    classifier_labels: Sequence[int] | None = None,
    clip=None,
    clip_guidance: float = 0.0,
    rerank: int = 1,
    image_embeds: torch.Tensor | None = None,
) -> list[Image.Image] | torch.Tensor:
    """`num_images` images of each prompt, prompt-major. Image k draws its noise from its own
    generator seeded with seed + k, so it is the same image when generated alone with that
    seed. output: "pil" (a list of images), "tensor" ((N, C, H, W) in [-1, 1]) or "latent"
    (the final latents z_0, (N, c, h, w)). An empty prompt samples unconditionally.
    height, width: pixels (default: the model's image size). vae_tile: decode in tiles of this
    many latent pixels (bounds memory for large images). hook(Step) runs after every sampler
    step (progress, previews; raising core.Cancelled stops the run). timesteps: descending
    timesteps to sample at instead of the sampler's `steps` (e.g. [999, 499] for a 2-step LCM).
    class_labels: a class-conditional model's class indices, instead of prompts (one each). The
    sampler runs in float32 whatever the networks' dtype; only the networks see half precision.
    control_image: the hint of each ControlNet loaded (pipe.load_controlnet), resized to the
    image's size if it has another; control_scale (one, or one per ControlNet, each a number or
    per-block scales), control_guess_mode, control_start / control_end (the fraction of the steps
    it acts in): see ldmkit.pipelines.controlnet.
    classifier: a noisy latent classifier (a folder of `ldmkit train-noisy-classifier`, or loaded)
    steering each image towards the class its prompt names, or `classifier_labels` (one per
    prompt; with the empty prompt alone, one prompt per label: the unconditional model), with
    strength classifier_scale. clip_guidance: the scale of CLIP guidance towards each prompt.
    rerank: make this many candidates of each image and keep the one `clip` scores highest (image
    k of prompt p takes the seeds seed + (p * num_images + k) * rerank + j, j < rerank; `latents`
    then holds every candidate's). clip: a CLIP, its name or folder; for a text model, default
    "clip-small". image_embeds: an unCLIP decoder's conditions instead of prompts, (N, E) CLIP image
    embeddings, each made into `num_images` images (embedding-major, as prompts)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if class_labels is not None:
        prompts = core.class_prompts(pipe, class_labels, prompts)
    if image_embeds is not None and (classifier is not None or classifier_labels is not None or clip_guidance
                                     or rerank != 1):
        raise ValueError("classifier guidance, CLIP guidance and reranking steer towards a prompt: an unCLIP "
                         "decoder, given image embeddings, has none")
    if classifier_labels is not None and prompts == [""]:
        prompts = [""] * len(classifier_labels)  # the unconditional model, steered to each label
    prompts = core.conditions(pipe, prompts, image_embeds, negative_prompt)  # an unCLIP decoder: embeddings
    if isinstance(rerank, bool) or int(rerank) != rerank or rerank < 1:
        raise ValueError(f"rerank must be a whole number >= 1 (candidates per image), got {rerank!r}")
    if classifier is None and classifier_labels is not None:
        raise ValueError("classifier_labels need a classifier")
    labels = None
    if classifier is not None:
        classifier = steering.resolve_classifier(pipe, classifier)
        labels = steering.classifier_targets(classifier, prompts, classifier_labels)  # one per prompt
    if rerank > 1 or clip_guidance:
        clip = steering.resolve_clip(pipe, clip, "reranking" if rerank > 1 else "CLIP guidance of")
    steps, sampler, guidance = core.resolve_settings(pipe, len(timesteps) if timesteps else steps, sampler, guidance)
    shape = core.latent_shape(pipe, height, width)
    core.check_generation_model(pipe)
    core.check_settings(prompts, num_images, steps, sampler, guidance, output)
    expected = (len(prompts) * num_images * rerank, *shape)
    if latents is not None and tuple(latents.shape) != expected:
        raise ValueError(f"latents must have shape {expected} (images, channels, height, width), "
                         f"got {tuple(latents.shape)}")
    per_prompt = num_images * rerank
    prompts = [p for p in prompts for _ in range(per_prompt)]
    labels = None if labels is None else [k for k in labels for _ in range(per_prompt)]
    wrappers = steering.guidance_wrappers(pipe, prompts, classifier, classifier_scale, labels, clip, clip_guidance)
    if latents is None:
        latents = core.initial_latents(pipe, len(prompts), seed, shape)
    f = pipe.autoencoder.config.downsampling_factor
    control = prepare_control(pipe, control_image, control_scale, control_guess_mode, control_start, control_end,
                              (shape[1] * f, shape[2] * f))
    custom = None if timesteps is None else core.custom_timesteps(pipe, sampler, timesteps)
    if custom is not None:
        latents = latents * start_scale(pipe.schedule, sampler, custom, pipe.config.sampling)
    results = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        z_T = latents[start : start + len(chunk)].to(pipe.device, torch.float32)
        inputs = core.network_inputs(pipe, chunk, negative_prompt, guidance, control=control)
        results.append(core.run_sampler(pipe, z_T, inputs, sampler, steps, guidance, guidance_rescale,
                                        core.generators(seed + start, len(chunk)), progress, timesteps=custom,
                                        hook=hook, control=control, denoiser_wrapper=wrappers(start, len(chunk))))
    z0 = torch.cat(results)
    if rerank > 1:
        z0, _ = steering.best_of(pipe.decode, clip, z0, prompts, rerank)
    return core.finish(pipe, z0, output, vae_tile)
