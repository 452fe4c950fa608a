"""What every model of the generative family shares as a loaded generator: its modules on one
device and dtype, its folder's config.json, and a description. Each model adds from_folder and
generate(prompt, num_images, seed, output, **its own sampling settings), image i of the result
from seed + i, as the diffusion Pipeline does."""

from __future__ import annotations

import torch
from torch import nn

OUTPUTS = ("pil", "tensor")


class FamilyGenerator:
    kind: str  # config.json's "kind": how ldmkit.family.loading tells the models apart

    def __init__(self, name: str, meta: dict | None):
        self.name, self.meta = name, dict(meta or {})

    def modules(self) -> list[nn.Module]:
        """The networks that run at sampling, the first one holding the parameters that set device
        and dtype."""
        raise NotImplementedError

    def config_entries(self) -> dict:
        """The model's own entries of describe(): its network config and what else defines it."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.modules()[0].parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.modules()[0].parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        for module in self.modules():
            module.to(device=device, dtype=dtype)
        return self

    def describe(self) -> dict:
        """The model's config.json and what it is now: name, parameters, device, dtype."""
        return {**self.meta, "kind": self.kind, "name": self.name, **self.config_entries(),
                "parameters": sum(p.numel() for p in self.modules()[0].parameters()),
                "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}


def check_common(num_images, output: str, outputs: tuple[str, ...] = OUTPUTS) -> None:
    """Clear errors for the settings every family generator takes."""
    if isinstance(num_images, bool) or int(num_images) != num_images or num_images < 1:
        raise ValueError(f"num_images must be a whole number >= 1, got {num_images!r}")
    if output not in outputs:
        raise ValueError(f"output must be one of {outputs}, got {output!r}")
