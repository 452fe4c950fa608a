"""A concept the shapes model never saw, the few images that teach it, and how often it shows.

The shapes model knows red, green, blue and yellow. Asked for "a purple circle" it draws a
red one (0 of 60 purple before fine-tuning); orange it already half knows, drawn between red
and yellow (57% read as orange), so purple is the test. The teaching set is at most 20
rendered images of purple shapes with their captions, the colour named by a chosen word (the
plain word for LoRA and hypernetworks, a new token for textual inversion, a rare identifier
for DreamBooth). Whether a generation shows the concept is measured, not judged by eye: the
colour `read_attributes` reads from its pixels, over a palette that includes the new colour.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import shapes
from ..utils.images import save_png, to_pil

PALETTE = {**shapes.COLOURS, **shapes.UNSEEN_COLOURS}


def concept_caption(word: str, shape: str, quadrant: str) -> str:
    """The caption of a shape whose colour is called `word` ("purple", "<purple>", "sks")."""
    article = "an" if word[0] in "aeiou" else "a"
    return f"{article} {word} {shape} in the {quadrant}"


def write_concept_images(folder: str | Path, colour: str = "purple", count: int = 20, word: str | None = None,
                         seed: int = 0) -> Path:
    """`count` PNGs of `colour` shapes (every shape and quadrant in turn) with .txt captions
    naming the colour `word`: a folder any `ldmkit finetune` method trains on."""
    if colour not in PALETTE:
        raise ValueError(f"unknown colour {colour!r}; choose one of {sorted(PALETTE)}")
    if not 1 <= count <= 1000:
        raise ValueError(f"count must be in 1..1000, got {count}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    combos = [(s, q) for s in shapes.SHAPES for q in shapes.QUADRANTS]
    for k in range(count):
        shape, quadrant = combos[k % len(combos)]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + k)
        image = shapes.render(colour, shape, quadrant, gen=gen)
        save_png(to_pil(image), folder / f"{k:03d}.png", {"colour": colour})
        (folder / f"{k:03d}.txt").write_text(concept_caption(word or colour, shape, quadrant) + "\n")
    return folder


@torch.no_grad()
def concept_accuracy(pipe, colour: str = "purple", word: str | None = None, per_combination: int = 10,
                     seed: int = 1000, **settings) -> dict:
    """Generations for every (shape, quadrant) with the colour called `word`: the share read as
    `colour`, and as the asked shape and quadrant. Seeds start at 1000: the teaching images are
    rendered, not generated, but the evaluation should not share seeds with sample grids."""
    combos = [(colour, s, q) for s in shapes.SHAPES for q in shapes.QUADRANTS]
    prompts = [concept_caption(word or colour, s, q) for _, s, q in combos]
    images = pipe.generate(prompts, num_images=per_combination, seed=seed, output="tensor", **settings)
    expected = [c for c in combos for _ in range(per_combination)]
    read = [shapes.read_attributes(image, PALETTE)[0] for image in images]
    shown = {name: read.count(name) / len(read) for name in sorted(set(read), key=str)}
    return {"images": len(images), "prompt_example": prompts[0], "colours_read": shown,
            **shapes.attribute_accuracy(images, expected, PALETTE)}
