"""A loaded model: its networks, its configs and its card's defaults, as one plain value.

Every reader returns one (ldmkit folders here, Stable Diffusion files and diffusers folders in
ldmkit.io); the composition layer (ldmkit.pipelines) works on it; nothing here samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..autoencoders import Autoencoder, PixelSpace
from ..config import to_dict
from .config import GenerationDefaults, LatentDiffusionConfig


@dataclass
class ModelParts:
    net: nn.Module  # the denoiser: a UNet (or another backbone with the same call)
    autoencoder: Autoencoder | PixelSpace  # the first stage (PixelSpace: the identity, pixel-space models)
    config: LatentDiffusionConfig
    text_encoder: nn.Module | None = None  # prompts -> (context, mask), for conditioning="text"
    class_names: list[str] = field(default_factory=list)  # for conditioning="class"
    defaults: GenerationDefaults = GenerationDefaults()
    name: str = "ldmkit-model"
    meta: dict = field(default_factory=dict)  # the folder's config.json: training run, dataset, metrics

    def __post_init__(self):
        config = self.config
        if config.conditioning == "text" and self.text_encoder is None:
            raise ValueError("a text-conditioned model needs its text encoder")
        if config.conditioning == "class" and not self.class_names:
            raise ValueError("a class-conditioned model needs the names of its classes")
        z, wanted = self.autoencoder.config.z_channels, config.net_in_channels(self.autoencoder.config.z_channels)
        if config.net.in_channels != wanted:
            raise ValueError(f"a {config.task} model on {z}-channel latents needs a network with {wanted} input "
                             f"channels, this one has {config.net.in_channels}")
        self.class_names = list(self.class_names or [])

    @property
    def uses_clip(self) -> bool:
        return self.config.uses_clip

    @property
    def uses_minilm(self) -> bool:
        return self.config.uses_minilm

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
