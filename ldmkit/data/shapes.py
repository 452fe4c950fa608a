"""Synthetic shapes: does text conditioning bind attributes?

Each 32x32 RGB image has a black background and one filled shape (circle, square or triangle)
in one pure colour (red, green, blue, yellow), centred in one quadrant, its size and position
jittered a little; the caption names all three: "a red circle in the top left". Item i is drawn
from a generator seeded by (seed, i), so the dataset needs no storage and is the same on every
machine. Some (colour, shape, quadrant) combinations can be held out of training to test
generalisation to unseen combinations.

`read_attributes` measures the three attributes of an image without any trained network:
colour from the mean RGB of the bright pixels, quadrant from their centroid, shape from how much
of its bounding box the shape fills (square ~1, circle pi/4 ~ 0.79, triangle ~ 0.5).
"""

from __future__ import annotations

import itertools

import torch

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}
# never in the training data: what fine-tuning can try to teach (ldmkit.finetune.concepts)
UNSEEN_COLOURS = {"orange": (1.0, 0.5, 0.0), "purple": (0.5, 0.0, 1.0)}
UNSEEN_SHAPES = ("ring",)  # a circle with a hole of 0.55 its radius
SHAPES = ("circle", "square", "triangle")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
COMBINATIONS = list(itertools.product(COLOURS, SHAPES, QUADRANTS))  # 48
# held out by default: one combination per colour, shape and quadrant, each of whose parts is
# seen in training with other partners
DEFAULT_HOLDOUT = (("red", "triangle", "bottom right"), ("green", "circle", "top right"),
                   ("blue", "square", "bottom left"), ("yellow", "triangle", "top left"))  # fmt: skip
# the values of each attribute in COMBINATIONS' order: combination i = (c, s, q) has i = (c * 3 + s) * 4 + q
ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES, "quadrant": QUADRANTS}
# trained on by default: the first rows of the trainers' sample grids, above the held-out ones
PREVIEW = (("red", "circle", "top left"), ("green", "square", "bottom right"),
           ("blue", "triangle", "top right"), ("yellow", "circle", "bottom left"))  # fmt: skip
TRAIN_RENDERS = 16_384  # images of a shapes training run without a limit


def caption(colour: str, shape: str, quadrant: str) -> str:
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape} in the {quadrant}"


def render(colour: str, shape: str, quadrant: str, size: int = 32, gen: torch.Generator | None = None) -> torch.Tensor:
    """(3, size, size) in [-1, 1]. The shape's half-width r is 0.2..0.26 of the image and its
    centre is jittered by up to 0.05 of the image around the quadrant's centre."""
    u = torch.rand(3, generator=gen)
    r = size * (0.20 + 0.06 * u[0].item())
    row, col = QUADRANTS.index(quadrant) // 2, QUADRANTS.index(quadrant) % 2
    cy = size * (0.25 + 0.5 * row) + size * 0.1 * (u[1].item() - 0.5)
    cx = size * (0.25 + 0.5 * col) + size * 0.1 * (u[2].item() - 0.5)
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dy, dx = y - cy, x - cx
    if shape == "circle":
        mask = dx**2 + dy**2 <= r**2
    elif shape == "square":
        mask = (dx.abs() <= r * 0.9) & (dy.abs() <= r * 0.9)
    elif shape == "ring":
        mask = (dx**2 + dy**2 <= r**2) & (dx**2 + dy**2 >= (0.55 * r) ** 2)
    else:  # upright triangle: apex at the top, base at the bottom
        mask = (dy <= r * 0.9) & (dy >= -r * 0.9) & (dx.abs() <= (dy + r * 0.9) / 2)
    rgb = torch.tensor({**COLOURS, **UNSEEN_COLOURS}[colour]).view(3, 1, 1)
    return torch.where(mask, rgb, torch.zeros(())) * 2 - 1


def holdout_combinations(combos) -> tuple[tuple[str, str, str], ...]:
    """A config's held-out combinations as tuples (JSON gives lists), each one checked to exist."""
    combos = tuple(tuple(c) for c in combos)
    bad = [c for c in combos if c not in COMBINATIONS]
    if bad:
        raise ValueError(f"unknown shapes combinations in shapes_holdout: {bad}")
    return combos


class ShapesDataset(torch.utils.data.Dataset):
    """`length` items over the allowed combinations; item i is (image, caption, (c, s, q) indices)."""

    def __init__(self, length: int = 50_000, size: int = 32, seed: int = 0,
                 holdout: tuple[tuple[str, str, str], ...] = (), only_holdout: bool = False):
        for combo in holdout:
            if combo not in COMBINATIONS:
                raise ValueError(f"unknown shapes combination {combo}; colours {list(COLOURS)}, "
                                 f"shapes {SHAPES}, quadrants {QUADRANTS}")
        held = set(holdout)
        self.combinations = [c for c in COMBINATIONS if (c in held) == only_holdout]
        if not self.combinations:
            raise ValueError("no combinations left to draw from")
        self.length, self.size, self.seed = length, size, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, tuple[int, int, int]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        colour, shape, quadrant = self.combinations[int(torch.randint(len(self.combinations), (1,), generator=gen))]
        image = render(colour, shape, quadrant, self.size, gen)
        labels = (list(COLOURS).index(colour), SHAPES.index(shape), QUADRANTS.index(quadrant))
        return image, caption(colour, shape, quadrant), labels

    def images(self) -> torch.Tensor:
        """Every item's image, stacked: (length, 3, size, size)."""
        return torch.stack([self[i][0] for i in range(len(self))])


def read_attributes(image: torch.Tensor, palette: dict[str, tuple[float, float, float]] = COLOURS,
                    rings: bool = False) -> tuple[str | None, str | None, str | None]:
    """(colour, shape, quadrant) of a (3, H, W) image in [-1, 1]; None where it cannot tell
    (no bright pixels, a colour far from every one of the palette's). rings: also tell a ring,
    whose centroid, unlike that of the three filled shapes, lies in a dark hole."""
    x = (image.float().clamp(-1, 1) + 1) / 2  # (3, H, W) in [0, 1]
    mask = x.max(dim=0).values > 0.5
    if mask.sum() < 4:
        return None, None, None
    mean = x[:, mask].mean(dim=1)  # (3,)
    names = list(palette)
    distances = [torch.dist(mean, torch.tensor(palette[n])).item() for n in names]
    colour = names[min(range(len(names)), key=distances.__getitem__)] if min(distances) < 0.5 else None
    H, W = mask.shape
    ys, xs = torch.nonzero(mask, as_tuple=True)
    cy, cx = ys.float().mean().item() + 0.5, xs.float().mean().item() + 0.5
    quadrant = QUADRANTS[2 * int(cy >= H / 2) + int(cx >= W / 2)]
    box = (ys.max() - ys.min() + 1).item() * (xs.max() - xs.min() + 1).item()
    fill = mask.sum().item() / box
    shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
    y0, x0 = int(cy), int(cx)  # the centroid's pixel and its 8 neighbours all dark: a hole
    if rings and not mask[max(0, y0 - 1): y0 + 2, max(0, x0 - 1): x0 + 2].any():
        shape = "ring"
    return colour, shape, quadrant


def attribute_accuracy(images: torch.Tensor, combos: list[tuple[str, str, str]],
                       palette: dict[str, tuple[float, float, float]] = COLOURS,
                       rings: bool = False) -> dict[str, float]:
    """Share of images whose colour, shape, quadrant, and all three, match the prompt's."""
    hits = {"colour": 0, "shape": 0, "quadrant": 0, "all": 0}
    for image, combo in zip(images, combos):
        read = read_attributes(image, palette, rings)
        matches = [a == b for a, b in zip(read, combo)]
        for key, ok in zip(("colour", "shape", "quadrant"), matches):
            hits[key] += ok
        hits["all"] += all(matches)
    return {k: v / max(1, len(combos)) for k, v in hits.items()}
