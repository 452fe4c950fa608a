"""ldmkit model folders in and out, and the models shipped in the repository.

    config.json          {"type": "latent-diffusion", "model": LatentDiffusionConfig,
                          "autoencoder": AutoencoderConfig, "defaults": {...}, ...}
    model.safetensors    "unet." (the EMA weights), "autoencoder." and "text_encoder." tensors
    tokenizer/           CLIP's vocab.json and merges.txt (CLIP models only)
    README.md            the model card

An autoencoder alone is a folder of type "autoencoder" with its "autoencoder." tensors. A
pixel-space model (GLIDE) records the autoencoder of kind "pixel": the identity, no weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..autoencoders import Autoencoder, AutoencoderConfig, PixelSpace, make_first_stage, pixel_space
from ..conditioning import TextEncoder
from ..conditioning.clip import clip_file_state, clip_text_encoder, tokenizer_files
from ..config import from_dict, to_dict
from ..nets import make_net
from ..storage import CheckpointError, load_checkpoint, save_checkpoint
from .config import GenerationDefaults, LatentDiffusionConfig, task_of_legacy_config
from .parts import ModelParts

MODELS_DIR = Path(__file__).resolve().parent.parent.parent / "models"  # the models shipped in the repository
BUNDLED = ("fashion-mnist", "shapes", "fashion-mnist-x4", "fashion-mnist-inpaint", "fashion-mnist-lcm", "shapes-lcm",
           "fashion-mnist-f4", "shapes-dit")
PIXEL_SPACE = "pixel"  # the first stage a training config names for pixel-space diffusion (GLIDE)


def resolve_model(name_or_path: str | Path) -> Path:
    """A folder path, or the name of a model shipped in models/."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in BUNDLED and (MODELS_DIR / str(name_or_path)).is_dir():
        return MODELS_DIR / str(name_or_path)
    shipped = [n for n in BUNDLED if (MODELS_DIR / n).is_dir()]
    raise FileNotFoundError(
        f"no model {str(name_or_path)!r}: give a model folder (config.json + model.safetensors) "
        f"or one of the shipped models {shipped}"
    )


def resolve_repo_path(path: str | Path) -> Path:
    """The path as given, or, when relative and not found here, inside the repository (presets
    name "models/autoencoders/...")."""
    found = Path(path)
    if not found.is_dir() and not found.is_absolute() and (MODELS_DIR.parent / found).is_dir():
        return MODELS_DIR.parent / found
    return found


def model_config(meta: dict) -> LatentDiffusionConfig:
    """The LatentDiffusionConfig of a config.json (one written before tasks were explicit too)."""
    model = dict(meta["model"])
    if "task" not in model:
        model["task"] = task_of_legacy_config(model, from_dict(AutoencoderConfig, meta["autoencoder"]).z_channels)
    return from_dict(LatentDiffusionConfig, model)


def load_model(folder: str | Path) -> ModelParts:
    """The parts of an ldmkit model folder (or a shipped model's name)."""
    folder = resolve_model(folder)
    states, meta, _ = load_checkpoint(folder)
    if meta.get("type") != "latent-diffusion" or not {"unet", "autoencoder"} <= set(states):
        raise CheckpointError(f"{folder} does not hold an ldmkit latent diffusion model (type {meta.get('type')!r})")
    config = model_config(meta)
    net = make_net(config.net)
    net.load_state_dict(states["unet"])
    first_stage = make_first_stage(from_dict(AutoencoderConfig, meta["autoencoder"]))
    first_stage.load_state_dict(states["autoencoder"])
    text_encoder = None
    if config.conditioning == "text" and config.text_encoder == "clip":
        text_encoder = clip_text_encoder(meta["text_encoder_config"], states["text_encoder"], folder / "tokenizer")
    elif config.conditioning == "text":
        text_encoder = TextEncoder.minilm(config.text_length)
    return ModelParts(net, first_stage, config, text_encoder, meta.get("class_names"),
                      from_dict(GenerationDefaults, meta.get("defaults", {})), name=meta.get("name", folder.name),
                      meta=meta)


def save_model(parts: ModelParts, directory: str | Path, extra: dict | None = None) -> Path:
    """An ldmkit model folder (see the module docstring); `extra` joins its config.json."""
    meta = {**parts.describe(), **(extra or {})}
    states = {"unet": parts.net.state_dict(), "autoencoder": parts.autoencoder.state_dict()}
    files = {}
    if parts.uses_clip:
        states["text_encoder"] = clip_file_state(parts.text_encoder.model)
        files = {f"tokenizer/{name}": data for name, data in tokenizer_files(parts.text_encoder.tokenizer).items()}
    return save_checkpoint(directory, states, meta, extra_files=files)


def save_autoencoder(model: Autoencoder, directory: str | Path, extra: dict | None = None) -> Path:
    """An ldmkit model folder holding one autoencoder."""
    meta = {"type": "autoencoder", "autoencoder": to_dict(model.config), **(extra or {})}
    return save_checkpoint(directory, {"autoencoder": model.state_dict()}, meta)


def load_autoencoder(directory: str | Path, device: str | torch.device = "cpu") -> Autoencoder:
    states, meta, _ = load_checkpoint(directory)
    if meta.get("type") != "autoencoder" or "autoencoder" not in states:
        raise CheckpointError(f"{directory} does not hold an ldmkit autoencoder (type {meta.get('type')!r})")
    model = Autoencoder(from_dict(AutoencoderConfig, meta["autoencoder"]))
    model.load_state_dict(states["autoencoder"])
    return model.to(device).eval()


def load_first_stage(name: str, channels: int, device: str | torch.device = "cpu") -> Autoencoder | PixelSpace:
    """A training config's frozen first stage: an autoencoder folder (a path, or relative to the
    repository), or "pixel", the identity on `channels`-channel images (pixel-space diffusion)."""
    if name == PIXEL_SPACE:
        return pixel_space(channels).to(device)
    return load_autoencoder(resolve_repo_path(name), device)


def swap_first_stage(current: Autoencoder, folder: str | Path) -> Autoencoder:
    """The autoencoder in `folder`, refused unless its latents are interchangeable with current's."""
    other = load_autoencoder(folder)
    a, b = current.config, other.config
    same = (a.in_channels, a.z_channels, a.downsampling_factor) == (b.in_channels, b.z_channels, b.downsampling_factor)
    if not same or abs((a.scaling_factor or 1) - (b.scaling_factor or 1)) > 1e-3 * (a.scaling_factor or 1):
        raise ValueError(f"the autoencoder in {folder} does not share this model's latent space "
                         f"(image channels, latent channels, factor, scale differ)")
    return other
