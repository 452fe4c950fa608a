"""Sampler efficiency curve of the shipped Fashion-MNIST model: image quality against sampling steps.

    python benchmarks/sampler_curve.py [--samplers ddim dpmpp_2m ...] [--steps 5 10 20 50 100]
        [--per-class 100] [--reference-steps 1000] [--guidance G] [--seed 0] [--threads N]
        [--out docs/results/sampler-curve.json] [--plot docs/images/sampler-curve.png] [--resume]

For every sampler and step count ("cell"), `--per-class` images of each of the 10 class prompts
("a photo of a {class}") are generated at the model's default guidance, image k from seed + k in
every cell, and scored as `ldmkit evaluate` scores the model (ldmkit/evaluate.py): the squared
Frechet distance (FD) of the shipped classifier's features against the 10,000 test images, and
class agreement (the share the classifier puts in the prompt's class). Next to them: the UNet
calls (counted by a hook on the UNet's forward; all images of a cell go through in one batch, so
that count is the number of denoiser evaluations each image got, and each call carries the
conditional and unconditional halves of classifier-free guidance together) and the wall time of
generation (prompt encoding, sampling, decoding; not the scoring).

The reference is DDPM ancestral sampling with `--reference-steps` steps (1000: every timestep)
from the same prompts and seeds; FD / FD_reference says how close a cell comes to it. The floor
is the FD of as many real training images (the first 10 x per-class, as `ldmkit evaluate`): what
a perfect generator would score with this sample size.

The JSON (--out) is rewritten after every cell and never overwritten: --resume keeps its cells and
computes only the missing ones. The plot (--plot) shows FD against steps, one line per sampler, the
reference with a band up to +10%, and the floor.

Cost: ~3.5 ms per image and UNet evaluation on one CPU thread, plus ~15 ms per image and cell
(text encoder, decoder). The default grid is 2,475 evaluations of 1,000 images, ~2.6 h on one
thread; --per-class 30 takes ~45 min on one thread, roughly 30 on two.

A tiny run (under a minute, for checking):

    python benchmarks/sampler_curve.py --per-class 2 --samplers ddim dpmpp_2m --steps 5 10 --reference-steps 20 \
        --out /tmp/curve.json --plot /tmp/curve.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import cached_property
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ldmkit.data import load_fashion_mnist
from ldmkit.diffusion import SAMPLERS
from ldmkit.evaluate import fashion_mnist_prompts, fashion_mnist_test_features, frechet_to_test, score_class_images
from ldmkit.metrics import load_fmnist_classifier
from ldmkit.pipeline import Pipeline

REFERENCE_SAMPLER = "ddpm"
# settings that must match for a resumed file's cells to be comparable with new ones
RUN_KEYS = ("model", "per_class", "guidance", "seed", "reference_sampler", "reference_steps")


class UNetCounter:
    """Counts a module's forward calls, the batch rows they carry and the seconds spent in them (hooks)."""

    def __init__(self, module: torch.nn.Module):
        self.reset()
        module.register_forward_pre_hook(self._enter)
        module.register_forward_hook(self._leave)

    def _enter(self, module, args) -> None:
        self.calls += 1
        self.rows += args[0].shape[0]
        self._start = time.perf_counter()

    def _leave(self, module, args, output) -> None:
        self.seconds += time.perf_counter() - self._start

    def reset(self) -> None:
        self.calls = self.rows = 0
        self.seconds = 0.0


class Bench:
    """The model, its UNet counter, and the metric network with the test set's features; the
    features (the slow part) are computed once, and only if some cell is left to compute."""

    def __init__(self, model: str):
        self.pipe = Pipeline.from_pretrained(model)
        if self.pipe.meta.get("dataset") != "fashion-mnist":
            raise SystemExit(f"{model} was not trained on fashion-mnist: the curve scores Fashion-MNIST class prompts")
        self.counter = UNetCounter(self.pipe.unet)

    @cached_property
    def classifier(self):
        return load_fmnist_classifier(device=self.pipe.device)

    @cached_property
    def test_features(self) -> torch.Tensor:
        return fashion_mnist_test_features(self.classifier)


def run_cell(bench: Bench, sampler: str, steps: int, settings: dict) -> dict:
    """Generate the cell's images in one batch and score them."""
    per_class = settings["per_class"]
    bench.counter.reset()
    start = time.perf_counter()
    images = bench.pipe.generate(fashion_mnist_prompts(), num_images=per_class, steps=steps, sampler=sampler,
                                 guidance=settings["guidance"], seed=settings["seed"], output="tensor",
                                 batch_size=10 * per_class)  # one sampler run: UNet calls = evaluations per image
    seconds = time.perf_counter() - start
    scores = score_class_images(bench.classifier, images, bench.test_features, per_class)
    return {
        "sampler": sampler,
        "steps": steps,
        "frechet_distance": scores["frechet_distance"],
        "fd_over_reference": None,  # filled in by save_results, once the reference is known
        "nfe": bench.counter.calls,
        "unet_rows_per_call": bench.counter.rows / bench.counter.calls,
        "seconds": seconds,
        "unet_seconds": bench.counter.seconds,  # the part that grows with NFE (the rest: text encoder, decoder)
        "class_agreement": scores["class_agreement"],
        "threads": torch.get_num_threads(),
    }


def floor(bench: Bench, per_class: int) -> dict:
    """FD of as many real training images as each cell generates (as `ldmkit evaluate`'s floor)."""
    real, _ = load_fashion_mnist("train", limit=10 * per_class)
    return {"images": len(real), "frechet_distance": frechet_to_test(bench.classifier, real, bench.test_features)}


# ---- the results file ----------------------------------------------------------------------------
def run_settings(args: argparse.Namespace, bench: Bench) -> dict:
    images = 10 * args.per_class
    return {
        "model": args.model,
        "per_class": args.per_class,
        "images": images,
        "guidance": bench.pipe.resolve_settings(guidance=args.guidance)[2],
        "seed": args.seed,
        "seeds": f"{args.seed}..{args.seed + images - 1}: image k (class-major) from seed + k in every cell",
        "reference_sampler": REFERENCE_SAMPLER,
        "reference_steps": args.reference_steps,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "metric": "squared Frechet distance of the fmnist classifier's 128-d features to the 10,000 test images",
        "seconds": "generation only (prompt encoding, sampling, decoding), all images in one batch; "
                   "unet_seconds: the part inside the UNet",
    }


def load_results(path: Path, settings: dict) -> dict:
    """The file's results if there is one (refused if its run settings differ), else empty ones."""
    if not path.exists():
        return {"settings": settings, "floor": None, "reference": None, "cells": []}
    results = json.loads(path.read_text())
    before = results["settings"]
    differ = {k: (before.get(k), settings[k]) for k in RUN_KEYS if before.get(k) != settings[k]}
    if differ:
        raise SystemExit(f"{path} was made with other settings {differ} (file, now): another --out, or no --resume")
    if before["threads"] != settings["threads"]:
        print(f"note: {path} was started with {before['threads']} threads, now {settings['threads']}: "
              "each cell records its own", file=sys.stderr)
    return results


def save_results(results: dict, path: Path) -> None:
    """Write the JSON, with FD / FD_reference filled in; via a temporary file, so that a run killed
    while writing leaves the previous version, not half a file."""
    reference = results["reference"]
    for cell in ([reference] + results["cells"]) if reference else []:
        cell["fd_over_reference"] = cell["frechet_distance"] / reference["frechet_distance"]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(partial, path)


def missing_cells(results: dict, samplers: list[str], steps: list[int], reference_steps: int) -> list[tuple]:
    """(role, sampler, steps) still to compute, role "reference" or "cell"; the reference first
    (every ratio needs it)."""
    done = {(c["sampler"], c["steps"]) for c in results["cells"]}
    todo = [] if results["reference"] else [("reference", REFERENCE_SAMPLER, reference_steps)]
    return todo + [("cell", s, n) for s in samplers for n in steps if (s, n) not in done]


# ---- reporting -------------------------------------------------------------------------------
def table(results: dict) -> str:
    header = f"{'sampler':<14}{'steps':>6}{'FD':>9}{'FD/ref':>8}{'NFE':>6}{'seconds':>9}{'agreement':>11}"
    lines = [header, "-" * len(header)]
    reference = [results["reference"] | {"sampler": f"{REFERENCE_SAMPLER} (ref)"}] if results["reference"] else []
    for r in reference + results["cells"]:
        ratio = "" if r.get("fd_over_reference") is None else f"{r['fd_over_reference']:.3f}"
        lines.append(f"{r['sampler']:<14}{r['steps']:>6}{r['frechet_distance']:>9.3f}{ratio:>8}{r['nfe']:>6}"
                     f"{r['seconds']:>9.1f}{r['class_agreement']:>11.1%}")
    if results["floor"]:
        real = results["floor"]
        lines.append(f"floor: {real['images']} real training images, FD {real['frechet_distance']:.3f}")
    return "\n".join(lines)


def plot(results: dict, out: Path) -> Path:
    """FD against steps (log x), one line per sampler; the reference, a band up to +10%, the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    samplers = dict.fromkeys(c["sampler"] for c in results["cells"])  # in run order
    for sampler in samplers:
        cells = sorted((c["steps"], c["frechet_distance"]) for c in results["cells"] if c["sampler"] == sampler)
        color = f"C{list(SAMPLERS).index(sampler)}"  # a sampler keeps its colour whichever ones are run
        ax.plot(*zip(*cells), marker="o", ms=3, lw=1.5, color=color, label=sampler)
    values = [c["frechet_distance"] for c in results["cells"]]
    if results["reference"]:
        ref = results["reference"]
        fd = ref["frechet_distance"]
        ax.axhline(fd, color="black", lw=1, label=f"{REFERENCE_SAMPLER} {ref['steps']} steps")
        ax.axhspan(fd, 1.1 * fd, color="black", alpha=0.08, lw=0)
        ax.axhline(1.1 * fd, color="black", lw=0.8, ls="--", label="+10%")
        values.append(fd)
    if results["floor"]:
        ax.axhline(results["floor"]["frechet_distance"], color="grey", lw=1, ls=":",
                   label=f"floor ({results['floor']['images']} real images)")
        values.append(results["floor"]["frechet_distance"])
    ax.set_xscale("log")
    steps = sorted({c["steps"] for c in results["cells"]})
    ax.set_xticks(steps, [str(n) for n in steps])
    ax.minorticks_off()
    if values and min(values) > 0 and max(values) / min(values) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("Frechet distance (classifier features)")
    s = results["settings"]
    ax.set_title(f"{s['model']}: {s['images']} images, guidance {s['guidance']}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ---- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fashion-mnist", help="a Fashion-MNIST model (default: the shipped one)")
    parser.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS))
    parser.add_argument("--steps", nargs="+", type=int, default=[5, 10, 20, 50, 100])
    parser.add_argument("--per-class", type=int, default=100, help="images per class prompt in every cell")
    parser.add_argument("--reference-steps", type=int, default=1000, help=f"steps of the {REFERENCE_SAMPLER} reference")
    parser.add_argument("--guidance", type=float, default=None, help="default: the model's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/sampler-curve.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/images/sampler-curve.png"))
    parser.add_argument("--resume", action="store_true", help="keep the cells already in --out, compute the rest")
    args = parser.parse_args(argv)
    if args.per_class < 1 or min(args.steps) < 1 or args.reference_steps < 1:
        parser.error("--per-class, --steps and --reference-steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out.exists() and not args.resume:  # hours of cells: never overwritten by a forgotten flag
        raise SystemExit(f"{args.out} exists: --resume to go on with it, or remove it, or give another --out")
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench(args.model)
    results = load_results(args.out, run_settings(args, bench))
    if results["floor"] is None:
        results["floor"] = floor(bench, args.per_class)
        save_results(results, args.out)
    todo = missing_cells(results, args.samplers, args.steps, args.reference_steps)
    bar = tqdm(todo, desc="sampler curve", unit="cell")
    for role, sampler, steps in bar:
        bar.set_postfix_str(f"{sampler} {steps} steps")
        cell = run_cell(bench, sampler, steps, results["settings"])
        if role == "reference":
            results["reference"] = cell
        else:
            results["cells"].append(cell)
        save_results(results, args.out)
    print(table(results))
    print(f"written {args.out} and {plot(results, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
