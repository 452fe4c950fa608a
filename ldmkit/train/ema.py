"""Exponential moving average of weights (Polyak averaging), as DiT and EDM keep for sampling."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copies of a module's floating-point parameters and buffers:
    shadow <- decay * shadow + (1 - decay) * current. decay = 0 copies the model."""

    def __init__(self, module: nn.Module, decay: float = 0.999):
        if not 0 <= decay <= 1:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def decay_at(self, step: int | None) -> float:
        """With the step given, warm up as min(decay, (1 + n) / (10 + n)): early averages would
        otherwise be mostly the random initial weights (0.999^1000 = 37% of them at step 1000)."""
        return self.decay if step is None else min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, module: nn.Module, step: int | None = None) -> None:
        decay = self.decay_at(step)
        for key, value in module.state_dict().items():
            shadow = self.shadow[key]
            if shadow.is_floating_point():
                shadow.lerp_(value.detach(), 1 - decay)
            else:
                shadow.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state lacks {sorted(missing)[:3]}...")
        for key in self.shadow:
            self.shadow[key].copy_(state[key])

    def copy_to(self, module: nn.Module) -> None:
        module.load_state_dict(self.shadow)
