"""Typed config of a miniature DALL-E's training run (ldmkit/train/dalle.py), and presets."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.shapes import DEFAULT_HOLDOUT, holdout_combinations
from ..nets.dalle import DalleConfig

DALLE_DATASETS = ("fashion-mnist", "shapes")


@dataclass(frozen=True)
class DalleTrainConfig:
    # the transformer; its vocabulary, codebook and grid come from the captions and the VQ (DalleConfig)
    width: int = 192
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0
    text_length: int = 12  # tokens: the longest caption ("a photo of a t - shirt / top") has 9
    # the data, encoded once by the VQ first stage (its folder, as a path or inside the repository)
    autoencoder: str = "models/autoencoders/fmnist-vq-f4"
    dataset: str = "fashion-mnist"  # fashion-mnist | shapes
    limit: int | None = None  # training images (None: all 60,000 of Fashion-MNIST; 16,384 renders of shapes)
    shapes_holdout: tuple[tuple[str, str, str], ...] = DEFAULT_HOLDOUT  # combinations never trained on
    image_size: int = 32
    steps: int = 1800
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # constant | cosine (decay to 0 over the run), after warm-up
    grad_clip: float | None = 1.0
    seed: int = 0
    log_every: int = 25
    eval_images: int = 512  # held-out images whose losses are logged at every sample grid
    sample_every: int = 300  # a grid of samples for the fixed prompts, and the held-out losses
    samples_per_prompt: int = 4
    checkpoint_every: int = 300
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 20

    def __post_init__(self):
        object.__setattr__(self, "shapes_holdout", holdout_combinations(self.shapes_holdout))
        if self.dataset not in DALLE_DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {DALLE_DATASETS}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        for name in ("steps", "batch_size", "log_every", "eval_images", "sample_every", "samples_per_prompt",
                     "checkpoint_every", "keep_checkpoints", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.model_config(2, 2, (1, 1))  # the transformer's own checks (width, heads, dropout), now

    def model_config(self, text_vocab_size: int, codebook_size: int, grid: tuple[int, int]) -> DalleConfig:
        """The transformer for a vocabulary and a VQ first stage of that codebook and code grid."""
        return DalleConfig(text_vocab_size=text_vocab_size, text_length=self.text_length,
                           codebook_size=codebook_size, grid=tuple(grid), width=self.width, layers=self.layers,
                           heads=self.heads, dropout=self.dropout)


# Sized by 20 measured steps of batch 64 (8x8 codes of a 512-code VQ, 12 text positions over 23
# tokens) on one thread of this machine's AMD EPYC: width 256 x 4 layers 2.18 CPU-s/step, 192 x 4
# 1.29, 128 x 6 0.91, 128 x 4 0.73 (CPU time: the machine was shared, wall time 5x that). At
# 192 x 4, 1,800 steps are ~39 min, plus ~2.6 min to encode Fashion-MNIST's 60,000 images once
# (2.7 CPU-s per 1,024) and a few seconds per sample grid: ~42 min in all.
DALLE_PRESETS: dict[str, DalleTrainConfig] = {
    "fashion-mnist": DalleTrainConfig(),
    # the shapes first stage must be a VQ: train it first (docs/family.md); the shipped shapes-kl-f4 is KL
    "shapes": DalleTrainConfig(autoencoder="models/autoencoders/shapes-vq-f4", dataset="shapes"),
    "tiny": DalleTrainConfig(width=32, layers=2, heads=2, limit=64, eval_images=16, steps=4, batch_size=8,
                             warmup_steps=1, log_every=1, sample_every=2, samples_per_prompt=1,
                             checkpoint_every=2),
}
