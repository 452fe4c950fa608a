"""Upsampler: nearest x2 + 3x3 conv in two steps, against ldmkit's four 2x2 convs on the small grid.

    python -m benchmarks.upsample [--threads 2] [--repeats 5] [--out docs/results/upsample.json]

The shapes are the upsamplers of the models the other benchmarks time: SD v1.5's VAE decoder at
512 px and UNet at 64 x 64 latents (batch 2: guidance), and the small config's VAE at 256 px and
UNet at 32 x 32 latents (batch 4, also forward + backward as in training). Each is timed in the
memory formats the library runs it in (the autoencoder channels_last, the UNet NCHW), calls
alternating, median of --repeats rounds after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

from benchmarks.measure import alternate
from ldmkit.nets.upsample import upsample_conv

# (name, batch, channels, input size, memory format, with backward)
SHAPES = [
    ("SD VAE decoder 64->128", 1, 512, 64, "channels_last", False),
    ("SD VAE decoder 128->256", 1, 512, 128, "channels_last", False),
    ("SD VAE decoder 256->512", 1, 256, 256, "channels_last", False),
    ("SD UNet 8->16", 2, 1280, 8, "nchw", False),
    ("SD UNet 16->32", 2, 1280, 16, "nchw", False),
    ("SD UNet 32->64", 2, 640, 32, "nchw", False),
    ("small VAE decoder 32->64", 4, 128, 32, "channels_last", False),
    ("small VAE decoder 64->128", 4, 128, 64, "channels_last", False),
    ("small VAE decoder 128->256", 4, 64, 128, "channels_last", False),
    ("small UNet 16->32, training", 4, 128, 16, "nchw", True),
    ("small UNet 8->16, training", 4, 256, 8, "nchw", True),
]


def two_step(x, weight, bias):
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


def timed_call(function, x, weight, bias, backward: bool):
    def call(warm: bool) -> None:
        if backward:
            function(x, weight, bias).sum().backward()
        else:
            with torch.no_grad():
                function(x, weight, bias)
    return call


def measure(name, batch, channels, size, memory_format, backward, repeats) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen)
    weight = torch.randn(channels, channels, 3, 3, generator=gen) / (3 * channels**0.5)
    bias = torch.randn(channels, generator=gen)
    if memory_format == "channels_last":
        x, weight = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight))
    if backward:
        x, weight, bias = (t.requires_grad_() for t in (x, weight, bias))
    difference = (upsample_conv(x, weight, bias) - two_step(x, weight, bias)).abs().max().item()
    seconds = alternate({"two_step": timed_call(two_step, x, weight, bias, backward),
                         "small_grid": timed_call(upsample_conv, x, weight, bias, backward)}, warmup=1, repeats=repeats)
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    return {"name": name, "input": [batch, channels, size, size], "memory_format": memory_format,
            "backward": backward, "max_abs_difference": difference, "seconds": seconds,
            "median_two_step": medians["two_step"], "median_small_grid": medians["small_grid"],
            "speedup": round(medians["two_step"] / medians["small_grid"], 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/results/upsample.json"))
    parser.add_argument("--only", default=None, help="time the shapes whose name contains this text")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'upsampler':<30}{'format':>15}{'two-step s':>12}{'small grid s':>14}{'speed-up':>10}")
    for shape in SHAPES:
        if args.only and args.only not in shape[0]:
            continue
        row = measure(*shape, repeats=args.repeats)
        rows.append(row)
        print(f"{row['name']:<30}{row['memory_format']:>15}{row['median_two_step']:>12.4f}"
              f"{row['median_small_grid']:>14.4f}{row['speedup']:>10.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch": torch.__version__, "threads": args.threads, "repeats": args.repeats,
                                    "machine": platform.processor() or platform.machine(), "rows": rows}, indent=2))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
