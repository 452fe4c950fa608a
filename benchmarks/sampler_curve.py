"""Sampler efficiency curve of the shipped Fashion-MNIST model: image quality against sampling steps.

    python -m benchmarks.sampler_curve [--samplers ddim dpmpp_2m ...] [--steps 5 10 20 50 100]
        [--per-class 100] [--chunk 10] [--reference-steps 1000] [--guidance G] [--seed 0] [--threads N]
        [--out docs/results/sampler-curve.json] [--plot docs/images/sampler-curve.png] [--cache DIR] [--resume]

For every sampler and step count ("cell"), `--per-class` images of each of the 10 class prompts
("a photo of a {class}") are generated at the model's default guidance, image k from seed + k in
every cell, and scored as `ldmkit evaluate` scores the model (ldmkit/evaluate.py): the squared
Frechet distance (FD) of the shipped classifier's features against the 10,000 test images, and
class agreement (the share the classifier puts in the prompt's class). At a few hundred images
FD is dominated by its small-sample bias (real images score worse than some generators), so
next to it stands FD_inf, the bias extrapolated away (Chong & Forsyth 2020), and FD_inf of each
half of the images apart, which shows how much it moves with other images. Next to them: the UNet
calls (counted by a hook on the UNet's forward; the images of a chunk go through in one batch,
so that count is the number of denoiser evaluations each image got, and each call carries the
conditional and unconditional halves of classifier-free guidance together) and the wall time of
generation (prompt encoding, sampling, decoding; not the scoring).

The reference is DDPM ancestral sampling with `--reference-steps` steps (1000: every timestep)
from the same prompts and seeds; FD / FD_reference says how close a cell comes to it. The floor
is the FD of as many real training images (the first 10 x per-class, as `ldmkit evaluate`): what
a perfect generator would score with this sample size.

Nothing is lost to a killed run: images are generated in chunks of `--chunk` per class, whose
classifier features are kept in `--cache` (safetensors, checked against the cell and settings
when read back); the JSON (--out) is rewritten after every cell and never overwritten, and
--resume keeps its cells and the cached chunks and computes only what is missing. The plot
(--plot) shows FD and FD_inf against steps, one line per sampler, the reference with a band up
to +10%, and the floor.

Cost: ~3.5 ms per image and UNet evaluation on one CPU thread, plus ~15 ms per image and cell
(text encoder, decoder). The 1000-step reference at 1,000 images is ~30 min on two threads; a
20-step cell ~1 min.

A tiny run (under a minute, for checking):

    python -m benchmarks.sampler_curve --per-class 2 --samplers ddim dpmpp_2m --steps 5 10 --reference-steps 20 \
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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ldmkit.apps.evaluate import fashion_mnist_prompts, fashion_mnist_test_features
from ldmkit.data import load_fashion_mnist
from ldmkit.diffusion import SAMPLERS
from ldmkit.metrics import classify, extrapolated_frechet_distance, feature_frechet_distance, load_fmnist_classifier
from ldmkit.pipelines import Pipeline

from .results import write_json

REFERENCE_SAMPLER = "ddpm"
# settings that must match for a resumed file's cells to be comparable with new ones
RUN_KEYS = ("model", "per_class", "chunk_per_class", "guidance", "seed", "reference_sampler", "reference_steps")


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


def run_cell(bench: Bench, sampler: str, steps: int, settings: dict, cache: Path) -> dict:
    """Generate and score the cell's images, chunk by chunk; a chunk whose features are in the
    cache is read back, so that a killed run loses at most one chunk."""
    chunks = [cached_chunk(bench, sampler, steps, settings, index, cache)
              for index in range(settings["per_class"] // settings["chunk_per_class"])]
    features = torch.cat([c["features"] for c in chunks])
    predicted = torch.cat([c["predicted"] for c in chunks])
    labels = torch.arange(10).repeat_interleave(settings["chunk_per_class"]).repeat(len(chunks))
    half = len(chunks) // 2 * 10 * settings["chunk_per_class"]
    meta = chunks[0]["meta"]
    return {
        "sampler": sampler,
        "steps": steps,
        **frechet_scores(features, bench.test_features, halves=half),
        "fd_over_reference": None,  # these are filled in by save_results, once the reference is known
        "fd_inf_over_reference": None,
        "nfe": int(meta["nfe"]),
        "unet_rows_per_call": float(meta["unet_rows_per_call"]),
        "seconds": sum(float(c["meta"]["seconds"]) for c in chunks),
        # the part that grows with NFE; the rest is the text encoder and the decoder
        "unet_seconds": sum(float(c["meta"]["unet_seconds"]) for c in chunks),
        "class_agreement": (predicted == labels).double().mean().item(),
        "threads": int(meta["threads"]),
    }


def frechet_scores(features: torch.Tensor, test_features: torch.Tensor, halves: int) -> dict:
    """FD to the test set, FD_inf (its small-sample bias removed), and FD_inf of the first `halves`
    images and of the rest apart: how far it moves with other images. FD_inf is None where the
    images are too few for it (no more than twice the feature width)."""
    return {
        "frechet_distance": feature_frechet_distance(features, test_features),
        "fd_inf": fd_inf(features, test_features),
        "fd_inf_halves": None if halves == 0 else [fd_inf(features[:halves], test_features),
                                                   fd_inf(features[halves:], test_features)],
    }


def fd_inf(features: torch.Tensor, test_features: torch.Tensor) -> float | None:
    try:
        return extrapolated_frechet_distance(features, test_features)
    except ValueError:  # too few images
        return None


def chunk_identity(sampler: str, steps: int, settings: dict, index: int) -> dict[str, str]:
    """What makes a cached chunk the one asked for: it must match to the letter to be reused."""
    keys = ("model", "guidance", "seed", "chunk_per_class")
    return {"sampler": sampler, "steps": str(steps), "chunk": str(index)} | {k: str(settings[k]) for k in keys}


def cached_chunk(bench: Bench, sampler: str, steps: int, settings: dict, index: int, cache: Path) -> dict:
    """Chunk `index` of a cell: `chunk_per_class` images of each class prompt, image k of the chunk
    from seed + index * 10 * chunk_per_class + k. Read from the cache if there, else generated,
    classified and cached (features and predictions only: a few hundred kB a cell)."""
    identity = chunk_identity(sampler, steps, settings, index)
    path = cache / f"{sampler}-{steps}" / f"chunk{index:04d}.safetensors"
    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
                tensors = {k: f.get_tensor(k) for k in ("features", "predicted")}
        except (SafetensorError, OSError, KeyError) as err:
            raise SystemExit(f"{path} is not a readable chunk ({err}): remove it, and it is computed again") from None
        wrong = {k: (meta.get(k), v) for k, v in identity.items() if meta.get(k) != v}
        if wrong:
            raise SystemExit(f"{path} holds another chunk {wrong} (file, asked): remove {cache} or give another --out")
        return tensors | {"meta": meta}

    per_class = settings["chunk_per_class"]
    bench.counter.reset()
    start = time.perf_counter()
    images = bench.pipe.generate(fashion_mnist_prompts(), num_images=per_class, steps=steps, sampler=sampler,
                                 guidance=settings["guidance"], seed=settings["seed"] + index * 10 * per_class,
                                 output="tensor", batch_size=10 * per_class)  # one batch: UNet calls = NFE
    seconds = time.perf_counter() - start
    features, predicted = classify(bench.classifier, images)
    meta = identity | {
        "nfe": str(bench.counter.calls),
        "unet_rows_per_call": str(bench.counter.rows / bench.counter.calls),
        "seconds": str(seconds),
        "unet_seconds": str(bench.counter.seconds),
        "threads": str(torch.get_num_threads()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # a run killed while writing leaves no half file
    save_file({"features": features.contiguous(), "predicted": predicted.contiguous()}, str(partial), metadata=meta)
    os.replace(partial, path)
    return {"features": features, "predicted": predicted, "meta": meta}


def floor(bench: Bench, per_class: int) -> dict:
    """FD of as many real training images as each cell generates (as `ldmkit evaluate`'s floor)."""
    real, _ = load_fashion_mnist("train", limit=10 * per_class)
    features = classify(bench.classifier, real)[0]
    return {"images": len(real), **frechet_scores(features, bench.test_features, halves=len(real) // 2)}


# ---- the results file ----------------------------------------------------------------------------
def run_settings(args: argparse.Namespace, bench: Bench) -> dict:
    images = 10 * args.per_class
    return {
        "model": args.model,
        "per_class": args.per_class,
        "chunk_per_class": args.chunk,
        "images": images,
        "guidance": bench.pipe.resolve_settings(guidance=args.guidance)[2],
        "seed": args.seed,
        "seeds": f"{args.seed}..{args.seed + images - 1}: image k from seed + k in every cell, in chunks of "
                 f"{args.chunk} per class (class-major within a chunk)",
        "reference_sampler": REFERENCE_SAMPLER,
        "reference_steps": args.reference_steps,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "metric": "squared Frechet distance of the fmnist classifier's 128-d features to the 10,000 test images; "
                  "fd_inf: the same with the small-sample bias extrapolated away (Chong & Forsyth 2020), "
                  "fd_inf_halves: fd_inf of the first and second half of the images apart",
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
        cell["fd_inf_over_reference"] = ratio(cell["fd_inf"], reference["fd_inf"])
    write_json(results, path)


def missing_cells(results: dict, samplers: list[str], steps: list[int], reference_steps: int) -> list[tuple]:
    """(role, sampler, steps) still to compute, role "reference" or "cell"; the reference first
    (every ratio needs it)."""
    done = {(c["sampler"], c["steps"]) for c in results["cells"]}
    todo = [] if results["reference"] else [("reference", REFERENCE_SAMPLER, reference_steps)]
    return todo + [("cell", s, n) for s in samplers for n in steps if (s, n) not in done]


# ---- reporting -------------------------------------------------------------------------------
def number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


def table(results: dict) -> str:
    header = (f"{'sampler':<14}{'steps':>6}{'FD':>8}{'/ref':>7}{'FD_inf':>8}{'/ref':>7}{'halves':>13}{'NFE':>6}"
              f"{'seconds':>9}{'agreement':>11}")
    lines = [header, "-" * len(header)]
    reference = [results["reference"] | {"sampler": f"{REFERENCE_SAMPLER} (ref)"}] if results["reference"] else []

    for r in reference + results["cells"]:
        halves = " ".join(number(h, 2) for h in r["fd_inf_halves"] or [])
        lines.append(f"{r['sampler']:<14}{r['steps']:>6}{r['frechet_distance']:>8.3f}"
                     f"{number(r['fd_over_reference']):>7}"
                     f"{number(r['fd_inf']):>8}{number(r['fd_inf_over_reference']):>7}{halves:>13}{r['nfe']:>6}"
                     f"{r['seconds']:>9.1f}{r['class_agreement']:>11.1%}")
    if results["floor"]:
        real = results["floor"]
        lines.append(f"floor: {real['images']} real training images, FD {real['frechet_distance']:.3f}, "
                     f"FD_inf {number(real['fd_inf'])}")
    return "\n".join(lines)


def plot(results: dict, out: Path) -> Path:
    """FD and FD_inf against steps (log x), one line per sampler; the reference with a band up to
    +10%, and the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    samplers = dict.fromkeys(c["sampler"] for c in results["cells"])  # in run order
    steps = sorted({c["steps"] for c in results["cells"]})
    for ax, key, name in zip(axes, ("frechet_distance", "fd_inf"), ("FD", "FD_inf (small-sample bias removed)")):
        for sampler in samplers:
            cells = sorted((c["steps"], c[key]) for c in results["cells"] if c["sampler"] == sampler and c[key])
            if not cells:
                continue
            color = f"C{list(SAMPLERS).index(sampler)}"  # a sampler keeps its colour whichever ones are run
            ax.plot(*zip(*cells), marker="o", ms=3, lw=1.5, color=color, label=sampler)
        if results["reference"] and results["reference"][key]:
            ref = results["reference"]
            ax.axhline(ref[key], color="black", lw=1, label=f"{REFERENCE_SAMPLER} {ref['steps']} steps")
            ax.axhspan(ref[key], 1.1 * ref[key], color="black", alpha=0.08, lw=0)
            ax.axhline(1.1 * ref[key], color="black", lw=0.8, ls="--", label="+10%")
        if results["floor"] and results["floor"][key]:
            ax.axhline(results["floor"][key], color="grey", lw=1, ls=":",
                       label=f"floor ({results['floor']['images']} real images)")
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(n) for n in steps])
        ax.minorticks_off()
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    s = results["settings"]
    fig.suptitle(f"{s['model']}: {s['images']} images a cell, guidance {s['guidance']}; "
                 "Frechet distance of classifier features to the test set", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def pooled(paths: list[Path], cache_of) -> str:
    """FD and FD_inf of the images of several runs together (other seeds, same model and
    settings otherwise), from their cached chunk features; each cell against the pooled reference."""
    runs = [json.loads(path.read_text()) for path in paths]
    keys = [k for k in RUN_KEYS if k not in ("seed", "per_class")]
    if any(run["settings"][k] != runs[0]["settings"][k] for run in runs for k in keys):
        raise SystemExit(f"--pool: the runs differ in settings other than seed and size ({keys})")
    cells = [(c["sampler"], c["steps"]) for c in runs[0]["cells"]
             if all((c["sampler"], c["steps"]) in {(d["sampler"], d["steps"]) for d in run["cells"]} for run in runs)]
    reference = (runs[0]["reference"]["sampler"], runs[0]["reference"]["steps"])
    test_features = fashion_mnist_test_features(load_fmnist_classifier())

    def scores(sampler: str, steps: int) -> tuple[int, float, float]:
        files = [f for path in paths
                 for f in sorted((cache_of(path) / f"{sampler}-{steps}").glob("chunk*.safetensors"))]
        features = torch.cat([load_file(f)["features"] for f in files])
        return len(features), feature_frechet_distance(features, test_features), fd_inf(features, test_features)

    n, ref_fd, ref_inf = scores(*reference)
    lines = [f"{len(paths)} runs pooled; reference {reference[0]} {reference[1]} steps: {n} images, "
             f"FD {ref_fd:.3f}, FD_inf {number(ref_inf)}", f"{'sampler':<14}{'steps':>6}{'images':>8}{'FD':>8}"
             f"{'/ref':>7}{'FD_inf':>8}{'/ref':>7}"]
    for sampler, steps in cells:
        n, fd, inf = scores(sampler, steps)
        lines.append(f"{sampler:<14}{steps:>6}{n:>8}{fd:>8.3f}{fd / ref_fd:>7.3f}{number(inf):>8}"
                     f"{number(ratio(inf, ref_inf)):>7}")
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------
def default_cache(out: Path) -> Path:
    return out.with_name(out.stem + "-features")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fashion-mnist-f4",
                        help="a Fashion-MNIST model (default: fashion-mnist-f4, as in docs/benchmarks.md)")
    parser.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS))
    parser.add_argument("--steps", nargs="+", type=int, default=[5, 10, 20, 50, 100])
    parser.add_argument("--per-class", type=int, default=100, help="images per class prompt in every cell")
    parser.add_argument("--chunk", type=int, default=10,
                        help="images per class prompt generated together; a multiple of it is kept in --cache")
    parser.add_argument("--cache", type=Path, default=None,
                        help="where each chunk's classifier features are kept (default: next to --out, "
                             "NAME-features/); a killed run resumes from them")
    parser.add_argument("--reference-steps", type=int, default=1000, help=f"steps of the {REFERENCE_SAMPLER} reference")
    parser.add_argument("--guidance", type=float, default=None, help="default: the model's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/sampler-curve.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/images/sampler-curve.png"))
    parser.add_argument("--resume", action="store_true", help="keep the cells already in --out, compute the rest")
    parser.add_argument("--pool", nargs="+", type=Path, default=None, metavar="JSON",
                        help="compute nothing: score the cells of these finished runs (other seeds) together, "
                             "from their default caches")
    args = parser.parse_args(argv)
    if args.per_class < 1 or min(args.steps) < 1 or args.reference_steps < 1:
        parser.error("--per-class, --steps and --reference-steps must be >= 1")
    args.chunk = min(args.chunk, args.per_class)
    if args.chunk < 1 or args.per_class % args.chunk:
        parser.error(f"--per-class ({args.per_class}) must be a multiple of --chunk ({args.chunk})")
    args.cache = args.cache or default_cache(args.out)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pool:
        print(pooled(args.pool, default_cache))
        return 0
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
        cell = run_cell(bench, sampler, steps, results["settings"], args.cache)
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
