"""ldmkit checkpoints: one folder, written atomically, read without unpickling anything.

    model.safetensors   weights, each module's state dict under its own prefix ("unet.", "ema_unet.")
    config.json         the typed configs and anything else describing the model
    train_state.pt      optional, for resuming: optimiser state, step, RNG states; plain
                        tensors and containers only, read with torch.load(weights_only=True)
    (other files)       optional, e.g. a tokenizer's vocabulary: written in the same swap

A checkpoint is written into a temporary sibling folder, each file fsynced, and then renamed
into place, so a reader sees either the old folder, the new one, or none: never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

WEIGHTS, CONFIG, TRAIN_STATE = "model.safetensors", "config.json", "train_state.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or corrupt."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write `path` through a temporary sibling that `write(tmp)` fills; fsync, rename. A reader
    sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def swap_into_place(staging: Path, directory: Path) -> Path:
    """Rename a complete, fsynced folder `staging` to `directory`, replacing any folder there:
    the old one is moved aside first, so the name never holds half of either."""
    if directory.exists():
        trash = directory.parent / f".{directory.name}.old-{os.getpid()}"
        os.replace(directory, trash)
        os.replace(staging, directory)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, directory)
    _fsync_dir(directory.parent)
    return directory


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    directory: str | Path,
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
    config: Mapping[str, Any],
    train_state: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (replacing an existing one of the same name).
    extra_files: relative path -> contents, written into the folder in the same swap."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    bad = [prefix for prefix in state_dicts if not prefix or "." in prefix]
    if bad:
        raise ValueError(f"state dict prefixes must be non-empty and contain no dots, got {bad}")
    tensors = {
        f"{prefix}.{key}": value.detach().cpu().contiguous()
        for prefix, state in state_dicts.items()
        for key, value in state.items()
    }
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        _write_synced(staging / WEIGHTS, save(tensors, metadata={"format": "ldmkit"}))
        _write_synced(staging / CONFIG, json.dumps(config, indent=2, sort_keys=True).encode())
        for relative, data in (extra_files or {}).items():
            target = (staging / relative).resolve()
            if staging.resolve() not in target.parents or relative in (WEIGHTS, CONFIG, TRAIN_STATE):
                raise ValueError(f"extra file {relative!r} must be a new path inside the checkpoint folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_synced(target, data)
        if train_state is not None:
            import io

            buffer = io.BytesIO()
            torch.save(dict(train_state), buffer)
            _write_synced(staging / TRAIN_STATE, buffer.getvalue())
        _fsync_dir(staging)
        swap_into_place(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def load_checkpoint(
    directory: str | Path, with_train_state: bool = False
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any] | None]:
    """Read a checkpoint folder: (state dicts by prefix, config, train state or None)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint folder at {directory}")
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory} is not a complete ldmkit checkpoint: {name} is missing")
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{directory / CONFIG} is not valid JSON ({error})") from None
    try:
        flat = load_file(directory / WEIGHTS)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{directory / WEIGHTS} is not a readable safetensors file ({error})") from None
    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        prefix, _, name = key.partition(".")
        state_dicts.setdefault(prefix, {})[name] = value
    train_state = None
    if with_train_state:
        path = directory / TRAIN_STATE
        if not path.is_file():
            raise CheckpointError(f"{directory} has no {TRAIN_STATE}: it cannot be resumed from")
        try:
            train_state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # any unpickling failure: refuse, never fall back
            raise CheckpointError(f"{path} could not be read safely ({error})") from None
    return state_dicts, config, train_state
