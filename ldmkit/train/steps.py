"""What every training step needs from the step number alone: its random generator and its
learning rate. Deriving both from (seed, step) is what makes a resumed run exact."""

from __future__ import annotations

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
