"""Real RGB photos bundled with scikit-image, cut into training crops."""

from __future__ import annotations

import numpy as np
import torch

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket")


def load_photo(name: str) -> torch.Tensor:
    """(3, H, W) float in [-1, 1]."""
    if name not in PHOTO_NAMES:
        raise ValueError(f"unknown photo {name!r}; choose one of {PHOTO_NAMES}")
    try:
        import skimage.data
    except ImportError:
        raise RuntimeError("the bundled photos come from scikit-image: pip install scikit-image") from None
    array = getattr(skimage.data, name)().astype(np.float32)  # (H, W, 3)
    return torch.from_numpy(array / 127.5 - 1).permute(2, 0, 1).contiguous()


def photo_crops(
    names: tuple[str, ...] = PHOTO_NAMES,
    size: int = 32,
    count: int = 2048,
    scale: float = 0.5,
    seed: int = 0,
) -> torch.Tensor:
    """`count` random size x size crops from the photos, each photo first downscaled by `scale`
    (so a crop holds more of the scene than a few pixels of texture): (count, 3, size, size)."""
    gen = torch.Generator().manual_seed(seed)
    photos = []
    for name in names:
        photo = load_photo(name)[None]
        h, w = int(photo.shape[2] * scale), int(photo.shape[3] * scale)
        photos.append(torch.nn.functional.interpolate(photo, size=(h, w), mode="area")[0])
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        top = int(torch.randint(0, photo.shape[1] - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, photo.shape[2] - size + 1, (1,), generator=gen))
        crop = photo[:, top : top + size, left : left + size]
        if torch.rand(1, generator=gen) < 0.5:
            crop = crop.flip(-1)
        crops.append(crop)
    return torch.stack(crops)
