"""A family model's folder, told by its config.json's "kind" and loaded by its generator class:
what lets Pipeline.from_pretrained open a GAN, a DALL-E or an unCLIP as it opens a diffusion model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from .base import FamilyGenerator
from .cascade import CascadeGenerator
from .dalle import DalleGenerator
from .gan import GANGenerator
from .unclip import UnclipGenerator
from .vae import VAEGenerator

GENERATORS: dict[str, type[FamilyGenerator]] = {
    cls.kind: cls for cls in (GANGenerator, DalleGenerator, VAEGenerator, UnclipGenerator, CascadeGenerator)}
# kinds whose folder names other model folders in config.json, each loaded as the attribute of that name
PARTS = {"unclip": ("prior", "decoder"), "cascade": ("base", "upsampler")}


def family_kind(folder: str | Path) -> str | None:
    """The family kind of a model folder ("gan", "dalle", "vae", ...), None for any other folder."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    try:
        kind = json.loads(config.read_text()).get("kind")
    except (json.JSONDecodeError, AttributeError):
        return None
    return kind if kind in GENERATORS else None


def load_family_model(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      open_diffusion_model: Callable | None = None) -> FamilyGenerator:
    """The generator of a family folder. open_diffusion_model(folder, device, dtype): how a model that
    names latent diffusion models (unCLIP's decoder) opens them; Pipeline.from_pretrained gives its own."""
    kind = family_kind(folder)
    if kind is None:
        raise ValueError(f"{folder} is not a model of the generative family (kinds {sorted(GENERATORS)})")
    generator = GENERATORS[kind]
    if generator.opens_diffusion_models:
        return generator.from_folder(folder, device, dtype, open_decoder=open_diffusion_model)
    return generator.from_folder(folder, device, dtype)
