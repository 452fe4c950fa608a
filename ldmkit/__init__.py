"""ldmkit: latent diffusion in plain, readable PyTorch."""

__version__ = "0.1.0"

__all__ = ["Pipeline", "__version__"]


def __getattr__(name: str):
    """`ldmkit.Pipeline`, imported on first use: `import ldmkit` alone loads nothing heavy."""
    if name == "Pipeline":
        from .pipelines import Pipeline

        return Pipeline
    raise AttributeError(f"module 'ldmkit' has no attribute {name!r}")
