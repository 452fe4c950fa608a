"""Does a super-resolution model keep to its input? Every seed, every sampler.

    python -m benchmarks.upsampler_consistency --upsampler FOLDER_OR_CHECKPOINT [--dataset shapes]
        [--images 8] [--seeds 8] [--samplers euler_a ddim dpmpp_2m] [--steps 20] [--noise-level 50]
        [--threads 1] [--out docs/results/upsampler-consistency-NAME.json]

Real images the model never trained on (Fashion-MNIST test images; shapes renders from a seed block
of their own, one of each of the family grid's 12 combinations) are area-averaged by the model's
factor, as training made its inputs, and upsampled under their own captions with --seeds seeds
each. Per output: the consistency error, MSE between the output area-averaged back down and the
input (SR3's consistency: what an upsampler must keep whatever detail it invents), and the
reconstruction error, MSE against the original. A sound upsampler keeps the first near the
bilinear enlargement's (printed as the baseline) on every seed; "consistent" counts the outputs
under --threshold. --upsampler takes a model folder or a checkpoint of `ldmkit train` (its EMA
weights), so a run can be checked while it trains.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from ldmkit.data import fashion_mnist, load_fashion_mnist, shapes
from ldmkit.pipelines import Pipeline
from ldmkit.pipelines.core import decode
from ldmkit.pipelines.upscale import enlarged, upscale_latents
from ldmkit.train.diffusion import low_resolution, pipeline_from_checkpoint

from .family_shapes import GRID_COMBINATIONS
from .results import write_json
from .sd_models import cpu_name

RENDER_SEED = 7 * 10**12  # a seed block no training run or other benchmark draws from


def open_upsampler(path: str) -> Pipeline:
    """A model folder, or a training checkpoint (a folder with train_state.pt), of an upscaler."""
    checkpoint = (Path(path) / "train_state.pt").is_file()
    pipe = pipeline_from_checkpoint(path) if checkpoint else Pipeline.from_pretrained(path)
    if getattr(getattr(pipe, "config", None), "lowres", None) is None:
        raise SystemExit(f"{path} is not an upscaler (no low-resolution input); for a cascade folder, pass "
                         "its upsampler: FOLDER/upsampler")
    return pipe


def real_images(dataset: str, count: int) -> tuple[torch.Tensor, list[str]]:
    """(count, C, 32, 32) held-out real images in [-1, 1] and their captions."""
    if dataset == "fashion-mnist":
        images, labels = load_fashion_mnist("test", limit=count)
        return images, [fashion_mnist.caption(int(y)) for y in labels]
    combos = [GRID_COMBINATIONS[k % len(GRID_COMBINATIONS)] for k in range(count)]
    images = torch.stack([shapes.render(*c, gen=torch.Generator().manual_seed(RENDER_SEED + k))
                          for k, c in enumerate(combos)])
    return images, [shapes.caption(*c) for c in combos]


def errors(outputs: torch.Tensor, originals: torch.Tensor, factor: int) -> tuple[list[float], list[float]]:
    """Per image: MSE of the output area-averaged by `factor` against the original's, and MSE
    against the original."""
    small = lambda x: low_resolution(x, [side // factor for side in x.shape[-2:]])
    consistency = (small(outputs) - small(originals)).pow(2).flatten(1).mean(1)
    reconstruction = (outputs - originals).pow(2).flatten(1).mean(1)
    return [round(float(v), 5) for v in consistency], [round(float(v), 5) for v in reconstruction]


def summary(values: list[float], threshold: float | None = None) -> dict:
    """Median and max; with a threshold, the share of values under it."""
    result = {"median": round(statistics.median(values), 5), "max": round(max(values), 5)}
    if threshold is not None:
        result["consistent"] = sum(v < threshold for v in values) / len(values)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upsampler", required=True, help="model folder or `ldmkit train` checkpoint")
    parser.add_argument("--dataset", choices=("fashion-mnist", "shapes"), default="shapes")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--samplers", nargs="+", default=["euler_a", "ddim", "dpmpp_2m"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--noise-level", type=int, default=50)
    parser.add_argument("--threshold", type=float, default=0.02, help="consistency MSE an output must stay under")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="results JSON (default: print only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = open_upsampler(args.upsampler)
    factor = pipe.config.lowres.factor(pipe.autoencoder.config.downsampling_factor)
    originals, captions = real_images(args.dataset, args.images)
    if originals.shape[1] != pipe.config.lowres.channels:
        raise SystemExit(f"{args.upsampler} upsamples {pipe.config.lowres.channels}-channel images, "
                         f"{args.dataset} has {originals.shape[1]}: pick the matching --dataset")
    low = low_resolution(originals, [side // factor for side in originals.shape[-2:]])  # as training made them
    rows = low.repeat_interleave(args.seeds, 0)
    truth = originals.repeat_interleave(args.seeds, 0)
    seeds = [s for _ in range(args.images) for s in range(args.seeds)]
    prompts = [c for c in captions for _ in range(args.seeds)]
    bilinear = errors(enlarged(low, factor), originals, factor)
    result = {
        "upsampler": args.upsampler, "dataset": args.dataset, "images": args.images, "seeds": args.seeds,
        "steps": args.steps, "noise_level": args.noise_level, "threshold": args.threshold,
        "threads": args.threads, "cpu": cpu_name(), "prediction": pipe.config.prediction,
        "bilinear": {"consistency": summary(bilinear[0], args.threshold),
                     "reconstruction": summary(bilinear[1])},
        "samplers": {},
    }
    print(f"{args.upsampler}: {args.images} images x {args.seeds} seeds, {args.steps} steps, "
          f"noise level {args.noise_level}; bilinear consistency {result['bilinear']['consistency']['median']}, "
          f"reconstruction {result['bilinear']['reconstruction']['median']}")
    for sampler in args.samplers:
        start = time.perf_counter()
        z = upscale_latents(pipe, rows, prompts, seeds, noise_level=args.noise_level, steps=args.steps,
                            sampler=sampler)
        outputs = decode(pipe, z).float().cpu()
        consistency, reconstruction = errors(outputs, truth, factor)
        result["samplers"][sampler] = {
            "consistency": summary(consistency, args.threshold),
            "reconstruction": summary(reconstruction),
            "per_output_consistency": consistency, "seconds": round(time.perf_counter() - start, 1)}
        row = result["samplers"][sampler]
        print(f"  {sampler:9s} consistency median {row['consistency']['median']:.4f} max "
              f"{row['consistency']['max']:.4f}, {row['consistency']['consistent']:.0%} under {args.threshold}; "
              f"reconstruction median {row['reconstruction']['median']:.4f}", flush=True)
    if args.out:
        write_json(result, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
