"""Held hints and the obedience measure of a ControlNet: generate one image from each hint with
the hint's prompt, then read back how well the image follows the hint (training logs it every
few steps; `ldmkit evaluate-controlnet` measures it on more hints).

- fill-shapes: the share of images whose shape lands in the hint's quadrant, the IoU of the
  hint's filled region with the generated shape's mask, the shares with the prompt's colour and
  shape (data/fill_shapes.fill_obedience, which reads images as the shapes evaluator does);
- fashion-mnist-edges: the IoU of the generated garment's silhouette with that of the image the
  edges came from (data/edge_hints.silhouette_iou).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.edge_hints import fashion_mnist_edges, silhouette_iou
from ..data.fill_shapes import fill_obedience, fill_shape, held_combinations

HELD_SEED = 999_983  # the held hints' generators, apart from the training items' (seed * 1_000_003 + i)


@dataclass(frozen=True)
class HeldHints:
    dataset: str
    hints: torch.Tensor  # (K, C_hint, H, W) in [0, 1]
    targets: torch.Tensor  # (K, C, H, W) in [-1, 1]: what each hint was made from
    prompts: list[str]
    combos: list[tuple[str, str, str]] | None = None  # fill-shapes: (colour, shape, quadrant) of each

    def __len__(self) -> int:
        return len(self.prompts)


def fill_shapes_hints(combos: list[tuple[str, str, str]], size: int = 32, seed: int = HELD_SEED) -> HeldHints:
    """One fill-shapes item of each combination, item k drawn from a generator seeded (seed, k)."""
    items = [fill_shape(*combo, size=size, gen=torch.Generator().manual_seed(seed * 1_000_003 + k))
             for k, combo in enumerate(combos)]
    return HeldHints("fill-shapes", torch.stack([h for h, _, _ in items]), torch.stack([x for _, x, _ in items]),
                     [caption for _, _, caption in items], list(combos))


def edge_hints(count: int, split: str = "test") -> HeldHints:
    """The first `count` Fashion-MNIST images of `split` (test: never trained on) as edge hints."""
    hints, images, captions = fashion_mnist_edges(split, limit=count)
    return HeldHints("fashion-mnist-edges", hints, images, captions)


def held_hints(dataset: str, count: int, size: int = 32) -> HeldHints:
    """The hints training measures obedience on: fill-shapes spread over every quadrant, colour
    and shape; Fashion-MNIST's first test images."""
    if dataset == "fill-shapes":
        return fill_shapes_hints(held_combinations(count), size)
    return edge_hints(count)


@torch.no_grad()
def generate_from_hints(pipe, held: HeldHints, seed: int = 0, **settings) -> torch.Tensor:
    """(K, C, H, W) in [-1, 1]: image k from hint k and prompt k with seed + k, through the
    ControlNet loaded on `pipe` (a run takes one hint per ControlNet: one call per hint).
    settings: generate()'s (steps, guidance, control_scale, ...)."""
    images = [pipe.generate(prompt, control_image=hint, seed=seed + k, output="tensor", **settings)
              for k, (hint, prompt) in enumerate(zip(held.hints, held.prompts))]
    return torch.cat(images).cpu()


def obedience(held: HeldHints, images: torch.Tensor) -> dict[str, float]:
    """How the images generated from `held` obey their hints (see the module's docstring)."""
    if held.combos is not None:
        return fill_obedience(images, held.targets, held.combos)
    return {"iou": silhouette_iou(images, held.targets)}
