"""A trained latent diffusion model as one object: prompt in, images out.

A model folder holds everything but the frozen text encoder (which comes from its package):

    config.json          {"type": "latent-diffusion", "model": LatentDiffusionConfig,
                          "autoencoder": AutoencoderConfig, "defaults": {...}, ...}
    model.safetensors    "unet." (the EMA weights) and "autoencoder." tensors
    README.md            the model card

Generation (LDM sec. 3.3): encode the prompts, draw z_T ~ N(0, I) in latent space, run a sampler
with classifier-free guidance, decode x = D(z_0 / s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from .autoencoders import Autoencoder, AutoencoderConfig
from .config import from_dict, to_dict
from .diffusion import SAMPLERS, make_schedule, sample
from .io import CheckpointError, load_checkpoint, save_checkpoint
from .nets import UNet
from .train.diffusion_config import LatentDiffusionConfig
from .utils.images import to_pil

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"  # the models shipped in the repository
BUNDLED = ("fashion-mnist", "shapes")
OUTPUTS = ("pil", "tensor", "latent")


@dataclass(frozen=True)
class GenerationDefaults:
    """What a model card recommends; generate() uses these where the caller gives nothing."""

    guidance: float = 3.0
    sampler: str = "dpmpp_2m"
    steps: int = 20


@dataclass
class GeneratedBatch:
    """Settings of each image generate() made, in order: what the PNG metadata records."""

    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)


def resolve_model(name_or_path: str | Path) -> Path:
    """A folder path, or the name of a model shipped in models/."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in BUNDLED and (MODELS_DIR / str(name_or_path)).is_dir():
        return MODELS_DIR / str(name_or_path)
    shipped = [n for n in BUNDLED if (MODELS_DIR / n).is_dir()]
    raise FileNotFoundError(
        f"no model {str(name_or_path)!r}: give a model folder (config.json + model.safetensors) "
        f"or one of the shipped models {shipped}"
    )


def swap_first_stage(current: Autoencoder, folder: str | Path) -> Autoencoder:
    """The autoencoder in `folder`, refused unless its latents are interchangeable with current's."""
    from .train.autoencoder import load_autoencoder

    other = load_autoencoder(folder)
    a, b = current.config, other.config
    same = (a.in_channels, a.z_channels, a.downsampling_factor) == (b.in_channels, b.z_channels, b.downsampling_factor)
    if not same or abs((a.scaling_factor or 1) - (b.scaling_factor or 1)) > 1e-3 * (a.scaling_factor or 1):
        raise ValueError(f"the autoencoder in {folder} does not share this model's latent space "
                         f"(image channels, latent channels, factor, scale differ)")
    return other


class Pipeline:
    """UNet + autoencoder + text encoder (or class names) + sampling defaults."""

    def __init__(
        self,
        unet: UNet,
        autoencoder: Autoencoder,
        config: LatentDiffusionConfig,
        text_encoder=None,
        class_names: Sequence[str] | None = None,
        defaults: GenerationDefaults = GenerationDefaults(),
        name: str = "ldmkit-model",
        meta: dict | None = None,
    ):
        if config.conditioning == "text" and text_encoder is None:
            raise ValueError("a text-conditioned model needs its text encoder")
        if config.conditioning == "class" and not class_names:
            raise ValueError("a class-conditioned model needs the names of its classes")
        self.unet, self.autoencoder, self.config = unet.eval(), autoencoder.eval(), config
        self.text_encoder, self.class_names = text_encoder, list(class_names or [])
        self.defaults, self.name = defaults, name
        self.meta = dict(meta or {})  # the model folder's config.json: training run, dataset, metrics
        self.schedule = make_schedule(config.schedule)

    # ---- loading and saving ------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
        autoencoder: str | Path | None = None,
    ) -> "Pipeline":
        """Load a shipped model by name ("fashion-mnist", "shapes") or any ldmkit model folder.
        `autoencoder`: another first-stage folder to decode with, e.g. a fine-tuned decoder of
        the same latent space (it must share the latent shape and scale)."""
        folder = resolve_model(name_or_path)
        states, meta, _ = load_checkpoint(folder)
        if meta.get("type") != "latent-diffusion" or not {"unet", "autoencoder"} <= set(states):
            raise CheckpointError(f"{folder} does not hold an ldmkit latent diffusion model (type {meta.get('type')!r})")
        config = from_dict(LatentDiffusionConfig, meta["model"])
        unet = UNet(config.unet)
        unet.load_state_dict(states["unet"])
        first_stage = Autoencoder(from_dict(AutoencoderConfig, meta["autoencoder"]))
        first_stage.load_state_dict(states["autoencoder"])
        if autoencoder is not None:
            first_stage = swap_first_stage(first_stage, autoencoder)
        text_encoder = None
        if config.conditioning == "text":
            from .conditioning import TextEncoder

            text_encoder = TextEncoder.minilm(config.text_length)
        defaults = from_dict(GenerationDefaults, meta.get("defaults", {}))
        pipe = cls(unet, first_stage, config, text_encoder, meta.get("class_names"), defaults,
                   name=meta.get("name", folder.name), meta=meta)
        return pipe.to(device, dtype)

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        meta = {
            "type": "latent-diffusion",
            "name": self.name,
            "model": to_dict(self.config),
            "autoencoder": to_dict(self.autoencoder.config),
            "defaults": to_dict(self.defaults),
            "class_names": self.class_names if self.config.conditioning == "class" else None,
            "text_encoder": "all-MiniLM-L6-v2" if self.config.conditioning == "text" else None,
            **(extra or {}),
        }
        return save_checkpoint(directory, {"unet": self.unet.state_dict(), "autoencoder": self.autoencoder.state_dict()}, meta)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Pipeline":
        self.unet.to(device=device, dtype=dtype)
        self.autoencoder.to(device=device, dtype=dtype)
        if self.text_encoder is not None:
            self.text_encoder.to(device)  # stays float32: its states are cast at use
        return self

    @property
    def vae(self) -> Autoencoder:
        """The first stage, under the name diffusers users look for."""
        return self.autoencoder

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # ---- conditioning ------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The UNet's conditioning inputs for each prompt; "" is the null (unconditional) one."""
        kind = self.config.conditioning
        if kind == "text":
            states, mask = self.text_encoder(list(prompts))
            return {"context": states.to(self.device, self.dtype), "context_mask": mask.to(self.device)}
        if kind == "class":
            return {"class_labels": torch.tensor([self.class_index(p) for p in prompts], device=self.device)}
        return {}

    def class_index(self, prompt: str) -> int:
        """A class model reads its prompt as a class name (or "a photo of a {name}"); "" is the
        null class, the last label."""
        if prompt == "":
            return self.config.unet.num_classes - 1
        for index, name in enumerate(self.class_names):
            if prompt in (name, f"a photo of a {name}"):
                return index
        raise ValueError(f"this class-conditioned model knows only the prompts {self.class_names} (or ''), got {prompt!r}")

    # ---- generation --------------------------------------------------------------------------
    def generate(
        self,
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
    ) -> list[Image.Image] | torch.Tensor:
        """`num_images` images of each prompt, prompt-major. Image k draws its noise from its own
        generator seeded with seed + k, so it is the same image when generated alone with that
        seed. output: "pil" (a list of images), "tensor" ((N, C, H, W) in [-1, 1]) or "latent"
        (the final latents z_0, (N, c, h, w)). An empty prompt samples unconditionally."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        steps, sampler, guidance = self.resolve_settings(steps, sampler, guidance)
        self._check(prompts, num_images, steps, sampler, guidance, output, latents)
        prompts = [p for p in prompts for _ in range(num_images)]
        if latents is None:
            latents = self.initial_latents(len(prompts), seed)
        results = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            z_T = latents[start : start + len(chunk)].to(self.device, self.dtype)
            gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
            results.append(self._sample(chunk, negative_prompt, z_T, steps, sampler, guidance, guidance_rescale, gens, progress))
        z0 = torch.cat(results)
        if output == "latent":
            return z0
        images = self.decode(z0)
        return images if output == "tensor" else [to_pil(x) for x in images]

    def resolve_settings(self, steps=None, sampler=None, guidance=None) -> tuple[int, str, float]:
        """(steps, sampler, guidance), the model's defaults where None."""
        d = self.defaults
        return (d.steps if steps is None else steps, d.sampler if sampler is None else sampler,
                d.guidance if guidance is None else guidance)

    def initial_latents(self, count: int, seed: int = 0) -> torch.Tensor:
        """z_T for images seed, seed + 1, ...: (count, c, h, w) float32 on the CPU."""
        return torch.cat([torch.randn((1, *self.latent_shape), generator=torch.Generator().manual_seed(seed + k)) for k in range(count)])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.config.image_size // self.autoencoder.config.downsampling_factor
        return (self.config.unet.in_channels, side, side)

    @torch.no_grad()
    def decode(self, z0: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return torch.cat([self.autoencoder.from_latent(z).clamp(-1, 1) for z in z0.split(batch_size)])

    @torch.no_grad()
    def _sample(self, prompts, negative_prompt, z_T, steps, sampler, guidance, rescale, gens, progress):
        cond = self.encode_prompts(prompts)
        uncond = self.encode_prompts([negative_prompt] * len(prompts)) if cond and guidance != 1 else None
        return sample(
            self.unet, z_T, self.schedule, sampler=sampler, steps=steps, prediction=self.config.prediction,
            cond=cond, uncond=uncond, guidance=guidance, guidance_rescale=rescale, gen=gens, progress=progress,
        )

    def _check(self, prompts, num_images, steps, sampler, guidance, output, latents) -> None:
        if not all(isinstance(p, str) for p in prompts) or not prompts:
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
        expected = (len(prompts) * num_images, *self.latent_shape)
        if latents is not None and tuple(latents.shape) != expected:
            raise ValueError(f"latents must have shape {expected} (images, channels, height, width), got {tuple(latents.shape)}")
