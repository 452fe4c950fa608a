"""ldmkit: latent diffusion in plain, readable PyTorch."""

__version__ = "0.1.0"

from .pipeline import Pipeline  # noqa: E402  (the one entry point most users need)

__all__ = ["Pipeline", "__version__"]
