"""The settings of a latent consistency distillation run (`ldmkit distill`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DistillConfig:
    teacher: str = "fashion-mnist"  # a shipped model or a model folder; its data are used
    lora: bool = False  # LCM-LoRA: a LoRA on the teacher (no guidance input) instead of a full student
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = ("attention", "feed_forward", "conv")
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float | None = 1.0
    guidance_min: float = 1.5  # the teacher's classifier-free guidance scale, drawn in [min, max]
    guidance_max: float = 4.0  # per sample; the student takes it as an input (guidance_embed_dim)
    guidance_embed_dim: int = 128
    guidance: float | None = None  # the LCM's default scale (None: the teacher's)
    original_steps: int = 50  # the teacher's DDIM grid: one solver step skips T / original_steps timesteps
    target_ema: float = 0.95  # the target network: an EMA of the student (LCM's theta^-)
    huber_c: float = 0.001  # pseudo-Huber loss sqrt(d^2 + c^2) - c
    seed: int = 0
    log_every: int = 25
    sample_every: int = 500
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    data_limit: int | None = None  # training images (default: the teacher's data set, all of it)

    def __post_init__(self):
        if not 1 <= self.guidance_min <= self.guidance_max:
            raise ValueError(f"guidance_min, guidance_max must satisfy 1 <= min <= max, got "
                             f"{self.guidance_min}, {self.guidance_max}")
        if not 0 <= self.target_ema < 1:
            raise ValueError(f"target_ema must be in [0, 1), got {self.target_ema}")


DISTILL_PRESETS: dict[str, DistillConfig] = {
    "fashion-mnist": DistillConfig(teacher="fashion-mnist-f4"),
    # LCM-LoRA: the guided teacher at its own scale, learnt without a guidance input; sampled at guidance 1
    "fashion-mnist-lora": DistillConfig(teacher="fashion-mnist-f4", lora=True, lr=5e-4, guidance_min=3.0,
                                        guidance_max=3.0, guidance=1.0),
    "shapes": DistillConfig(teacher="shapes", guidance_min=1.5, guidance_max=5.0),
    "tiny": DistillConfig(teacher="fashion-mnist-f4", steps=30, batch_size=8, data_limit=256, warmup_steps=5,
                          sample_every=30, checkpoint_every=10, log_every=5),
}
