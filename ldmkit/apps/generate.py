"""Generate to a folder: numbered PNGs that carry their settings, and a grid of them."""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import torch

from .. import __version__
from ..family import FamilyGenerator
from ..model.folder import MODELS_DIR
from ..pipelines import Pipeline
from ..pipelines.controlnet import control_settings
from ..pipelines.fast import FastPath
from ..pipelines.infotext import format_infotext
from ..pipelines.request import FIELD_NAMES, GenerationRequest, deepcache_applied, run, tiny_decoder_applied
from ..pipelines.txt2img import generate
from ..utils.images import image_grid, save_png
from .adapters import parse_adapters


def next_index(folder: Path) -> int:
    """One past the highest NNNNN_ number in the folder: never overwrite earlier images."""
    numbers = [int(m.group(1)) for p in folder.glob("*.png") if (m := re.match(r"(\d{5})_", p.name))]
    return max(numbers, default=-1) + 1


def generate_to_folder(
    request: GenerationRequest | str,
    out: str | Path,
    model: str | Path = "fashion-mnist",
    device: str = "cpu",
    grid: bool = True,
    pipeline: Pipeline | None = None,
    autoencoder: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    vae_tile: int | None = None,
    adapters: dict | None = None,
    image=None,
    mask=None,
    hook=None,
    control: dict | None = None,
    controlnets: Sequence[str | Path] = (),
    steering: dict | None = None,
    family_sampling: dict | None = None,
    fast: bool | str = False,
    **options,
) -> list[Path]:
    """Run `request` (or a prompt, with GenerationRequest's fields among `options`) and write
    out/NNNNN_seedS.png for each image, their settings in the PNG text (request.png_text(), the
    model, the adapters, the inputs' paths, the size, the seed), and out/grid_NNNNN.png. Returns
    the paths written. Other options: tokenizer=, prediction=, use_ema= for Stable Diffusion
    files. adapters: files to apply first, {"loras": ["FILE:SCALE"], "embeddings":
    ["FILE[:TOKEN]"], "hypernetworks": [...]}. hook: after every sampler step (pipelines.core).
    control: the inputs of the pipeline's loaded ControlNets ({"control_image": path, "control_scale":
    0.8, ...}: txt2img.generate's control_* arguments), recorded in the PNG text with their names.
    controlnets: ControlNet files or folders to load first (pipe.load_controlnet), one control
    image each; a pipeline passed in is left with the ControlNets it had. steering: txt2img's
    classifier=, classifier_scale=, classifier_labels=, clip=, clip_guidance=, rerank=
    (ldmkit.pipelines.guidance), recorded in the PNG text. A model of the generative family (a GAN,
    a DALL-E: ldmkit.family) takes the request's prompt, num_images and seed, its own settings in
    family_sampling (temperature=, top_k=, top_p=, truncation=) and, for DALL-E, steering's
    rerank= and clip=. fast: load the model on the fast path (ldmkit.pipelines.fast: True, "compile"),
    recorded in the PNG text."""
    if isinstance(request, str):
        request = GenerationRequest(prompt=request, **{k: options.pop(k) for k in list(options) if k in FIELD_NAMES})
    check_control_files(control, controlnets)  # before loading a model: a typo costs nothing
    pipe = pipeline or Pipeline.from_pretrained(model, device=torch.device(device), dtype=dtype,
                                                autoencoder=autoencoder, fast=fast, **options)
    if isinstance(pipe, FamilyGenerator):
        diffusion_only = {"adapters": any((adapters or {}).values()), "controlnets": controlnets,
                          "control": control, "image": image, "mask": mask, "vae_tile": vae_tile, "hook": hook}
        given = sorted(name for name, value in diffusion_only.items() if value)
        if given:
            raise ValueError(f"{pipe.name} is a {pipe.kind} model: {given} apply to latent diffusion models only")
        return family_to_folder(pipe, request, out, grid, {**(family_sampling or {}), **(steering or {})})
    if family_sampling:
        raise ValueError(f"{sorted(family_sampling)} are settings of the generative family's models (GAN, DALL-E); "
                         f"{pipe.name} is a latent diffusion model")
    parsed, applied = parse_adapters(**(adapters or {}))
    request = request.resolved(pipe)
    loaded = list(pipe.controlnets)
    try:
        for controlnet in controlnets:
            pipe.load_controlnet(controlnet)
        with pipe.adapters(**parsed):  # a pipeline passed in is left as it was
            if steering:
                images = run_steered(pipe, request, steering, batch_size=sampling_batch_size(pipe),
                                     vae_tile=vae_tile, hook=hook, control=control)
            else:
                images = run(pipe, request, image=image, mask=mask, progress=True,
                             batch_size=sampling_batch_size(pipe), vae_tile=vae_tile, hook=hook,
                             control=control)  # a hook raising Cancelled: nothing is written
        settings_control = control_settings(pipe, **(control or {}))
    finally:
        pipe.controlnets[:] = loaded
    inputs = {name: str(value) for name, value in (("input", image), ("mask", mask))
              if isinstance(value, (str, Path))}
    recorded = {k: str(v) if isinstance(v, (str, Path)) else getattr(v, "name", v) for k, v in (steering or {}).items()}
    settings = {**request.png_text(), "model": pipe.name, **inputs, **applied, **settings_control, **recorded}
    if pipe.fast_path != FastPath():  # how the networks ran, where not the exact float32 eager path
        settings["fast"] = pipe.fast_path.describe()
    return save_images(images, out, settings, request.seed, grid)


def family_to_folder(pipe: FamilyGenerator, request: GenerationRequest, out: str | Path, grid: bool,
                     settings: dict) -> list[Path]:
    """A family model's images of the request's prompt, numbered PNGs carrying its settings (with the
    model's defaults for those not given, where it has its own: pipe.settings_used). A request field
    that the model's generate() takes by name (unCLIP's steps and sampler: its decoder's) goes to it."""
    defaults = GenerationRequest(task=request.task)
    accepted = set(inspect.signature(pipe.generate).parameters) - {"prompt", "num_images", "seed", "output"}
    given = {f.name: getattr(request, f.name) for f in fields(request) if f.name not in ("prompt", "num_images", "seed")
             and getattr(request, f.name) != getattr(defaults, f.name)}
    changed = sorted(set(given) - accepted)
    if request.task != "txt2img" or changed:
        raise ValueError(f"{pipe.name} is a {pipe.kind} model: it takes a prompt, num_images and seed, not "
                         f"{changed or request.task} (settings of latent diffusion models)")
    settings = {**given, **settings}
    if set(settings) - accepted:
        raise ValueError(f"{pipe.name} is a {pipe.kind} model: it takes {sorted(accepted)}, not "
                         f"{sorted(set(settings) - accepted)}")
    images = pipe.generate(request.prompt, num_images=request.num_images, seed=request.seed, **settings)
    text = {"prompt": request.prompt, "model": pipe.name, "kind": pipe.kind, **recorded_settings(pipe, settings)}
    return save_images(images, out, text, request.seed, grid)


def variations_to_folder(images: Sequence[str | Path], out: str | Path, model: str | Path, num_images: int = 1,
                         seed: int = 0, device: str = "cpu", grid: bool = True, settings: dict | None = None,
                         pipeline: FamilyGenerator | None = None) -> list[Path]:
    """unCLIP's image variations: num_images images decoded from each image file's CLIP embedding,
    out/NNNNN_seedS.png (image k of input i: seed + i * num_images + k), each carrying its input's
    path, the model and its settings (the decoder's: steps, sampler, decoder_guidance), and a grid per
    input."""
    pipe = pipeline or Pipeline.from_pretrained(model, device=torch.device(device))
    if not hasattr(pipe, "variations"):
        raise ValueError(f"{pipe.name} makes no image variations: an unCLIP folder does (ldmkit make-unclip)")
    settings = dict(settings or {})
    accepted = set(inspect.signature(pipe.variations).parameters) - {"image", "num_images", "seed", "output"}
    if set(settings) - accepted:
        raise ValueError(f"variations take {sorted(accepted)}, not {sorted(set(settings) - accepted)}")
    made = pipe.variations(list(images), num_images=num_images, seed=seed, **settings)
    recorded = recorded_settings(pipe, settings)
    recorded = {k: v for k, v in recorded.items() if k in accepted}  # the prior's settings play no part
    paths = []
    for i, image in enumerate(images):
        text = {"task": "variations", "input": str(image), "model": pipe.name, "kind": pipe.kind, **recorded}
        first = seed + i * num_images
        paths += save_images(made[i * num_images:(i + 1) * num_images], out, text, first, grid)
    return paths


def recorded_settings(pipe: FamilyGenerator, settings: dict) -> dict:
    """A family model's settings as PNG text: its defaults filled in, models by name."""
    used = pipe.settings_used(settings)
    return {k: v if isinstance(v, int | float | str) else getattr(v, "name", str(v)) for k, v in used.items()}


def run_steered(pipe: Pipeline, request: GenerationRequest, steering: dict, batch_size: int,
                vae_tile: int | None, hook, control: dict | None):
    """A txt2img request with classifier or CLIP guidance or reranking (txt2img.generate's options)."""
    if request.task != "txt2img":
        raise ValueError(f"classifier guidance, CLIP guidance and reranking are for generate, not {request.task}")
    r = request.resolved(pipe)
    with deepcache_applied(pipe, r.deepcache), tiny_decoder_applied(pipe, r.tiny_decoder):
        return generate(pipe, r.prompt, negative_prompt=r.negative_prompt, num_images=r.num_images, steps=r.steps,
                        sampler=r.sampler, guidance=r.guidance, guidance_rescale=r.guidance_rescale, seed=r.seed,
                        height=r.height, width=r.width, progress=True, batch_size=batch_size, vae_tile=vae_tile,
                        hook=hook, **(control or {}), **steering)


def check_control_files(control: dict | None, controlnets: Sequence[str | Path]) -> None:
    """Control images given as paths exist, and ControlNets come with control images."""
    images = (control or {}).get("control_image")
    if controlnets and images is None:
        raise ValueError(f"{len(controlnets)} ControlNet(s) to load but no control image: give one per ControlNet")
    for path in controlnets:
        shipped = MODELS_DIR / "controlnets" / str(path)
        if isinstance(path, str | Path) and not Path(path).exists() and not shipped.is_dir():
            raise FileNotFoundError(f"no ControlNet at {path}: give a shipped ControlNet's name, an ldmkit or "
                                    "diffusers ControlNet folder, or an original .pth / .safetensors file")
    for path in images if isinstance(images, list | tuple) else [images]:
        if isinstance(path, str | Path) and not Path(path).is_file():
            raise FileNotFoundError(f"no control image file at {path}")


def save_images(images, out: str | Path, settings: dict, seed: int, grid: bool = True) -> list[Path]:
    """out/NNNNN_seedS.png per image, numbered on from what the folder holds, each carrying
    `settings` + its seed + its size + the software in its PNG text; a grid of them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first = next_index(out)
    paths = [save_png(image, out / f"{first + k:05d}_seed{seed + k}.png", png_text(settings, image, seed + k))
             for k, image in enumerate(images)]
    if grid and len(images) > 1:
        columns = math.ceil(math.sqrt(len(images)))
        scale = max(1, 128 // images[0].width)  # small models make small images: enlarge for viewing
        tiles = [im.resize((im.width * scale, im.height * scale), 0) for im in images]
        seeds = list(range(seed, seed + len(images)))
        grid_text = png_text(settings, images[0], seeds)
        paths.append(save_png(image_grid(tiles, columns), out / f"grid_{first:05d}.png", grid_text))
    return paths


def png_text(settings: dict, image, seed) -> dict:
    """An image's PNG text: ldmkit's settings (+ its size, the software, its seed) one chunk
    each, and A1111's "parameters" text of them (pipelines.infotext) for the tools of that family."""
    settings = {**settings, "size": f"{image.width}x{image.height}", "software": f"ldmkit {__version__}", "seed": seed}
    return {**settings, "parameters": format_infotext(settings)}


def sampling_batch_size(pipe: Pipeline) -> int:
    """Images sampled together: many for the small models, one at a time for SD-sized ones
    (activations of a 512 px image in a 860M UNet are gigabytes)."""
    return 64 if sum(p.numel() for p in pipe.net.parameters()) < 50_000_000 else 1
