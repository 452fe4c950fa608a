"""What every training step needs: its random generator and learning rate, derived from
(seed, step) alone, which is what makes a resumed run exact; the skipping of non-finite steps;
the mixed-precision context."""

from __future__ import annotations

import contextlib
import math

import torch


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step's randomness (batch, noise, timesteps, dropout of the condition)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def learning_rate(base: float, step: int, warmup: int, total: int, schedule: str = "constant") -> float:
    """Linear warm-up over `warmup` steps, then constant or a cosine decay to 0 at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class NonFiniteSteps:
    """A step with a non-finite loss or gradient is skipped (weights untouched) and counted;
    `limit` of them in a row end the run, whose weights are then those from before the streak."""

    def __init__(self, limit: int, skipped: int = 0):
        self.limit, self.skipped, self.streak = limit, skipped, 0

    def finite(self, *values: float) -> bool:
        """Whether the step may be taken; counts it when not."""
        if all(math.isfinite(v) for v in values):
            self.streak = 0
            return True
        self.skipped, self.streak = self.skipped + 1, self.streak + 1
        return False

    @property
    def too_many(self) -> bool:
        return self.streak >= self.limit

    def error(self, done: int, checkpoint, lr: float) -> FloatingPointError:
        return FloatingPointError(
            f"{self.streak} steps in a row had a non-finite loss or gradient (up to step {done}); the weights "
            f"from before them are in {checkpoint}. Lower lr ({lr}) or check the data, then resume")


def fused_adam(params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    """AdamW (Adam when weight_decay is 0: the same update) with torch's fused kernel, one pass
    over all tensors: about 3x faster than the default multi-tensor kernel (docs/benchmarks.md)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, fused=True)


def mixed_precision(kind: str, device: torch.device):
    """The autocast context of a training step: bf16 anywhere, fp16 on a GPU (with a grad scaler)."""
    if kind == "no":
        return contextlib.nullcontext()
    if kind == "fp16" and device.type == "cpu":
        raise ValueError("fp16 mixed precision needs a GPU (and its grad scaler); on CPU use bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16 if kind == "bf16" else torch.float16)
