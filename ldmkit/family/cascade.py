"""A text cascade as one generator (GLIDE: a base model, then an upsampler under the same prompt),
so that a folder naming the two loads with Pipeline.from_pretrained and takes one row of the
family table.

A cascade folder holds config.json alone: {"kind": "cascade", "base": a model folder, "upsampler":
an upscaling model's folder, "sampling": the defaults (steps, sampler, guidance, upsampler_steps,
upsampler_sampler, upsampler_guidance, noise_level; missing ones: each model's own)}. Both are
diffusion models, which only the pipelines, a layer above, open: from_folder takes `open_decoder`
(folder, device, dtype) -> a Pipeline, as unCLIP's does, and Pipeline.from_pretrained passes its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from ..model.folder import model_config, resolve_repo_path
from ..storage import CheckpointError, atomic_write
from .base import FamilyGenerator, check_common
from .unclip import part_folder, parts_training, read_config

SAMPLING = ("steps", "guidance", "upsampler_steps", "upsampler_guidance", "noise_level", "sampler",
            "upsampler_sampler")


def save_cascade(directory: str | Path, base: str | Path, upsampler: str | Path, sampling: dict | None = None,
                 extra: dict | None = None) -> Path:
    """A cascade folder (config.json only) naming a text model and an upscaler that takes its
    images (a GLIDE base and x2: the presets fashion-mnist-glide and -glide-x2), paths kept as
    given; `sampling`: defaults among SAMPLING. The two are checked to fit first (configs only).
    The stages' training records are summed into "training" unless `extra` gives one."""
    directory = Path(directory)
    unknown = sorted(set(sampling or {}) - set(SAMPLING))
    if unknown:
        raise ValueError(f"unknown sampling settings {unknown}; a cascade folder records {list(SAMPLING)}")
    base_meta = read_config(part_folder(base, directory, "base"), "base")
    upsampler_meta = read_config(part_folder(upsampler, directory, "upsampler"), "upsampler")
    check_stages(model_config(base_meta), model_config(upsampler_meta), str(base), str(upsampler))
    meta = {"dataset": base_meta.get("dataset"), **parts_training(base=base_meta, upsampler=upsampler_meta),
            **(extra or {}), "kind": "cascade", "base": str(base),
            "upsampler": str(upsampler), "sampling": {k: v for k, v in (sampling or {}).items() if v is not None}}
    text = json.dumps(meta, indent=2, sort_keys=True)
    atomic_write(directory / "config.json", lambda tmp: tmp.write_text(text))
    return directory


def check_stages(base, upsampler, base_name: str, upsampler_name: str) -> None:
    """An upscaler whose input is the base's output: its low-resolution size is the base's image size."""
    if base.task != "generation" or base.conditioning != "text":
        raise ValueError(f"a cascade's base makes images of prompts: {base_name} is a {base.task} model "
                         f"conditioned on {base.conditioning!r}")
    if upsampler.task != "upscaling" or upsampler.lowres is None:
        raise ValueError(f"a cascade's second model upscales the base's images: {upsampler_name} is a "
                         f"{upsampler.task} model")
    factor = upsampler.lowres.upscale_factor
    if factor is None or upsampler.image_size != base.image_size * factor:
        raise ValueError(f"{upsampler_name} upscales {upsampler.image_size // (factor or 1)}px images by "
                         f"{factor}; {base_name} makes {base.image_size}px ones")


class CascadeGenerator(FamilyGenerator):
    """The base and the upsampler, two Pipelines."""

    kind = "cascade"
    opens_diffusion_models = True

    def __init__(self, base, upsampler, name: str = "cascade", meta: dict | None = None):
        super().__init__(name, meta)
        self.base, self.upsampler = base, upsampler
        self.sampling = dict((meta or {}).get("sampling") or {})

    @classmethod
    def from_folder(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    open_decoder: Callable | None = None) -> CascadeGenerator:
        """A cascade folder; both stages opened by open_decoder(folder, device, dtype) (a Pipeline)."""
        path = resolve_repo_path(path)
        meta = read_config(path, "cascade")
        if meta.get("kind") != "cascade" or not {"base", "upsampler"} <= set(meta):
            raise CheckpointError(f"{path} is not a cascade folder (kind {meta.get('kind')!r}, naming a base and "
                                  "an upsampler)")
        if open_decoder is None:
            raise ValueError("a cascade's stages are diffusion models, which ldmkit.family cannot open by itself: "
                             "load the folder with ldmkit.Pipeline.from_pretrained")
        base = open_decoder(part_folder(meta["base"], path, "base"), device, dtype)
        upsampler = open_decoder(part_folder(meta["upsampler"], path, "upsampler"), device, dtype)
        check_stages(base.config, upsampler.config, base.name, upsampler.name)
        return cls(base, upsampler, name=path.name, meta=meta)

    def modules(self) -> list[torch.nn.Module]:
        return [self.base.net, self.upsampler.net]

    def networks(self) -> list[torch.nn.Module]:
        return [self.base.net, self.upsampler.net]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> CascadeGenerator:
        self.base.to(device, dtype)
        self.upsampler.to(device, dtype)
        return self

    def config_entries(self) -> dict:
        return {"base_config": self.base.describe(), "upsampler_config": self.upsampler.describe()}

    def settings_used(self, settings: dict) -> dict:
        """The settings a run takes: those given, else the folder's, else each stage's own defaults."""
        given = {k: v for k, v in settings.items() if v is not None}
        pick = lambda name: given.get(name, self.sampling.get(name))  # noqa: E731
        steps, sampler, guidance = self.base.resolve_settings(pick("steps"), pick("sampler"), pick("guidance"))
        up_steps, up_sampler, up_guidance = self.upsampler.resolve_settings(
            pick("upsampler_steps"), pick("upsampler_sampler"), pick("upsampler_guidance"))
        noise = given.get("noise_level", self.sampling.get("noise_level", self.upsampler.config.lowres.noise_level))
        return {**given, "steps": steps, "sampler": sampler, "guidance": guidance, "upsampler_steps": up_steps,
                "upsampler_sampler": up_sampler, "upsampler_guidance": up_guidance, "noise_level": noise}

    @torch.no_grad()
    def generate(self, prompt: str | Sequence[str] = "", num_images: int = 1, seed: int = 0, output: str = "pil",
                 steps: int | None = None, guidance: float | None = None, upsampler_steps: int | None = None,
                 upsampler_guidance: float | None = None, noise_level: int | None = None,
                 sampler: str | None = None, upsampler_sampler: str | None = None) -> list[Image.Image] | torch.Tensor:
        """`num_images` images of each prompt, prompt-major: the base's, each upsampled under its
        prompt; image k of a prompt from seed + k in both stages. Settings not given: the folder's,
        else each stage's defaults. output: "pil" or "tensor" ((N, C, H, W) in [-1, 1])."""
        check_common(num_images, output)
        settings = self.settings_used({"steps": steps, "guidance": guidance, "upsampler_steps": upsampler_steps,
                                       "upsampler_guidance": upsampler_guidance, "noise_level": noise_level,
                                       "sampler": sampler, "upsampler_sampler": upsampler_sampler})
        return self.base.cascade(self.upsampler, prompt, num_images=int(num_images), seed=seed, output=output,
                                 **settings)
