"""Put shared fine-tuning files on a loaded pipeline: what `--lora FILE:SCALE`, `--embedding
FILE[:TOKEN]` and `--hypernetwork FILE:STRENGTH` do."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..finetune.hypernetwork import apply_hypernetwork
from ..finetune.lora_formats import apply_lora
from ..finetune.textual_inversion import apply_embedding


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


def parse_adapters(loras: Sequence[str] = (), embeddings: Sequence[str] = (),
                   hypernetworks: Sequence[str] = ()) -> tuple[dict, dict]:
    """The command line's adapter options as (adapters_applied's arguments, what the PNG text
    records)."""
    if len(hypernetworks) > 1:
        raise ValueError("one hypernetwork at a time (give --hypernetwork once)")
    parsed: dict = {"loras": [], "embeddings": [], "hypernetworks": []}
    record: dict = {}
    for value in loras:
        path, scale = split_option(value, "1.0")
        parsed["loras"].append((path, _number(scale, "SCALE", "--lora")))
        record.setdefault("loras", []).append(f"{Path(path).name}:{scale}")
    for value in embeddings:
        path, token = split_option(value)
        parsed["embeddings"].append((path, token))
        record.setdefault("embeddings", []).append(Path(path).name + (f":{token}" if token else ""))
    for value in hypernetworks:
        path, strength = split_option(value, "1.0")
        parsed["hypernetworks"].append((path, _number(strength, "STRENGTH", "--hypernetwork")))
        record["hypernetwork"] = f"{Path(path).name}:{strength}"
    return parsed, record


def apply_adapters(pipe, loras: Sequence[str] = (), embeddings: Sequence[str] = (),
                   hypernetworks: Sequence[str] = ()) -> dict:
    """Load each file onto `pipe` for good (LoRAs stack, each with its scale); returns what was
    applied, for the PNG text. For one request only, use pipe.adapters(...) instead."""
    parsed, record = parse_adapters(loras, embeddings, hypernetworks)
    for path, scale in parsed["loras"]:
        apply_lora(pipe, path, scale=scale)
    for path, token in parsed["embeddings"]:
        apply_embedding(pipe, path, token=token)
    for path, strength in parsed["hypernetworks"]:
        apply_hypernetwork(pipe, path, strength=strength)
    return record
