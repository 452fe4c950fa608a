"""Typed config of a GAN's training run, and presets."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..data.shapes import ATTRIBUTES, DEFAULT_HOLDOUT, holdout_combinations
from ..family.gan_networks import GANConfig

GAN_DATASETS = ("fashion-mnist", "shapes")
# a shapes class is a (colour, shape, quadrant) combination: 4 x 3 x 4 values, RGB images
SHAPES_ATTRIBUTES = tuple(len(values) for values in ATTRIBUTES.values())


@dataclass(frozen=True)
class GANTrainConfig:
    # half DCGAN's widths (see the preset); the class through conditional BatchNorm in G: with
    # the class concatenated to z, G made one image per class whatever z (ldmkit/family/gan_networks.py)
    gan: GANConfig = GANConfig(base_channels=32, d_base_channels=32, class_input="batchnorm")
    dataset: str = "fashion-mnist"  # fashion-mnist | shapes
    classes: tuple[int, ...] | None = None  # train on these labels only (None: all)
    limit: int | None = None  # training images, after `classes` (None: all 60,000; 16,384 renders of shapes)
    shapes_holdout: tuple[tuple[str, str, str], ...] = DEFAULT_HOLDOUT  # combinations never trained on
    steps: int = 1800
    batch_size: int = 64
    lr: float = 2e-4
    # DCGAN's Adam (Radford et al. 2016): beta1 = 0.5, as momentum 0.9 made its BatchNorm GANs
    # oscillate. (0.0, 0.9) belongs with spectral norm and several D steps per G step (SNGAN,
    # BigGAN); this is DCGAN's one-to-one alternation with BatchNorm in both networks.
    betas: tuple[float, float] = (0.5, 0.999)
    r1_gamma: float = 0.0  # R1 penalty gamma / 2 * E||grad_x D(x)||^2 on real images (Mescheder et al. 2018); 0: none
    ema_decay: float = 0.999  # of the generator's weights: the samples and the saved model use the average
    seed: int = 0
    log_every: int = 25
    sample_every: int = 300  # a grid of fixed-seed samples, a row per class (samples/step_*.png)
    samples_per_class: int = 8
    checkpoint_every: int = 300
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 20

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        check_data(self, self.gan, "gan", GAN_DATASETS)
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"steps must be >= 1 and batch_size >= 2 (BatchNorm), got {self.steps}, "
                             f"{self.batch_size}")
        if self.classes is not None and (not self.classes or any(not 0 <= k < self.gan.num_classes
                                                                   for k in self.classes)):
            raise ValueError(f"classes must be labels in 0..{self.gan.num_classes - 1}, got {self.classes}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.r1_gamma < 0 or not 0 <= self.ema_decay <= 1:
            raise ValueError(f"r1_gamma must be >= 0 and ema_decay in [0, 1], got {self.r1_gamma}, {self.ema_decay}")
        for name in ("log_every", "sample_every", "samples_per_class", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def check_data(config, network, name: str, datasets: tuple[str, ...]) -> None:
    """A GAN's or a VAE's run config (network: its GANConfig or VAEConfig, under `name`): a known
    dataset, a network that fits it, known held-out combinations. Sets shapes_holdout to tuples."""
    object.__setattr__(config, "shapes_holdout", holdout_combinations(config.shapes_holdout))
    if config.dataset not in datasets:
        raise ValueError(f"unknown dataset {config.dataset!r}; choose one of {datasets}")
    if config.dataset == "shapes":  # the held-out combinations can only be drawn as sums of attributes
        need = {"channels": 3, "num_classes": math.prod(SHAPES_ATTRIBUTES), "attributes": SHAPES_ATTRIBUTES}
    else:
        need = {"channels": 1, "num_classes": 10, "attributes": ()}
    if network.conditioning != "class":
        need = {"channels": need["channels"]}
    wrong = [k for k, v in need.items() if getattr(network, k) != v]
    if wrong:
        got = ", ".join(f"{name}.{k}={getattr(network, k)}" for k in wrong)
        raise ValueError(f"the {config.dataset} dataset needs {name} {need}, got {got}")


GAN_PRESETS: dict[str, GANTrainConfig] = {
    # Sized for ~25 min on one CPU thread. Measured with OMP_NUM_THREADS=1, batch 64, on a 2-core
    # machine shared with three other training jobs (load ~5): widths (G/D) 64/64 3.2 s/step,
    # 64/32 1.3, 32/32 0.89; train_gan with this preset, steps 3-22: 0.91 s/step. So 32/32 and
    # 1800 steps (~2 epochs): ~27 min there, less on an idle machine (with conditional BatchNorm,
    # 0.16 s/step, 4.9 min, at load ~1).
    "fashion-mnist": GANTrainConfig(),
    # the fashion-mnist preset on shapes: RGB, a class per (colour, shape, quadrant), 16,384 renders
    # (1,800 steps are 7 epochs). train_gan, steps 3-22, OMP_NUM_THREADS=1, the 2-core AMD EPYC at
    # load ~3.5: 0.363 s/step (fashion-mnist beside it: 0.353), so ~11 min; ~28 min at load ~5, where
    # fashion-mnist ran 0.91 s/step
    "shapes": GANTrainConfig(gan=replace(GANTrainConfig().gan, channels=3, num_classes=48,
                                         attributes=SHAPES_ATTRIBUTES), dataset="shapes"),
    # for tests: tiny widths, 64 images, a few steps
    "tiny": GANTrainConfig(
        gan=GANConfig(z_dim=16, base_channels=8, d_base_channels=8, d_layers=2, class_input="batchnorm"),
        limit=64, steps=4, batch_size=8, log_every=1, sample_every=2, samples_per_class=2, checkpoint_every=2,
    ),
}
