"""The request and response shapes of AUTOMATIC1111's `/sdapi/v1`, the subset ldmkit runs.

Only the fields ldmkit acts on are declared; every other field A1111's clients send (the PyPI
client `webuiapi` sends about forty: restore_faces, tiling, s_churn, ...) is accepted and
ignored, as its default would be. Defaults of None mean the model's own setting.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerationPayload(_Request):
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = Field(-1, description="-1: a random seed (the one used is reported in info)")
    sampler_name: str | None = Field(None, description='"Euler a", "Euler", "Heun", "DDIM", "DPM++ 2M", '
                                                       '"DPM++ 2M SDE", "DDPM" (or ldmkit\'s names)')
    sampler_index: str | None = Field(None, description="the old name of sampler_name")
    scheduler: str | None = Field(None, description='"Automatic" (the model\'s spacing) or "Karras"')
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    steps: int | None = Field(None, ge=1)
    cfg_scale: float | None = Field(None, ge=0, le=100)
    width: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    override_settings: dict = Field(default_factory=dict, description="sd_model_checkpoint: a model for this "
                                                                      "request only")
    send_images: bool = True
    save_images: bool = False


class Txt2ImgPayload(GenerationPayload):
    pass


class Img2ImgPayload(GenerationPayload):
    init_images: list[str] = Field(default_factory=list, description="base64 PNG/JPEG (a data: URL prefix is fine)")
    mask: str | None = Field(None, description="base64 image: white = repaint (inpainting)")
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    denoising_strength: float = Field(0.75, gt=0, le=1)
    resize_mode: int = 0


class OutpaintPayload(GenerationPayload):
    """ldmkit's own (A1111 outpaints through scripts): the image grown by these many pixels."""

    image: str
    left: int = Field(0, ge=0)
    right: int = Field(0, ge=0)
    top: int = Field(0, ge=0)
    bottom: int = Field(0, ge=0)


class ExtraSingleImagePayload(_Request):
    image: str
    upscaler_1: str = "None"
    upscaling_resize: float = Field(2, gt=0, le=8)
    upscaling_resize_w: int | None = Field(None, ge=1)
    upscaling_resize_h: int | None = Field(None, ge=1)
    resize_mode: int = Field(0, ge=0, le=1)  # 0: by upscaling_resize, 1: to w x h


class PngInfoPayload(_Request):
    image: str


def decode_image(data: str, max_pixels: int, what: str = "image") -> Image.Image:
    """A base64 image (raw or a data: URL) as a loaded PIL image; its size is read from the
    header and checked before the pixels are decoded (no decompression bombs)."""
    if not isinstance(data, str) or not data:
        raise ValueError(f"{what}: expected a base64-encoded PNG or JPEG")
    data = re.sub(r"^data:image/[\w.+-]+;base64,", "", data)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what}: not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > max_pixels:
            raise ValueError(f"{what}: {image.width}x{image.height} is over the limit of {max_pixels} pixels")
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"{what}: not an image Pillow can read ({error})") from None
    return image


def encode_png(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


LORA_TAG = re.compile(r"<(lora|hypernet):([^:>]+)(?::([^:>]+))?(?::[^>]*)?>")


def extra_networks(prompt: str) -> tuple[str, list[tuple[str, str, float]]]:
    """A1111's prompt syntax <lora:name:weight> and <hypernet:name:weight>: the prompt without the
    tags, and [(kind, name, weight)]."""
    found = []
    for kind, name, weight in LORA_TAG.findall(prompt):
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"<{kind}:{name}:{weight}>: the weight must be a number") from None
        found.append(("loras" if kind == "lora" else "hypernetworks", name.strip(), value))
    text = " ".join(LORA_TAG.sub("", prompt).split())
    return text, found
