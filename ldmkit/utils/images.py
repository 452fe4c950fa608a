"""Tensors to images and back, grids with labels, and PNGs that carry their settings."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, PngImagePlugin


def to_pil(x: torch.Tensor) -> Image.Image:
    """(C, H, W) in [-1, 1] -> PIL image (C = 1 gray, 3 RGB)."""
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected a (C, H, W) tensor with C = 1 or 3, got shape {tuple(x.shape)}")
    array = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()  # (H, W, C)
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)


def from_pil(image: Image.Image, channels: int = 3) -> torch.Tensor:
    """PIL image -> (C, H, W) float in [-1, 1]."""
    image = image.convert("L" if channels == 1 else "RGB")
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1  # (H, W) or (H, W, C)
    tensor = torch.from_numpy(array)
    return tensor[None] if channels == 1 else tensor.permute(2, 0, 1)


def image_grid(
    images: Sequence[Image.Image],
    columns: int,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    pad: int = 2,
) -> Image.Image:
    """Tile equally sized images row by row, with optional text labels on the left and top."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    left = 8 + 6 * max((len(s) for s in row_labels), default=0) if row_labels else 0
    top = 14 if column_labels else 0
    grid = Image.new("RGB", (left + columns * (w + pad) + pad, top + rows * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid.paste(image.convert("RGB"), (left + pad + c * (w + pad), top + pad + r * (h + pad)))
    for r, label in enumerate(row_labels or []):
        draw.text((4, top + pad + r * (h + pad) + h // 2 - 5), label, fill="black")
    for c, label in enumerate(column_labels or []):
        draw.text((left + pad + c * (w + pad) + 2, 1), label, fill="black")
    return grid


def _png_info(metadata: Mapping[str, object] | None) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    return info


def save_png(image: Image.Image, path: str | Path, metadata: Mapping[str, object] | None = None) -> Path:
    """Save a PNG whose text chunks carry `metadata` (each value as text; dicts as JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=_png_info(metadata))
    return path


def png_bytes(image: Image.Image, metadata: Mapping[str, object] | None = None) -> bytes:
    """The bytes save_png would write."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=_png_info(metadata))
    return buffer.getvalue()


def read_png_metadata(path: str | Path) -> dict[str, str]:
    """The text chunks of a PNG written by save_png."""
    with Image.open(path) as image:
        return dict(getattr(image, "text", {}))
