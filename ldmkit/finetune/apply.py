"""Put shared fine-tuning files on a loaded pipeline: what `--lora FILE:SCALE`, `--embedding
FILE[:TOKEN]` and `--hypernetwork FILE:STRENGTH` do."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def split_option(value: str, default: str | None = None) -> tuple[str, str | None]:
    """"file.safetensors:0.8" -> ("file.safetensors", "0.8"); a bare path -> (path, default).
    Only the text after the last ':' is split off, and only when the whole string is not a file."""
    path, sep, suffix = value.rpartition(":")
    if not sep or Path(value).exists() or not path:
        return value, default
    return path, suffix


def _number(text: str, what: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{option} takes FILE or FILE:{what} with a number, got {what} {text!r}") from None


def apply_adapters(pipe, loras: Sequence[str] = (), embeddings: Sequence[str] = (),
                   hypernetworks: Sequence[str] = ()) -> dict:
    """Load each file onto `pipe` (LoRAs stack, each with its scale); returns what was applied,
    for the PNG metadata."""
    from .hypernetwork import apply_hypernetwork
    from .lora_formats import apply_lora
    from .textual_inversion import apply_embedding

    applied: dict = {}
    for value in loras:
        path, scale = split_option(value, "1.0")
        apply_lora(pipe, path, scale=_number(scale, "SCALE", "--lora"))
        applied.setdefault("loras", []).append(f"{Path(path).name}:{scale}")
    for value in embeddings:
        path, token = split_option(value)
        apply_embedding(pipe, path, token=token)
        applied.setdefault("embeddings", []).append(Path(path).name + (f":{token}" if token else ""))
    if len(hypernetworks) > 1:
        raise ValueError("one hypernetwork at a time (give --hypernetwork once)")
    for value in hypernetworks:
        path, strength = split_option(value, "1.0")
        apply_hypernetwork(pipe, path, strength=_number(strength, "STRENGTH", "--hypernetwork"))
        applied["hypernetwork"] = f"{Path(path).name}:{strength}"
    return applied
