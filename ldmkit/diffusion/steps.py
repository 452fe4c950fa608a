"""What every sampler shares: its callback type, its noise draws and its (t, s) step pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Callback = Callable[[int, torch.Tensor, torch.Tensor], None] | None


def noise_like(x: torch.Tensor, gen: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """N(0, I) of x's shape, drawn on the generator's device so a seed means the same noise on
    any device. A list of generators, one per batch row, makes each row's noise depend on its own
    seed only: image k of a batch is the same image when generated alone."""
    if isinstance(gen, (list, tuple)):
        if len(gen) != x.shape[0]:
            raise ValueError(f"{len(gen)} generators for a batch of {x.shape[0]}: give one per row")
        return torch.cat([noise_like(row, g) for row, g in zip(x.split(1), gen)])
    device = gen.device if gen is not None else x.device
    return torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype).to(x.device)


def step_pairs(timesteps: torch.Tensor) -> list[tuple[float, float]]:
    ts = [float(t) for t in timesteps]
    if len(ts) < 2:
        raise ValueError(
            f"a sampler needs at least 2 timesteps (one step and where it lands), got {len(ts)}"
        )
    if any(s >= t for t, s in zip(ts[:-1], ts[1:])):
        raise ValueError(f"timesteps must be strictly descending, got {ts}")
    return list(zip(ts[:-1], ts[1:]))
