"""Pipeline: a loaded model and the tasks it can run, as one object; prompt in, images out.

A thin facade: the model's parts (ldmkit.model), its noise schedule, and one method per task
that calls that task's function (txt2img, image_tasks, upscale) over the shared core.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..autoencoders import Autoencoder
from ..diffusion import make_schedule
from ..family.loading import family_kind, load_family_model
from ..finetune.hypernetwork import apply_hypernetwork
from ..finetune.lora_formats import apply_lora
from ..finetune.scoped import adapters_applied
from ..finetune.textual_inversion import apply_embedding
from ..io import stable_diffusion as sd
from ..model import ModelParts, load_model, resolve_model, save_model, swap_first_stage
from ..model.conditioner import TextConditioner, conditioner_for, takes_pooled
from ..nets.controlnet import ControlNet
from ..nets.deepcache import check_deepcache
from ..utils.memory_format import to_channels_last_owned
from . import core
from .controlnet import add_controlnet
from .fast import FastPath, check_mode, choose_fast_path, openvino_decoder
from .fast import apply as apply_fast_path
from .image_tasks import img2img, inpaint, outpaint
from .tiny_decoder import load_tiny_decoder
from .txt2img import generate
from .upscale import cascade, upscale


class Pipeline:
    """A network (UNet) + autoencoder + text encoder (or class names) + sampling defaults."""

    def __init__(self, parts: ModelParts):
        self.net, self.autoencoder, self.config = parts.net.eval(), parts.autoencoder.eval(), parts.config
        # channels_last: oneDNN runs the VAE's wide full-resolution convolutions without
        # reordered copies (docs/benchmarks.md); the UNet gained nothing, so it stays.
        to_channels_last_owned(self.autoencoder)
        self.text_encoder, self.class_names = parts.text_encoder, list(parts.class_names)
        self.defaults, self.name = parts.defaults, parts.name
        self.meta = dict(parts.meta)  # the model folder's config.json: training run, dataset, metrics
        self.schedule = make_schedule(parts.config.schedule)
        self.conditioner = conditioner_for(parts.config, parts.text_encoder, parts.class_names)
        self.controlnets: list[ControlNet] = []  # load_controlnet; a run gives one control image each
        self.fast_path = FastPath()  # how the networks run (ldmkit.pipelines.fast): exact float32 eager
        self.deepcache_interval: int | None = None  # DeepCache (ldmkit.nets.deepcache): a full UNet every N calls
        self.tiny_decoder_on = False  # final decodes by the distilled tiny decoder (use_tiny_decoder)
        self._tiny_decoder = None  # loaded when first asked for

    # ---- loading and saving ------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
        autoencoder: str | Path | None = None, fast: bool | str = False, deepcache_interval: int | None = None,
        **sd_options,
    ) -> Pipeline:
        """Load a shipped model by name ("fashion-mnist", "shapes"), an ldmkit model folder, a
        Stable Diffusion single file (.safetensors / .ckpt) or a diffusers folder; the kind is
        told by content, not by name. `autoencoder`: another first-stage folder to decode with,
        e.g. a fine-tuned decoder of the same latent space. `sd_options` go to the Stable
        Diffusion readers (tokenizer=, prediction=, use_ema=; see ldmkit.io.stable_diffusion).
        A folder of the generative family (config.json's kind "gan", "dalle", "unclip", ...) loads
        as its own generator (ldmkit.family), whose generate() takes that model's settings.
        fast: True, the fastest exact-enough path this device allows (bf16 weights on bf16 units),
        "compile" also a compiled UNet; False, float32 eager (ldmkit.pipelines.fast).
        deepcache_interval: N, the UNet's deep part runs every N calls and is reused between (DeepCache)."""
        check_mode(fast)
        if fast is not False and dtype != torch.float32:
            raise ValueError(f"give fast= or dtype=, not both: fast={fast!r} picks the dtype itself")
        path = Path(name_or_path)
        if path.is_file() or sd.is_diffusers_folder(path):
            parts = sd.load_stable_diffusion(path, **sd_options)
        else:
            if sd_options:
                raise ValueError(f"{sorted(sd_options)} apply to Stable Diffusion files and diffusers folders only")
            folder = resolve_model(name_or_path)
            if family_kind(folder) is not None:  # a GAN, a DALL-E, ...: a generator of its own kind
                if autoencoder is not None:
                    raise ValueError(f"autoencoder= swaps a latent diffusion model's first stage; {folder} is a "
                                     f"{family_kind(folder)} model")
                if fast is not False or deepcache_interval is not None:
                    raise ValueError(f"fast= and deepcache_interval= speed up latent diffusion models; {folder} "
                                     f"is a {family_kind(folder)} model")
                return load_family_model(folder, device, dtype, open_diffusion_model=cls.from_pretrained)
            parts = load_model(folder)
        if autoencoder is not None:
            parts.autoencoder = swap_first_stage(parts.autoencoder, autoencoder)
        pipe = cls(parts).to(device, dtype).use_deepcache(deepcache_interval)
        return apply_fast_path(pipe, choose_fast_path(device, fast)) if fast is not False else pipe

    @property
    def parts(self) -> ModelParts:
        return ModelParts(self.net, self.autoencoder, self.config, self.text_encoder, self.class_names,
                          self.defaults, self.name, self.meta)

    def describe(self) -> dict:
        """The model's config.json: everything but the weights (and a CLIP tokenizer)."""
        return self.parts.describe()

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """An ldmkit model folder (ldmkit.model.folder); `extra` joins its config.json."""
        return save_model(self.parts, directory, extra)

    @property
    def uses_clip(self) -> bool:
        return self.config.uses_clip

    @property
    def uses_minilm(self) -> bool:
        return self.config.uses_minilm

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Pipeline:
        self.net.to(device=device, dtype=dtype)
        self.autoencoder.to(device=device, dtype=dtype)
        for controlnet in self.controlnets:
            controlnet.to(device=device, dtype=dtype)
        if self.uses_clip:
            self.text_encoder.to(device=device, dtype=dtype)
        elif self.text_encoder is not None:
            self.text_encoder.to(device)  # MiniLM stays float32: its states are cast at use
        return self

    @property
    def unet(self):
        """The denoiser under the name diffusers users look for (ldmkit's: net)."""
        return self.net

    @unet.setter
    def unet(self, module):
        self.net = module

    @property
    def vae(self) -> Autoencoder:
        """The first stage, under the name diffusers users look for."""
        return self.autoencoder

    @property
    def inpainting(self) -> bool:
        """An inpainting model (SD inpainting's 9 channels): z_t, the mask, the masked image's latent."""
        return self.config.task == "inpainting"

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    # ---- shared fine-tuning files (ldmkit.finetune) -------------------------------------------
    def load_lora(self, path: str | Path, scale: float = 1.0, merge: bool = False):
        """A LoRA file (kohya or diffusers layout) on the UNet (and CLIP); several stack. Returns
        the network: .set_scale(s), .detach() (or .unmerge() when merged)."""
        return apply_lora(self, path, scale=scale, merge=merge)

    def load_embedding(self, path: str | Path, token: str | None = None) -> str:
        """A textual-inversion embedding (A1111 or diffusers file); returns its prompt token."""
        return apply_embedding(self, path, token=token)

    def load_hypernetwork(self, path: str | Path, strength: float = 1.0):
        """An A1111 hypernetwork on the attention context; returns it (.set_strength, .detach)."""
        return apply_hypernetwork(self, path, strength=strength)

    def adapters(self, loras=(), embeddings=(), hypernetworks=()):
        """Adapters for one `with` block, then taken off: `with pipe.adapters(loras=[(file, 0.8)],
        embeddings=[(file, None)]) as tokens:` (ldmkit.finetune.scoped)."""
        return adapters_applied(self, loras, embeddings, hypernetworks)

    # ---- ControlNets (ldmkit.pipelines.controlnet) ---------------------------------------------
    def load_controlnet(self, name_or_path: str | Path | ControlNet) -> ControlNet:
        """A ControlNet for this model's UNet: an ldmkit ControlNet folder, a diffusers
        ControlNetModel folder, an original .pth / .safetensors file, or a ControlNet built in
        Python; one made for another base is refused, naming both. Several stack (their residuals
        are summed): generate(..., control_image=[one per ControlNet, in load order])."""
        return add_controlnet(self, name_or_path)

    def unload_controlnets(self) -> None:
        """Back to the plain model: no ControlNet is loaded."""
        self.controlnets.clear()

    # ---- conditioning ------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The network's conditioning inputs for each prompt; "" is the null (unconditional) one."""
        return self.conditioner(prompts, self.device, self.dtype)

    def text_conditioning(self, states: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """A text encoder's (states, mask) as the network's inputs, on its device and in its dtype."""
        return TextConditioner.from_states(states, mask, self.device, self.dtype, pooled=takes_pooled(self.config))

    # ---- the tasks: each one function of (pipe, ...), the same as a method ---------------------
    generate = generate  # txt2img.generate: images from prompts
    img2img = img2img  # image_tasks.img2img: variations of an image towards a prompt (SDEdit)
    inpaint = inpaint  # image_tasks.inpaint: repaint the white part of a mask
    outpaint = outpaint  # image_tasks.outpaint: extend the canvas and inpaint the new area
    upscale = upscale  # upscale.upscale: an upscaler model's super-resolution
    cascade = cascade  # upscale.cascade: this (base) model's images, then upscaled by another model (GLIDE)

    # ---- the core, for callers that compose their own loop -------------------------------------
    def resolve_settings(self, steps=None, sampler=None, guidance=None) -> tuple[int, str, float]:
        """(steps, sampler, guidance), the model's defaults where None."""
        return core.resolve_settings(self, steps, sampler, guidance)

    @staticmethod
    def generators(seed: int, count: int) -> list[torch.Generator]:
        return core.generators(seed, count)

    def initial_latents(self, count: int, seed: int = 0, shape: tuple[int, int, int] | None = None) -> torch.Tensor:
        return core.initial_latents(self, count, seed, shape)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return core.latent_shape(self)

    def latent_shape_for(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        return core.latent_shape(self, height, width)

    def network_inputs(self, prompts, negative_prompt, guidance, extra: dict | None = None):
        return core.network_inputs(self, prompts, negative_prompt, guidance, extra)

    def decode(self, z0: torch.Tensor, batch_size: int = 256, tile: int | None = None) -> torch.Tensor:
        return core.decode(self, z0, batch_size, tile)

    def finish(self, z0: torch.Tensor, output: str, vae_tile: int | None = None):
        return core.finish(self, z0, output, vae_tile)

    def use_deepcache(self, interval: int | None) -> Pipeline:
        """Sample under DeepCache (ldmkit.nets.deepcache): the UNet's deep part every `interval`
        calls, reused between; None: off. A clear error for a bad interval or a network without skips."""
        if interval is not None:
            check_deepcache(self.net, interval)
        self.deepcache_interval = interval
        return self

    # ---- the distilled tiny decoder (ldmkit.pipelines.tiny_decoder) ------------------------------
    def tiny_decoder(self, path: str | Path | None = None):
        """The model's tiny decoder (TAESD layout, distilled from its first stage), loaded once: the
        tiny autoencoder folder at `path` (ldmkit's, diffusers' AutoencoderTiny, or TAESD's own
        files), else its config.json's "tiny_decoder", else the shipped one whose teacher
        fingerprint matches. A ValueError says how to make one when there is none."""
        if path is not None or self._tiny_decoder is None:
            self._tiny_decoder = load_tiny_decoder(self.autoencoder, self.meta, path=path, model_name=self.name)
            openvino_decoder(self._tiny_decoder, self.fast_path)
        return self._tiny_decoder

    def use_tiny_decoder(self, on: bool = True, path: str | Path | None = None) -> Pipeline:
        """Decode final latents with the tiny decoder (several times faster, a little less exact;
        `path`: a tiny autoencoder folder, e.g. TAESD for Stable Diffusion) or, with on=False, with
        the full one again; an error now if the model has none."""
        if on:
            self.tiny_decoder(path)
        self.tiny_decoder_on = bool(on)
        return self
