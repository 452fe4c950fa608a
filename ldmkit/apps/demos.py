"""Visual demonstrations that need no trained model."""

from __future__ import annotations

from pathlib import Path

import torch

from ..diffusion import ScheduleConfig, make_schedule, q_sample
from ..utils.images import from_pil, image_grid, save_png, to_pil

DEMO_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def load_demo_photo(name: str = "astronaut", size: int = 128) -> torch.Tensor:
    """A real photo from scikit-image's bundled data, centre-cropped and resized: (3, size, size)."""
    if name not in DEMO_PHOTOS:
        raise ValueError(f"unknown demo photo {name!r}; choose one of {DEMO_PHOTOS}")
    try:
        import skimage.data
    except ImportError:
        raise RuntimeError("the demo photos come from scikit-image: pip install scikit-image") from None
    from PIL import Image

    array = getattr(skimage.data, name)()  # (H, W, 3) uint8
    image = Image.fromarray(array)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    return from_pil(image, channels=3)


def forward_diffusion_strip(
    out: str | Path,
    photo: str = "astronaut",
    size: int = 128,
    timesteps: tuple[int, ...] = (0, 50, 100, 200, 300, 400, 500, 700, 999),
    schedules: tuple[ScheduleConfig, ...] = (
        ScheduleConfig(kind="linear", beta_start=1e-4, beta_end=0.02),
        ScheduleConfig(kind="scaled_linear"),
        ScheduleConfig(kind="cosine"),
    ),
    seed: int = 0,
) -> Path:
    """x_t ~ q(x_t | x_0) of one photo over t, one row per schedule, with the same noise eps
    in every cell, so that only sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) change."""
    x0 = load_demo_photo(photo, size)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    cells, labels = [], []
    for config in schedules:
        sched = make_schedule(config)
        labels.append(config.kind)
        for t in timesteps:
            cells.append(to_pil(q_sample(x0, float(sched.alpha_bar[t]), eps)))
    grid = image_grid(cells, len(timesteps), row_labels=labels, column_labels=[f"t={t}" for t in timesteps])
    settings = {
        "photo": photo, "seed": seed, "timesteps": list(timesteps), "schedules": [c.__dict__ for c in schedules]
    }
    return save_png(grid, out, {"ldmkit": "forward-diffusion", "settings": settings})
