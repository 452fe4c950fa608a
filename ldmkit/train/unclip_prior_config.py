"""Typed config of an unCLIP prior's training run (ldmkit/train/unclip_prior.py), and presets."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.shapes import DEFAULT_HOLDOUT, holdout_combinations
from ..diffusion import ScheduleConfig
from ..nets.unclip_prior import PriorConfig

PRIOR_DATASETS = ("fashion-mnist", "shapes")


@dataclass(frozen=True)
class UnclipPriorTrainConfig:
    # the transformer; its embedding and token widths and text length come from the CLIP (PriorConfig)
    width: int = 192
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0
    # the CLIP whose embeddings the prior maps between: a shipped name or a folder
    clip: str = "clip-small"
    dataset: str = "fashion-mnist"  # fashion-mnist | shapes
    limit: int | None = None  # training images (None: all 60,000 of Fashion-MNIST; 16,384 renders of shapes)
    shapes_holdout: tuple[tuple[str, str, str], ...] = DEFAULT_HOLDOUT  # combinations never trained on
    image_size: int = 32
    # Karlo's prior: 1000 steps of the squared-cosine schedule, x0 prediction
    schedule: ScheduleConfig = ScheduleConfig(kind="cosine")
    caption_dropout: float = 0.1  # the empty caption's condition instead: the prior's null, for guidance
    steps: int = 2500
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # constant | cosine (decay to 0 over the run), after warm-up
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 25
    # sample evaluation with the EMA weights, on held-out images (Fashion-MNIST's test split; shapes
    # renders of another seed over every combination, held-out ones included)
    eval_every: int = 500
    eval_images: int = 2000
    eval_samples: int = 16  # sampled embeddings per caption
    eval_guidance: tuple[float, ...] = (1.0, 4.0)  # each measured
    sample_steps: int = 25  # DDIM steps, and the saved model's default
    guidance: float = 4.0  # the saved model's default guidance (diffusers' UnCLIPPipeline: 4, 25 steps)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 20

    def __post_init__(self):
        object.__setattr__(self, "shapes_holdout", holdout_combinations(self.shapes_holdout))
        object.__setattr__(self, "eval_guidance", tuple(float(g) for g in self.eval_guidance))
        if self.dataset not in PRIOR_DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {PRIOR_DATASETS}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0 <= self.caption_dropout < 1 or not 0 <= self.ema_decay <= 1:
            raise ValueError(f"caption_dropout must be in [0, 1) and ema_decay in [0, 1], got "
                             f"{self.caption_dropout}, {self.ema_decay}")
        if not self.eval_guidance or any(not g >= 1 for g in (*self.eval_guidance, self.guidance)):
            raise ValueError(f"guidance and eval_guidance must be >= 1 (1: no guidance), got {self.guidance}, "
                             f"{self.eval_guidance}")
        for name in ("steps", "batch_size", "log_every", "eval_every", "eval_images", "eval_samples",
                     "sample_steps", "checkpoint_every", "keep_checkpoints", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.model_config(1, 1, 1)  # the transformer's own checks (width, heads, dropout), now

    def model_config(self, embedding_dim: int, text_state_dim: int, text_length: int) -> PriorConfig:
        """The prior for a CLIP of these embedding and token-state widths and text length."""
        return PriorConfig(embedding_dim=embedding_dim, text_state_dim=text_state_dim, text_length=text_length,
                           width=self.width, layers=self.layers, heads=self.heads, dropout=self.dropout)


# Sized by 6 measured steps of batch 128 (random inputs of clip-small's shapes: 24 token slots + 4,
# 128-d embeddings) on one thread of this machine's AMD EPYC, in CPU seconds a step (the machine was
# shared, load 5-7: wall time ~15% more): width 128 x 4 layers 0.32, 192 x 4 0.63, 256 x 4 1.08,
# 256 x 6 1.59, 384 x 4 2.02; batch 256 at 256 x 4 1.98. train_unclip_prior itself at 192 x 4: 0.82 s
# a step of wall time at load 7. At 192 x 4, 2,500 steps are ~26 CPU-min, plus embedding the data
# once (3.4 CPU-s per 1,024 images: ~3.5 min for Fashion-MNIST's 60,000, ~1 min for 18,000 shapes
# renders) and the evaluations (Fashion-MNIST: 10 captions x 16 samples at guidance 1 and 4, 24
# CPU-s each, 5 of them; shapes: 48 x 8, 55 CPU-s each, 4 of them): ~31-32 min in all.
PRIOR_PRESETS: dict[str, UnclipPriorTrainConfig] = {
    "fashion-mnist": UnclipPriorTrainConfig(),
    "shapes": UnclipPriorTrainConfig(dataset="shapes", eval_samples=8, eval_every=625, checkpoint_every=625),
    "tiny": UnclipPriorTrainConfig(width=32, layers=2, heads=2, limit=64, eval_images=32, eval_samples=2,
                                   eval_guidance=(2.0,), sample_steps=4, steps=4, batch_size=8, warmup_steps=1,
                                   log_every=1, eval_every=2, checkpoint_every=2),
}
