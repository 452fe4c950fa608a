"""ldmkit: latent diffusion in plain, readable PyTorch."""

__version__ = "0.1.0"

__all__ = ["CLIP", "Pipeline", "__version__"]


def __getattr__(name: str):
    """`ldmkit.Pipeline` and `ldmkit.CLIP`, imported on first use: `import ldmkit` alone loads nothing heavy."""
    if name == "Pipeline":
        from .pipelines import Pipeline

        return Pipeline
    if name == "CLIP":
        from .pipelines.guidance import CLIP

        return CLIP
    raise AttributeError(f"module 'ldmkit' has no attribute {name!r}")
