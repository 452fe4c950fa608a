"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around the network.

It wraps the network's own output (eps, x0 or v) before `as_denoiser` turns it into x0: the
guided combination is linear, so the parametrisation does not change it, and guidance rescale
is defined on the network's output, as in diffusers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

CondModel = Callable[..., torch.Tensor]  # model(x, t, **cond) -> output


def classifier_free_guidance(
    model: CondModel,
    cond: Mapping[str, torch.Tensor | None],
    uncond: Mapping[str, torch.Tensor | None],
    scale: float,
    rescale: float = 0.0,
    guided_channels: int | None = None,
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """model_fn(x, t) = u + scale * (c - u), with u and c the outputs under `uncond` (the null or
    negative prompt) and `cond`, from one batched call of the model on [uncond; cond].

    rescale in [0, 1] (Lin et al. 2024, eq. 15-16): blend in the guided output rescaled to the
    per-sample std of the conditional one, against over-exposure at high scales.
    guided_channels: guide the first this many channels only; the rest (a learned variance,
    IDDPM / DiT) are the conditional output's, as in DiT's sampler and diffusers' DiTPipeline.
    """
    if scale < 0:
        raise ValueError(f"guidance scale must be >= 0, got {scale}")
    if not 0 <= rescale <= 1:
        raise ValueError(f"guidance rescale must be in [0, 1], got {rescale}")
    if set(cond) != set(uncond):
        raise ValueError(
            f"cond and uncond must carry the same inputs, got {sorted(cond)} and {sorted(uncond)}"
        )
    both = {k: None if cond[k] is None else torch.cat([uncond[k], cond[k]]) for k in cond}

    def guided(x: torch.Tensor, t: float) -> torch.Tensor:
        out_uncond, out_cond = model(torch.cat([x, x]), t, **both).chunk(2)  # (B, C, H, W) each
        rest = out_cond[:, guided_channels:] if guided_channels is not None else None  # unguided channels
        out_uncond, out_cond = out_uncond[:, :guided_channels], out_cond[:, :guided_channels]
        out = out_uncond + scale * (out_cond - out_uncond)
        if rescale > 0:
            dims = tuple(range(1, out.ndim))
            rescaled = out * (out_cond.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True))
            out = rescale * rescaled + (1 - rescale) * out
        return out if rest is None else torch.cat([out, rest], dim=1)

    return guided
