"""Typed configs of a noisy latent classifier's training run (classifier guidance), and presets."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..diffusion import ScheduleConfig
from ..nets.config import UNetConfig
from ..nets.noisy_classifier import NoisyClassifierConfig

CLASSIFIER_DATASETS = ("fashion-mnist",)


@dataclass(frozen=True)
class NoisyClassifierTrainConfig:
    classifier: NoisyClassifierConfig = NoisyClassifierConfig(UNetConfig(
        base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1, attn_levels=(2,), num_heads=None, head_dim=32,
        context_dim=None, norm_groups=32))
    autoencoder: str = "models/autoencoders/fmnist-kl-f4"  # whose latents it reads (that of the shipped models)
    schedule: ScheduleConfig = ScheduleConfig()  # the diffusion models' (the shipped ones')
    dataset: str = "fashion-mnist"
    limit: int | None = None  # training images (None: all 60,000)
    image_size: int = 32
    steps: int = 6000
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 200
    lr_schedule: str = "cosine"  # constant | cosine (decay to 0 over the run), after warm-up
    grad_clip: float | None = 1.0
    seed: int = 0
    log_every: int = 25
    eval_every: int = 500  # accuracy against t on held-out test latents
    eval_images: int = 2000  # test images of those measures (the last one: all of them)
    eval_timesteps: tuple[int, ...] = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 20

    def __post_init__(self):
        object.__setattr__(self, "eval_timesteps", tuple(self.eval_timesteps))
        if self.dataset not in CLASSIFIER_DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {CLASSIFIER_DATASETS}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        last = self.schedule.num_timesteps - 1
        if not self.eval_timesteps or any(not 0 <= t <= last for t in self.eval_timesteps):
            raise ValueError(f"eval_timesteps must be timesteps in [0, {last}], got {self.eval_timesteps}")
        for name in ("log_every", "eval_every", "eval_images", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


NOISY_CLASSIFIER_PRESETS: dict[str, NoisyClassifierTrainConfig] = {
    # for the shipped fashion-mnist-f4 model (its 8x8x4 latents and its schedule)
    "fashion-mnist": NoisyClassifierTrainConfig(),
    "tiny": NoisyClassifierTrainConfig(
        classifier=NoisyClassifierConfig(replace(NoisyClassifierTrainConfig().classifier.encoder, base_channels=16,
                                                 channel_mult=(1, 2), attn_levels=(), head_dim=8, norm_groups=8)),
        limit=64, steps=4, batch_size=8, warmup_steps=1, log_every=1, eval_every=2, eval_images=16,
        eval_timesteps=(0, 500, 999), checkpoint_every=2,
    ),
}
