"""SiLU of a temporary (a norm's output that nothing else holds), in place when no autograd
graph is recorded: one large tensor fewer per block. On a CPU every fresh large tensor costs
page faults besides its writes; the VAE decoder at 256 px made about twice as many faults as
diffusers' and ran at 0.79x its speed until its blocks stopped allocating them
(docs/benchmarks.md). With a graph, SiLU's backward needs its input, so it stays out of place."""

import torch
from torch.nn import functional as F


def silu_of_temporary(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x, inplace=not torch.is_grad_enabled())
