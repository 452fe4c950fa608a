"""DeepCache (Ma et al. 2023, "DeepCache: Accelerating Diffusion Models for Free").

A UNet's deep features change little from one sampler step to the next, its shallow ones do.
So a full pass every N calls (a refresh) caches the deep part's output, and the calls between
run only a shallow branch over the cached features (the paper's sec. 3.2, eq. 4 and 5).

The branch of depth k (the paper's skip branch k + 1; k = 1 is its default for SD): going down,
conv_in and the top level's first k ResBlocks (each with its attention) push the skips
s_0 .. s_k; going up, the top level's last k + 1 ResBlocks read them, s_k first. The deep part
(everything else) makes h_deep, the input of the first of those ResBlocks before its skip is
concatenated; a refresh keeps it (a pre-hook on that ResBlock), the other calls reuse it.
Names: B batch, C channels, H W size, R ResBlocks a level going down.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .inplace import silu_of_temporary
from .unet import UNet, prepare_inputs


def check_interval(interval, name: str = "the DeepCache interval") -> None:
    """A clear error for an interval that is not a whole number >= 1 (a request checks it alone)."""
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"{name} must be a whole number >= 1 (1: a full pass every call, i.e. no caching; "
                         f"3: a full pass every third call), got {interval!r}")


def check_deepcache(net: nn.Module, interval, branch: int = 1) -> None:
    """A clear error for an interval below 1 or a network without a UNet's skips."""
    check_interval(interval)
    if not isinstance(net, UNet):
        raise ValueError(f"DeepCache reuses the deep features of a UNet between its skip connections; this "
                         f"network is a {type(net).__name__}, which has no such skips: sample without deepcache")
    r = net.config.num_res_blocks
    if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch <= r:
        raise ValueError(f"the DeepCache branch must be a whole number in [0, {r}] (the top level's ResBlocks), "
                         f"got {branch!r}")


class DeepCache:
    """`net`, a UNet, called as itself; its deep part runs on every `interval`-th call (the first
    one included) and on a batch or size it has no cache for. One sampling run's: the cache
    belongs to its latents, so make a new one per run."""

    def __init__(self, net: UNet, interval: int, branch: int = 1):
        check_deepcache(net, interval, branch)
        self.net, self.interval, self.branch = net, interval, branch
        self.calls = 0
        self.deep: torch.Tensor | None = None  # h_deep of the last refresh, (B, C_deep, H, W)
        top = net.up_blocks[-1]
        self.target = top.resnets[len(top.resnets) - 1 - branch]  # the first ResBlock of the branch, going up
        c = net.config
        skip = c.base_channels if branch == 0 else c.level_channels(0)  # s_k's width: conv_in's, or a ResBlock's
        self.deep_channels = self.target.norm1.num_channels - skip

    @property
    def config(self):
        return self.net.config

    def __call__(self, x: torch.Tensor, t, **inputs) -> torch.Tensor:
        """UNet.forward's call: x (B, C_in, H, W), t, context=..., ... -> (B, C_out, H, W)."""
        cached = self.deep is not None and self.deep.shape[0] == x.shape[0] and self.deep.shape[2:] == x.shape[2:]
        refresh = self.calls % self.interval == 0 or not cached
        self.calls += 1
        if refresh:
            return self.refresh(x, t, **inputs)
        return shallow_forward(self.net, x, t, self.deep, self.branch, **inputs)

    def refresh(self, x: torch.Tensor, t, **inputs) -> torch.Tensor:
        """The full UNet, keeping h_deep on the way."""
        def keep(module, args):
            self.deep = args[0][:, : self.deep_channels].clone()  # the input is cat([h_deep, s_k]): (B, C_deep, H, W)

        self.deep = None
        handle = self.target.register_forward_pre_hook(keep)
        try:
            out = self.net(x, t, **inputs)
        finally:
            handle.remove()
        if self.deep is None:  # the blocks did not run one by one: a compiled graph
            raise RuntimeError("DeepCache needs the UNet to run block by block, and this one runs as one compiled "
                               "graph (fast='compile'): use DeepCache or a compiled UNet, not both")
        return out


def shallow_forward(net: UNet, x: torch.Tensor, t, deep: torch.Tensor, branch: int = 1,
                    context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                    class_labels: torch.Tensor | None = None, guidance: torch.Tensor | None = None,
                    control: Sequence[torch.Tensor] | None = None, pooled: torch.Tensor | None = None) -> torch.Tensor:
    """The UNet's output from its shallow branch of depth `branch` and the cached h_deep
    (B, C_deep, H, W) in place of the deep part. The arguments are UNet.forward's; of a
    ControlNet's residuals only those of the skips s_0 .. s_branch are used."""
    emb, context, context_mask = prepare_inputs(net, x, t, context, context_mask, class_labels, guidance, pooled)
    h = net.conv_in(x)                                                 # (B, C_base, H, W)
    skips = [h]
    down = net.down_blocks[0]
    for j in range(branch):
        h = down.resnets[j](h, emb)                                    # (B, C_0, H, W)
        if down.attentions is not None:
            h = down.attentions[j](h, context, context_mask)
        skips.append(h)
    if control is not None:  # the residuals come in push order: the first branch + 1 are these skips'
        skips = [skip + r for skip, r in zip(skips, control)]
    h = deep
    up = net.up_blocks[-1]
    for j in range(len(up.resnets) - 1 - branch, len(up.resnets)):
        h = torch.cat([h, skips.pop()], dim=1)                         # (B, C_deep + C_skip, H, W)
        h = up.resnets[j](h, emb)                                      # (B, C_0, H, W)
        if up.attentions is not None:
            h = up.attentions[j](h, context, context_mask)
    h = silu_of_temporary(net.conv_norm_out(h))
    return net.conv_out(h)                                             # (B, C_out, H, W)
