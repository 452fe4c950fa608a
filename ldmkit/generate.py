"""Generate to a folder: numbered PNGs that carry their settings, and a grid of them."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from . import __version__
from .pipeline import Pipeline
from .utils.images import image_grid, save_png


def next_index(folder: Path) -> int:
    """One past the highest NNNNN_ number in the folder: never overwrite earlier images."""
    numbers = [int(m.group(1)) for p in folder.glob("*.png") if (m := re.match(r"(\d{5})_", p.name))]
    return max(numbers, default=-1) + 1


def generate_to_folder(
    prompt: str,
    out: str | Path,
    model: str | Path = "fashion-mnist",
    negative_prompt: str = "",
    num_images: int = 4,
    steps: int | None = None,
    sampler: str | None = None,
    guidance: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    grid: bool = True,
    pipeline: Pipeline | None = None,
    autoencoder: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    height: int | None = None,
    width: int | None = None,
    vae_tile: int | None = None,
    adapters: dict | None = None,
    **load_options,
) -> list[Path]:
    """Write out/NNNNN_seedS.png for each image (PNG text: prompt, negative_prompt, seed, sampler,
    steps, guidance, size, model) and out/grid_NNNNN.png. Returns the paths written.
    load_options: tokenizer=, prediction=, use_ema= for Stable Diffusion files. adapters: files to
    apply first, {"loras": ["FILE:SCALE"], "embeddings": ["FILE[:TOKEN]"], "hypernetworks": [...]}."""
    from .finetune.apply import apply_adapters

    pipe = pipeline or Pipeline.from_pretrained(model, device=torch.device(device), dtype=dtype,
                                                autoencoder=autoencoder, **load_options)
    applied = apply_adapters(pipe, **(adapters or {}))
    steps, sampler, guidance = pipe.resolve_settings(steps, sampler, guidance)
    images = pipe.generate(prompt, negative_prompt, num_images, steps, sampler, guidance, seed, progress=True,
                           height=height, width=width, vae_tile=vae_tile, batch_size=_batch_size(pipe))
    settings = {"prompt": prompt, "negative_prompt": negative_prompt, "sampler": sampler, "steps": steps,
                "guidance": guidance, "model": pipe.name, **applied}
    return save_images(images, out, settings, seed, grid)


def save_images(images, out: str | Path, settings: dict, seed: int, grid: bool = True) -> list[Path]:
    """out/NNNNN_seedS.png per image, numbered on from what the folder holds, each carrying
    `settings` + its seed + its size + the software in its PNG text; a grid of them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first = next_index(out)
    settings = {**settings, "size": f"{images[0].width}x{images[0].height}", "software": f"ldmkit {__version__}"}
    paths = [
        save_png(image, out / f"{first + k:05d}_seed{seed + k}.png", {**settings, "seed": seed + k})
        for k, image in enumerate(images)
    ]
    if grid and len(images) > 1:
        columns = math.ceil(math.sqrt(len(images)))
        scale = max(1, 128 // images[0].width)  # small models make small images: enlarge for viewing
        tiles = [im.resize((im.width * scale, im.height * scale), 0) for im in images]
        seeds = list(range(seed, seed + len(images)))
        paths.append(save_png(image_grid(tiles, columns), out / f"grid_{first:05d}.png", {**settings, "seed": seeds}))
    return paths


def _batch_size(pipe: Pipeline) -> int:
    """Images sampled together: many for the small models, one at a time for SD-sized ones
    (activations of a 512 px image in a 860M UNet are gigabytes)."""
    return 64 if sum(p.numel() for p in pipe.unet.parameters()) < 50_000_000 else 1
