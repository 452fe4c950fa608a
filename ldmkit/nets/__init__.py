"""Denoiser networks: the LDM / Stable Diffusion UNet and its parts."""

from ldmkit.nets.config import UNET_PRESETS, UNetConfig
from ldmkit.nets.embeddings import timestep_embedding
from ldmkit.nets.unet import UNet

__all__ = ["UNet", "UNetConfig", "UNET_PRESETS", "timestep_embedding"]
