"""DiT's scaling claim in miniature (Peebles & Xie 2023, figs. 2 and 8: FID falls steadily as the
forward Gflops rise, by width or by smaller patches), on the Fashion-MNIST latents, and DiT
against the shipped UNet at equal training compute.

    python -m benchmarks.dit_scaling [--widths 64 128 192] [--patches 1 2 4] [--depth 4] [--steps 1000]
        [--batch 32] [--per-class 50] [--guidance 1.5] [--skip CELL ...] [--unet] [--runs runs/dit-scaling]
        [--out docs/results/dit-scaling.json] [--plot docs/images/dit-scaling.png] [--threads 1]

Every cell is a class-conditional DiT (width w, patch p, --depth blocks, w / 32 heads) trained
with the shipped model's recipe (AdamW lr 3e-4, min-SNR-5, EMA 0.999, 10% label dropout) for
--steps steps of --batch latents of the `fmnist-kl-f4` first stage (its GAN-tuned decoder decodes),
in its own run folder (a killed run resumes exactly), then scored as the sampler curve scores a
model (benchmarks/sampler_curve.py): --per-class images of each class prompt at --guidance, 20
DPM-Solver++(2M) steps, FD, FD_inf and both halves' FD_inf of the shipped classifier's features
against the 10,000 test images, class agreement. Gflops: one latent's forward pass, counted by
torch.utils.flop_counter (a multiply-add is 2 flops), without the guidance batch.

--unet adds the `compact` UNet (class-conditioned, as fashion-mnist's) trained with the same
training compute as the largest DiT cell: steps x batch x forward Gflops equal.

Results are rewritten after every cell (--out) and a cell already there is not run again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ldmkit.model import LatentDiffusionConfig
from ldmkit.nets import make_net
from ldmkit.nets.config import UNET_PRESETS
from ldmkit.nets.dit_config import DiTConfig
from ldmkit.train.diffusion import train_diffusion
from ldmkit.train.diffusion_config import DiffusionTrainConfig

from .results import write_json
from .sampler_curve import Bench, floor, run_cell
from .sd_models import cpu_name

FIRST_STAGE = "models/autoencoders/fmnist-kl-f4-gan-decoder"  # the encoder of fmnist-kl-f4, the better decoder


def dit(width: int, patch: int, depth: int) -> DiTConfig:
    return DiTConfig(hidden_size=width, depth=depth, num_heads=max(1, width // 32), patch_size=patch, input_size=8,
                     num_classes=10, time_freq_shift=1, mlp_norm_eps=1e-5)


def compact_unet():
    return replace(UNET_PRESETS["compact"], context_dim=None, num_classes=11)  # 10 classes + the null one


def train_config(net, steps: int, batch: int, runs: Path) -> DiffusionTrainConfig:
    return DiffusionTrainConfig(
        model=LatentDiffusionConfig(net=net, conditioning="class"), autoencoder=FIRST_STAGE, steps=steps,
        batch_size=batch, lr=3e-4, warmup_steps=max(1, min(200, steps // 10)), min_snr_gamma=5.0,
        sample_every=steps, checkpoint_every=max(100, steps // 4), log_every=50, latent_cache=str(runs / "latents"),
    )


def forward_gflops(net_config) -> float:
    net = make_net(net_config).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(1, net_config.in_channels, 8, 8), torch.tensor([500]), class_labels=torch.tensor([1]))
    return counter.get_total_flops() / 1e9


def run(name: str, net_config, steps: int, args) -> dict:
    """Train (or resume, or reuse) the cell's model, then score it."""
    run_dir = args.runs / name
    start = time.perf_counter()
    if not (run_dir / "model" / "model.safetensors").exists():
        train_diffusion(train_config(net_config, steps, args.batch, args.runs), run_dir)
    trained = json.loads((run_dir / "model" / "config.json").read_text())["training"]
    bench = Bench(str(run_dir / "model"))
    bench.classifier, bench.test_features = args.metric.classifier, args.metric.test_features  # computed once
    settings = {"model": name, "per_class": args.per_class, "chunk_per_class": min(10, args.per_class),
                "guidance": args.guidance, "seed": 0}
    cell = run_cell(bench, "dpmpp_2m", 20, settings, run_dir / "scores")
    gflops = forward_gflops(net_config)
    return {
        "name": name, "kind": net_config.kind, "gflops": gflops,
        "parameters": sum(p.numel() for p in bench.pipe.net.parameters()),
        "train_steps": steps, "batch": args.batch, "train_tflops": 3 * gflops * steps * args.batch / 1e3,
        "train_images_per_s": trained["images_per_s"], "train_minutes": trained["train_minutes"],
        "seconds_per_image": cell["seconds"] / (10 * args.per_class),
        "wall_minutes": (time.perf_counter() - start) / 60,
        **{k: cell[k] for k in ("frechet_distance", "fd_inf", "fd_inf_halves", "class_agreement")},
    } | ({"patch": net_config.patch_size, "width": net_config.hidden_size, "depth": net_config.depth}
         if net_config.kind == "dit" else {})


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    dits = [c for c in results["cells"] if c["kind"] == "dit"]
    for patch, marker in zip(sorted({c["patch"] for c in dits}), "osD^"):
        row = sorted((c for c in dits if c["patch"] == patch), key=lambda c: c["gflops"])
        ax.plot([c["gflops"] for c in row], [c["frechet_distance"] for c in row], marker=marker,
                label=f"DiT, patch {patch}")
        for c in row:
            ax.annotate(f"w{c['width']}", (c["gflops"], c["frechet_distance"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    for c in results["cells"]:
        if c["kind"] == "unet":
            ax.plot([c["gflops"]], [c["frechet_distance"]], "k*", markersize=12,
                    label="UNet (compact), equal training flops")
    ax.axhline(results["floor"]["frechet_distance"], color="grey", linestyle=":", label="real images (floor)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("forward Gflops per latent")
    ax.set_ylabel(f"FD ({results['settings']['images']} images)")
    ax.set_title(f"DiT scaling on Fashion-MNIST latents, {results['settings']['steps']} steps of batch "
                 f"{results['settings']['batch']}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", nargs="+", type=int, default=[64, 128, 192])
    parser.add_argument("--patches", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--skip", nargs="*", default=[], help="cells of the grid not to run, e.g. dit-w192-p1")
    parser.add_argument("--unet", action="store_true", help="add the compact UNet at the largest cell's training flops")
    parser.add_argument("--runs", type=Path, default=Path("runs/dit-scaling"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/dit-scaling.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/images/dit-scaling.png"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"steps": args.steps, "batch": args.batch, "depth": args.depth, "per_class": args.per_class,
                "images": 10 * args.per_class, "guidance": args.guidance, "sampler": "dpmpp_2m, 20 steps",
                "first_stage": FIRST_STAGE, "cpu": cpu_name(), "threads": torch.get_num_threads(),
                "torch": torch.__version__}
    results = {"settings": settings, "cells": []}
    if args.out.exists():
        kept = json.loads(args.out.read_text())
        same = {k: kept["settings"].get(k) for k in ("steps", "batch", "depth", "per_class", "guidance")}
        if same != {k: settings[k] for k in same}:
            raise SystemExit(f"{args.out} holds cells of other settings ({same}): give another --out")
        results["cells"] = kept["cells"]
    done = {c["name"] for c in results["cells"]}
    cells = [(f"dit-w{w}-p{p}", dit(w, p, args.depth), args.steps) for w in args.widths for p in args.patches
             if f"dit-w{w}-p{p}" not in args.skip]
    if args.unet:
        largest = max(forward_gflops(c) for _, c, _ in cells)
        unet = compact_unet()
        cells.append(("unet-compact", unet, max(1, round(args.steps * largest / forward_gflops(unet)))))
    args.metric = None
    for name, net_config, steps in cells:
        if name in done:
            continue
        if args.metric is None:
            args.metric = Bench(str(Path("models/fashion-mnist-f4")))  # the classifier and test features, once
        results["cells"].append(run(name, net_config, steps, args))
        results["floor"] = floor(args.metric, args.per_class)
        write_json(results, args.out, indent=1)
        print(f"{name}: FD {results['cells'][-1]['frechet_distance']:.3f}", file=sys.stderr)
    if "floor" in results and results["cells"]:
        print(f"plot: {plot(results, args.plot)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
