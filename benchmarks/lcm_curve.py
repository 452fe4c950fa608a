"""Few-step quality of a latent consistency model against its teacher, on Fashion-MNIST.

    python -m benchmarks.lcm_curve [--model fashion-mnist-lcm] [--teacher fashion-mnist-f4] [--steps 1 2 4 8]
        [--per-class 100] [--threads 1] [--out docs/results/lcm-curve.json] [--plot docs/images/lcm-curve.png]

Every cell is scored as the sampler curve scores it (benchmarks/sampler_curve.py): the same class
prompts, the same seeds (image k from seed + k in every cell), 10 x per-class images, FD and
FD_inf (and FD_inf of each half) of the shipped classifier's features against the 10,000 test
images, class agreement, network evaluations (NFE, counted on the network) and seconds. The
cells: the LCM with `lcm` at each of --steps, and the teacher at 20 DPM-Solver++(2M) steps,
both computed here on this machine (so the seconds compare). The teacher's 1000-step DDPM cell
(35 min) is read from --teacher-results, the sampler curve's file of the same settings, and
marked so. Chunks of features are cached beside --out; a killed run goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .results import write_json
from .sampler_curve import Bench, default_cache, floor, number, run_cell
from .sd_models import cpu_name


def settings_for(bench: Bench, model: str, per_class: int, seed: int, guidance: float | None = None) -> dict:
    return {"model": model, "per_class": per_class, "chunk_per_class": min(10, per_class),
            "guidance": bench.pipe.defaults.guidance if guidance is None else guidance, "seed": seed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fashion-mnist-lcm")
    parser.add_argument("--teacher", default="fashion-mnist-f4")
    parser.add_argument("--lora", type=Path, default=None, help="an LCM-LoRA file: --model is then the base it adapts")
    parser.add_argument("--guidance", type=float, default=None, help="the LCM's (default: the model's; 1 with --lora)")
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--teacher-results", type=Path, default=Path("docs/results/sampler-curve-1000.json"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/lcm-curve.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/images/lcm-curve.png"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = default_cache(args.out)
    lcm, teacher = Bench(args.model), Bench(args.teacher)
    teacher.classifier, teacher.test_features = lcm.classifier, lcm.test_features  # computed once
    name, guidance = args.model, args.guidance
    if args.lora is not None:
        lcm.pipe.load_lora(args.lora)
        name, guidance = f"{args.model} + {args.lora.name}", 1.0 if args.guidance is None else args.guidance
    rows = []
    for steps in args.steps:
        cell = run_cell(lcm, "lcm", steps, settings_for(lcm, name, args.per_class, args.seed, guidance), cache / "lcm")
        rows.append({"model": name, **cell})
    cell = run_cell(teacher, "dpmpp_2m", 20, settings_for(teacher, args.teacher, args.per_class, args.seed),
                    cache / "teacher")
    rows.append({"model": args.teacher, **cell})
    reference = _teacher_reference(args)
    if reference is not None:
        rows.append(reference)
    target = next(r for r in rows if r["model"] == args.teacher and r["sampler"] == "dpmpp_2m")
    results = {
        "settings": {"per_class": args.per_class, "images": 10 * args.per_class, "seed": args.seed,
                     "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "metric": "as benchmarks/sampler_curve.py; seconds: generation of all images on this machine",
                     "target": "LCM at 4 steps: FD within 15% of the teacher's 20-step FD, agreement >= 85%"},
        "floor": floor(lcm, args.per_class),
        "cells": rows,
        "fd_over_teacher_20": {str(r["steps"]): r["frechet_distance"] / target["frechet_distance"]
                               for r in rows if r["model"] == name},
    }
    write_json(results, args.out)
    print(table(results))
    print(f"written {args.out} and {plot(results, args.plot, name)}")
    return 0


def _teacher_reference(args) -> dict | None:
    """The teacher's 1000-step DDPM cell of the sampler curve, where its settings are these."""
    if not args.teacher_results.exists():
        return None
    stored = json.loads(args.teacher_results.read_text())
    s = stored["settings"]
    if (s["model"], s["per_class"], s["seed"]) != (args.teacher, args.per_class, args.seed):
        return None
    return {"model": args.teacher, **stored["reference"], "source": f"{args.teacher_results} (threads "
            f"{s['threads']}, another run: its seconds do not compare)"}


def table(results: dict) -> str:
    header = f"{'model':<22}{'sampler':<10}{'steps':>6}{'NFE':>6}{'FD':>8}{'FD_inf':>8}{'halves':>13}" \
             f"{'agreement':>11}{'s/image':>9}"
    lines = [header, "-" * len(header)]
    images = results["settings"]["images"]
    for r in results["cells"]:
        halves = " ".join(number(h, 2) for h in r.get("fd_inf_halves") or [])
        seconds = "-" if "source" in r else f"{r['seconds'] / images * 1000:.1f}ms"
        lines.append(f"{Path(r['model']).name:<22}{r['sampler']:<10}{r['steps']:>6}{r['nfe']:>6}"
                     f"{r['frechet_distance']:>8.3f}{number(r['fd_inf']):>8}{halves:>13}"
                     f"{r['class_agreement']:>11.1%}{seconds:>9}")
    real = results["floor"]
    lines.append(f"floor: {real['images']} real training images, FD {real['frechet_distance']:.3f}")
    return "\n".join(lines)


def plot(results: dict, out: Path, model: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = results["cells"]
    lcm = [r for r in cells if r["model"] == model]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["nfe"] for r in lcm], [r["frechet_distance"] for r in lcm], "o-", label=f"{Path(model).name} (lcm)")
    for r in cells:
        if r["model"] != model:
            nfe = r["nfe"] * (2 if r["sampler"] != "lcm" else 1)  # guidance: two rows per evaluation
            ax.plot([nfe], [r["frechet_distance"]], "s", label=f"teacher, {r['sampler']} {r['steps']} steps")
    ax.axhline(results["floor"]["frechet_distance"], color="grey", ls=":", label="real images (floor)")
    ax.set_xscale("log")
    ax.set_xlabel("network rows per image (guidance counts twice)")
    ax.set_ylabel("FD (classifier features)")
    ax.set_title(f"few-step sampling, {results['settings']['images']} images per point")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


if __name__ == "__main__":
    sys.exit(main())
