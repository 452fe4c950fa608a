"""What a trained latent diffusion model is, as typed configs: saved in its folder's config.json.

The task is explicit: a plain generator, an inpainting model (the mask and the masked image's
latent joined to z_t, SD-inpainting style) or an upscaler (a noised low-resolution image joined
to z_t, LDM sec. 4.4). Nothing infers it from channel counts except the readers of old or
foreign files, once, on loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..diffusion.gaussian import PREDICTIONS
from ..diffusion.sampling import SamplingConfig
from ..diffusion.schedule import ScheduleConfig
from ..nets.config import UNET_PRESETS, UNetConfig
from ..nets.dit_config import DiTConfig

# image-embedding: a CLIP image embedding per image, as DALL-E 2's decoder (unCLIP) reads it
CONDITIONINGS = ("text", "class", "none", "image-embedding")
TEXT_ENCODERS = ("minilm", "clip")  # clip: Stable Diffusion's, weights stored with the model
TASKS = ("generation", "inpainting", "upscaling")


@dataclass(frozen=True)
class LowResConfig:
    """Super-resolution by concatenation (LDM sec. 4.4; SD's x4 upscaler): the low-resolution
    image, noised to a chosen level of its own schedule, is joined to z_t as input channels at
    the latent's size, and that noise level is the UNet's class label. A pixel-space upsampler
    (GLIDE, ADM) has latents at the output's size: its input is enlarged to it (bilinear) first."""

    channels: int = 3
    # SD x4's: LDM's "linear" schedule (linear in sqrt(beta)), diffusers' "scaled_linear"
    schedule: ScheduleConfig = ScheduleConfig(kind="scaled_linear", beta_start=0.0001, beta_end=0.02)
    max_noise_level: int = 350
    noise_level: int = 20  # the default at sampling time
    # output side / input side; None: the first stage's factor f, the input at the latent's size (SD x4)
    upscale_factor: int | None = None

    def __post_init__(self):
        if self.upscale_factor is not None and (not isinstance(self.upscale_factor, int) or self.upscale_factor < 2):
            raise ValueError(f"upscale_factor must be a whole number >= 2 (or None), got {self.upscale_factor!r}")

    def factor(self, f: int) -> int:
        """Output side / input side, for a first stage of factor f."""
        return f if self.upscale_factor is None else self.upscale_factor

    def enlargement(self, f: int) -> int:
        """How many times the input is enlarged to the latent's size (1: it is the latent's size)."""
        if self.factor(f) % f:
            raise ValueError(f"upscale_factor {self.upscale_factor} is not a multiple of the first stage's factor {f}")
        return self.factor(f) // f


@dataclass(frozen=True)
class LatentDiffusionConfig:
    """What a trained model is: saved in its config.json beside the weights."""

    net: UNetConfig | DiTConfig = UNET_PRESETS["small"]  # the denoiser's config, tagged by its "kind"
    schedule: ScheduleConfig = ScheduleConfig()
    prediction: str = "eps"
    conditioning: str = "text"  # text: MiniLM token states; class: labels (+ a null class); none; image-embedding
    text_length: int = 16  # tokens of MiniLM context (captions here are short; CLIP always has 77)
    image_size: int = 32  # pixels; latents are image_size / f on a side
    text_encoder: str = "minilm"
    sampling: SamplingConfig = SamplingConfig()
    task: str = "generation"  # generation | inpainting (+ mask, masked latent) | upscaling (+ low-res image)
    lowres: LowResConfig | None = None  # the low-resolution input of an upscaling model
    # image-embedding: the CLIP (a shipped name or a folder) whose normalised image embeddings, net.pooled_dim
    # wide, the model reads: added to the time embedding and made into net.pooled_tokens context tokens
    embedding_clip: str | None = None

    RENAMED_KEYS: ClassVar[dict[str, str]] = {"unet": "net"}  # config.json files written before

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; choose one of {PREDICTIONS}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {self.conditioning!r}; choose one of {CONDITIONINGS}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"unknown text_encoder {self.text_encoder!r}; choose one of {TEXT_ENCODERS}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {TASKS}")
        if (self.task == "upscaling") != (self.lowres is not None):
            raise ValueError("an upscaling model needs lowres (its low-resolution input), and only it has one: "
                             f"task {self.task!r}, lowres {self.lowres}")
        if self.conditioning == "text" and self.net.context_dim is None:
            raise ValueError("text conditioning needs a UNet with cross-attention (unet.context_dim)")
        if getattr(self.net, "pooled_dim", None) is not None and self.conditioning not in ("text", "image-embedding"):
            raise ValueError("a network with pooled_dim adds a pooled condition to its time embedding (the prompt's "
                             "pooled text state, or a CLIP image embedding): it needs conditioning 'text' or "
                             f"'image-embedding', got {self.conditioning!r}")
        if self.conditioning == "image-embedding":
            check_image_embedding_model(self)
        if self.conditioning == "class" and self.net.num_classes is None:
            raise ValueError("class conditioning needs unet.num_classes (the classes + 1 null class)")

    @property
    def embedding_dim(self) -> int | None:
        """The width of the CLIP image embeddings an image-embedding model reads (None: another kind)."""
        return self.net.pooled_dim if self.conditioning == "image-embedding" else None

    @property
    def uses_clip(self) -> bool:
        return self.conditioning == "text" and self.text_encoder == "clip"

    @property
    def uses_minilm(self) -> bool:
        return self.conditioning == "text" and self.text_encoder == "minilm"

    def net_in_channels(self, z_channels: int) -> int:
        """The network's input channels for latents of z_channels: z_t, plus the task's inputs."""
        if self.task == "inpainting":
            return 2 * z_channels + 1  # + the mask + the masked image's latent
        if self.task == "upscaling":
            return z_channels + self.lowres.channels
        return z_channels


def check_image_embedding_model(config: LatentDiffusionConfig) -> None:
    """An image-embedding model (DALL-E 2's decoder) reads its embedding through net.pooled_dim, and its
    cross-attention, if any, has only the embedding's context tokens (net.pooled_tokens) to read."""
    net = config.net
    if getattr(net, "pooled_dim", None) is None:
        raise ValueError("image-embedding conditioning adds the CLIP image embedding to the time embedding: it "
                         "needs a UNet with pooled_dim = the embedding's width (clip-small: 128)")
    if net.context_dim is not None and not net.pooled_tokens:
        raise ValueError(f"this UNet cross-attends to a context (context_dim {net.context_dim}) but an "
                         "image-embedding model has no text: set net.pooled_tokens (context tokens made of the "
                         "embedding; DALL-E 2: 4) or net.context_dim=None")
    if not config.embedding_clip:
        raise ValueError("image-embedding conditioning needs embedding_clip: the CLIP whose image embeddings the "
                         "model reads (e.g. 'clip-small')")


@dataclass(frozen=True)
class GenerationDefaults:
    """What a model card recommends; generation uses these where the request gives nothing."""

    guidance: float = 3.0
    sampler: str = "dpmpp_2m"
    steps: int = 20


def task_of_legacy_config(model: dict, z_channels: int) -> str:
    """The task of a config.json written before tasks were explicit, told once from the channels."""
    if model.get("lowres") is not None:
        return "upscaling"
    net = model.get("net", model.get("unet"))
    return "inpainting" if net["in_channels"] == 2 * z_channels + 1 else "generation"
