"""Nearest-neighbour x2 upsampling followed by a 3x3 convolution, computed on the small grid.

With u the upsampled input, u[p, q] = x[p // 2, q // 2], output pixel (2i + a, 2j + b) of the
3x3 convolution (padding 1) reads u's rows 2i + a - 1 .. 2i + a + 1, which are x's rows
    a = 0:  i - 1, i, i      -> a 2-row kernel (w[0], w[1] + w[2]) on x's rows (i - 1, i)
    a = 1:  i, i, i + 1      -> a 2-row kernel (w[0] + w[1], w[2]) on x's rows (i, i + 1)
and the same for columns. So each of the four output phases (a, b) is a 2x2 convolution of x
(zero-padded by one pixel, which is u's zero padding): 4 multiply-adds per output pixel and
input channel instead of 9, and the four-times-larger upsampled copy of x is never made. The
parameters stay a 3x3 conv's, so checkpoints load unchanged; the results equal the two-step
computation up to float rounding (tests/nets/test_upsample.py). On this CPU the VAE decoders'
upsamplers ran 1.5x to 1.9x faster, the SD UNet's at 32 -> 64 1.7x (benchmarks/upsample.py).
"""

import torch
from torch import nn
from torch.nn import functional as F


def phase_kernels(weight: torch.Tensor) -> list[list[torch.Tensor]]:
    """The four (C_out, C_in, 2, 2) kernels, [a][b], of a (C_out, C_in, 3, 3) kernel (module docstring)."""
    rows = [torch.stack([weight[:, :, 0], weight[:, :, 1] + weight[:, :, 2]], 2),
            torch.stack([weight[:, :, 0] + weight[:, :, 1], weight[:, :, 2]], 2)]
    return [[torch.stack([r[..., 0], r[..., 1] + r[..., 2]], -1),
             torch.stack([r[..., 0] + r[..., 1], r[..., 2]], -1)] for r in rows]


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1), on x's grid."""
    batch, _, height, width = x.shape
    kernels = phase_kernels(weight)
    padded = F.pad(x, (1, 1, 1, 1))
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = torch.empty((batch, weight.shape[0], 2 * height, 2 * width), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for a in (0, 1):
        for b in (0, 1):  # phase (a, b) reads padded rows a .. a + H, columns b .. b + W
            window = padded[:, :, a:a + height + 1, b:b + width + 1]
            out[:, :, a::2, b::2] = F.conv2d(window, kernels[a][b], bias)
    return out


# Below this many input pixels (16 x 16) the four small convs cost more than the five ninths of
# the multiply-adds they save (per-call overhead): an SD UNet upsampler at 8 x 8 ran at 0.5x
# (docs/results/upsample.json), so small grids keep the two-step computation.
SMALL_GRID_MIN_PIXELS = 256


def tracing() -> bool:
    """Whether a graph compiler is recording this call (OpenVINO's convert_model traces with
    TorchScript; torch.compile with dynamo). A compiler fuses interpolate + conv itself, while the
    four strided writes become scatters: OpenVINO ran the SD VAE decoder at 0.6x with them."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class Upsample(nn.Module):
    """x2 nearest upsampling and a 3x3 conv (the LDM / diffusers Upsample with conv), computed
    as four 2x2 convs on the input's grid from 16 x 16 pixels up. When something hooks the conv
    (an attached LoRA adds its output that way), the conv is called as a module on the
    upsampled input, so that the hook sees the call it expects."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hooked = self.conv._forward_hooks or self.conv._forward_pre_hooks
        if hooked or x.shape[-2] * x.shape[-1] < SMALL_GRID_MIN_PIXELS or tracing():
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return upsample_conv(x, self.conv.weight, self.conv.bias)             # (B, C, 2H, 2W)
