"""The generative family around LDM: small models that LDM grew out of and competes with (GANs,
VAEs, pixel-space diffusion, ...), each trained on the same data, loadable by folder and sampled
with .generate, so that one scale measures them all."""

from .base import FamilyGenerator
from .dalle import DalleGenerator
from .gan import GANGenerator
from .loading import GENERATORS, family_kind, load_family_model

__all__ = ["GENERATORS", "DalleGenerator", "FamilyGenerator", "GANGenerator", "family_kind", "load_family_model"]
