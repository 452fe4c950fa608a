"""The generative family on shapes: what `python -m benchmarks.family_table --dataset shapes`
scores, a row per model as the Fashion-MNIST table has, and does attribute binding carry to
combinations a model never saw?

    python -m benchmarks.family_table --dataset shapes [--models NAME_OR_FOLDER ...] [--per-combination 25]
        [--seed 0] [--steps N] [--clip clip-small] [--threads 1] [--markdown]
        (default --out docs/results/family-shapes.json, --grid docs/images/family-shapes.png)

Every model (default: the shipped shapes, shapes-dit and shapes-lcm, and models/shapes-dalle,
-unclip, -gan, -vae and -glide where they exist) draws per-combination images of each of the 48
combinations' captions (data/shapes.caption) in one generate(captions, num_images=per_combination,
seed=seed, output="tensor") call at its own defaults, as the Fashion-MNIST rows draw the 10 class
prompts. Its scores:

- all-attribute accuracy (data/shapes.attribute_accuracy: colour, shape and quadrant read off the
  pixels all match the caption's) on seen and on held-out combinations, the split being the
  model's own recorded holdout (ldmkit.apps.evaluate.model_holdout: train.data.holdout for a
  diffusion model, train.shapes_holdout for the family's trainers, DALL-E and the unCLIP prior;
  for unCLIP and a cascade, the union over their parts). The row keeps its holdout.
- FD and FD_inf (ldmkit.apps.evaluate.frechet_scores, as score_fashion_mnist_images computes
  them), and improved precision and recall (k = 3, ldmkit.metrics.precision_recall) on features
  of the shipped clip-small (ldmkit.model.clip.CLIP, trained contrastively on captioned shapes of
  all 48 combinations and on Fashion-MNIST): its image embedding, CLIP.embed_pixels, the 128-d
  projection of the image tower's output, L2-normalised, of the 32x32 RGB image in [-1, 1]. The
  real images are renders of data/shapes.render, each from its own fixed seed, combination-major
  like the generated ones: FD is taken to 210 renders of each combination (10,080, as Fashion-MNIST
  has its 10,000 test images), precision and recall against as many renders as were generated.
- the CLIP score of the images and their captions (--clip).

The last row, "real renders", scores per-combination further renders of each combination (seeds
apart from both sets) the same way: what a perfect generator would score with this many images; its
seen / held-out split is data/shapes.DEFAULT_HOLDOUT's (the attribute reader's own accuracy). The
three sets' seeds start at 10^12 (and 10^12 + 10^9, + 2 x 10^9), far from the training data's
(ShapesDataset: seed x 1,000,003 + index). Seeds apart are not images apart: the jitter leaves
about 6,800 distinct images in the 10,080 renders, so the sets share identical ones (the real row's
precision and recall near 1 say so). The same renders, encoded and decoded by the latent rows'
autoencoder (shapes-kl-f4), are scored too (the floor's "first_stage"): the scores of a latent
model that matched its latents exactly, below which no latent row can go. The FD set's features
take about a minute on one thread, once a run. The grid has a column for each of 12 combinations,
the last four DEFAULT_HOLDOUT's (marked "held out": a model with another holdout says so in its row).
"""

from __future__ import annotations

import torch

from ldmkit.apps.evaluate import frechet_scores, model_holdout, real_data_floor
from ldmkit.data import shapes
from ldmkit.metrics import precision_recall
from ldmkit.model.clip import CLIP
from ldmkit.model.folder import load_first_stage
from ldmkit.train.diffusion_config import DIFFUSION_PRESETS

from .family_table import number, sample_strip

DEFAULT_SHAPES_MODELS = ("shapes", "shapes-dit", "shapes-lcm", "shapes-dalle", "shapes-unclip", "shapes-gan",
                         "shapes-vae", "shapes-glide")
FEATURE_CLIP = "clip-small"
FIRST_STAGE = DIFFUSION_PRESETS["shapes"].autoencoder  # what the latent diffusion rows decode with
FD_PER_COMBINATION = 210  # 10,080 renders: the FD set, as Fashion-MNIST's 10,000 test images
RENDER_SEED, SEED_BLOCK = 10**12, 10**9  # the FD set, the reference and the real row each have a block
# eight seen combinations (with the four held out: three of each colour, shape and quadrant), then the held out
GRID_COMBINATIONS = (("red", "circle", "top left"), ("red", "square", "top right"),
                     ("green", "triangle", "bottom left"), ("green", "square", "bottom right"),
                     ("blue", "circle", "bottom right"), ("blue", "triangle", "top right"),
                     ("yellow", "circle", "bottom left"), ("yellow", "square", "top left"),
                     *shapes.DEFAULT_HOLDOUT)  # fmt: skip


def render_set(per_combination: int, first_seed: int) -> torch.Tensor:
    """per_combination renders of each combination, combination-major as generate() returns the
    48 captions' images: (48 x per_combination, 3, 32, 32), render k from seed first_seed + k."""
    combos = [c for c in shapes.COMBINATIONS for _ in range(per_combination)]
    return torch.stack([shapes.render(*c, gen=torch.Generator().manual_seed(first_seed + k))
                        for k, c in enumerate(combos)])


@torch.no_grad()
def clip_features(clip: CLIP, images: torch.Tensor) -> torch.Tensor:
    """(N, 128) normalised image embeddings of images (N, 3, 32, 32) in [-1, 1]."""
    return torch.cat([clip.embed_pixels(chunk) for chunk in images.split(256)])


def split_accuracy(images: torch.Tensor, per_combination: int, holdout: set) -> dict:
    """attribute_accuracy of the images of seen and of held-out combinations, with their counts
    (a split with no combination: None)."""
    expected = [c for c in shapes.COMBINATIONS for _ in range(per_combination)]
    result = {}
    for split, held in (("seen", False), ("held_out", True)):
        picks = [i for i, c in enumerate(expected) if (c in holdout) == held]
        result[split] = None if not picks else {
            "images": len(picks), **shapes.attribute_accuracy(images[picks], [expected[i] for i in picks])}
    return result


def grid_label(combo: tuple[str, str, str]) -> str:
    return "\n".join([*combo, "held out"] if combo in shapes.DEFAULT_HOLDOUT else combo)


class ShapesScorer:
    """clip-small and its features of the FD set and the reference renders, computed once a run;
    what the table draws and how it lays out its columns."""

    dataset, count_name, grid_mode = "shapes", "per_combination", "RGB"
    grid_labels = [grid_label(c) for c in GRID_COMBINATIONS]
    accuracy_columns, fd_format = ("seen all", "held-out all"), ".4f"  # unit embeddings: small distances
    metric = (f"FD, FD_inf (ldmkit.apps.evaluate.frechet_scores) of {FEATURE_CLIP}'s image embeddings "
              "(CLIP.embed_pixels: the image tower's 128-d projection, L2-normalised, of the 32x32 RGB image) "
              f"against {FD_PER_COMBINATION} renders of each of the 48 combinations (data/shapes.render, fixed "
              "seeds); precision and recall (k = 3) on the same features against as many renders as generated "
              "(other seeds); all-attribute accuracy (data/shapes.attribute_accuracy) on the combinations seen "
              "in training and on those held out, by the model's recorded holdout")

    def __init__(self, per_combination: int, clip: CLIP | None = None):
        self.per_prompt = per_combination
        self.prompts = [shapes.caption(*c) for c in shapes.COMBINATIONS]
        # the features are clip-small's whatever CLIP scores (--clip)
        self.clip = clip if clip is not None and clip.name == FEATURE_CLIP else CLIP.from_pretrained(FEATURE_CLIP)
        self.fd_features = clip_features(self.clip, render_set(FD_PER_COMBINATION, RENDER_SEED))
        self.reference_features = clip_features(self.clip, render_set(per_combination, RENDER_SEED + SEED_BLOCK))
        self.held_out = render_set(per_combination, RENDER_SEED + 2 * SEED_BLOCK)

    def counts(self) -> dict:
        return {"per_combination": self.per_prompt, "images": len(self.prompts) * self.per_prompt}

    def score(self, images: torch.Tensor, model=None) -> dict:
        """The row's scores of a model's images (None: real renders, split by DEFAULT_HOLDOUT); an
        unconditional model's images were not asked for combinations: no attribute accuracy."""
        features = clip_features(self.clip, images)
        fidelity_diversity = precision_recall(self.reference_features, features, k=3)
        holdout = set(shapes.DEFAULT_HOLDOUT) if model is None else model_holdout(model)
        conditional = getattr(model, "conditional", True)
        return {"images": len(images), **frechet_scores(features, self.fd_features, self.per_prompt),
                "precision": fidelity_diversity["precision"], "recall": fidelity_diversity["recall"],
                "holdout": [list(c) for c in shapes.COMBINATIONS if c in holdout],
                "attribute_accuracy": split_accuracy(images, self.per_prompt, holdout) if conditional else None}

    def floor_row(self) -> dict:
        """The held-out renders scored as a model's, the reference renders' FD to the FD set, and the
        held-out renders through the latent models' first stage and back."""
        return {"model": "real renders", "kind": "data (held out)", **self.score(self.held_out),
                "reference_floor": real_data_floor(self.reference_features, self.fd_features),
                "first_stage": self.first_stage_floor(), "samples_png": self.strip(self.held_out)}

    @torch.no_grad()
    def first_stage_floor(self) -> dict:
        """The held-out renders decoded from their own latents by the shapes LDMs' autoencoder,
        scored as a model's images: what a latent model that matched its latents exactly would
        score, the floor of every latent row."""
        autoencoder = load_first_stage(FIRST_STAGE, 3)
        decoded = torch.cat([autoencoder.from_latent(autoencoder.to_latent(chunk)).clamp(-1, 1)
                             for chunk in self.held_out.split(256)])
        scores = self.score(decoded)
        keep = ("frechet_distance", "fd_inf", "precision", "recall", "attribute_accuracy")
        return {"autoencoder": FIRST_STAGE, **{k: scores[k] for k in keep},
                "mse": round(float((decoded - self.held_out).pow(2).mean()), 5)}

    def strip(self, images: torch.Tensor) -> str:
        return sample_strip(images, [shapes.COMBINATIONS.index(c) * self.per_prompt for c in GRID_COMBINATIONS])

    @staticmethod
    def accuracy_cells(row: dict) -> list[str]:
        accuracy = row["attribute_accuracy"] or {}
        return [number((accuracy.get(split) or {}).get("all"), ".1%") for split in ("seen", "held_out")]

    @staticmethod
    def floor_line(results: dict) -> str:
        floor, first = results["floor"]["reference_floor"], results["floor"]["first_stage"]
        return (f"{results['settings']['images']} images a row; FD of the reference renders themselves to the FD "
                f"set: {floor['frechet_distance']:.4f}; the real renders through {first['autoencoder']} and back "
                f"(the latent rows' floor): FD {first['frechet_distance']:.4f}, precision {first['precision']:.3f}, "
                f"recall {first['recall']:.3f}, seen all {first['attribute_accuracy']['seen']['all']:.1%}")
