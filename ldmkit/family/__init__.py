"""The generative family around LDM: small models that LDM grew out of and competes with (GANs,
VAEs, pixel-space diffusion, ...), each trained on the same data, loadable by folder and sampled
with .generate, so that one scale measures them all."""

from .dalle import DalleGenerator
from .gan import GANGenerator

__all__ = ["DalleGenerator", "GANGenerator"]
