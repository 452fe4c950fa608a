"""The generative family around LDM: small models that LDM grew out of and competes with (GANs,
VAEs, pixel-space diffusion, ...), each trained on the same data, loadable by folder and sampled
with .generate, so that one scale measures them all."""

from .base import ClassPromptGenerator, FamilyGenerator
from .cascade import CascadeGenerator, save_cascade
from .dalle import DalleGenerator
from .gan import GANGenerator
from .loading import GENERATORS, family_kind, load_family_model
from .unclip import UnclipGenerator, save_unclip
from .vae import VAEGenerator

__all__ = ["GENERATORS", "CascadeGenerator", "ClassPromptGenerator", "DalleGenerator", "FamilyGenerator",
           "GANGenerator", "UnclipGenerator", "VAEGenerator", "family_kind", "load_family_model", "save_cascade",
           "save_unclip"]
