"""Read a Stable Diffusion weights file of any common format, never running code hidden in it.

    safetensors    8-byte little-endian header length n, n bytes of JSON ("{...}"), then the tensor
                   data; read with the safetensors library, which parses JSON and copies bytes only
    torch-zip      torch.save since PyTorch 1.6: a zip archive (magic PK\\x03\\x04) holding a pickle
    torch-legacy   torch.save before 1.6, or _use_new_zipfile_serialization=False: bare pickles
                   (first byte 0x80, the pickle protocol marker)

The format is told by content, never by file name: a .ckpt may well be safetensors. Pickles are read
only with torch.load(weights_only=True), whose unpickler builds tensors and containers and refuses
every other global; a refusal is reported, never retried with weights_only=False. Only the first
bytes and the safetensors header are read for detection: SD files are 2-7 GB.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .folder import CheckpointError

SAFETENSORS, TORCH_ZIP, TORCH_LEGACY = "safetensors", "torch-zip", "torch-legacy"
MAX_HEADER = 100 * 1024 * 1024  # the safetensors spec caps the JSON header at 100 MB
WRAPPERS = ("state_dict", "model", "module")  # keys under which training code nests the weights
REDOWNLOAD = "re-download it, or re-export it from the original"
CONVERT = (
    "convert it to safetensors with a tool you trust, on a machine where running its code is safe"
)


def detect_format(path: str | Path) -> str:
    """"safetensors", "torch-zip" or "torch-legacy", from the file's first bytes."""
    path = Path(path)
    size, head = _stat_and_head(path, 32)
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= MAX_HEADER:  # a cut-off header is still safetensors, reported by the reader
            return SAFETENSORS
    if head.startswith(b"PK\x03\x04"):
        return TORCH_ZIP
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return TORCH_LEGACY
    raise CheckpointError(
        f"{path} is neither safetensors nor a PyTorch checkpoint: {_describe(head, size)}"
    )


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The header's __metadata__ of a safetensors file; reads the header only, no tensors."""
    path = Path(path)
    if detect_format(path) != SAFETENSORS:
        raise CheckpointError(f"{path} is a PyTorch checkpoint, not safetensors: no metadata")
    return _metadata(_read_header(path), path)


def read_weights(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors by name, metadata) from a safetensors file or a PyTorch checkpoint.

    metadata is the safetensors __metadata__; for a checkpoint, the scalars found beside the
    weights (global_step, epoch, ...) as strings.
    """
    path = Path(path)
    if detect_format(path) == SAFETENSORS:
        metadata = _metadata(_read_header(path), path)
        try:
            tensors = load_file(path, device=str(device))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None
        return tensors, metadata
    return _unwrap(safe_torch_load(path, device), path)


def _stat_and_head(path: Path, count: int) -> tuple[int, bytes]:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a directory, not a weights file "
            "(an ldmkit checkpoint folder is read with load_checkpoint)"
        )
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(count)
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read ({error})") from None
    if not head:
        raise CheckpointError(
            f"{path} is empty (0 bytes): the download or export did not finish; {REDOWNLOAD}"
        )
    return size, head


def _describe(head: bytes, size: int) -> str:
    """What the first bytes look like, for an error message."""
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the weights (fetch them with `git lfs pull`)"
    text = head.decode("latin-1")
    if head.isascii() and all(c.isprintable() or c in "\t\r\n" for c in text):
        hint = " (HTML: a web page was saved instead of the file)" if "<" in text[:2] else ""
        return f"it starts with the text {text!r}{hint}, {size} bytes in all"
    return f"it starts with bytes {head[:8].hex(' ')}, {size} bytes in all"


def _read_header(path: Path) -> dict[str, Any]:
    """Parse and check a safetensors header: its length, its JSON, the data length it implies."""
    size, head = _stat_and_head(path, 8)
    (n,) = struct.unpack("<Q", head)
    if 8 + n > size:
        raise CheckpointError(
            f"{path} is truncated: its safetensors header says it is {n} bytes long "
            f"but the file has only {size} bytes; {REDOWNLOAD}"
        )
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        message = f"{path} has a corrupt safetensors header ({error}); {REDOWNLOAD}"
        raise CheckpointError(message) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header (not a JSON object)")
    needed = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            raise CheckpointError(f"{path} has a corrupt safetensors header (entry {name!r})")
        if not all(isinstance(o, int) for o in offsets):
            raise CheckpointError(f"{path} has a corrupt safetensors header (entry {name!r})")
        needed = max(needed, offsets[1])
    found = size - 8 - n
    if found < needed:
        raise CheckpointError(
            f"{path} is truncated: the header describes {needed} bytes of tensors but the file has "
            f"{found}; {REDOWNLOAD}"
        )
    if found > needed:
        raise CheckpointError(
            f"{path} has {found - needed} unexpected bytes after its tensors (the header describes "
            f"{needed}, the file has {found}); {REDOWNLOAD}"
        )
    return header


def _metadata(header: dict[str, Any], path: Path) -> dict[str, str]:
    metadata = header.get("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointError(f"{path} has a corrupt safetensors header (bad __metadata__)")
    return dict(metadata)


def safe_torch_load(path: Path, device: str | torch.device) -> Any:
    """torch.load(weights_only=True), refusals turned into CheckpointError; no fallback, ever.

    It gets an open file, not the path: torch.load picks safetensors by a ".safetensors" name.
    """
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} was refused: it needs Python objects beyond tensors and containers "
            f"({_weights_only_reason(error)}). Nothing in it was run. "
            f"If you trust its source, {CONVERT}."
        ) from None
    except Exception as error:  # a corrupt zip, a cut-off pickle, ...: still nothing run
        message = str(error).strip()
        first_line = message.splitlines()[0] if message else type(error).__name__
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint ({first_line}). "
            f"Nothing in it was run. If it is truncated or corrupt, {REDOWNLOAD}."
        ) from None


def _weights_only_reason(error: Exception) -> str:
    """The line of torch's message naming what was refused (the offending global, usually)."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    _, found, rest = message.partition("WeightsUnpickler error:")
    if not found:
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        return lines[0] if lines else type(error).__name__
    rest = " ".join(rest.split())  # the reason may start on a later line
    return rest.split(" Please use")[0].split(" Check the documentation")[0].strip()


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Find the weights under state_dict / model / module; keep tensors, scalars as metadata."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of tensors")
    metadata: dict[str, str] = {}
    level = obj
    for _ in range(len(WRAPPERS) + 1):  # bounded: a pickle may hold a dict that contains itself
        for key, value in level.items():
            if isinstance(key, str) and isinstance(value, (bool, int, float, str)):
                metadata.setdefault(key, str(value))
        if any(isinstance(v, torch.Tensor) for v in level.values()):
            break
        inner = next((level[k] for k in WRAPPERS if _is_wrapper(k, level.get(k))), None)
        if inner is None:
            break
        level = inner
    tensors = {k: v.detach() for k, v in level.items() if isinstance(v, torch.Tensor)}
    tensors = {k: v for k, v in tensors.items() if isinstance(k, str)}
    if not tensors:
        keys = ", ".join(map(repr, list(obj)[:8]))
        raise CheckpointError(
            f"{path} is a PyTorch checkpoint with no tensors where weights belong "
            f"(top-level keys: {keys})"
        )
    return tensors, metadata


def _is_wrapper(key: str, value: Any) -> bool:
    """state_dict nests the weights whatever it holds; model / module when they hold tensors."""
    if not isinstance(value, dict):
        return False
    return key == "state_dict" or any(isinstance(v, torch.Tensor) for v in value.values())
