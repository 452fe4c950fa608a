"""What a trained model is: its configs (task explicit), its parts, and its folder on disk."""

from .config import CONDITIONINGS, TASKS, TEXT_ENCODERS, GenerationDefaults, LatentDiffusionConfig, LowResConfig
from .folder import (
    BUNDLED,
    MODELS_DIR,
    PIXEL_SPACE,
    load_autoencoder,
    load_first_stage,
    load_model,
    resolve_model,
    resolve_repo_path,
    save_autoencoder,
    save_model,
    swap_first_stage,
)
from .parts import ModelParts

__all__ = [
    "BUNDLED", "CONDITIONINGS", "MODELS_DIR", "PIXEL_SPACE", "TASKS", "TEXT_ENCODERS", "GenerationDefaults",
    "LatentDiffusionConfig", "LowResConfig", "ModelParts", "load_autoencoder", "load_first_stage", "load_model",
    "resolve_model", "resolve_repo_path", "save_autoencoder", "save_model", "swap_first_stage",
]
