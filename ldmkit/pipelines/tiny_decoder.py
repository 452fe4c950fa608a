"""A model's distilled tiny decoder (TAESD layout, `ldmkit distill-tiny-decoder`): found, checked
and used for cheap previews and an optional fast final decode.

How a model finds its tiny decoder, in order:
  1. its config.json's "tiny_decoder": a tiny-autoencoder folder (a path, or relative to the repository);
  2. the shipped folders models/autoencoders/*-tiny-decoder whose config.json records, under
     "teacher", the fingerprint of this model's decoder: a hash of the weights that map latents to
     pixels and of the latent scale. A model whose first stage was swapped or fine-tuned no longer
     matches, so a tiny decoder is never used for a decoder it did not learn from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..autoencoders.tiny import TinyAutoencoder
from ..io.taesd_files import load_tiny_autoencoder
from ..model.folder import MODELS_DIR, resolve_repo_path

SHIPPED = MODELS_DIR / "autoencoders"
SUFFIX = "-tiny-decoder"
ENCODER_PREFIXES = ("encoder.", "quant_conv.")  # what the fingerprint leaves out: the decoder does not use them


def decoder_fingerprint(autoencoder) -> str:
    """sha256 (first 16 hex digits) of the autoencoder's latent -> image weights and its scale.
    The weights are hashed rounded to bfloat16, so a model cast to bf16 (fast=True) still matches."""
    digest = hashlib.sha256(repr(float(autoencoder.config.scaling_factor or 1.0)).encode())
    for name, tensor in sorted(autoencoder.state_dict().items()):
        if not name.startswith(ENCODER_PREFIXES):
            digest.update(name.encode())
            rounded = tensor.detach().cpu().to(torch.bfloat16).float() if tensor.is_floating_point() else tensor
            digest.update(rounded.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def shipped_tiny_decoders() -> list[Path]:
    return sorted(p for p in SHIPPED.glob(f"*{SUFFIX}") if (p / "config.json").is_file())


def find_tiny_decoder(autoencoder, meta: dict | None = None) -> Path | None:
    """The tiny decoder folder for this first stage (see the module docstring), or None."""
    named = (meta or {}).get("tiny_decoder")
    if named:
        folder = resolve_repo_path(named)
        if not folder.is_dir():
            raise FileNotFoundError(f"config.json names the tiny decoder {named!r}, which is not a folder")
        return folder
    if getattr(autoencoder.config, "kind", None) == "pixel":
        return None
    fingerprint = decoder_fingerprint(autoencoder)
    for folder in shipped_tiny_decoders():
        teacher = json.loads((folder / "config.json").read_text()).get("teacher") or {}
        if teacher.get("fingerprint") == fingerprint:
            return folder
    return None


def check_tiny_decoder(tiny: TinyAutoencoder, autoencoder, source: str) -> TinyAutoencoder:
    """`tiny`, refused unless it decodes this first stage's latents to its images."""
    t, a = tiny.config, autoencoder.config
    theirs = (t.latent_channels, t.upsampling_factor, t.out_channels)
    ours = (a.z_channels, a.downsampling_factor, a.out_channels)
    if theirs != ours:
        raise ValueError(f"the tiny decoder {source} decodes {t.latent_channels}-channel latents "
                         f"{t.upsampling_factor}x to {t.out_channels}-channel images; this model's first stage has "
                         f"{a.z_channels}-channel latents, f = {a.downsampling_factor}, {a.out_channels}-channel "
                         "images. Distil one for it: ldmkit distill-tiny-decoder --model MODEL --out RUN")
    return tiny


def load_tiny_decoder(autoencoder, meta: dict | None = None, path: str | Path | None = None,
                      model_name: str = "this model") -> TinyAutoencoder:
    """The tiny decoder at `path`, else the model's own (find_tiny_decoder); a clear error if none."""
    folder = Path(path) if path is not None else find_tiny_decoder(autoencoder, meta)
    if folder is None:
        raise ValueError(f"{model_name} has no tiny decoder: none in {SHIPPED} was distilled from its first stage "
                         "and its config.json names none (\"tiny_decoder\"). Make one with "
                         "`ldmkit distill-tiny-decoder --model MODEL --out RUN` and give RUN/model, or decode with "
                         "the full decoder (leave out --tiny-decoder)")
    param = next(autoencoder.parameters(), None)
    tiny = load_tiny_autoencoder(folder).float().eval()
    if param is not None:
        tiny.to(param.device)
    return check_tiny_decoder(tiny, autoencoder, str(folder))


@torch.no_grad()
def tiny_decode(tiny: TinyAutoencoder, z0: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images in [-1, 1] from the diffusion model's latents z0 (its scale: the tiny decoder's input)."""
    param = next(tiny.parameters())
    return torch.cat([tiny.decode(z.to(param.device, param.dtype)).float().clamp(-1, 1)
                      for z in z0.split(batch_size)])
