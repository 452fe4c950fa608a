"""A concept the shapes model never saw, the few images that teach it, and how often it shows.

The shapes model knows red, green, blue and yellow circles, squares and triangles. The test
concept is a new shape, the ring: asked for "a red ring" the shipped model draws a filled
circle. A new colour would be the other choice, but the model's first stage cannot show one:
trained on four pure colours, its autoencoder reconstructs purple as blue (mean RGB of the
shape 0.01, 0.00, 0.94; 0 of 12 purple reconstructions read as purple), so no stage-2 method
can teach purple; rings survive the autoencoder (their holes stay open).

The teaching set is at most 20 rendered images of the concept with captions naming it by a
chosen word (the plain word for LoRA and hypernetworks, a new token for textual inversion, a
rare identifier for DreamBooth). Whether a generation shows the concept is measured, not
judged by eye, by `read_attributes`: a ring is a shape whose centroid lies in a dark hole, a
colour the nearest of the palette including the new ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import shapes
from ..utils.images import save_png, to_pil

PALETTE = {**shapes.COLOURS, **shapes.UNSEEN_COLOURS}
# a new word for a look the model can already draw: what textual inversion and hypernetworks
# can reach ("a thing in the top left" = a yellow triangle there)
NEW_WORDS = {"thing": ("yellow", "triangle")}
CONCEPTS = (*shapes.UNSEEN_SHAPES, *shapes.UNSEEN_COLOURS, *NEW_WORDS)


def concept_combinations(concept: str) -> list[tuple[str, str, str]]:
    """(colour, shape, quadrant) of every image of the concept: a new shape in each known
    colour and quadrant, or a new colour on each known shape and quadrant."""
    if concept in shapes.UNSEEN_SHAPES:
        return [(c, concept, q) for c in shapes.COLOURS for q in shapes.QUADRANTS]
    if concept in shapes.UNSEEN_COLOURS:
        return [(concept, s, q) for s in shapes.SHAPES for q in shapes.QUADRANTS]
    if concept in NEW_WORDS:
        return [(*NEW_WORDS[concept], q) for q in shapes.QUADRANTS]
    raise ValueError(f"unknown concept {concept!r}; choose one of {CONCEPTS}")


def concept_caption(combo: tuple[str, str, str], concept: str, word: str | None = None) -> str:
    """The caption of `combo` with the concept called `word` ("ring", "<ring>", "sks")."""
    if concept in NEW_WORDS:  # the word stands for colour and shape together
        return f"a {word or concept} in the {combo[2]}"
    colour, shape, quadrant = (word or concept if part == concept else part for part in combo)
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape} in the {quadrant}"


def write_concept_images(folder: str | Path, concept: str = "ring", count: int = 20, word: str | None = None,
                         seed: int = 0) -> Path:
    """`count` PNGs of the concept (every combination in turn) with .txt captions naming it
    `word`: a folder any `ldmkit finetune` method trains on."""
    combos = concept_combinations(concept)
    if not 1 <= count <= 1000:
        raise ValueError(f"count must be in 1..1000, got {count}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        combo = combos[k % len(combos)]
        image = shapes.render(*combo, gen=torch.Generator().manual_seed(seed * 1_000_003 + k))
        save_png(to_pil(image), folder / f"{k:03d}.png", {"concept": concept})
        (folder / f"{k:03d}.txt").write_text(concept_caption(combo, concept, word) + "\n")
    return folder


@torch.no_grad()
def concept_accuracy(pipe, concept: str = "ring", word: str | None = None, per_combination: int = 10,
                     seed: int = 1000, **settings) -> dict:
    """Generations for every combination of the concept, named `word`: the share showing the
    concept, and the shares right in colour, shape, quadrant and all three. Seeds start at
    1000, apart from those of the sample grids."""
    combos = concept_combinations(concept)
    prompts = [concept_caption(c, concept, word) for c in combos]
    images = pipe.generate(prompts, num_images=per_combination, seed=seed, output="tensor", **settings)
    expected = [c for c in combos for _ in range(per_combination)]
    attributes = [shapes.read_attributes(image, PALETTE, rings=True) for image in images]
    if concept in NEW_WORDS:
        read = [concept if a[:2] == NEW_WORDS[concept] else f"{a[0]} {a[1]}" for a in attributes]
    else:
        read = [a[1 if concept in shapes.UNSEEN_SHAPES else 0] for a in attributes]
    return {"images": len(images), "prompt_example": prompts[0],
            "shows_concept": read.count(concept) / len(read),
            "read_as": {str(name): read.count(name) / len(read) for name in sorted(set(read), key=str)},
            **shapes.attribute_accuracy(images, expected, PALETTE, rings=True)}
