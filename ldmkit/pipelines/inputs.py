"""Images and masks from what users pass: a path, a PIL image, a numpy array or a tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..utils.images import from_pil


def as_pil(image, what: str = "image") -> Image.Image:
    """A PIL image from a path, a PIL image, an (H, W[, C]) uint8 / [0, 1] float array, or a
    (C, H, W) / (1, C, H, W) tensor in [-1, 1]."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                opened.load()
                return opened.copy()
        except FileNotFoundError:
            raise FileNotFoundError(f"no {what} file at {image}") from None
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{image} is not an image that Pillow can read ({error})") from None
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(
                f"a {what} tensor must be (C, H, W) or (1, C, H, W) with C = 1 or 3, got {tuple(image.shape)}"
            )
        image = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        image = image[..., 0] if image.shape[2] == 1 else image
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"a {what} array must be (H, W) or (H, W, C) with C in 1, 3, 4, got {image.shape}")
        if image.dtype != np.uint8:
            image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    raise ValueError(f"the {what} must be a path, a PIL image, a numpy array or a tensor, got {type(image).__name__}")


def image_tensor(image, channels: int, multiple: int) -> tuple[torch.Tensor, Image.Image]:
    """(1, C, H, W) in [-1, 1] and the PIL image it came from (in the model's mode). The sides
    must be multiples of `multiple` (the autoencoder's factor times the UNet's)."""
    pil = as_pil(image).convert("L" if channels == 1 else "RGB")
    w, h = pil.size
    if w % multiple or h % multiple:
        raise ValueError(f"the image is {w}x{h}; this model needs sides that are multiples of {multiple}: "
                         "crop or resize it")
    return from_pil(pil, channels)[None], pil


def mask_tensor(mask, size: tuple[int, int]) -> torch.Tensor:
    """(1, 1, H, W) of 0 / 1, 1 where the image is to be repainted (white in a mask image)."""
    pil = as_pil(mask, "mask").convert("L")
    if pil.size != (size[1], size[0]):
        raise ValueError(f"the mask is {pil.size[0]}x{pil.size[1]} but the image is {size[1]}x{size[0]}: "
                         "give a mask of the image's size")
    return torch.from_numpy(np.array(pil) > 127).float()[None, None]
