"""ldmkit: latent diffusion in plain, readable PyTorch."""

__version__ = "0.1.0"
