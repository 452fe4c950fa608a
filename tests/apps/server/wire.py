"""Images on the wire: base64 PNGs both ways."""

import base64
import io

import numpy as np
from PIL import Image, PngImagePlugin


def b64_png(image: Image.Image, text: dict | None = None) -> str:
    """A base64 PNG of `image`, with `text` as its text chunks."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def from_b64(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)
