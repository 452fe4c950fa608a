"""Denoiser networks: the LDM / Stable Diffusion UNet and DiT, made from their configs by kind."""

from ldmkit.nets.config import UNET_PRESETS, UNetConfig
from ldmkit.nets.dit import DiT
from ldmkit.nets.dit_config import DIT_PRESETS, DiTConfig
from ldmkit.nets.embeddings import timestep_embedding
from ldmkit.nets.unet import UNet

NETS = {"unet": UNet, "dit": DiT}  # a config's `kind` -> its network


def make_net(config: UNetConfig | DiTConfig, gradient_checkpointing: bool = False):
    """The denoiser a config describes (a UNet or a DiT), freshly initialised."""
    return NETS[config.kind](config, gradient_checkpointing=gradient_checkpointing)


__all__ = ["DIT_PRESETS", "DiT", "DiTConfig", "NETS", "UNet", "UNetConfig", "UNET_PRESETS", "make_net",
           "timestep_embedding"]
