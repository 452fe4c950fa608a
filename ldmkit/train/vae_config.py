"""Typed config of a VAE's training run (ldmkit/train/vae.py), and presets."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..data.shapes import DEFAULT_HOLDOUT
from ..family.vae_networks import VAEConfig
from .gan_config import SHAPES_ATTRIBUTES, check_data

VAE_DATASETS = ("fashion-mnist", "shapes")


@dataclass(frozen=True)
class VAETrainConfig:
    vae: VAEConfig = VAEConfig()  # its decoder is the GAN preset's generator (base_channels 32)
    dataset: str = "fashion-mnist"  # fashion-mnist | shapes
    classes: tuple[int, ...] | None = None  # train on these labels only (None: all)
    limit: int | None = None  # training images, after `classes` (None: all 60,000; 16,384 renders of shapes)
    shapes_holdout: tuple[tuple[str, str, str], ...] = DEFAULT_HOLDOUT  # combinations never trained on
    # beta of the weighted ELBO, nll + beta * KL (Higgins et al. 2017): 1 is the ELBO itself (with the
    # learned sigma_x, a calibrated one); LDM's first stages weight the KL by 1e-6 and so cannot sample
    kl_weight: float = 1.0
    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    log_every: int = 25
    sample_every: int = 500  # a grid of fixed-seed samples, a row per class (samples/step_*.png)
    samples_per_class: int = 8
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 20

    def __post_init__(self):
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        check_data(self, self.vae, "vae", VAE_DATASETS)
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"steps must be >= 1 and batch_size >= 2 (BatchNorm), got {self.steps}, "
                             f"{self.batch_size}")
        if self.classes is not None and (not self.classes or any(not 0 <= k < self.vae.num_classes
                                                                   for k in self.classes)):
            raise ValueError(f"classes must be labels in 0..{self.vae.num_classes - 1}, got {self.classes}")
        if not self.kl_weight >= 0 or not self.lr > 0:
            raise ValueError(f"kl_weight must be >= 0 and lr > 0, got {self.kl_weight}, {self.lr}")
        for name in ("log_every", "sample_every", "samples_per_class", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


VAE_PRESETS: dict[str, VAETrainConfig] = {
    # 0.106 s/step measured (batch 64, OMP_NUM_THREADS=1, the 2-core AMD EPYC beside two other
    # one-thread runs): 6,000 steps (6.4 epochs) are ~11 min
    "fashion-mnist": VAETrainConfig(),
    # the fashion-mnist preset on shapes: RGB, a class per (colour, shape, quadrant), 16,384 renders.
    # train_vae, steps 3-22, one thread, the 2-core AMD EPYC at load ~3.5: 0.140 s/step (fashion-mnist
    # beside it: 0.148), so 6,000 steps are ~14 min
    "shapes": VAETrainConfig(vae=replace(VAEConfig(), channels=3, num_classes=48, attributes=SHAPES_ATTRIBUTES),
                             dataset="shapes"),
    # for tests: tiny widths, 64 images, a few steps
    "tiny": VAETrainConfig(vae=VAEConfig(z_dim=8, base_channels=8), limit=64, steps=4, batch_size=8, log_every=1,
                           sample_every=2, samples_per_class=2, checkpoint_every=2),
}
