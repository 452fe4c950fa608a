"""A trained latent diffusion model as one object: prompt in, images out.

A model folder holds the networks and, for CLIP (Stable Diffusion), the text encoder and its
tokenizer; MiniLM comes from its package:

    config.json          {"type": "latent-diffusion", "model": LatentDiffusionConfig,
                          "autoencoder": AutoencoderConfig, "defaults": {...}, ...}
    model.safetensors    "unet." (the EMA weights), "autoencoder." and "text_encoder." tensors
    tokenizer/           CLIP's vocab.json and merges.txt (CLIP models only)
    README.md            the model card

`from_pretrained` also reads Stable Diffusion single files and diffusers folders (ldmkit.io).

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
from .diffusion import SAMPLERS, make_schedule, sample, sampler_timesteps, start_scale
from .io import CheckpointError, load_checkpoint, save_checkpoint
from .nets import UNet
from .train.diffusion_config import LatentDiffusionConfig
from .utils.images import to_pil
from .utils.memory_format import to_channels_last_owned

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"  # the models shipped in the repository
BUNDLED = ("fashion-mnist", "shapes", "fashion-mnist-x4", "fashion-mnist-inpaint")
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
        # channels_last: oneDNN runs the VAE's wide full-resolution convolutions without
        # reordered copies (measured against diffusers at 256 px on CPU: encode 1.08x -> 1.46x,
        # decode 0.84x -> 1.15x; docs/benchmarks.md). The UNet gained nothing, so it stays.
        to_channels_last_owned(self.autoencoder)
        self.text_encoder, self.class_names = text_encoder, list(class_names or [])
        self.defaults, self.name = defaults, name
        self.meta = dict(meta or {})  # the model folder's config.json: training run, dataset, metrics
        self.schedule = make_schedule(config.schedule)

    # ---- loading and saving ------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
        autoencoder: str | Path | None = None, **sd_options,
    ) -> "Pipeline":
        """Load a shipped model by name ("fashion-mnist", "shapes"), an ldmkit model folder, a
        Stable Diffusion single file (.safetensors / .ckpt) or a diffusers folder; the kind is
        told by content, not by name. `autoencoder`: another first-stage folder to decode with,
        e.g. a fine-tuned decoder of the same latent space. `sd_options` go to the Stable
        Diffusion readers (tokenizer=, prediction=, use_ema=; see ldmkit.io.stable_diffusion)."""
        from .io import stable_diffusion as sd

        path = Path(name_or_path)
        if path.is_file() or sd.is_diffusers_folder(path):
            pipe = sd.load_stable_diffusion(path, **sd_options)
        else:
            if sd_options:
                raise ValueError(f"{sorted(sd_options)} apply to Stable Diffusion files and diffusers folders only")
            pipe = cls._from_folder(resolve_model(name_or_path))
        if autoencoder is not None:
            pipe.autoencoder = swap_first_stage(pipe.autoencoder, autoencoder)
        return pipe.to(device, dtype)

    @classmethod
    def _from_folder(cls, folder: Path) -> "Pipeline":
        states, meta, _ = load_checkpoint(folder)
        if meta.get("type") != "latent-diffusion" or not {"unet", "autoencoder"} <= set(states):
            raise CheckpointError(f"{folder} does not hold an ldmkit latent diffusion model (type {meta.get('type')!r})")
        config = from_dict(LatentDiffusionConfig, meta["model"])
        unet = UNet(config.unet)
        unet.load_state_dict(states["unet"])
        first_stage = Autoencoder(from_dict(AutoencoderConfig, meta["autoencoder"]))
        first_stage.load_state_dict(states["autoencoder"])
        text_encoder = None
        if config.conditioning == "text" and config.text_encoder == "clip":
            from .io.stable_diffusion import clip_text_encoder

            text_encoder = clip_text_encoder(meta["text_encoder_config"], states["text_encoder"], folder / "tokenizer")
        elif config.conditioning == "text":
            from .conditioning import TextEncoder

            text_encoder = TextEncoder.minilm(config.text_length)
        defaults = from_dict(GenerationDefaults, meta.get("defaults", {}))
        return cls(unet, first_stage, config, text_encoder, meta.get("class_names"), defaults,
                   name=meta.get("name", folder.name), meta=meta)

    def describe(self) -> dict:
        """The model's config.json: everything but the weights (and a CLIP tokenizer)."""
        meta = {k: v for k, v in self.meta.items() if k not in ("source", "format")}
        meta |= {
            "type": "latent-diffusion",
            "name": self.name,
            "model": to_dict(self.config),
            "autoencoder": to_dict(self.autoencoder.config),
            "defaults": to_dict(self.defaults),
            "class_names": self.class_names if self.config.conditioning == "class" else None,
            "text_encoder": "all-MiniLM-L6-v2" if self.uses_minilm else ("clip" if self.uses_clip else None),
        }
        if self.uses_clip:
            meta["text_encoder_config"] = self.text_encoder.model.config.to_dict()
        return meta

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """An ldmkit model folder (see the module docstring); `extra` joins its config.json."""
        meta = {**self.describe(), **(extra or {})}
        states = {"unet": self.unet.state_dict(), "autoencoder": self.autoencoder.state_dict()}
        files = {}
        if self.uses_clip:
            from .io.stable_diffusion import clip_file_state, tokenizer_files

            states["text_encoder"] = clip_file_state(self.text_encoder.model)
            files = {f"tokenizer/{name}": data for name, data in tokenizer_files(self.text_encoder.tokenizer).items()}
        return save_checkpoint(directory, states, meta, extra_files=files)

    @property
    def uses_clip(self) -> bool:
        return self.config.conditioning == "text" and self.config.text_encoder == "clip"

    @property
    def uses_minilm(self) -> bool:
        return self.config.conditioning == "text" and self.config.text_encoder == "minilm"

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Pipeline":
        self.unet.to(device=device, dtype=dtype)
        self.autoencoder.to(device=device, dtype=dtype)
        if self.uses_clip:
            self.text_encoder.to(device=device, dtype=dtype)
        elif self.text_encoder is not None:
            self.text_encoder.to(device)  # MiniLM stays float32: its states are cast at use
        return self

    @property
    def inpainting(self) -> bool:
        """An inpainting UNet (SD inpainting's 9 channels): z_t, the mask, the masked image's latent."""
        return self.config.lowres is None and self.unet.config.in_channels == 2 * self.autoencoder.config.z_channels + 1

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

    # ---- shared fine-tuning files (ldmkit.finetune) -------------------------------------------
    def load_lora(self, path: str | Path, scale: float = 1.0, merge: bool = False):
        """A LoRA file (kohya or diffusers layout) on the UNet (and CLIP); several stack. Returns
        the network: .set_scale(s), .detach() (or .unmerge() when merged)."""
        from .finetune.lora_formats import apply_lora

        return apply_lora(self, path, scale=scale, merge=merge)

    def load_embedding(self, path: str | Path, token: str | None = None) -> str:
        """A textual-inversion embedding (A1111 or diffusers file); returns its prompt token."""
        from .finetune.textual_inversion import apply_embedding

        return apply_embedding(self, path, token=token)

    def load_hypernetwork(self, path: str | Path, strength: float = 1.0):
        """An A1111 hypernetwork on the attention context; returns it (.set_strength, .detach)."""
        from .finetune.hypernetwork import apply_hypernetwork

        return apply_hypernetwork(self, path, strength=strength)

    # ---- conditioning ------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The UNet's conditioning inputs for each prompt; "" is the null (unconditional) one."""
        kind = self.config.conditioning
        if kind == "text":
            return self.text_conditioning(*self.text_encoder(list(prompts)))
        if kind == "class":
            return {"class_labels": torch.tensor([self.class_index(p) for p in prompts], device=self.device)}
        return {}

    def text_conditioning(self, states: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """A text encoder's (states, mask) as the UNet's inputs, on its device and in its dtype."""
        cond = {"context": states.to(self.device, self.dtype)}
        if mask is not None:  # CLIP (SD) attends to every position, padding included
            cond["context_mask"] = mask.to(self.device)
        return cond

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
        height: int | None = None,
        width: int | None = None,
        vae_tile: int | None = None,
    ) -> list[Image.Image] | torch.Tensor:
        """`num_images` images of each prompt, prompt-major. Image k draws its noise from its own
        generator seeded with seed + k, so it is the same image when generated alone with that
        seed. output: "pil" (a list of images), "tensor" ((N, C, H, W) in [-1, 1]) or "latent"
        (the final latents z_0, (N, c, h, w)). An empty prompt samples unconditionally.
        height, width: pixels (default: the model's image size). vae_tile: decode in tiles of this
        many latent pixels (bounds memory for large images). The sampler runs in float32
        whatever the networks' dtype; only the networks see half precision."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        steps, sampler, guidance = self.resolve_settings(steps, sampler, guidance)
        shape = self.latent_shape_for(height, width)
        self._check(prompts, num_images, steps, sampler, guidance, output, latents, shape)
        prompts = [p for p in prompts for _ in range(num_images)]
        if latents is None:
            latents = self.initial_latents(len(prompts), seed, shape)
        results = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            z_T = latents[start : start + len(chunk)].to(self.device, torch.float32)
            gens = self.generators(seed + start, len(chunk))
            results.append(self._sample(chunk, negative_prompt, z_T, steps, sampler, guidance, guidance_rescale, gens, progress))
        return self.finish(torch.cat(results), output, vae_tile)

    @staticmethod
    def generators(seed: int, count: int) -> list[torch.Generator]:
        """One generator per image, seeded seed, seed + 1, ...: image k's noise depends on its seed only."""
        return [torch.Generator().manual_seed(seed + k) for k in range(count)]

    def finish(self, z0: torch.Tensor, output: str, vae_tile: int | None = None):
        """Final latents as asked: "latent" as they are, "tensor" decoded, "pil" as images."""
        if output == "latent":
            return z0
        images = self.decode(z0, tile=vae_tile)
        return images if output == "tensor" else [to_pil(x) for x in images]

    def img2img(self, image, prompt: str = "", strength: float = 0.6, **options):
        """Variations of `image` towards `prompt` (SDEdit); see ldmkit.pipelines.img2img."""
        from .pipelines import img2img

        return img2img(self, image, prompt, strength, **options)

    def inpaint(self, image, mask, prompt: str = "", **options):
        """Repaint the white part of `mask`; pixels outside it come back exactly as given."""
        from .pipelines import inpaint

        return inpaint(self, image, mask, prompt, **options)

    def outpaint(self, image, prompt: str = "", left: int = 0, right: int = 0, top: int = 0, bottom: int = 0, **options):
        """Extend the canvas on any side and inpaint the new area."""
        from .pipelines import outpaint

        return outpaint(self, image, prompt, left, right, top, bottom, **options)

    def upscale(self, image, prompt: str = "", **options):
        """`image` at the first stage's factor times its size (an upscaler model, e.g. SD x4)."""
        from .pipelines import upscale

        return upscale(self, image, prompt, **options)

    def resolve_settings(self, steps=None, sampler=None, guidance=None) -> tuple[int, str, float]:
        """(steps, sampler, guidance), the model's defaults where None."""
        d = self.defaults
        return (d.steps if steps is None else steps, d.sampler if sampler is None else sampler,
                d.guidance if guidance is None else guidance)

    def initial_latents(self, count: int, seed: int = 0, shape: tuple[int, int, int] | None = None) -> torch.Tensor:
        """z_T for images seed, seed + 1, ...: (count, c, h, w) float32 on the CPU."""
        shape = shape or self.latent_shape
        return torch.cat([torch.randn((1, *shape), generator=g) for g in self.generators(seed, count)])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.latent_shape_for(None, None)

    def latent_shape_for(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        """(c, h, w) of the latents of a height x width image (default: the model's size)."""
        f = self.autoencoder.config.downsampling_factor
        multiple = f * self.unet.config.downsampling_factor
        height = self.config.image_size if height is None else height
        width = self.config.image_size if width is None else width
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value < multiple or value % multiple:
                raise ValueError(f"{name} must be a positive multiple of {multiple} pixels for this model "
                                 f"(autoencoder factor {f} x UNet factor {multiple // f}), got {value!r}")
        return (self.autoencoder.config.z_channels, height // f, width // f)

    @torch.no_grad()
    def decode(self, z0: torch.Tensor, batch_size: int = 256, tile: int | None = None) -> torch.Tensor:
        """Images in [-1, 1] from final latents; `tile` (latent pixels) decodes in overlapping tiles."""
        ae_dtype = next(self.autoencoder.parameters()).dtype
        if tile is not None:
            from .autoencoders.tiling import tiled_decode

            decode = lambda z: tiled_decode(self.autoencoder, z, tile=tile, overlap=max(1, tile // 4))  # noqa: E731
        else:
            decode = self.autoencoder.from_latent
        return torch.cat([decode(z.to(ae_dtype)).float().clamp(-1, 1) for z in z0.split(batch_size)])

    def _unet(self, x: torch.Tensor, t, concat: torch.Tensor | None = None, **cond) -> torch.Tensor:
        """The network in its own dtype, its output back in the sampler's float32. `concat`:
        channels joined to x_t (an inpainting UNet's mask and masked-image latents)."""
        if concat is not None:
            x_in = torch.cat([x, concat.to(x.dtype)], dim=1)
            return self.unet(x_in.to(self.dtype), t, **cond).to(x.dtype)
        return self.unet(x.to(self.dtype), t, **cond).to(x.dtype)

    @torch.no_grad()
    def network_inputs(self, prompts, negative_prompt, guidance, extra: dict | None = None):
        """(cond, uncond) for the sampler: the prompts' and, under guidance, the negative prompt's
        conditioning; `extra` (e.g. concat=...) goes to the network under both."""
        cond = self.encode_prompts(prompts)
        uncond = self.encode_prompts([negative_prompt] * len(prompts)) if cond and guidance != 1 else None
        cond = {**cond, **(extra or {})}
        return cond, None if uncond is None else {**uncond, **(extra or {})}

    @torch.no_grad()
    def _sample(self, prompts, negative_prompt, z_T, steps, sampler, guidance, rescale, gens, progress,
                timesteps=None, denoiser_wrapper=None, extra: dict | None = None, inputs=None):
        """Sample from z_T (pure noise) over the model's timesteps, or from a partly noised
        latent over `timesteps` (image-to-image). `inputs`: (cond, uncond) from network_inputs,
        when the caller samples step by step and encodes the prompts once."""
        cond, uncond = inputs or self.network_inputs(prompts, negative_prompt, guidance, extra)
        if timesteps is None:
            timesteps = sampler_timesteps(self.schedule, sampler, steps, self.config.sampling)
            z_T = z_T * start_scale(self.schedule, sampler, timesteps, self.config.sampling)
        return sample(
            self._unet, z_T, self.schedule, sampler=sampler, prediction=self.config.prediction, cond=cond,
            uncond=uncond, guidance=guidance, guidance_rescale=rescale, gen=gens, progress=progress,
            timesteps=timesteps, denoiser_wrapper=denoiser_wrapper,
        )

    def _check(self, prompts, num_images, steps, sampler, guidance, output, latents, shape) -> None:
        if self.config.lowres is not None:
            raise ValueError(f"{self.name} is an upscaler: it needs a low-resolution image, use upscale(image)")
        if self.unet.config.in_channels != self.autoencoder.config.z_channels:
            raise ValueError(
                f"this model's UNet takes {self.unet.config.in_channels} input channels, the latents have "
                f"{self.autoencoder.config.z_channels}: it is an inpainting model (latents + mask + masked "
                "image), which text-to-image generate() cannot drive"
            )
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
        expected = (len(prompts) * num_images, *shape)
        if latents is not None and tuple(latents.shape) != expected:
            raise ValueError(f"latents must have shape {expected} (images, channels, height, width), got {tuple(latents.shape)}")
