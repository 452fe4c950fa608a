"""Random masks for training an inpainting model (1 = repaint, 0 = keep).

A mix in the spirit of SD's inpainting training (synthetic masks, a quarter of them masking
everything so the model also generates from text alone): whole-image masks, half-image masks
(one side, as outpainting asks), and rectangles of random size and place.
"""

from __future__ import annotations

import torch

MASK_KINDS = ("full", "half", "box")


def random_masks(n: int, size: tuple[int, int], gen: torch.Generator, full_share: float = 0.25,
                 half_share: float = 0.25) -> torch.Tensor:
    """(n, 1, H, W) masks in {0, 1}: `full_share` whole, `half_share` one side, the rest boxes
    with sides between a quarter and seven eighths of the image."""
    height, width = size
    masks = torch.zeros(n, 1, height, width)
    kind = torch.rand(n, generator=gen)
    side = torch.randint(4, (n,), generator=gen)  # half masks: left, right, top, bottom
    box_hw = torch.rand(n, 2, generator=gen) * 0.625 + 0.25
    box_at = torch.rand(n, 2, generator=gen)
    for k in range(n):
        if kind[k] < full_share:
            masks[k] = 1
        elif kind[k] < full_share + half_share:
            s = int(side[k])
            if s == 0:
                masks[k, :, :, : width // 2] = 1
            elif s == 1:
                masks[k, :, :, width // 2:] = 1
            elif s == 2:
                masks[k, :, : height // 2] = 1
            else:
                masks[k, :, height // 2:] = 1
        else:
            h, w = max(1, round(float(box_hw[k, 0]) * height)), max(1, round(float(box_hw[k, 1]) * width))
            top, left = int(box_at[k, 0] * (height - h + 1)), int(box_at[k, 1] * (width - w + 1))
            masks[k, :, top: top + h, left: left + w] = 1
    return masks
