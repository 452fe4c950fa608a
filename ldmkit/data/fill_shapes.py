"""fill-shapes: the analogue of ControlNet's fill50k tutorial on the shapes data.

Each item is (hint, image, caption): the image is a shapes image (data/shapes.render: one filled
circle, square or triangle of one colour near a quadrant's centre, on black), the hint the
white one-pixel outline of that shape on black, and the caption names the colour and the shape
but not the place ("a red circle"). The place is only in the hint, so a model that draws the
shape where the outline is has learnt to obey it. Item i is drawn from a generator seeded by
(seed, i), as ShapesDataset's items are: nothing is stored, every machine draws the same items.

`fill_obedience` scores generated images against their hints without any trained network: the
quadrant, colour and shape read back by shapes.read_attributes, and the IoU of the hint's filled
region (the target's mask) with the generated shape's mask.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .shapes import COLOURS, COMBINATIONS, QUADRANTS, SHAPES, read_attributes, render

# the combinations of the held hints (training's obedience measure): the stride 7 walks all four
# quadrants every four items and mixes colours and shapes
HELD_STRIDE = 7


def fill_caption(colour: str, shape: str) -> str:
    """The prompt of a fill-shapes item: colour and shape, no place."""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape}"


def shape_mask(image: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: the bright pixels of a (3, H, W) image in [-1, 1] (shapes.read_attributes' test)."""
    return (image.float().clamp(-1, 1) + 1).div(2).max(dim=0).values > 0.5


def outline(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: the pixels of `mask` with a pixel outside it among their 8 neighbours; the
    image's border counts as outside, so a shape touching it is outlined there too."""
    m = F.pad(mask.float()[None, None], (1, 1, 1, 1), value=0.0)           # (1, 1, H + 2, W + 2)
    eroded = -F.max_pool2d(-m, kernel_size=3, stride=1)                     # (1, 1, H, W): min over 3x3
    return mask & (eroded[0, 0] < 0.5)


def outline_hint(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1]: the white outline of the image's shape on black."""
    return outline(shape_mask(image)).float()[None].expand(3, -1, -1).clone()


def fill_shape(colour: str, shape: str, quadrant: str, size: int = 32,
               gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(hint (3, size, size) in [0, 1], image (3, size, size) in [-1, 1], caption) of one shape."""
    image = render(colour, shape, quadrant, size, gen)
    return outline_hint(image), image, fill_caption(colour, shape)


class FillShapesDataset(torch.utils.data.Dataset):
    """`length` items over the combinations not held out; item i is (hint, image, caption,
    (colour, shape, quadrant) indices), drawn as ShapesDataset draws its item i."""

    def __init__(self, length: int = 10_000, size: int = 32, seed: int = 0,
                 holdout: tuple[tuple[str, str, str], ...] = (), only_holdout: bool = False):
        for combo in holdout:
            if tuple(combo) not in COMBINATIONS:
                raise ValueError(f"unknown shapes combination {combo}; colours {list(COLOURS)}, "
                                 f"shapes {SHAPES}, quadrants {QUADRANTS}")
        held = {tuple(c) for c in holdout}
        self.combinations = [c for c in COMBINATIONS if (c in held) == only_holdout]
        if not self.combinations:
            raise ValueError("no combinations left to draw from")
        self.length, self.size, self.seed = length, size, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, tuple[int, int, int]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        colour, shape, quadrant = self.combinations[int(torch.randint(len(self.combinations), (1,), generator=gen))]
        hint, image, caption = fill_shape(colour, shape, quadrant, self.size, gen)
        labels = (list(COLOURS).index(colour), SHAPES.index(shape), QUADRANTS.index(quadrant))
        return hint, image, caption, labels


def held_combinations(count: int) -> list[tuple[str, str, str]]:
    """`count` combinations spread over quadrants, colours and shapes (every quadrant each four)."""
    return [COMBINATIONS[(k * HELD_STRIDE) % len(COMBINATIONS)] for k in range(count)]


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of two bool masks (1 when both are empty)."""
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def fill_obedience(images: torch.Tensor, targets: torch.Tensor,
                   combos: list[tuple[str, str, str]]) -> dict[str, float]:
    """How generated images (N, 3, H, W) in [-1, 1] obey their hints: the share whose shape
    lands in the hint's quadrant, the mean IoU of the hint's filled region (the target image's
    mask) with the generated shape's mask, the shares with the prompt's colour and shape, and
    with all three right."""
    hits = {"quadrant": 0, "colour": 0, "shape": 0, "all": 0}
    ious = []
    for image, target, (colour, shape, quadrant) in zip(images, targets, combos):
        read_colour, read_shape, read_quadrant = read_attributes(image)
        hits["quadrant"] += read_quadrant == quadrant
        hits["colour"] += read_colour == colour
        hits["shape"] += read_shape == shape
        hits["all"] += (read_colour, read_shape, read_quadrant) == (colour, shape, quadrant)
        ious.append(mask_iou(shape_mask(image), shape_mask(target)))
    n = max(1, len(combos))
    return {"quadrant": hits["quadrant"] / n, "iou": sum(ious) / n,
            **{key: hits[key] / n for key in ("colour", "shape", "all")}}
