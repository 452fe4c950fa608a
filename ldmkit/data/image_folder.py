"""A folder of the user's own images with captions.

Captions come from a `.txt` file beside each image (same stem) or from a `metadata.jsonl`
with one {"file_name": ..., "text": ...} per line. Any size and mode is accepted: images are
converted (palette, 16-bit, RGBA onto white, grayscale), resized so the short side is `size`,
and centre-cropped. Files that cannot be read are skipped, and `skipped` says which and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode to 'RGB' (channels=3) or 'L' (channels=1)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit gray: scale to 8 bits
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray((array / peak * 255).round().clip(0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB" if channels == 3 else "L")


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.BICUBIC if scale > 1 else Image.LANCZOS)
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


@dataclass
class ImageFolder(torch.utils.data.Dataset):
    root: Path
    size: int = 64
    channels: int = 3
    min_size: int = 8
    items: list[tuple[Path, str]] = field(default_factory=list, init=False)
    skipped: list[tuple[str, str]] = field(default_factory=list, init=False)
    missing_captions: int = field(default=0, init=False)

    def __post_init__(self):
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist or is not a folder")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        captions = self._read_metadata()
        for path in sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            reason = self._check(path)
            if reason:
                self.skipped.append((str(path), reason))
                continue
            text = captions.get(str(path.relative_to(self.root)))
            if text is None and path.with_suffix(".txt").is_file():
                text = path.with_suffix(".txt").read_text(errors="replace").strip()
            if text is None:
                self.missing_captions += 1
                text = ""
            self.items.append((path, text))
        if not self.items:
            raise ValueError(f"no readable images in {self.root} ({len(self.skipped)} skipped: {self.skipped[:3]})")

    def _read_metadata(self) -> dict[str, str]:
        path = self.root / "metadata.jsonl"
        captions: dict[str, str] = {}
        if not path.is_file():
            return captions
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                captions[str(row["file_name"])] = str(row.get("text", ""))
            except (json.JSONDecodeError, KeyError, TypeError):
                self.skipped.append((f"{path}:{number}", "metadata line is not JSON with a file_name"))
        return captions

    def _check(self, path: Path) -> str | None:
        try:
            with Image.open(path) as image:
                image.load()  # decodes fully: truncated files fail here, not mid-epoch
                if min(image.size) < self.min_size:
                    return f"too small ({image.width}x{image.height} < {self.min_size})"
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
            return f"unreadable ({type(error).__name__}: {error})"
        return None

    def summary(self) -> str:
        return (
            f"{len(self.items)} images from {self.root}; {len(self.skipped)} skipped, "
            f"{self.missing_captions} without a caption"
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        path, text = self.items[index]
        with Image.open(path) as image:
            image = resize_center_crop(to_mode(image, self.channels), self.size)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1
        x = torch.from_numpy(array)
        return (x[None] if self.channels == 1 else x.permute(2, 0, 1)), text
