"""Classifier guidance against classifier-free guidance on Fashion-MNIST (Dhariwal & Nichol 2021
against Ho & Salimans 2022), measured as `ldmkit evaluate` measures a model.

    python -m benchmarks.guidance_study --classifier runs/noisy-classifier/model [--model fashion-mnist-f4]
        [--per-class 100] [--classifier-scales 0 1 2 4 8 16] [--cfg-scales 1 1.5 2 3 5]
        [--both-guidance 1.5] [--threads 1] [--out docs/results/guidance-study.json]
        [--plot docs/images/guidance-study.png]

Three series, each cell 10 x per-class images of the 10 class prompts (the same seeds in every
cell), scored by FD (and FD_inf) of the shipped Fashion-MNIST classifier's features against the
test set, class agreement, and precision and recall against as many real images (evaluate_fashion_mnist):
- "classifier": the unconditional model (classifier-free guidance w = 0: the unconditional branch
  alone, the paper's setting) steered by the noisy latent classifier at each --classifier-scales;
- "cfg": the conditional model with classifier-free guidance at each --cfg-scales;
- "cfg+classifier": classifier-free guidance at --both-guidance and the classifier at each of the
  non-zero --classifier-scales.
Each finished cell is saved at once: a killed run goes on from the next cell.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ldmkit.apps.evaluate import evaluate_fashion_mnist
from ldmkit.model.classifier import load_latent_classifier
from ldmkit.pipelines import Pipeline

from .results import write_json
from .sd_models import cpu_name

TARGET_AGREEMENT = 0.85


def planned_cells(args: argparse.Namespace) -> list[dict]:
    cells = [{"series": "classifier", "guidance": 0.0, "classifier_scale": s} for s in args.classifier_scales]
    cells += [{"series": "cfg", "guidance": w, "classifier_scale": 0.0} for w in args.cfg_scales]
    cells += [{"series": "cfg+classifier", "guidance": args.both_guidance, "classifier_scale": s}
              for s in args.classifier_scales if s > 0]
    return cells


def cell_key(cell: dict) -> tuple:
    return cell["series"], float(cell["guidance"]), float(cell["classifier_scale"])


def run_cell(pipe: Pipeline, classifier, cell: dict, per_class: int, seed: int, sampling: dict) -> tuple[dict, dict]:
    steering = {"classifier": classifier, "classifier_scale": cell["classifier_scale"]} \
        if cell["classifier_scale"] > 0 else {}
    scores = evaluate_fashion_mnist(pipe, per_class=per_class, seed=seed, guidance=cell["guidance"], **sampling,
                                    **steering)
    keep = ("images", "frechet_distance", "fd_inf", "fd_inf_halves", "class_agreement", "class_agreement_by_class",
            "precision", "recall", "seconds_per_image_batched")
    return {**cell, **{k: scores[k] for k in keep}}, scores


def scale_at_agreement(cells: list[dict], target: float = TARGET_AGREEMENT) -> float | None:
    """The classifier scale at which the unconditional series first reaches `target` agreement,
    interpolated linearly in agreement between the two cells around it (None: never reached)."""
    series = sorted((c for c in cells if c["series"] == "classifier"), key=lambda c: c["classifier_scale"])
    for low, high in zip(series, series[1:]):
        if low["class_agreement"] < target <= high["class_agreement"]:
            share = (target - low["class_agreement"]) / (high["class_agreement"] - low["class_agreement"])
            return low["classifier_scale"] + share * (high["classifier_scale"] - low["classifier_scale"])
    if series and series[0]["class_agreement"] >= target:
        return series[0]["classifier_scale"]
    return None


def load_results(path: Path, settings: dict) -> dict:
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("settings", {}).get("identity") == settings["identity"]:
            return stored
    return {"settings": settings, "cells": []}


def table(results: dict) -> str:
    header = f"{'series':<16}{'CFG w':>7}{'cls s':>7}{'FD':>8}{'FD_inf':>8}{'agreement':>11}{'prec.':>7}" \
             f"{'recall':>7}{'s/image':>9}"
    lines = [header, "-" * len(header)]
    for c in results["cells"]:
        fd_inf = "-" if c["fd_inf"] is None else f"{c['fd_inf']:.3f}"
        lines.append(f"{c['series']:<16}{c['guidance']:>7g}{c['classifier_scale']:>7g}{c['frechet_distance']:>8.3f}"
                     f"{fd_inf:>8}{c['class_agreement']:>11.1%}"
                     f"{c['precision']:>7.2f}{c['recall']:>7.2f}{c['seconds_per_image_batched']:>9.3f}")
    lines.append(f"floor ({results['floor']['images']} real images): FD {results['floor']['frechet_distance']:.3f}; "
                 f"first stage {results['floor']['first_stage']:.3f}")
    reached = results.get("classifier_scale_at_85")
    lines.append("unconditional + classifier reaches 85% agreement at scale "
                 + ("(never, in this sweep)" if reached is None else f"{reached:.2f}"))
    return "\n".join(lines)


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"classifier": ("o-", "unconditional + classifier (x: classifier scale)"),
              "cfg": ("s-", "conditional + CFG (x: CFG scale w)"),
              "cfg+classifier": ("^-", f"CFG w={results['settings']['both_guidance']:g} + classifier "
                                       "(x: classifier scale)")}
    fig, (ax_fd, ax_agree, ax_trade) = plt.subplots(1, 3, figsize=(15, 4.2))
    for series, (style, label) in styles.items():
        cells = [c for c in results["cells"] if c["series"] == series]
        if not cells:
            continue
        x = [c["guidance"] if series == "cfg" else c["classifier_scale"] for c in cells]
        fd = [c["frechet_distance"] for c in cells]
        agreement = [100 * c["class_agreement"] for c in cells]
        ax_fd.plot(x, fd, style, label=label)
        ax_agree.plot(x, agreement, style, label=label)
        ax_trade.plot(agreement, fd, style, label=label)
        for c, a, f in zip(cells, agreement, fd):
            ax_trade.annotate(f"{c['guidance'] if series == 'cfg' else c['classifier_scale']:g}", (a, f),
                              fontsize=7, xytext=(3, 3), textcoords="offset points")
    floor = results["floor"]["frechet_distance"]
    for ax in (ax_fd, ax_trade):
        ax.axhline(floor, color="grey", ls=":", label="real images (floor)")
        ax.set_yscale("log")
        ax.set_ylabel("FD (classifier features)")
    ax_agree.axhline(100 * TARGET_AGREEMENT, color="grey", ls="--", label="85%")
    ax_agree.set_ylabel("class agreement (%)")
    for ax in (ax_fd, ax_agree):
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("guidance scale")
    ax_trade.set_xlabel("class agreement (%)")
    ax_trade.set_title("trade-off (labels: scale)", fontsize=9)
    ax_fd.legend(fontsize=7)
    fig.suptitle(f"{results['settings']['model']}: classifier guidance against CFG, "
                 f"{results['settings']['images']} images per point")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fashion-mnist-f4", help="the model whose latents the classifier reads")
    parser.add_argument("--classifier", required=True, help="a noisy latent classifier folder for the model's latents")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--classifier-scales", nargs="+", type=float, default=[0, 1, 2, 4, 8, 16])
    parser.add_argument("--cfg-scales", nargs="+", type=float, default=[1, 1.5, 2, 3, 5])
    parser.add_argument("--both-guidance", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--sampler", default=None, help="default: the model's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/results/guidance-study.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/images/guidance-study.png"))
    args = parser.parse_args(argv)
    if args.per_class < 2 or min(args.classifier_scales + args.cfg_scales) < 0:
        parser.error("need --per-class >= 2 and scales >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model)
    if pipe.meta.get("dataset") != "fashion-mnist":
        raise SystemExit(f"{args.model} was not trained on fashion-mnist: the study scores Fashion-MNIST class prompts")
    classifier = load_latent_classifier(args.classifier, pipe.device)
    steps, sampler, _ = pipe.resolve_settings(args.steps, args.sampler, None)
    sampling = {"steps": steps, "sampler": sampler}
    identity = {"model": args.model, "classifier": str(args.classifier), "per_class": args.per_class,
                "seed": args.seed, **sampling}
    settings = {"identity": identity, "model": args.model, "classifier": str(args.classifier),
                "images": 10 * args.per_class, "both_guidance": args.both_guidance, "cpu": cpu_name(),
                "threads": torch.get_num_threads(), "torch": torch.__version__,
                "metric": "ldmkit.apps.evaluate.evaluate_fashion_mnist: FD of the shipped classifier's features "
                          "against the 10,000 test images; class agreement with the prompt's class"}
    results = load_results(args.out, settings)
    results["settings"] = settings
    done = {cell_key(c) for c in results["cells"]}
    for cell in tqdm([c for c in planned_cells(args) if cell_key(c) not in done], desc="cells"):
        row, scores = run_cell(pipe, classifier, cell, args.per_class, args.seed, sampling)
        results["cells"].append(row)
        results["floor"] = {"images": scores["images"], "frechet_distance": scores["frechet_floor"],
                            "fd_inf": scores["fd_inf_floor"], "first_stage": scores["frechet_first_stage"]}
        results["classifier_scale_at_85"] = scale_at_agreement(results["cells"])
        write_json(results, args.out)
    results["cells"].sort(key=lambda c: (["classifier", "cfg", "cfg+classifier"].index(c["series"]),
                                         c["guidance"], c["classifier_scale"]))
    write_json(results, args.out)
    print(table(results))
    print(f"written {args.out} and {plot(results, args.plot)}")
    return 0 if all(math.isfinite(c["frechet_distance"]) for c in results["cells"]) else 1


if __name__ == "__main__":
    sys.exit(main())
